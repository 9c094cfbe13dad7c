"""The hidden-state cache on a plain Redis and on a real Redis Cluster of three masters.

The cluster is three ``redis-server --cluster-enabled yes`` processes of this module's own,
joined by ``redis-cli --cluster create``. Each cache test runs against it and against the
session's plain Redis: many users spread over the slots in one batch (no CROSSSLOT), the
TTL, a corrupt value, and the fallback to memory while the store is down, started late.
A real ``rbm-serve`` then keeps its cache in the cluster and its rating log in plain Redis.
"""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
import torch
from redis.exceptions import ClusterCrossSlotError, MovedError
from torch import Tensor

from rbmrec.v1 import recommender_pb2 as pb
from server.cache_client import CACHE_ERRORS, connect_cache
from server.hidden_cache import CacheKey, RedisHiddenCache
from server.main import ServerConfig
from tests.harness.calls import recommend, update
from tests.harness.cli import REDIS_URL, TrainedModel
from tests.harness.metrics import metric
from tests.harness.redis import OwnRedis, free_port, wait_for
from tests.harness.server import start_server

PLAIN, CLUSTER = "redis", "redis cluster"
HIDDEN = 16  # hidden units of the states stored here; the cache does not care
USERS = range(1, 301)  # 300 keys: about 100 on each master


class OwnCluster:
    """Three redis-server masters of the test's own on free loopback ports, as one cluster."""

    def __init__(self, tmp: Path, masters: int = 3) -> None:
        ports: list[int] = []
        while len(ports) < 2 * masters:  # a client port and a cluster bus port per node
            port = free_port()
            if port not in ports:
                ports.append(port)
        self.ports, self.bus_ports = ports[:masters], ports[masters:]
        self.dir = tmp
        self.procs: list[subprocess.Popen[bytes]] = []
        self.created = False

    @property
    def url(self) -> str:
        """The first node's URL: any node seeds a cluster client."""
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def nodes(self) -> list[redis.Redis]:
        """A plain client of each node."""
        return [redis.Redis(host="127.0.0.1", port=p) for p in self.ports]

    def start(self) -> None:
        """Start the nodes; the first time, join them and spread the slots over them."""
        for port, bus in zip(self.ports, self.bus_ports, strict=True):
            argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1"]
            argv += ["--cluster-enabled", "yes", "--cluster-port", str(bus)]
            argv += ["--cluster-config-file", str(self.dir / f"nodes-{port}.conf")]
            argv += ["--save", "", "--appendonly", "no", "--dir", str(self.dir)]
            self.procs.append(
                subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            )
        for node in self.nodes():
            wait_for(lambda n=node: _answers(n), 10)
            node.close()
        if not self.created:  # a restart finds its nodes-PORT.conf and rejoins by itself
            create = ["redis-cli", "--cluster", "create"]
            create += [f"127.0.0.1:{p}" for p in self.ports]
            subprocess.run(
                [*create, "--cluster-replicas", "0", "--cluster-yes"],
                check=True,
                capture_output=True,
                timeout=60,
            )
            self.created = True
        wait_for(self._ok, 30)

    def _ok(self) -> bool:
        nodes = self.nodes()
        try:
            return all(n.execute_command("CLUSTER INFO")["cluster_state"] == "ok" for n in nodes)
        finally:
            for n in nodes:
                n.close()

    def stop(self) -> None:
        """Shut every node down (SIGTERM)."""
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            proc.wait(10)
        self.procs = []


def _answers(node: redis.Redis) -> bool:
    try:
        return bool(node.ping())
    except redis.ConnectionError:
        return False


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnCluster]:
    """A Redis Cluster of three masters for this module, stopped after it."""
    own = OwnCluster(tmp_path_factory.mktemp("redis-cluster"))
    try:
        own.start()
        yield own
    finally:
        own.stop()


@dataclass(frozen=True)
class Store:
    """Where a test's cache lives: its URL, its key prefix, and clients to look inside."""

    kind: str
    url: str
    prefix: str
    nodes: list[redis.Redis]  # every master (the one server for plain Redis)

    def node_of(self, key: str) -> redis.Redis:
        """The node that holds ``key``."""
        for node in self.nodes:
            try:
                node.exists(key)
                return node
            except MovedError:  # another master has its slot
                continue
        raise AssertionError(f"no node holds the slot of {key}")


@pytest.fixture(params=[PLAIN, CLUSTER])
def store(request: pytest.FixtureRequest, redis_prefix: str) -> Iterator[Store]:
    """Each cache test twice: on the session's plain Redis and on the module's cluster."""
    prefix = f"{redis_prefix}:cache-{uuid.uuid4().hex[:8]}"
    if request.param == PLAIN:
        nodes = [redis.Redis.from_url(REDIS_URL)]
        url = REDIS_URL
    else:
        own: OwnCluster = request.getfixturevalue("cluster")
        nodes, url = own.nodes(), own.url
    yield Store(request.param, url, prefix, nodes)
    for node in nodes:
        for key in node.scan_iter(f"{prefix}:*"):
            node.delete(key)
        node.close()


