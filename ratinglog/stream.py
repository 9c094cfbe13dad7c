"""Reading the rating log: ranges of the stream, decoded, with malformed entries set aside.

The server and the trainer both read through here, so both skip exactly the same entries
for the same reasons. Entries are read with ``XRANGE`` from an exclusive start (Redis 6.2+).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import cast

import redis
import redis.asyncio as aioredis

from ratinglog.format import MalformedEntry, RatingRecord, decode_fields

__all__ = ["Entry", "Malformed", "Page", "aread_after", "decode_page", "read_after", "read_all"]

Entry = tuple[str, RatingRecord]  # (entry id, record)
RawEntry = tuple[bytes, dict[bytes, bytes]]  # as redis-py (RESP2) returns one


@dataclass(frozen=True)
class Malformed:
    """A stream entry that is not a rating, and why."""

    entry_id: str
    reason: str


@dataclass(frozen=True)
class Page:
    """One range of the stream, decoded: the ratings in stream order and what was skipped."""

    entries: list[Entry]
    malformed: list[Malformed]
    last_id: str | None  # the newest entry read, rating or not; None if the range was empty

    @property
    def size(self) -> int:
        """Entries read, ratings and malformed ones."""
        return len(self.entries) + len(self.malformed)


def decode_page(raw: Sequence[RawEntry]) -> Page:
    """Decode an XRANGE reply, setting aside (never raising on) entries that are not ratings."""
    entries: list[Entry] = []
    malformed: list[Malformed] = []
    for raw_id, fields in raw:
        entry_id = raw_id.decode()
        try:
            entries.append((entry_id, decode_fields(fields)))
        except MalformedEntry as exc:
            # A foreign entry must not stop anyone following the log for good.
            malformed.append(Malformed(entry_id, str(exc)))
    return Page(entries, malformed, raw[-1][0].decode() if raw else None)


def read_after(client: redis.Redis, key: str, last_id: str | None, count: int) -> Page:
    """Up to ``count`` entries after ``last_id`` (None: from the start); raises RedisError."""
    reply = client.xrange(key, min=_after(last_id), max="+", count=count)
    return decode_page(cast(list[RawEntry], reply))


async def aread_after(client: aioredis.Redis, key: str, last_id: str | None, count: int) -> Page:
    """``read_after`` for an asyncio client."""
    reply = await client.xrange(key, min=_after(last_id), max="+", count=count)
    return decode_page(cast(list[RawEntry], reply))


def read_all(client: redis.Redis, key: str, page_size: int) -> Iterator[Page]:
    """The whole stream, ``page_size`` entries a page, oldest first; raises RedisError."""
    last_id = None
    while True:
        page = read_after(client, key, last_id, page_size)
        yield page
        if page.size < page_size:
            return
        last_id = page.last_id


def _after(last_id: str | None) -> str:
    return "-" if last_id is None else f"({last_id}"
