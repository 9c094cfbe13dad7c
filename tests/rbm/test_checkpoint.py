"""The model object round-trips through disk and serves what it says, ONNX included."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from rbm.checkpoint import (
    Checkpoint,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
    smoke_test,
)
from rbm.model import ItemModel, RatingBlend, RBMConfig, RBMParams
from rbm.onnx_export import INPUT_NAME, ITEM_ROWS_NAME, export_checkpoint

M, K, F, F2, USERS = 5, 5, 3, 2, 3


def _params(n_visible: int, n_hidden: int, gen: torch.Generator) -> RBMParams:
    return RBMParams(
        torch.randn(n_visible, n_hidden, generator=gen),
        torch.randn(n_visible, generator=gen),
        torch.randn(n_hidden, generator=gen),
    )


def _checkpoint(
    blend_ranking: bool,
    implicit_models: int = 1,
    liked_weight: float = 1.0,
    rating_inference: str = "mean_field",
) -> Checkpoint:
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
        implicit=_params(M, 2 * implicit_models, gen),
        item=ItemModel(
            _params(K * USERS, F2, gen), torch.rand(M, F2, generator=gen), 0.6, RATING_BLEND
        ),
        blend_ranking=blend_ranking,
        liked_weight=liked_weight,
        implicit_models=implicit_models,
        rating_inference=rating_inference,  # type: ignore[arg-type]
    )


RATING_BLEND = RatingBlend(-0.3, 0.4, 0.7, 0.05, -0.02, 0.5, 1.0)


@pytest.mark.parametrize(
    ("blend_ranking", "implicit_models", "liked_weight", "inference"),
    [
        (False, 1, 1.0, "mean_field"),
        (True, 1, 1.0, "mean_field"),
        (False, 3, 0.25, "second_order"),
        (True, 2, 0.5, "second_order"),
    ],
)
def test_saved_model_serves_what_it_says(
    tmp_path: Path, blend_ranking: bool, implicit_models: int, liked_weight: float, inference: str
) -> None:
    saved = _checkpoint(blend_ranking, implicit_models, liked_weight, inference)
    save_checkpoint(saved, tmp_path)
    loaded = load_checkpoint(tmp_path)
    assert loaded.rating_inference == inference
    assert loaded.scorer().second_order is (inference == "second_order")
    assert loaded.blend_ranking is blend_ranking
    assert loaded.scorer().blend_ranking is blend_ranking
    assert (loaded.implicit_models, loaded.liked_weight) == (implicit_models, liked_weight)
    assert loaded.item is not None and loaded.item.rating_blend == RATING_BLEND
    assert loaded.scorer().implicit_scale == pytest.approx(1 / implicit_models)
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


def test_a_checkpoint_without_the_newer_keys_loads_with_their_defaults(tmp_path: Path) -> None:
    # Versions registered before liked_weight and implicit_models existed: one implicit
    # RBM, log P(liked) at weight 1, which is what they were trained and chosen with.
    save_checkpoint(_checkpoint(False), tmp_path)
    meta = json.loads((tmp_path / "model.json").read_text(encoding="utf-8"))
    del meta["liked_weight"], meta["implicit_models"], meta["rating_blend"]
    del meta["rating_inference"]
    (tmp_path / "model.json").write_text(json.dumps(meta), encoding="utf-8")
    loaded = load_checkpoint(tmp_path)
    assert (loaded.implicit_models, loaded.liked_weight) == (1, 1.0)
    assert loaded.rating_inference == "mean_field"  # what their rating blend was fitted on
    # Before the fitted rating blend: the plain mix at the item blend's share.
    assert loaded.item is not None and loaded.item.rating_blend is None
    assert loaded.item.ratings == RatingBlend.from_share(0.6)


def test_implicit_hidden_units_must_split_evenly_into_the_models(tmp_path: Path) -> None:
    bad = _checkpoint(False, implicit_models=2)
    bad.implicit_models = 3  # 4 hidden units
    with pytest.raises(CheckpointError, match="do not split into 3"):
        save_checkpoint(bad, tmp_path)
    negative = _checkpoint(False, liked_weight=-1.0)
    with pytest.raises(CheckpointError, match="liked_weight"):
        save_checkpoint(negative, tmp_path)
    with pytest.raises(CheckpointError, match="rating inference"):
        save_checkpoint(_checkpoint(False, rating_inference="exact"), tmp_path)
