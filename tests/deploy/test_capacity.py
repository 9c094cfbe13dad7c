"""bench/capacity.py's memory model against a real trained checkpoint and its Scorer."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file

from bench.capacity import (
    Shape,
    checkpoint_tensors,
    cpu_rps,
    replicas,
    report,
    scorer_copies,
    throughput_fit,
)
from rbm.checkpoint import load_checkpoint
from tests.harness.cli import ROOT, TrainedModel

U1_BASE_RATINGS = 80_000  # ml-100k u1.base, the fixture's training part
SERVE_JSON = ROOT / "bench" / "results" / "serve-2026-11-27.json"  # docs/scaling.md's run


def _version(trained: TrainedModel) -> Path:
    registered = trained.report["registered"]
    assert isinstance(registered, dict)
    return Path(registered["path"])


def _shape(trained: TrainedModel) -> Shape:
    meta = json.loads((_version(trained) / "model.json").read_text(encoding="utf-8"))
    users = load_file(str(_version(trained) / "model.safetensors"))["user_ids"].numel()
    # Only the data set's facts; the hidden sizes are TrainConfig's defaults, as trained.
    return Shape(
        "ml-100k u1",
        users=users,
        movies=meta["config"]["n_movies"],
        ratings=U1_BASE_RATINGS,
        levels=len(meta["levels"]),
        train_fraction=1.0,
    )


def test_checkpoint_bytes_match_the_saved_tensors(trained: TrainedModel) -> None:
    tensors = load_file(str(_version(trained) / "model.safetensors"))
    actual = {name: t.numel() * t.element_size() for name, t in tensors.items()}
    assert checkpoint_tensors(_shape(trained)) == actual


def test_scorer_copies_match_the_serving_module(trained: TrainedModel) -> None:
    ckpt = load_checkpoint(_version(trained))
    scorer = ckpt.scorer()
    shared = {
        t.untyped_storage().data_ptr()
        for p in (ckpt.params, ckpt.implicit)
        if p is not None
        for t in (p.weights, p.visible_bias, p.hidden_bias)
    }
    own = sum(
        b.numel() * b.element_size()
        for b in scorer.buffers()
        if b.untyped_storage().data_ptr() not in shared
    )
    assert scorer_copies(_shape(trained)) == own


def test_throughput_fit_reproduces_the_benchmark_rows() -> None:
    fit = throughput_fit(SERVE_JSON)
    assert fit["a_s"] > 0 and fit["b_s_per_mac"] > 0
    assert fit["a_s"] >= 1 / fit["echo_rps"] * 0.5, "the fixed part cannot beat the echo server"
    for rps, levels, movies in ((fit["ml100k_rps"], 5, 1682), (fit["small_rps"], 10, 9742)):
        shape = Shape("bench", users=1, movies=movies, ratings=1, levels=levels)
        assert abs(cpu_rps(shape, fit) - rps) / rps < 1e-9


def test_replicas_formula() -> None:
    assert replicas(1, 200) == 2  # never fewer than two
    assert replicas(1_000, 200) == 9  # ceil(1000 / (0.7 * 200)) = 8, plus one spare
    result = report(SERVE_JSON)
    rows = result["rows"]
    assert isinstance(rows, list) and rows[0]["shape"]["name"] == "ml-25m"
    assert rows[0]["shape"]["movies"] == 59_047 and rows[0]["shape"]["users"] == 162_541
