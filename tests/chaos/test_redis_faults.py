"""Redis killed (SIGKILL) and restarted while clients load the server."""

from __future__ import annotations

import time

import redis

from registry.store import FileRegistry
from tests.chaos.updaters import Updater
from tests.harness.calls import Load, recommend
from tests.harness.redis import OwnRedis, wait_for
from tests.harness.server import start_server

USERS = list(range(1, 11))


def _logged(url: str) -> list[tuple[int, int, float]]:
    client = redis.Redis.from_url(url)
    entries = client.xrange("rbmrec:ratings")
    client.close()
    return [(int(f[b"user"]), int(f[b"movie"]), float(f[b"rating"])) for _, f in entries]


def test_redis_killed_under_load_loses_no_acknowledged_update(
    registry_copy: FileRegistry, own_redis: OwnRedis
) -> None:
    with (
        start_server(registry_copy.root, "--redis-url", own_redis.url) as server,
        Load(server) as load,
        Updater(server, USERS) as updater,
    ):
        wait_for(lambda: len(updater.acked) >= 5)
        own_redis.kill()
        acked_before = len(updater.acked)
        wait_for(lambda: updater.refused["UNAVAILABLE"] >= 5)
        answered = sum(map(len, load.versions))
        wait_for(lambda: sum(map(len, load.versions)) > answered + 50)  # answers without Redis
        acked_while_down = len(updater.acked) - acked_before
        own_redis.start()  # same append-only file
        wait_for(lambda: len(updater.acked) >= acked_before + 5)
        time.sleep(0.2)
        updater.stop.set()
        updater.thread.join(30)
        rated: dict[int, set[int]] = {u: set() for u in USERS}
        for user, movie, _ in updater.acked:
            rated[user].add(movie)
        for user in USERS:
            shown = {m.movie_id for m in recommend(server.stub, user, 1000).movies}
            assert not shown & rated[user], f"user {user}: an acknowledged rating is not applied"
    assert load.failures == [], "Recommend must answer every request while Redis is away"
    assert acked_while_down <= 1, "at most the update in flight at the kill may be acknowledged"
    assert set(updater.refused) == {"UNAVAILABLE"}, updater.refused
    logged = _logged(own_redis.url)
    missing = set(updater.acked) - set(logged)
    assert not missing, f"acknowledged but not in the rating log: {sorted(missing)}"
