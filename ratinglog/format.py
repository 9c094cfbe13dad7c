"""One Redis Stream entry per acknowledged rating update, in MovieLens ids.

The stream is ``{prefix}:ratings``; each entry has the fields ``user``, ``movie``, ``rating``
(the float's repr) and ``ts`` (Unix seconds). The server appends, the trainer reads; both
use this module so the format lives in one place.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["RatingRecord", "decode_fields", "encode_fields", "stream_key"]


@dataclass(frozen=True)
class RatingRecord:
    """One rating in MovieLens ids."""

    user_id: int
    movie_id: int
    rating: float
    timestamp: int


def stream_key(prefix: str) -> str:
    """The Redis key of the rating log under ``prefix``."""
    return f"{prefix}:ratings"


def encode_fields(record: RatingRecord) -> dict[str, str | int]:
    """The stream entry's fields for ``record``."""
    return {
        "user": record.user_id,
        "movie": record.movie_id,
        "rating": repr(record.rating),
        "ts": record.timestamp,
    }


def decode_fields(fields: Mapping[bytes, bytes]) -> RatingRecord:
    """The record a stream entry holds; ValueError/KeyError if it is not one of ours."""
    return RatingRecord(
        int(fields[b"user"]),
        int(fields[b"movie"]),
        float(fields[b"rating"]),
        int(fields[b"ts"]),
    )
