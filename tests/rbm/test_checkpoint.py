"""The model object round-trips through disk and serves what it says, ONNX included."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from rbm.checkpoint import Checkpoint, load_checkpoint, save_checkpoint, smoke_test
from rbm.model import ItemModel, RBMConfig, RBMParams
from rbm.onnx_export import INPUT_NAME, ITEM_ROWS_NAME, export_checkpoint

M, K, F, F2, USERS = 5, 5, 3, 2, 3


def _params(n_visible: int, n_hidden: int, gen: torch.Generator) -> RBMParams:
    return RBMParams(
        torch.randn(n_visible, n_hidden, generator=gen),
        torch.randn(n_visible, generator=gen),
        torch.randn(n_hidden, generator=gen),
    )


def _checkpoint(blend_ranking: bool) -> Checkpoint:
    gen = torch.Generator().manual_seed(3)
    return Checkpoint(
        config=RBMConfig(M, K, F),
        params=_params(K * M, F, gen),
        levels=(1.0, 2.0, 3.0, 4.0, 5.0),
        movie_ids=torch.arange(10, 10 + M),
        titles=[f"movie {i}" for i in range(M)],
        user_ids=torch.tensor([1, 2, 3]),
        user_indptr=torch.tensor([0, 2, 3, 4]),
        user_movies=torch.tensor([0, 1, 2, 4]),
        user_levels=torch.tensor([4, 0, 2, 3]),
        popularity=torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0]),
        ranking="liked_and_rated",
        implicit=_params(M, 2, gen),
        item=ItemModel(_params(K * USERS, F2, gen), torch.rand(M, F2, generator=gen), 0.6),
        blend_ranking=blend_ranking,
    )


@pytest.mark.parametrize("blend_ranking", [False, True])
def test_saved_model_serves_what_it_says(tmp_path: Path, blend_ranking: bool) -> None:
    save_checkpoint(_checkpoint(blend_ranking), tmp_path)
    loaded = load_checkpoint(tmp_path)
    assert loaded.blend_ranking is blend_ranking
    assert loaded.scorer().blend_ranking is blend_ranking
    smoke_test(tmp_path)

    pre = loaded.hidden_pre(loaded.user_batch([0, 1, 2]))
    rows = torch.tensor([0, -1, 2])
    with torch.no_grad():
        want = [t.numpy() for t in loaded.scorer()(pre, rows)]
    export_checkpoint(loaded, tmp_path / "model.onnx")
    session = ort.InferenceSession(str(tmp_path / "model.onnx"))
    feed = {INPUT_NAME: pre.numpy()}
    if ITEM_ROWS_NAME in {i.name for i in session.get_inputs()}:
        feed[ITEM_ROWS_NAME] = rows.numpy()
    for got, expected in zip(session.run(None, feed), want, strict=True):
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


def test_blend_ranking_changes_the_scores_of_users_the_item_model_knows() -> None:
    plain, blended = _checkpoint(False), _checkpoint(True)
    pre = plain.hidden_pre(plain.user_batch([0, 1, 2]))
    rows = torch.tensor([0, -1, 2])
    with torch.no_grad():
        a, _ = plain.scorer().score(pre, rows)
        b, _ = blended.scorer().score(pre, rows)
    assert not torch.allclose(a[0], b[0])  # a user the item-based RBM knows
    torch.testing.assert_close(a[1], b[1])  # a user it does not: no blend, same scores
