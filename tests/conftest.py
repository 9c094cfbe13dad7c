"""Shared fixtures: real MovieLens data, a model trained once per session, a real Redis."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


def _movielens() -> Path:
    for candidate in (os.environ.get("RBMREC_DATA"), ROOT.parent / "shared" / "movielens"):
        if candidate and (Path(candidate) / "ml-100k" / "u.data").is_file():
            return Path(candidate)
    raise RuntimeError(
        "MovieLens ml-100k not found: set $RBMREC_DATA to a folder holding ml-100k/ "
        "(the shared copy lives in ../shared/movielens)"
    )


@pytest.fixture(scope="session")
def movielens() -> Path:
    """The folder that holds ml-100k/ (and ml-latest-small/)."""
    return _movielens()


@dataclass(frozen=True)
class TrainedModel:
    """A registry holding one model trained on ml-100k u1.base, promoted to production."""

    registry: Path
    report: dict[str, object]


def run_cli(
    name: str, *args: str, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run one of the project's console scripts and capture its output."""
    proc = subprocess.run(
        [str(BIN / name), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(env or {})},
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{name} {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


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