def _keys(users: Sequence[int]) -> list[CacheKey]:
    return [CacheKey("rbm", "7", u, "") for u in users]


def _state(user: int) -> Tensor:
    return torch.arange(HIDDEN, dtype=torch.float32) + user  # (F,) one user's own values


def _same(got: Sequence[Tensor | None], users: Sequence[int]) -> bool:
    return all(g is not None and torch.equal(g, _state(u)) for g, u in zip(got, users, strict=True))


def test_connect_tells_a_cluster_from_a_plain_redis(store: Store) -> None:
    async def main() -> str | None:
        client = await connect_cache(store.url)
        try:
            await client.ping()
            return client.kind
        finally:
            await client.aclose()

    assert asyncio.run(main()) == store.kind


def test_a_batch_of_users_round_trips_over_every_slot_without_crossslot(store: Store) -> None:
    keys = _keys(USERS)

    async def main() -> tuple[list[Tensor | None], list[Tensor | None], RedisHiddenCache]:
        cache = RedisHiddenCache(await connect_cache(store.url), prefix=store.prefix)
        try:
            before = await cache.get_many(keys)  # all absent
            await cache.set_many([(k, _state(k.user_id)) for k in keys])
            return before, await cache.get_many(keys), cache
        finally:
            await cache.close()

    before, after, cache = asyncio.run(main())
    assert before == [None] * len(keys)
    assert _same(after, USERS)
    assert (cache.stats.hits, cache.stats.misses, cache.stats.errors) == (len(keys), len(keys), 0)
    assert cache.backend == "redis"
    names = [k.redis_key(store.prefix) for k in keys]
    held = [sum(1 for n in names if store.node_of(n) is node) for node in store.nodes]
    assert sum(held) == len(keys) and all(held), f"keys per node: {held}"
    if store.kind == CLUSTER:  # the same batch as one plain MGET is refused
        with pytest.raises(ClusterCrossSlotError):
            store.nodes[0].mget(names)


def test_values_are_stored_with_the_ttl(store: Store) -> None:
    keys = _keys([1, 2, 3])

    async def main() -> None:
        cache = RedisHiddenCache(await connect_cache(store.url), ttl_s=600, prefix=store.prefix)
        try:
            await cache.set_many([(k, _state(k.user_id)) for k in keys])
        finally:
            await cache.close()

    asyncio.run(main())
    for key in keys:
        name = key.redis_key(store.prefix)
        assert 590 < int(store.node_of(name).ttl(name)) <= 600, name


def test_a_corrupt_value_is_a_miss(store: Store) -> None:
    good, bad = _keys([11, 12])
    name = bad.redis_key(store.prefix)
    store.node_of(name).set(name, b"\x00" * 5)  # not a whole number of float32

    async def main() -> tuple[list[Tensor | None], RedisHiddenCache]:
        cache = RedisHiddenCache(await connect_cache(store.url), prefix=store.prefix)
        try:
            await cache.set_many([(good, _state(11))])
            return await cache.get_many([good, bad]), cache
        finally:
            await cache.close()

    (got_good, got_bad), cache = asyncio.run(main())
    assert got_good is not None and torch.equal(got_good, _state(11))
    assert got_bad is None
    assert (cache.stats.hits, cache.stats.misses, cache.stats.errors) == (1, 1, 0)


@pytest.mark.parametrize("kind", [PLAIN, CLUSTER])
def test_down_at_start_then_up_then_down_the_cache_falls_back_and_returns(
    kind: str, tmp_path: Path
) -> None:
    own = OwnCluster(tmp_path) if kind == CLUSTER else OwnRedis(tmp_path)
    keys = _keys(range(1, 41))
    items = [(k, _state(k.user_id)) for k in keys]

    async def main() -> None:
        client = await connect_cache(own.url)  # nothing listens yet: no error, kind unknown
        assert client.kind is None and client.error is not None
        cache = RedisHiddenCache(client, prefix="fallback", retry_after_s=0.2)
        try:
            await cache.set_many(items)  # kept in process
            assert (cache.backend, cache.stats.errors) == ("memory", 1)
            assert _same(await cache.get_many(keys), range(1, 41))
            await asyncio.to_thread(own.start)
            await asyncio.sleep(0.3)  # past the back-off: Redis is asked again
            assert cache.backend == "redis"
            await cache.set_many(items)
            assert _same(await cache.get_many(keys), range(1, 41))
            assert (client.kind, cache.stats.errors) == (kind, 1)
            await asyncio.to_thread(own.stop)
            assert _same(await cache.get_many(keys), range(1, 41))  # the in-process copy
            assert (cache.backend, cache.stats.errors) == ("memory", 2)
        finally:
            await cache.close()
            own.stop()

    asyncio.run(main())


