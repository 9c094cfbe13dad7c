"""Streamed rating updates: a durable log (a Redis Stream) and the per-user overlay in memory.

An update is acknowledged only after the log has stored it; the overlay is rebuilt from the
log when the server starts, so an acknowledged update survives a restart.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError
from redis.typing import EncodableT, FieldT

from server.errors import Unavailable

__all__ = ["NoRatingLog", "RatingLog", "RatingRecord", "RedisRatingLog", "UserOverlay"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RatingRecord:
    """One rating in MovieLens ids."""

    user_id: int
    movie_id: int
    rating: float
    timestamp: int


class RatingLog(Protocol):
    """Where acknowledged updates are kept."""

    async def append(self, record: RatingRecord) -> str:
        """Store ``record`` durably; raise Unavailable if that cannot be done."""
        ...

    def read_all(self) -> AsyncIterator[RatingRecord]:
        """Every stored record, oldest first."""
        ...


class NoRatingLog:
    """The log of a server without Redis: it refuses every update rather than lose it."""

    async def append(self, record: RatingRecord) -> str:
        """Always refuses."""
        raise Unavailable("rating updates need Redis (the server runs with an in-process cache)")

    async def read_all(self) -> AsyncIterator[RatingRecord]:
        """Nothing was ever stored."""
        for _ in ():
            yield _


class RedisRatingLog:
    """A Redis Stream with one entry per update (fields user, movie, rating, ts)."""

    def __init__(self, client: aioredis.Redis, prefix: str = "rbmrec") -> None:
        self.client = client
        self.stream = f"{prefix}:ratings"

    async def append(self, record: RatingRecord) -> str:
        """XADD the record; raise Unavailable if Redis does not confirm it."""
        fields: dict[FieldT, EncodableT] = {
            "user": record.user_id,
            "movie": record.movie_id,
            "rating": repr(record.rating),
            "ts": record.timestamp,
        }
        try:
            entry_id = await self.client.xadd(self.stream, fields)
        except (RedisError, OSError) as exc:
            raise Unavailable(f"the rating log (Redis) is unreachable: {exc}") from exc
        return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)

    async def read_all(self, page: int = 10_000) -> AsyncIterator[RatingRecord]:
        """XRANGE through the whole stream in pages."""
        start = "-"
        while True:
            entries = await self.client.xrange(self.stream, min=start, count=page) or []
            for _entry_id, f in entries:
                if f is not None:
                    yield RatingRecord(
                        int(f[b"user"]), int(f[b"movie"]), float(f[b"rating"]), int(f[b"ts"])
                    )
            if len(entries) < page:
                return
            last = entries[-1][0]
            start = "(" + (last.decode() if isinstance(last, bytes) else str(last))


@dataclass
class UserOverlay:
    """Ratings streamed since training, per user, with a generation that counts updates."""

    ratings: dict[int, dict[int, float]] = field(default_factory=dict)
    generations: dict[int, int] = field(default_factory=dict)

    def get(self, user_id: int) -> tuple[dict[int, float], int]:
        """The user's streamed ratings {movie id: rating} and its generation."""
        return self.ratings.get(user_id, {}), self.generations.get(user_id, 0)

    def apply(self, record: RatingRecord) -> float | None:
        """Record a rating; return the rating it replaced, if any."""
        user = self.ratings.setdefault(record.user_id, {})
        previous = user.get(record.movie_id)
        user[record.movie_id] = record.rating
        self.generations[record.user_id] = self.generations.get(record.user_id, 0) + 1
        return previous

    async def replay(self, source: RatingLog) -> int:
        """Apply every record of ``source``; return how many."""
        count = 0
        async for record in source.read_all():
            self.apply(record)
            count += 1
        return count
