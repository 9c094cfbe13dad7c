"""Fixtures every test folder shares: real MovieLens data, a model trained once per session
through rbm-train, the real Redis under a prefix of the session's own, a Redis of a test's
own, and a real server of the trained model. Helpers live in tests/harness."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.harness.cli import REDIS_URL, TrainedModel, movielens_dir, train_model
from tests.harness.redis import OwnRedis, delete_keys
from tests.harness.server import RunningServer, start_server


@pytest.fixture(scope="session")
def movielens() -> Path:
    """The folder that holds ml-100k/ (and ml-latest-small/)."""
    return movielens_dir()


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory, movielens: Path) -> TrainedModel:
    """Train once per session through the real CLI, as an operator would (ml-100k u1)."""
    registry = tmp_path_factory.mktemp("registry")
    return TrainedModel(registry, train_model(registry, data_dir=movielens, epochs=20))


@pytest.fixture(scope="session")
def redis_prefix() -> Iterator[str]:
    """A key prefix of this test session's own on the real Redis; its keys are removed after."""
    client = redis.Redis.from_url(REDIS_URL)
    client.ping()  # .ci/run starts a Redis; fail loudly if none answers
    client.close()
    prefix = f"rbmrec-test-{uuid.uuid4().hex[:8]}"
    yield prefix
    delete_keys(REDIS_URL, prefix)


@pytest.fixture
def prefix() -> Iterator[str]:
    """A Redis key prefix of this test's own (its rating log, impressions, cache); its keys
    are removed after the test."""
    name = f"rbmrec-t-{uuid.uuid4().hex[:8]}"
    yield name
    delete_keys(REDIS_URL, name)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    """A redis-server of the test's own (append-only), stopped after the test."""
    redis_server = OwnRedis(tmp_path)
    redis_server.start()
    yield redis_server
    redis_server.stop()


@pytest.fixture(scope="module")
def server(trained: TrainedModel, redis_prefix: str) -> Iterator[RunningServer]:
    """A server of the session's trained model, with the Redis cache and rating log."""
    with start_server(trained.registry, "--redis-prefix", redis_prefix) as running:
        yield running
    assert running.process.returncode == 0, "SIGTERM should shut the server down cleanly"
