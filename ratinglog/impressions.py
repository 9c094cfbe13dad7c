"""What was recommended to whom, by which version: the impression stream's wire format.

The server appends one entry per answered Recommend to the stream ``{prefix}:impressions``
on the rating log's Redis, so that an impression's entry id and a rating's entry id come
from the same clock. Fields: ``v`` (the model version), ``a`` (the arm: ``stable`` or
``canary``), ``u`` (the user id) and ``m`` (the recommended movie ids, comma-separated,
best first). The entry id's milliseconds are when the impression was stored, at most one
flush interval after it was served: a rating in between counts as preceding it, never as
following it. ``rbm-ratings online`` joins the two streams.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ratinglog.format import MalformedEntry

__all__ = ["ARMS", "Impression", "decode_impression", "encode_impression", "impressions_key"]

ARMS = ("stable", "canary")


@dataclass(frozen=True)
class Impression:
    """One Recommend answer: ``movie_ids`` shown to ``user_id`` by ``version``."""

    version: str
    arm: str
    user_id: int
    movie_ids: tuple[int, ...]


def impressions_key(prefix: str) -> str:
    """The Redis key of the impression stream under ``prefix``."""
    return f"{prefix}:impressions"


def encode_impression(impression: Impression) -> dict[str, str | int]:
    """The stream entry's fields for ``impression``."""
    return {
        "v": impression.version,
        "a": impression.arm,
        "u": impression.user_id,
        "m": ",".join(str(m) for m in impression.movie_ids),
    }


def decode_impression(fields: Mapping[bytes, bytes]) -> Impression:
    """The impression an entry holds; MalformedEntry if it is not one."""
    try:
        version, arm = fields[b"v"].decode(), fields[b"a"].decode()
        user = int(fields[b"u"])
        movies = _ints(fields[b"m"].split(b",")) if fields[b"m"] else ()
    except KeyError as exc:
        raise MalformedEntry(f"field {exc.args[0]!r} is missing") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedEntry(f"not an impression: {exc}") from None
    return Impression(version, arm, user, movies)


def _ints(parts: Sequence[bytes]) -> tuple[int, ...]:
    return tuple(int(p) for p in parts)
