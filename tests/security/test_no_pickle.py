"""A version whose weights were swapped for a pickle is refused, and the pickle never runs.

Checkpoints are safetensors + JSON, which hold data only. These tests plant the classic
pickle payload (``__reduce__`` returning a call: here, one that creates a marker file) in
a copy of a registry and load it the two ways production does: ``rbm-registry verify``
and rbm-serve. The payload is shown to be live by unpickling it on purpose first.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import stat
from pathlib import Path

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rbmrec.v1 import recommender_pb2 as pb
from tests.harness.cli import TrainedModel, run_cli
from tests.harness.registry import copy_registry
from tests.harness.server import start_server

WEIGHTS = "model.safetensors"


class Plant:
    """Unpickling this creates ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.mkdir, (str(self.path),))  # any call would do; this one leaves a trace


def _write_payload(kind: str, marker: Path, target: Path) -> None:
    if kind == "pickle":
        target.write_bytes(pickle.dumps(Plant(marker)))
    else:  # torch.save: a zip around a pickle, what torch.load(weights_only=False) would run
        torch.save(Plant(marker), target)


def _poison(trained: TrainedModel, tmp_path: Path, kind: str, resign: bool) -> tuple[Path, Path]:
    """A copy of the registry with version 1's weights replaced; the marker path to watch."""
    registry, marker = copy_registry(trained, tmp_path).root, tmp_path / "marker"
    vdir = registry / "rbm" / "versions" / "1"
    for path in (vdir / WEIGHTS, vdir / "MANIFEST.json"):
        path.chmod(path.stat().st_mode | stat.S_IWUSR)  # the registry seals files read-only
    _write_payload(kind, marker, vdir / WEIGHTS)
    if resign:  # an attacker who can write the registry can rewrite the checksums too
        manifest = json.loads((vdir / "MANIFEST.json").read_text())
        manifest["files"][WEIGHTS] = hashlib.sha256((vdir / WEIGHTS).read_bytes()).hexdigest()
        (vdir / "MANIFEST.json").write_text(json.dumps(manifest))
    return registry, marker


@pytest.mark.parametrize("kind", ["pickle", "torch.save"])
def test_the_payload_is_live_when_unpickled(tmp_path: Path, kind: str) -> None:
    # The control: if a loader did unpickle the file, the marker would appear.
    marker, target = tmp_path / "marker", tmp_path / "payload"
    _write_payload(kind, marker, target)
    if kind == "pickle":
        pickle.loads(target.read_bytes())
    else:
        torch.load(target, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("kind", ["pickle", "torch.save"])
def test_verify_refuses_a_swapped_file_by_checksum(
    trained: TrainedModel, tmp_path: Path, kind: str
) -> None:
    registry, marker = _poison(trained, tmp_path, kind, resign=False)
    proc = run_cli("rbm-registry", "--registry", str(registry), "verify", "rbm", "1", check=False)
    assert proc.returncode == 6, proc.stderr  # corrupt
    assert "rbm-registry: error: verify failed" in proc.stderr and WEIGHTS in proc.stderr
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["pickle", "torch.save"])
def test_verify_refuses_a_pickle_even_with_matching_checksums(
    trained: TrainedModel, tmp_path: Path, kind: str
) -> None:
    registry, marker = _poison(trained, tmp_path, kind, resign=True)
    proc = run_cli("rbm-registry", "--registry", str(registry), "verify", "rbm", "1", check=False)
    assert proc.returncode == 5, proc.stderr  # the smoke test, which loads the model, failed
    assert "smoke test failed" in proc.stderr and "unreadable checkpoint" in proc.stderr
    assert not marker.exists()


def test_the_server_refuses_a_pickle_and_never_runs_it(
    trained: TrainedModel, tmp_path: Path
) -> None:
    registry, marker = _poison(trained, tmp_path, "pickle", resign=True)
    with start_server(registry, "--cache", "memory") as running:
        health = health_pb2_grpc.HealthStub(running.channel).Check(
            health_pb2.HealthCheckRequest(service="rbmrec.v1.Recommender"), timeout=5
        )
        assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING
        with pytest.raises(grpc.RpcError) as info:
            running.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
    assert "version 1 refused" in running.log and "unreadable checkpoint" in running.log
    assert not marker.exists()
