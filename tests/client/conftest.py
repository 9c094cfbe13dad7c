"""The server the client tests call: the session's model, a token, a Redis prefix of their own."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.harness.cli import TrainedModel
from tests.harness.server import RunningServer, start_server

TOKEN = "client-tests-token"


@pytest.fixture(scope="package")
def served(
    trained: TrainedModel, redis_prefix: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    """A server that requires TOKEN, with rating updates on (the Redis cache)."""
    token_file = tmp_path_factory.mktemp("client-token") / "token"
    token_file.write_text(TOKEN + "\n", encoding="utf-8")
    # rate() appends to PREFIX:ratings. Under the session's prefix, whose keys the session
    # removes, yet apart from what other folders' servers log there.
    prefix = f"{redis_prefix}:client"
    with start_server(
        trained.registry, "--redis-prefix", prefix, "--auth-token-file", str(token_file)
    ) as running:
        yield running
