"""CUDA checks: the engine on the GPU gives the CPU's answers; training runs on the GPU.

Marked ``gpu`` and skipped where no CUDA device exists (``bench/gpu_check.sh`` runs them).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from registry.store import FileRegistry
from server.engine import Engine, TopNQuery
from tests.harness.cli import TrainedModel, run_cli

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_cuda_engine_matches_cpu(trained: TrainedModel) -> None:
    path = FileRegistry(trained.registry).resolve("rbm", "production").path
    cpu = Engine.load(path, "1", torch.device("cpu"))
    gpu = Engine.load(path, "1", torch.device("cuda"))
    users = list(range(1, 65))
    for engine_a, engine_b in ((cpu, gpu),):
        rated = [engine_a.user_ratings(u, {}) for u in users]
        queries = [TopNQuery(20)] * 64
        out_a = engine_a.run(users, [engine_a.hidden_pre(r) for r in rated], rated, queries)
        out_b = engine_b.run(users, [engine_b.hidden_pre(r) for r in rated], rated, queries)
        for a, b in zip(out_a, out_b, strict=True):
            assert not isinstance(a, list) and not isinstance(b, list)
            np.testing.assert_allclose(a.scores, b.scores, atol=1e-4)
            assert a.movies[:5] == b.movies[:5]


def test_training_on_cuda(movielens: object, tmp_path: object) -> None:
    out = run_cli(
        "rbm-train",
        "--data-dir",
        str(movielens),
        "--split",
        "u1",
        "--epochs",
        "10",
        "--device",
        "cuda",
        "--json",
        "--quiet",
        "--registry",
        str(tmp_path),
    )
    report = json.loads(out.stdout)
    assert report["device"] == "cuda" and report["rmse"] < 1.0
