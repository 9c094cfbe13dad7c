"""Promotions, a rollback and broken versions while clients load the server."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

from rbmrec.v1 import recommender_pb2 as pb
from registry.store import FileRegistry
from tests.harness.calls import Load
from tests.harness.cli import run_cli
from tests.harness.metrics import metric
from tests.harness.redis import wait_for
from tests.harness.registry import register_copy
from tests.harness.server import RunningServer, start_server


def _info(server: RunningServer) -> pb.ModelInfo:
    return server.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=5)


def _serving(server: RunningServer, version: int) -> bool:
    return _info(server).model_version == str(version)


def _flip_a_byte(version_dir: Path) -> None:
    """Change a weight file after registration, so its checksum no longer matches."""
    weights = version_dir / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))


def _promote(registry: FileRegistry, version: int) -> None:
    root = str(registry.root)
    run_cli("rbm-registry", "alias", "set", "rbm", "production", str(version), "--registry", root)


def test_promote_rollback_and_broken_versions_under_load(registry_copy: FileRegistry) -> None:
    registry = registry_copy
    good = register_copy(registry)
    truncated = register_copy(registry, "truncated")
    shapes = register_copy(registry, "shapes")
    checksum = register_copy(registry)
    _flip_a_byte(registry.get_version("rbm", checksum).path)
    root = str(registry.root)
    with (
        start_server(root, "--cache", "memory", "--metrics-port", "0") as server,
        Load(server) as load,
    ):
        wait_for(lambda: all(len(v) > 5 for v in load.versions))
        _promote(registry, good)
        wait_for(lambda: _serving(server, good))
        run_cli("rbm-registry", "rollback", "rbm", "--alias", "production", "--registry", root)
        wait_for(lambda: _serving(server, 1))
        for broken in (truncated, shapes, checksum):
            _promote(registry, broken)
            wait_for(lambda b=broken: _info(server).refused_version == str(b))
            assert _serving(server, 1), f"version {broken} is broken: keep the last good one"
            assert _info(server).last_reload_error
        time.sleep(0.3)
        failures = metric(server.metrics_url, "rbmrec_model_reload_failures_total")
    assert load.failures == []
    assert failures >= 3
    for seen in load.versions:
        assert set(seen) <= {"1", str(good)}, "a broken version never answered"
        switches = [b for a, b in itertools.pairwise(seen) if a != b]
        assert switches in ([str(good), "1"], []), f"switched 1 -> good -> 1: {switches}"
    assert server.log.count("refused") >= 3
