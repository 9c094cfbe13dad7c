"""Promoting a second version: the registry CLI reflects it and the server swaps to it."""

from __future__ import annotations

import json
import time
from pathlib import Path

from rbm.checkpoint import load_checkpoint, save_checkpoint
from rbmrec.v1 import recommender_pb2 as pb
from registry.records import VersionMeta
from tests.harness.cli import TrainedModel, run_cli
from tests.harness.registry import copy_registry
from tests.harness.server import start_server


def _registry_json(root: Path, *args: str) -> object:
    return json.loads(run_cli("rbm-registry", "--registry", str(root), "--json", *args).stdout)


def test_promoting_a_second_version(trained: TrainedModel, tmp_path: Path) -> None:
    registry = copy_registry(trained, tmp_path)
    root = registry.root
    first = registry.get_version("rbm", 1)
    ckpt = load_checkpoint(first.path)

    with start_server(root, "--cache", "memory") as running:
        assert running.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=5).model_version == "1"
        second = registry.register(
            "rbm",
            lambda d: save_checkpoint(ckpt, d),
            VersionMeta(
                metrics=first.meta.metrics,
                params=first.meta.params,
                data_fingerprint=first.meta.data_fingerprint,
                parent_version=1,
            ),
        )
        assert second.version == 2
        run_cli(
            "rbm-registry",
            "--registry",
            str(root),
            "promote",
            "rbm",
            "2",
            "--reason",
            "second version",
        )

        listed = _registry_json(root, "list", "rbm")
        assert isinstance(listed, list)
        assert {v["version"]: v["aliases"] for v in listed} == {1: [], 2: ["production"]}
        shown = _registry_json(root, "show", "rbm", "production")
        assert isinstance(shown, dict)
        assert shown["version"] == 2 and shown["aliases"] == ["production"]
        assert Path(shown["path"]) == second.path

        deadline = time.monotonic() + 30
        version = ""
        while time.monotonic() < deadline and version != "2":
            version = running.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=5).model_version
            time.sleep(0.1)
        assert version == "2", "the server follows the production alias"
        reply = running.stub.Recommend(pb.RecommendRequest(user_id=1, n=3), timeout=5)
        assert reply.model_version == "2"
