"""A real rbm-serve process on a free loopback port."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import TrainedModel
from tests.harness.server import RunningServer, start_server
from tests.server.support import OwnRedis


@pytest.fixture(scope="module")
def server(trained: TrainedModel, redis_prefix: str) -> Iterator[RunningServer]:
    """A server of the session's trained model, with the Redis cache and rating log."""
    with start_server(trained.registry, "--redis-prefix", redis_prefix) as running:
        yield running
    assert running.process.returncode == 0, "SIGTERM should shut the server down cleanly"


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    """A redis-server of the test's own (append-only), stopped after the test."""
    redis_server = OwnRedis(tmp_path)
    redis_server.start()
    yield redis_server
    redis_server.stop()
