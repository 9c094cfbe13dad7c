"""Small builders the rating-log tests share: ratings in a stream, versions that absorbed some."""

from __future__ import annotations

from typing import Any

import redis

from ratinglog import Entry, RatingRecord, encode_fields
from registry.records import VersionMeta
from registry.store import FileRegistry

__all__ = ["entries", "log_ratings", "register_version"]


def entries(first: int, count: int, millis: int = 1000) -> list[Entry]:
    """``count`` entries with ids ``millis-first`` .. in log order, ratings of every kind."""
    return [
        (f"{millis}-{n}", RatingRecord(n + 1, n % 7 + 1, (n % 9 + 1) / 2, 1_700_000_000 + n))
        for n in range(first, first + count)
    ]


def log_ratings(client: redis.Redis, key: str, count: int, first_user: int = 1) -> list[Entry]:
    """XADD ``count`` ratings (users ``first_user``..) in one pipeline; return them as entries."""
    records = [
        RatingRecord(u, u % 50 + 1, float(u % 5 + 1), 1_700_000_000 + u)
        for u in range(first_user, first_user + count)
    ]
    pipe = client.pipeline(transaction=False)
    for record in records:
        pipe.xadd(key, encode_fields(record))
    ids = [raw.decode() for raw in pipe.execute()]
    return list(zip(ids, records, strict=True))


def register_version(
    registry: FileRegistry, until: str | None, alias: str | None = None, **params: Any
) -> int:
    """A tiny version of ``rbm`` that absorbed the log up to ``until``; aliased if asked."""
    meta = VersionMeta(rating_log_until=until, params=params)
    number = registry.register("rbm", lambda d: (d / "w.bin").write_bytes(b"w"), meta).version
    if alias is not None:
        registry.set_alias("rbm", alias, number)
    return number
