"""The registry with a real trained model: the ONNX export, verify's smoke test, tampering."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from rbm.checkpoint import load_checkpoint
from rbm.onnx_export import INPUT_NAME, ITEM_ROWS_NAME, ONNX_FILE
from registry import FileRegistry
from tests.harness.cli import TrainedModel, run_cli
from tests.harness.registry import copy_registry


@pytest.fixture
def registry_copy(trained: TrainedModel, tmp_path: Path) -> Path:
    return copy_registry(trained, tmp_path).root


def test_every_version_carries_an_onnx_model_that_matches_pytorch(trained: TrainedModel) -> None:
    version = FileRegistry(trained.registry).resolve("rbm", "production")
    assert ONNX_FILE in version.files
    model = onnx.load(str(version.path / ONNX_FILE))
    onnx.checker.check_model(model, full_check=True)

    ckpt = load_checkpoint(version.path)
    scorer = ckpt.scorer()
    session = ort.InferenceSession(str(version.path / ONNX_FILE))
    for rows in ([0], list(range(1, 65)), [942, 5, 100]):  # the batch dimension is dynamic
        pre = ckpt.hidden_pre(ckpt.user_batch(rows))
        with torch.no_grad():
            item_rows = torch.tensor(rows)  # rows of training users: the item RBM knows them
            want = [t.numpy() for t in scorer(pre, item_rows)]
        got = session.run(None, {INPUT_NAME: pre.numpy(), ITEM_ROWS_NAME: item_rows.numpy()})
        assert [g.shape for g in got] == [(len(rows), 1682)] * 2
        for g, w in zip(got, want, strict=True):
            np.testing.assert_allclose(g, w, rtol=0, atol=1e-4)


def test_verify_loads_the_model_and_runs_a_prediction(registry_copy: Path) -> None:
    out = json.loads(
        run_cli("rbm-registry", "--registry", str(registry_copy), "--json", "verify", "rbm").stdout
    )
    assert [(r["version"], r["ok"], r["smoke_test"]) for r in out] == [(1, True, "ok")]


def test_tampered_weights_fail_verify_and_promote(registry_copy: Path) -> None:
    reg = FileRegistry(registry_copy)
    weights = reg.get_version("rbm", 1).path / "model.safetensors"
    os.chmod(weights, 0o644)
    data = bytearray(weights.read_bytes())
    data[-8:] = b"\x00" * 8  # flips values, keeps the file loadable
    weights.write_bytes(bytes(data))
    verify = run_cli(
        "rbm-registry", "--registry", str(registry_copy), "verify", "rbm", "1", check=False
    )
    assert verify.returncode != 0 and "model.safetensors" in verify.stderr + verify.stdout
    promote = run_cli(
        "rbm-registry",
        "--registry",
        str(registry_copy),
        "promote",
        "rbm",
        "1",
        "--alias",
        "staging",
        "--force",
        "--reason",
        "try anyway",
        check=False,
    )
    assert promote.returncode != 0
    assert reg.get_alias("rbm", "staging") is None


def test_export_onnx_command_writes_a_runnable_model(registry_copy: Path, tmp_path: Path) -> None:
    out = tmp_path / "exported.onnx"
    run_cli(
        "rbm-registry",
        "--registry",
        str(registry_copy),
        "export-onnx",
        "rbm",
        "1",
        "--output",
        str(out),
    )
    hidden = load_checkpoint(FileRegistry(registry_copy).get_version("rbm", 1).path).hidden_width
    session = ort.InferenceSession(str(out))
    feed = {
        INPUT_NAME: np.zeros((3, hidden), dtype=np.float32),
        ITEM_ROWS_NAME: np.array([0, -1, 5], dtype=np.int64),
    }
    scores, expected = session.run(None, feed)
    assert scores.shape == expected.shape == (3, 1682)
    assert float(expected.min()) >= 1.0 and float(expected.max()) <= 5.0
