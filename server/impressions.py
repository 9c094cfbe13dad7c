"""Writes what each version recommended to whom into the impression stream, in the background.

Impressions feed the online evaluation (``rbm-ratings online``); they are best effort, not
acknowledged data. Recommend only puts one into an in-process buffer; a task flushes it
every ``flush_s`` in one pipelined round trip, so serving pays no Redis call per request.
Every part is bounded: the buffer drops (and counts) beyond ``max_buffered``, and each
XADD trims the stream to about ``max_entries`` entries and to the last ``retention_s``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from ratinglog.impressions import Impression, encode_impression, impressions_key

__all__ = ["ImpressionConfig", "ImpressionSink", "NoImpressions", "RedisImpressions"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImpressionConfig:
    """The bounds of the impression stream and of the buffer in front of it."""

    max_entries: int = 1_000_000
    retention_s: float = 7 * 86_400.0
    flush_s: float = 0.1
    max_buffered: int = 10_000

    def __post_init__(self) -> None:
        if self.max_entries < 0:
            raise ValueError(f"online max entries must be >= 0, got {self.max_entries}")
        if not self.retention_s > 0:
            raise ValueError(f"online retention must be > 0, got {self.retention_s}")


class ImpressionSink(Protocol):
    """Where Recommend answers go for the online evaluation."""

    dropped: int
    written: int

    def record(self, impression: Impression) -> None:
        """Keep ``impression`` for the next flush (never blocks, never raises)."""

    async def run(self) -> None:
        """Flush until cancelled."""


class NoImpressions:
    """The sink of a server without Redis (--cache memory, --online-max-entries 0)."""

    dropped = 0
    written = 0

    def record(self, impression: Impression) -> None:
        """Nothing is recorded."""

    async def run(self) -> None:
        """Nothing to flush."""


class RedisImpressions:
    """Appends impressions to ``{prefix}:impressions`` on the rating log's Redis."""

    def __init__(
        self,
        client: aioredis.Redis,
        prefix: str,
        config: ImpressionConfig,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.key = impressions_key(prefix)
        self.config = config
        self._clock = clock
        self._buffer: list[Impression] = []
        self.dropped = 0  # lost to a full buffer or an unreachable Redis
        self.written = 0

    def record(self, impression: Impression) -> None:
        """Keep ``impression`` for the next flush; drop it if the buffer is full."""
        if len(self._buffer) >= self.config.max_buffered:
            self.dropped += 1
            return
        self._buffer.append(impression)

    async def run(self, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        """Flush every ``flush_s`` until cancelled; a last flush on the way out."""
        try:
            while True:
                await sleep(self.config.flush_s)
                await self.flush()
        finally:
            await asyncio.shield(self.flush())

    async def flush(self) -> None:
        """Write the buffer in one pipelined round trip; on failure drop it (counted)."""
        batch, self._buffer = self._buffer, []
        if not batch:
            return
        # MINID: entries older than the retention go; MAXLEN: and at most max_entries stay.
        # Both approximate ("~"), so Redis trims whole nodes, cheaply.
        oldest_ms = int((self._clock() - self.config.retention_s) * 1000)
        pipe = self.client.pipeline(transaction=False)
        for impression in batch:
            pipe.xadd(
                self.key,
                encode_impression(impression),  # type: ignore[arg-type]
                maxlen=self.config.max_entries,
                approximate=True,
            )
        pipe.xtrim(self.key, minid=f"{max(oldest_ms, 0)}-0", approximate=True)
        try:
            await pipe.execute()
            self.written += len(batch)
        except (RedisError, OSError) as exc:
            self.dropped += len(batch)
            log.warning("%d impressions dropped: Redis refused them: %s", len(batch), exc)
