"""A loaded version holds each weight once: what the scorer copied, the checkpoint lets go."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from torch import Tensor

from rbm.checkpoint import Checkpoint, load_checkpoint
from rbm.model import RBMParams
from registry.store import FileRegistry
from server.backends import make_score_pass
from server.engine import Engine
from tests.harness.cli import TrainedModel
from tests.harness.device_guard import META, DeviceGuard


def _tensors(ckpt: Checkpoint) -> Iterable[Tensor]:
    for value in vars(ckpt).values():
        if isinstance(value, Tensor):
            yield value
        elif isinstance(value, RBMParams):
            yield from (value.weights, value.visible_bias, value.hidden_bias)
    if ckpt.item is not None:
        yield from (ckpt.item.params.weights, ckpt.item.movie_hidden)


def _held_bytes(*groups: Iterable[Tensor]) -> int:
    """Bytes of the distinct storages behind these tensors (views counted once)."""
    storages = {}
    for tensor in (t for g in groups for t in g):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def _engine_bytes(engine: Engine) -> int:
    scorer = getattr(engine.scoring, "scorer")  # noqa: B009 - the torch pass's Scorer
    encoder = engine.encoder
    implicit = encoder.implicit
    encoded = [encoder.params.weights, *(() if implicit is None else (implicit.weights,))]
    return _held_bytes(_tensors(engine.ckpt), scorer.buffers(), encoded)


def _version_dir(trained: TrainedModel) -> Path:
    return FileRegistry(trained.registry).get_version("rbm", 1).path


def test_the_checkpoint_lets_go_of_what_the_scorer_copied(trained: TrainedModel) -> None:
    path = _version_dir(trained)
    engine = Engine.load(path, "1", torch.device("cpu"))
    ckpt = load_checkpoint(path)
    assert ckpt.item is not None, "the test model has an item RBM: its weights are the copy"
    scoring = make_score_pass("torch", ckpt, path, torch.device("cpu"))
    kept = _held_bytes(_tensors(ckpt), getattr(scoring, "scorer").buffers())  # noqa: B009
    item_bytes = ckpt.item.params.weights.numel() * 4
    assert _engine_bytes(engine) <= kept - item_bytes
    assert engine.ckpt.item is not None and engine.ckpt.item.params.weights.numel() == 0


def test_off_the_host_the_weights_live_only_on_the_device(trained: TrainedModel) -> None:
    path = _version_dir(trained)
    ckpt = load_checkpoint(path)
    engine = Engine(ckpt, "1", META, make_score_pass("torch", ckpt, path, META))
    held = engine.ckpt
    assert held.params.weights.device == META
    assert held.implicit is None or held.implicit.weights.device == META
    assert held.item is None or held.item.movie_hidden.device == META
    with DeviceGuard() as guard:
        near = engine.similar(0, 3)  # SimilarMovies computes where the weights are
    assert len(near.movies) == 3
    assert guard.mixed == [], "no host tensor meets a device one"
