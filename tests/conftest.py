"""Shared fixtures: real MovieLens data, a model trained once per session, a real Redis."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.harness.cli import BIN, REDIS_URL, ROOT, TrainedModel, movielens_dir, run_cli

__all__ = ["BIN", "REDIS_URL", "ROOT", "TrainedModel", "run_cli"]  # old import paths, until moved


@pytest.fixture(scope="session")
def movielens() -> Path:
    """The folder that holds ml-100k/ (and ml-latest-small/)."""
    return movielens_dir()


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory, movielens: Path) -> TrainedModel:
    """Train once per session through the real CLI, as an operator would."""
    registry = tmp_path_factory.mktemp("registry")
    proc = run_cli(
        "rbm-train",
        "--dataset",
        "ml-100k",
        "--data-dir",
        str(movielens),
        "--split",
        "u1",
        "--epochs",
        "20",
        "--promote",
        "--json",
        "--quiet",
        "--registry",
        str(registry),
    )
    return TrainedModel(registry, json.loads(proc.stdout))


@pytest.fixture(scope="session")
def redis_prefix() -> Iterator[str]:
    """A key prefix of this test session's own on the real Redis; its keys are removed after."""
    client = redis.Redis.from_url(REDIS_URL)
    client.ping()  # .ci/run starts a Redis; fail loudly if none answers
    prefix = f"rbmrec-test-{uuid.uuid4().hex[:8]}"
    yield prefix
    keys = list(client.scan_iter(f"{prefix}:*"))
    if keys:
        client.delete(*keys)
    client.close()
