"""Per-user hidden pre-activations, cached by model version, user and log position.

A user's position is the id of the last rating-log entry applied to it: a value computed
before an update can never be read after it (an update writes the value under the new
entry's id: old + one weight row), a stale write lands under a key nobody asks for again,
and since entry ids are never reused, trimming the log cannot alias two rating sets.

``RedisHiddenCache`` keeps a small in-process cache beside Redis and falls back to it while
Redis is unreachable, trying Redis again after a back-off. Its Redis may be a Redis Cluster
(see ``server.cache_client``): keys spread over the slots, and no command spans two.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import redis.asyncio as aioredis
import torch
from redis.asyncio.cluster import RedisCluster
from torch import Tensor

from server.cache_client import CACHE_ERRORS, CacheClient

__all__ = ["CacheKey", "CacheStats", "HiddenCache", "MemoryHiddenCache", "RedisHiddenCache"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CacheKey:
    """Which hidden state: model, version, user and the user's log position."""

    model: str
    version: str
    user_id: int
    position: str  # the last rating-log entry applied to the user; "" for none

    def redis_key(self, prefix: str) -> str:
        """The Redis key for this state."""
        position = self.position or "base"
        return f"{prefix}:{self.model}:h:{self.version}:{self.user_id}:{position}"


@dataclass
class CacheStats:
    """Counters for metrics and tests."""

    hits: int = 0
    misses: int = 0
    errors: int = 0

    def count(self, values: Sequence[Tensor | None]) -> None:
        """Count the hits (values) and misses (None) of one lookup."""
        hits = sum(v is not None for v in values)
        self.hits += hits
        self.misses += len(values) - hits


class HiddenCache(Protocol):
    """Where hidden pre-activations are kept between requests."""

    stats: CacheStats

    @property
    def backend(self) -> str:
        """ "redis" or "memory": where values are kept right now."""
        ...

    async def get_many(self, keys: Sequence[CacheKey]) -> list[Tensor | None]:
        """Values for ``keys`` (None where absent), in one round trip."""
        ...

    async def set_many(self, items: Sequence[tuple[CacheKey, Tensor]]) -> None:
        """Store values; failures are logged, never raised."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


def _host(t: Tensor) -> Tensor:
    # States cross from the device in the engine's one copy per batch (DeviceLink); one
    # arriving here on a device would be a hidden, blocking copy on the event loop.
    if t.device.type != "cpu":
        raise ValueError(f"hidden states are cached from the host, got one on {t.device}")
    return t.detach()


def _encode(t: Tensor) -> bytes:
    return _host(t).to(torch.float32).numpy().tobytes()


def _decode(data: bytes | str) -> Tensor | None:
    if isinstance(data, str):
        return None  # only a client with decode_responses=True returns str
    if len(data) % 4:
        return None  # corrupt: treat as a miss (callers also check the length)
    return torch.from_numpy(np.frombuffer(data, dtype=np.float32).copy())


class MemoryHiddenCache:
    """A bounded LRU in this process."""

    def __init__(self, capacity: int = 100_000) -> None:
        if capacity < 1:
            raise ValueError("cache capacity must be >= 1")
        self.capacity = capacity
        self.stats = CacheStats()
        self._data: OrderedDict[CacheKey, Tensor] = OrderedDict()

    @property
    def backend(self) -> str:
        """Always "memory"."""
        return "memory"

    def __len__(self) -> int:
        return len(self._data)

    async def get_many(self, keys: Sequence[CacheKey]) -> list[Tensor | None]:
        """Look up ``keys``."""
        out: list[Tensor | None] = []
        for key in keys:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
            out.append(value)
        self.stats.count(out)
        return out

    async def set_many(self, items: Sequence[tuple[CacheKey, Tensor]]) -> None:
        """Store values, evicting the least recently used beyond capacity."""
        for key, value in items:
            self._data[key] = _host(value)
            self._data.move_to_end(key)
        while len(self._data) > self.capacity:
            self._data.popitem(last=False)

    async def close(self) -> None:
        """Nothing to release."""


class RedisHiddenCache:
    """Hidden states in Redis as float32 bytes with a TTL; in-process while Redis is away."""

    def __init__(
        self,
        client: CacheClient | aioredis.Redis | RedisCluster,
        ttl_s: int = 86_400,
        prefix: str = "rbmrec",
        retry_after_s: float = 1.0,
        fallback: MemoryHiddenCache | None = None,
    ) -> None:
        self.client = client if isinstance(client, CacheClient) else CacheClient(client)
        self.prefix = prefix
        self.ttl_s = ttl_s
        self.retry_after_s = retry_after_s
        self.fallback = fallback or MemoryHiddenCache()
        self.stats = self.fallback.stats  # one set of counters, whichever store answers
        self._down_until = 0.0

    @property
    def backend(self) -> str:
        """ "redis", or "memory" while Redis is being backed off."""
        return "memory" if time.monotonic() < self._down_until else "redis"

    def _failed(self, exc: Exception) -> None:
        if self.backend == "redis":
            log.warning("redis unreachable, using the in-process cache: %s", exc)
        self.stats.errors += 1
        self._down_until = time.monotonic() + self.retry_after_s

    async def get_many(self, keys: Sequence[CacheKey]) -> list[Tensor | None]:
        """MGET all keys at once (per slot on a cluster); in process while Redis is down."""
        if not keys:
            return []
        if self.backend == "redis":
            try:
                raw = await self.client.mget([k.redis_key(self.prefix) for k in keys])
                values = [None if r is None else _decode(r) for r in raw]
                self.stats.count(values)
                return values
            except CACHE_ERRORS as exc:
                self._failed(exc)
        return await self.fallback.get_many(keys)

    async def set_many(self, items: Sequence[tuple[CacheKey, Tensor]]) -> None:
        """SET with a TTL in one pipeline; on failure keep them in process."""
        if not items:
            return
        if self.backend == "redis":
            try:
                encoded = [(key.redis_key(self.prefix), _encode(value)) for key, value in items]
                await self.client.set_many(encoded, self.ttl_s)
                return
            except CACHE_ERRORS as exc:
                self._failed(exc)
        await self.fallback.set_many(items)

    async def close(self) -> None:
        """Close the Redis connections."""
        await self.client.aclose()
