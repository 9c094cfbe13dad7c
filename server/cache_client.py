"""The hidden cache's Redis: a plain server or a Redis Cluster, told apart by asking it.

``--cache-redis-url`` takes the usual ``redis://`` and ``rediss://`` URLs for both kinds.
On first contact the server is asked ``INFO cluster``: ``cluster_enabled:1`` makes the same
URL the seed of a ``RedisCluster`` (any one node will do: the client learns the others and
sends each key to its slot's master), anything else keeps the plain client. Until some
server answers, every call asks again and fails as a call to a down Redis does, so a server
that starts before its cache Redis falls back to memory and picks the right client later.

A batch is one ``MGET`` on a plain Redis (one round trip) and, on a cluster, one ``MGET``
per slot sent as a pipeline (one round trip per master): never a cross-slot command.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import (
    NoPermissionError,
    RedisClusterException,
    RedisError,
    ResponseError,
)

__all__ = ["CACHE_ERRORS", "CacheClient", "connect_cache"]

# What a cache call can fail with. RedisCluster raises RedisClusterException, which is no
# RedisError, when no node answers or a slot has no master.
CACHE_ERRORS: tuple[type[Exception], ...] = (RedisError, RedisClusterException, OSError)
TIMEOUTS: dict[str, Any] = {"socket_timeout": 1.0, "socket_connect_timeout": 1.0}

Client = aioredis.Redis | RedisCluster


def _cluster_retry() -> Retry:
    # A lookup that waits on retries costs a batch more than a miss does: retry a failed
    # cluster call twice, briefly, not redis-py's ten times up to a second apart.
    return Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.1), retries=2)


class CacheClient:
    """Batched GET, and SET with a TTL, on a plain Redis or a Redis Cluster."""

    def __init__(self, client: Client, seed_url: str | None = None, **options: Any) -> None:
        """Calls go to ``client``; with ``seed_url`` (the URL of a plain ``client``) its server
        is first asked whether it is a cluster node, and a cluster is opened from that URL
        with ``options``."""
        if seed_url is not None and not isinstance(client, aioredis.Redis):
            raise ValueError("only a plain client can ask whether its server is a cluster node")
        self._client = client
        self._seed_url = seed_url  # set until the server has said what it is
        self._options = options
        self._probe: aioredis.Redis | None = None  # the plain client that asked, once replaced
        self._deciding = asyncio.Lock()
        self.error: Exception | None = None  # why the last first contact failed

    @property
    def kind(self) -> str | None:
        """ "redis" or "redis cluster"; None until a server has answered."""
        if self._seed_url is not None:
            return None
        return "redis cluster" if isinstance(self._client, RedisCluster) else "redis"

    async def connect(self) -> Client:
        """The client that takes the calls; asks the server what it is until one answers."""
        if self._seed_url is None:
            return self._client
        async with self._deciding:
            if self._seed_url is not None:  # not decided by a call this one waited for
                try:
                    await self._decide(self._seed_url)
                except CACHE_ERRORS as exc:
                    self.error = exc
                    raise
                self._seed_url, self.error = None, None
        return self._client

    async def _decide(self, url: str) -> None:
        assert isinstance(self._client, aioredis.Redis)
        try:
            info = await self._client.info("cluster")
        except ResponseError as exc:
            # INFO refused by an ACL or a proxy: no cluster node a cluster client could use.
            # Other refusals (SELECT of a database a cluster node lacks, ...) decide nothing.
            if isinstance(exc, NoPermissionError) or "unknown command" in str(exc):
                return
            raise
        if info.get("cluster_enabled"):
            self._probe = self._client  # closed with the rest: it may be shared
            options = {"retry": _cluster_retry(), **self._options}
            self._client = RedisCluster.from_url(url, **options)

    async def ping(self) -> None:
        """Raise unless the server (any node of a cluster) answers."""
        await (await self.connect()).ping()

    async def mget(self, keys: Sequence[str]) -> list[bytes | str | None]:
        """The values of ``keys`` (None where absent), in order."""
        client = self._client if self._seed_url is None else await self.connect()
        if isinstance(client, RedisCluster):
            return list(await client.mget_nonatomic(keys))
        return list(await client.mget(keys))

    async def set_many(self, items: Sequence[tuple[str, bytes]], ttl_s: int) -> None:
        """SET each key with a TTL of ``ttl_s`` in one pipeline (no transaction: no slot rule)."""
        client = self._client if self._seed_url is None else await self.connect()
        async with client.pipeline(transaction=False) as pipe:
            for key, value in items:
                pipe.set(key, value, ex=ttl_s)
            await pipe.execute()

    async def aclose(self) -> None:
        """Close the connections."""
        await self._client.aclose()
        if self._probe is not None:
            await self._probe.aclose()


async def connect_cache(url: str, shared: aioredis.Redis | None = None) -> CacheClient:
    """The cache's client for the Redis or Redis Cluster at ``url``; never raises when it is
    down (``kind`` stays None and calls fail until it answers).

    ``shared``: a plain client of the same URL to use rather than a new one (the rating
    log's, when one Redis holds both); the cache closes it with its own.
    """
    client = CacheClient(shared or aioredis.from_url(url, **TIMEOUTS), url, **TIMEOUTS)
    with contextlib.suppress(*CACHE_ERRORS):  # kept in client.error; each call asks again
        await client.connect()
    return client
