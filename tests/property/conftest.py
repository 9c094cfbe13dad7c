"""One real rbm-serve per test module, the facts of the model it serves, health after each test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from registry.store import FileRegistry
from tests.harness.cli import ROOT, TrainedModel
from tests.harness.server import RunningServer, start_server
from tests.property.support import Catalogue, assert_healthy, tracebacks_through

OUR_CODE = [ROOT / package for package in ("server", "rbm", "registry", "ratinglog")]


@pytest.fixture(scope="module")
def server(
    trained: TrainedModel, redis_prefix: str, request: pytest.FixtureRequest
) -> Iterator[RunningServer]:
    """The session's model served with Redis, under a key prefix of this module's own.

    A prefix per module keeps one module's streamed ratings out of another's answers (a
    server replays the whole rating log when it starts); the session fixture removes them.
    """
    module = request.module.__name__.rsplit(".", 1)[-1]
    with start_server(trained.registry, "--redis-prefix", f"{redis_prefix}:{module}") as running:
        yield running
    assert running.process.returncode == 0, "SIGTERM should shut the server down cleanly"
    leaked = tracebacks_through(running.log, OUR_CODE)
    assert not leaked, f"an exception escaped our code into grpc:\n{leaked[0]}"


@pytest.fixture(scope="session")
def catalogue(trained: TrainedModel) -> Catalogue:
    """What the served version knows: movies, rating levels, each user's training ratings."""
    return Catalogue.load(FileRegistry(trained.registry))


@pytest.fixture(autouse=True)
def stays_healthy(server: RunningServer) -> Iterator[None]:
    """Whatever a test sent, the server still answers health checks and Recommend after it."""
    yield
    assert_healthy(server)
