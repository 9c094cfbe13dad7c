"""Streamed rating updates: a durable log (a Redis Stream) and the per-user overlay in memory.

An update is acknowledged only after the log has stored it. The log is the one order every
replica agrees on: each server applies its entries, its own and other replicas', in stream
order, so an update acknowledged by one replica shows in the next answer of every other,
and a restarted server rebuilds its overlay from the same entries.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError
from redis.typing import EncodableT, FieldT

from ratinglog import (
    Entry,
    Malformed,
    RatingRecord,
    aread_after,
    encode_fields,
    entry_key,
    stream_key,
)
from server.errors import Unavailable

__all__ = ["NoRatingLog", "RatingLog", "RatingRecord", "RedisRatingLog", "UserOverlay"]

log = logging.getLogger(__name__)

START = "0-0"  # before the first entry of any stream


class RatingLog(Protocol):
    """Where acknowledged updates are kept."""

    async def append(self, record: RatingRecord) -> str:
        """Store ``record`` durably and return its entry id; raise Unavailable if it cannot."""
        ...

    async def read_after(self, last_id: str, count: int) -> list[Entry]:
        """Up to ``count`` entries after ``last_id``, oldest first; raise Unavailable."""
        ...


class NoRatingLog:
    """The log of a server without Redis: it refuses every update rather than lose it."""

    async def append(self, record: RatingRecord) -> str:
        """Always refuses."""
        raise Unavailable("rating updates need Redis (the server runs with an in-process cache)")

    async def read_after(self, last_id: str, count: int) -> list[Entry]:
        """Nothing was ever stored."""
        return []


class RedisRatingLog:
    """A Redis Stream with one entry per update (see ``ratinglog``)."""

    def __init__(self, client: aioredis.Redis, prefix: str = "rbmrec") -> None:
        self.client = client
        self.stream = stream_key(prefix)
        self.malformed = 0  # entries skipped as not ratings, each counted once
        self._reported = START  # the newest malformed entry counted and logged so far

    async def append(self, record: RatingRecord) -> str:
        """XADD the record; raise Unavailable if Redis does not confirm it."""
        fields: dict[FieldT, EncodableT] = {k: v for k, v in encode_fields(record).items()}
        try:
            entry_id = await self.client.xadd(self.stream, fields)
        except (RedisError, OSError) as exc:
            raise _unreachable(exc) from exc
        return _text(entry_id)

    async def read_after(self, last_id: str, count: int) -> list[Entry]:
        """The ratings among the next ``count`` entries after ``last_id``, oldest first."""
        try:
            page = await aread_after(self.client, self.stream, last_id, count)
        except (RedisError, OSError) as exc:
            raise _unreachable(exc) from exc
        self._report(page.malformed)
        return page.entries

    def _report(self, malformed: list[Malformed]) -> None:
        # The overlay stops at the last rating, so a malformed entry at the end of the
        # stream is read again by every catch-up until a rating follows it: report it once.
        for entry in malformed:
            if entry_key(entry.entry_id) > entry_key(self._reported):
                self.malformed += 1
                self._reported = entry.entry_id
                log.warning(
                    "skipping malformed rating log entry %s: %s", entry.entry_id, entry.reason
                )


@dataclass(frozen=True)
class Applied:
    """An entry applied to the overlay: the rating it replaced and the user's new generation."""

    entry_id: str
    record: RatingRecord
    previous: float | None
    generation: int


@dataclass
class UserOverlay:
    """Ratings streamed since training, per user, as far into the log as ``last_id``.

    A user's generation counts its entries; since every replica applies the same entries
    in the same order, generations (and the cache keys built on them) agree across replicas.
    """

    ratings: dict[int, dict[int, float]] = field(default_factory=dict)
    generations: dict[int, int] = field(default_factory=dict)
    last_id: str = START

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

    def apply_entries(self, entries: list[Entry]) -> list[Applied]:
        """Apply entries read after ``last_id``, in order, skipping any already applied."""
        applied = []
        for entry_id, record in entries:
            if entry_key(entry_id) <= entry_key(self.last_id):
                continue  # a concurrent read got here first
            previous = self.apply(record)
            generation = self.generations[record.user_id]
            applied.append(Applied(entry_id, record, previous, generation))
            self.last_id = entry_id
        return applied

    async def catch_up(self, source: RatingLog, page: int = 10_000) -> list[Applied]:
        """Read and apply every entry after ``last_id``; raise Unavailable if ``source`` is."""
        applied: list[Applied] = []
        while True:
            entries = await source.read_after(self.last_id, page)
            applied += self.apply_entries(entries)
            if len(entries) < page:
                return applied


def _unreachable(exc: Exception) -> Unavailable:
    return Unavailable(f"the rating log (Redis) is unreachable: {exc}")


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
