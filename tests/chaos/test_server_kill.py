"""The server killed with SIGKILL after N acknowledged updates, then started again."""

from __future__ import annotations

import signal

import numpy as np
import redis

from registry.store import FileRegistry
from tests.harness.calls import recommend, update
from tests.harness.redis import OwnRedis
from tests.harness.server import start_server

N_UPDATES = 40
USERS = list(range(20, 28))


def test_acknowledged_updates_survive_a_killed_server(
    registry_copy: FileRegistry, own_redis: OwnRedis
) -> None:
    acked: list[tuple[int, int]] = []
    with start_server(registry_copy.root, "--redis-url", own_redis.url) as first:
        todo = {u: [m.movie_id for m in recommend(first.stub, u, 50).movies] for u in USERS}
        for i in range(N_UPDATES):
            user = USERS[i % len(USERS)]
            movie = todo[user].pop(0)
            assert update(first, user, movie, 5.0 if i % 2 else 1.0).accepted
            acked.append((user, movie))
        before = {u: recommend(first.stub, u, 30) for u in USERS}
        first.process.send_signal(signal.SIGKILL)
        first.process.wait(10)
    assert first.process.returncode == -signal.SIGKILL

    client = redis.Redis.from_url(own_redis.url)
    logged = [(int(f[b"user"]), int(f[b"movie"])) for _, f in client.xrange("rbmrec:ratings")]
    client.close()
    assert logged == acked, "every acknowledged update is in the log, in order"

    with start_server(registry_copy.root, "--redis-url", own_redis.url) as second:
        for user in USERS:
            after = recommend(second.stub, user, 30)
            rated = {m for u, m in acked if u == user}
            assert not rated & {m.movie_id for m in after.movies}
            # The replayed overlay gives exactly the answers the killed server gave.
            assert [m.movie_id for m in after.movies] == [m.movie_id for m in before[user].movies]
            np.testing.assert_allclose(
                [m.score for m in after.movies], [m.score for m in before[user].movies], atol=1e-5
            )
