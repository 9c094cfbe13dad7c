"""CUDA checks: the engine on the GPU gives the CPU's answers; training runs on the GPU.

Marked ``gpu`` and skipped where no CUDA device exists. ``bench/gpu_check.sh`` runs this
folder alone (``pytest -m gpu tests/gpu``), so that it imports no optional test dependency.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from registry.store import FileRegistry
from server.engine import Engine, Recommendation, TopNQuery
from tests.harness.cli import TrainedModel, run_cli

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _top(engine: Engine, users: list[int], cached: bool) -> list[Recommendation]:
    """Top-20 of each user, hidden states computed in the pass or taken from a 'cache'."""
    rated = [engine.user_ratings(u, {}) for u in users]
    states = [engine.hidden_pre(r) for r in rated] if cached else None
    out = engine.run(users, rated, [TopNQuery(20)] * len(users), states).outputs
    assert all(isinstance(o, Recommendation) for o in out)
    return out  # type: ignore[return-value]


@pytest.mark.parametrize("cached", [False, True], ids=["computed", "cached"])
def test_cuda_engine_matches_cpu(trained: TrainedModel, cached: bool) -> None:
    path = FileRegistry(trained.registry).resolve("rbm", "production").path
    cpu = Engine.load(path, "1", torch.device("cpu"))
    gpu = Engine.load(path, "1", torch.device("cuda"))
    users = list(range(1, 65))
    for a, b in zip(_top(cpu, users, cached), _top(gpu, users, cached), strict=True):
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-4)
        np.testing.assert_allclose(a.predicted, b.predicted, atol=1e-4)
        assert a.movies[:5] == b.movies[:5]


def test_training_on_cuda(movielens: Path, tmp_path: Path) -> None:
    out = run_cli(
        "rbm-train",
        *("--data-dir", str(movielens), "--split", "u1", "--epochs", "10"),
        *("--device", "cuda", "--json", "--quiet", "--registry", str(tmp_path)),
    )
    report = json.loads(out.stdout)
    assert report["device"] == "cuda" and report["rmse"] < 1.0
