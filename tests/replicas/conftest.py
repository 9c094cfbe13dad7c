"""Two rbm-serve processes sharing one registry and one Redis, as two pods would."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from registry.store import FileRegistry
from tests.harness.cli import REDIS_URL, TrainedModel
from tests.harness.registry import copy_registry
from tests.harness.server import RunningServer, start_server


@dataclass
class Replicas:
    """Replica A and B, the registry they share and their Redis key prefix."""

    a: RunningServer
    b: RunningServer
    registry: FileRegistry
    prefix: str


@pytest.fixture
def replicas(trained: TrainedModel, tmp_path: Path) -> Iterator[Replicas]:
    """Start two servers on a copy of the session's registry with a fresh Redis prefix."""
    registry = copy_registry(trained, tmp_path)
    prefix = f"rbmrec-replicas-{uuid.uuid4().hex[:8]}"
    shared = ("--redis-prefix", prefix)
    with contextlib.ExitStack() as stack:
        a = stack.enter_context(start_server(registry.root, *shared))
        b = stack.enter_context(start_server(registry.root, *shared))
        yield Replicas(a, b, registry, prefix)
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(f"{prefix}:*"))
    if keys:
        client.delete(*keys)
    client.close()
