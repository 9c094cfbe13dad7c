"""Streamed rating updates: a durable log (a Redis Stream) and the per-user overlay in memory.

An update is acknowledged only after the log has stored it. The log is the one order every
replica agrees on: each server applies its entries, its own and other replicas', in stream
order, so an update acknowledged by one replica shows in the next answer of every other.

A version absorbed the log up to its ``rating_log_until``; the overlay of a version holds
only the entries after that point, so it stays as small as what came since the last
retrain, and a restarted server replays only those.
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

__all__ = [
    "DEDUP_TTL_S",
    "MAX_UPDATE_ID",
    "NoRatingLog",
    "RatingLog",
    "RatingRecord",
    "RedisRatingLog",
    "Stored",
    "UserOverlay",
]

log = logging.getLogger(__name__)

START = "0-0"  # before the first entry of any stream
# Entries per read: one XRANGE of 2,000 parses in ~0.1 s in pure-Python redis-py, far under
# the clients' 1 s socket timeout even on a loaded machine (10,000 came within 2x of it).
PAGE = 2_000
DEDUP_TTL_S = 86_400  # an update_id is remembered this long
MAX_UPDATE_ID = 128  # characters

# Append unless this update_id was stored already, in one atomic step: a retry racing its
# first attempt still gives one entry. KEYS: stream, dedup key; ARGV: ttl, then the fields.
_APPEND_ONCE = """
local prior = redis.call('GET', KEYS[2])
if prior then return {prior, 1} end
local id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 2))
redis.call('SET', KEYS[2], id, 'EX', ARGV[1])
return {id, 0}
"""


@dataclass(frozen=True)
class Stored:
    """Where the log keeps an update, and whether an earlier one with its update_id had it."""

    entry_id: str
    duplicate: bool = False


class RatingLog(Protocol):
    """Where acknowledged updates are kept."""

    async def append(self, record: RatingRecord, update_id: str = "") -> Stored:
        """Store ``record`` durably (once per ``update_id``); raise Unavailable if it cannot."""
        ...

    async def read_after(self, last_id: str, count: int) -> list[Entry]:
        """Up to ``count`` entries after ``last_id``, oldest first; raise Unavailable."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


class NoRatingLog:
    """The log of a server without Redis: it refuses every update rather than lose it."""

    async def append(self, record: RatingRecord, update_id: str = "") -> Stored:
        """Always refuses."""
        raise Unavailable("rating updates need Redis (the server runs with an in-process cache)")

    async def read_after(self, last_id: str, count: int) -> list[Entry]:
        """Nothing was ever stored."""
        return []

    async def close(self) -> None:
        """Nothing to release."""


class RedisRatingLog:
    """A Redis Stream with one entry per update (see ``ratinglog``)."""

    def __init__(self, client: aioredis.Redis, prefix: str = "rbmrec") -> None:
        self.client = client
        self.prefix = prefix
        self.stream = stream_key(prefix)
        self._append_once = client.register_script(_APPEND_ONCE)
        self.malformed = 0  # entries skipped as not ratings, each counted once
        self._reported = START  # the newest malformed entry counted and logged so far

    async def append(self, record: RatingRecord, update_id: str = "") -> Stored:
        """XADD the record (unless ``update_id`` was stored in the last 24 h).

        Raises Unavailable if Redis does not confirm it.
        """
        fields: dict[FieldT, EncodableT] = {k: v for k, v in encode_fields(record).items()}
        try:
            if not update_id:
                return Stored(_text(await self.client.xadd(self.stream, fields)))
            flat = [str(v) for pair in fields.items() for v in pair]
            keys = [self.stream, f"{self.prefix}:update:{update_id}"]
            entry_id, duplicate = await self._append_once(keys, [DEDUP_TTL_S, *flat])
        except (RedisError, OSError) as exc:
            raise _unreachable(exc) from exc
        return Stored(_text(entry_id), bool(duplicate))

    async def count_after(self, last_id: str, cap: int) -> int:
        """Entries after ``last_id``, counted up to ``cap`` (one bounded XRANGE)."""
        try:
            page = await self.client.xrange(self.stream, f"({last_id}", "+", count=cap)
            return len(page or [])
        except (RedisError, OSError) as exc:
            raise _unreachable(exc) from exc

    async def close(self) -> None:
        """Close the connection pool (closing it twice, when the cache shares it, is fine)."""
        await self.client.aclose()

    async def length(self) -> int:
        """Entries in the stream now (XLEN); raise Unavailable."""
        try:
            return int(await self.client.xlen(self.stream))
        except (RedisError, OSError) as exc:
            raise _unreachable(exc) from exc

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
    """An entry applied to the overlay: the rating it replaced and the user's position before.

    A user's position is the id of the last entry applied to it ("" for none since the
    version's point): it names the user's rating set, so it names cached hidden states.
    """

    entry_id: str
    record: RatingRecord
    previous: float | None
    previous_position: str


@dataclass
class UserOverlay:
    """Ratings streamed after a version's point, per user, as far into the log as ``last_id``.

    ``point`` is the last entry the version absorbed (None: trained without the log, so
    every entry applies). Positions are entry ids, the same on every replica and never
    reused, so trimming the stream or a failover can never make two rating sets share one.
    """

    point: str | None = None
    ratings: dict[int, dict[int, float]] = field(default_factory=dict)
    positions: dict[int, str] = field(default_factory=dict)
    last_id: str = START
    replayed: int = 0  # entries applied by replay(), for metrics
    # Ratings held (one per user and movie), counted as they come: /metrics reads it from
    # its own thread, where walking the dicts the event loop grows could fail mid-way.
    entries: int = 0

    def __post_init__(self) -> None:
        if self.point is not None and entry_key(self.point) > entry_key(self.last_id):
            self.last_id = self.point

    def get(self, user_id: int) -> tuple[dict[int, float], str]:
        """The user's streamed ratings {movie id: rating} and its position."""
        return self.ratings.get(user_id, {}), self.positions.get(user_id, "")

    def apply_entries(self, entries: list[Entry]) -> list[Applied]:
        """Apply entries read after ``last_id``, in order, skipping any already applied."""
        applied = []
        for entry_id, record in entries:
            if entry_key(entry_id) <= entry_key(self.last_id):
                continue  # a concurrent read got here first (or the version absorbed it)
            user = self.ratings.setdefault(record.user_id, {})
            previous = user.get(record.movie_id)
            if record.movie_id not in user:
                self.entries += 1
            user[record.movie_id] = record.rating
            position = self.positions.get(record.user_id, "")
            self.positions[record.user_id] = entry_id
            applied.append(Applied(entry_id, record, previous, position))
            self.last_id = entry_id
        return applied

    async def catch_up(self, source: RatingLog, page: int = PAGE) -> list[Applied]:
        """Read and apply every entry after ``last_id``; raise Unavailable if ``source`` is."""
        applied: list[Applied] = []
        while True:
            entries = await source.read_after(self.last_id, page)
            applied += self.apply_entries(entries)
            if len(entries) < page:
                return applied

    async def replay(self, source: RatingLog, page: int = PAGE) -> int:
        """``catch_up`` that keeps nothing but the overlay: a start-up replay of any length.

        Returns how many entries it applied; should ``source`` fail midway (Unavailable),
        what was applied stays applied and ``replayed`` counts it.
        """
        before = self.replayed
        while True:
            entries = await source.read_after(self.last_id, page)
            self.replayed += len(self.apply_entries(entries))
            if len(entries) < page:
                return self.replayed - before


def _unreachable(exc: Exception) -> Unavailable:
    return Unavailable(f"the rating log (Redis) is unreachable: {exc}")


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