def test_a_cluster_call_fails_as_a_cache_error_while_it_is_down(tmp_path: Path) -> None:
    own = OwnCluster(tmp_path)
    own.start()

    async def main() -> None:
        client = await connect_cache(own.url)
        try:
            assert client.kind == CLUSTER
            own.stop()
            with pytest.raises(CACHE_ERRORS):
                await client.mget([k.redis_key("down") for k in _keys(range(1, 11))])
        finally:
            await client.aclose()

    try:
        asyncio.run(main())
    finally:
        own.stop()


def test_a_database_number_a_cluster_lacks_decides_nothing(cluster: OwnCluster) -> None:
    async def main() -> None:
        client = await connect_cache(cluster.url.removesuffix("/0") + "/1")
        try:  # refused by the node: no client chosen, every call fails until fixed
            assert client.kind is None and "SELECT" in str(client.error)
            with pytest.raises(CACHE_ERRORS):
                await client.mget(["any"])
        finally:
            await client.aclose()

    asyncio.run(main())


def test_the_cache_url_is_checked_and_never_printed_whole() -> None:
    with pytest.raises(ValueError, match=r"--cache-redis-url http://:\*\*\*@h/0 is not a Redis"):
        ServerConfig(cache_redis_url="http://:hunter2@h/0")
    ServerConfig(cache="memory", cache_redis_url="http://unused")  # no Redis: not checked


def _ids(reply: pb.RecommendResponse) -> list[int]:
    return [m.movie_id for m in reply.movies]


def test_a_server_caches_in_the_cluster_and_logs_ratings_in_plain_redis(
    trained: TrainedModel, redis_prefix: str, cluster: OwnCluster
) -> None:
    prefix = f"{redis_prefix}:cluster-e2e"
    users = range(1, 81)
    flags = ("--redis-prefix", prefix, "--cache-redis-url", cluster.url, "--metrics-port", "0")
    with start_server(trained.registry, *flags) as running:
        first = {u: _ids(recommend(running.stub, u)) for u in users}
        hits = metric(running.metrics_url, "rbmrec_hidden_cache_total", result="hit")
        again = {u: _ids(recommend(running.stub, u)) for u in users}
        hits = metric(running.metrics_url, "rbmrec_hidden_cache_total", result="hit") - hits
        user, movie = 5, first[5][0]  # the top movie is unrated, by definition
        assert update(running, user, movie, 1.0).accepted
        after = _ids(recommend(running.stub, user, 1000))
        errors = metric(running.metrics_url, "rbmrec_hidden_cache_total", result="error")
        backend = metric(running.metrics_url, "rbmrec_cache_backend", backend="redis")
    assert running.process.returncode == 0, running.log
    assert again == first
    assert hits >= len(users), f"{hits} hits for {len(users)} users asked again"
    assert movie not in after, "a rated movie is no longer recommended"
    assert (errors, backend) == (0, 1.0)
    where = f"cache: redis cluster at {cluster.url}; rating log at {REDIS_URL}"
    assert where in running.stdout, running.stdout

    nodes = cluster.nodes()
    try:
        in_cluster = [len(list(n.scan_iter(f"{prefix}:rbm:h:*"))) for n in nodes]
        assert sum(in_cluster) > len(users) and all(in_cluster), in_cluster
        assert not any(any(n.scan_iter(f"{prefix}:ratings")) for n in nodes), "log in the cluster"
    finally:
        for n in nodes:
            n.close()
    plain = redis.Redis.from_url(REDIS_URL)
    try:
        assert not any(plain.scan_iter(f"{prefix}:*:h:*")), "no hidden state in the log's Redis"
        assert int(plain.xlen(f"{prefix}:ratings")) == 1
    finally:
        plain.close()


def test_a_cache_password_is_never_printed(
    trained: TrainedModel, redis_prefix: str, cluster: OwnCluster
) -> None:
    secret = f"pw-{uuid.uuid4().hex}"  # the cluster requires none; redis-py goes on without
    url = cluster.url.replace("redis://", f"redis://:{secret}@")
    flags = ("--redis-prefix", f"{redis_prefix}:cluster-pw", "--cache-redis-url", url)
    with start_server(trained.registry, *flags, "--log-level", "DEBUG") as running:
        assert len(recommend(running.stub, 1).movies) == 10
    assert f"cache: redis cluster at redis://:***@127.0.0.1:{cluster.ports[0]}/0" in running.stdout
    assert "'cache_redis_url': 'redis://:***@" in running.output, "the config line"
    assert secret not in running.output
