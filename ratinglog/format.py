"""One Redis Stream entry per acknowledged rating update, in MovieLens ids.

The stream is ``{prefix}:ratings``; each entry has the fields ``user``, ``movie``, ``rating``
(the float's repr) and ``ts`` (Unix seconds). The server appends, the trainer reads; both
use this module so the format lives in one place.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

__all__ = [
    "MalformedEntry",
    "RatingRecord",
    "decode_fields",
    "encode_fields",
    "entry_key",
    "stream_key",
]

_INT64 = 2**63  # ids and timestamps are int64 in the API and in the trainer's arrays
_SHOWN = 40  # bytes of a bad value quoted in a reason: a foreign entry may be huge

T = TypeVar("T")


class MalformedEntry(ValueError):
    """A stream entry that is not a rating; the message says why."""


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


def entry_key(entry_id: str) -> tuple[int, int]:
    """A stream entry id ("millis-seq") as something that sorts in stream order."""
    millis, _, seq = entry_id.partition("-")
    return int(millis), int(seq or 0)


def encode_fields(record: RatingRecord) -> dict[str, str | int]:
    """The stream entry's fields for ``record``."""
    return {
        "user": record.user_id,
        "movie": record.movie_id,
        "rating": repr(record.rating),
        "ts": record.timestamp,
    }


def decode_fields(fields: Mapping[bytes, bytes]) -> RatingRecord:
    """The record a stream entry holds; MalformedEntry if it is not one of ours."""
    return RatingRecord(
        _int64(fields, b"user"),
        _int64(fields, b"movie"),
        _field(fields, b"rating", float, "a number"),
        _int64(fields, b"ts"),
    )


def _int64(fields: Mapping[bytes, bytes], name: bytes) -> int:
    value = _field(fields, name, int, "an integer")
    if not -_INT64 <= value < _INT64:
        raise MalformedEntry(f"field {name.decode()!r} is out of the int64 range")
    return value


def _field(fields: Mapping[bytes, bytes], name: bytes, parse: Callable[[bytes], T], kind: str) -> T:
    if name not in fields:
        raise MalformedEntry(f"field {name.decode()!r} is missing")
    value = fields[name]
    try:
        return parse(value)
    except ValueError:
        raise MalformedEntry(f"field {name.decode()!r} is not {kind}: {value[:_SHOWN]!r}") from None
