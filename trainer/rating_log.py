"""The rating log the server writes (``ratinglog``): read from Redis, merged into the training data.

A retrain thereby includes what users rated since the data set was made. Logged ratings go
to the part the RBMs fit, never to the validation slice or the test part, so evaluation
stays comparable with a run without the log; an entry for a (user, movie) pair held out
there is skipped, since training on it would leak into the evaluation.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import redis

from ratinglog import (
    ArchiveCorrupt,
    Page,
    RatingArchive,
    read_all,
    read_full_log,
    redact_url,
    stream_key,
)
from trainer.data import Ratings

__all__ = ["LogMerge", "RatingLog", "RatingLogUnavailable", "merge_log", "read_rating_log"]

log = logging.getLogger(__name__)

PAGE_SIZE = 10_000  # entries per XRANGE: bounded replies, few round trips


class RatingLogUnavailable(Exception):
    """Redis could not be reached or read."""


@dataclass(frozen=True)
class RatingLog:
    """Every entry of the stream (and its archive) that decodes as a rating, in log order."""

    key: str
    ratings: Ratings
    malformed: int  # entries that are not ratings
    last_id: str | None  # the newest entry read; None for an empty stream

    def fingerprint(self, base: str) -> str:
        """The data fingerprint of ``base``'s data set with this log merged in."""
        text = f"{base}|{self.key}|{self.last_id}|{len(self.ratings) + self.malformed}"
        return hashlib.sha256(text.encode()).hexdigest()


def read_rating_log(
    url: str, prefix: str, page_size: int = PAGE_SIZE, registry_root: Path | None = None
) -> RatingLog:
    """The whole stream ``{prefix}:ratings`` at ``url``, read with XRANGE a page at a time.

    With ``registry_root``, what ``rbm-ratings trim`` archived there comes first, so a
    retrain sees every rating ever logged. Raises RatingLogUnavailable when Redis cannot be
    reached or read, or the archive is corrupt; ValueError for a URL that is not a Redis one.
    """
    key = stream_key(prefix)
    client = redis.Redis.from_url(url, socket_connect_timeout=5.0, socket_timeout=30.0)
    try:
        if registry_root is None:
            return _collect(key, read_all(client, key, page_size))
        archive = RatingArchive(registry_root, prefix)
        return _collect(key, read_full_log(client, key, archive, page_size))
    except redis.RedisError as exc:
        where = redact_url(url)
        raise RatingLogUnavailable(f"cannot read the rating log {key} at {where}: {exc}") from exc
    except ArchiveCorrupt as exc:
        raise RatingLogUnavailable(f"cannot read the rating log's archive: {exc}") from exc
    finally:
        client.close()


def _collect(key: str, pages: Iterable[Page]) -> RatingLog:
    """The ratings of ``pages`` as one Ratings; malformed entries only counted."""
    users: list[int] = []
    movies: list[int] = []
    values: list[float] = []
    stamps: list[int] = []
    malformed, first, last_id = 0, None, None
    for page in pages:
        for _entry_id, record in page.entries:
            users.append(record.user_id)
            movies.append(record.movie_id)
            values.append(record.rating)
            stamps.append(record.timestamp)
        malformed += len(page.malformed)
        first = first or next(iter(page.malformed), None)
        last_id = page.last_id or last_id
    if first is not None:  # one line, not one per entry: a whole stream may be foreign
        log.warning(
            "skipping %d malformed rating log entries of %s (first %s: %s)",
            malformed,
            key,
            first.entry_id,
            first.reason,
        )
    ratings = Ratings.from_lists(users, movies, values, stamps)
    return RatingLog(key, ratings, malformed, last_id)


@dataclass(frozen=True)
class LogMerge:
    """What merging the log did: read = applied + superseded + skipped."""

    read: int
    applied: int  # ratings now in training: the latest entry of each (user, movie)
    superseded: int  # entries a later entry of the same (user, movie) replaced
    skipped_malformed: int
    skipped_unknown_movie: int  # no catalogue names it; kept in the log for a later retrain
    skipped_off_scale: int
    skipped_held_out: int  # (user, movie) in the validation slice or the test part
    replaced: int  # applied ratings that replaced a rating of the data set
    new_users: int  # users the training data did not have
    last_id: str | None

    @property
    def skipped(self) -> int:
        """Entries left out, whatever the reason."""
        return (
            self.skipped_malformed
            + self.skipped_unknown_movie
            + self.skipped_off_scale
            + self.skipped_held_out
        )

    def to_report(self) -> dict[str, int | str | None]:
        """The --json report's ``rating_log`` object."""
        return asdict(self) | {"skipped": self.skipped}


def merge_log(
    fit: Ratings,
    val: Ratings,
    test: Ratings,
    log: RatingLog,
    movie_ids: np.ndarray,
    levels: tuple[float, ...],
) -> tuple[Ratings, LogMerge]:
    """``fit`` with the log applied: the latest rating of each (user, movie) pair wins."""
    r = log.ratings
    scale = np.asarray(levels, dtype=np.float32)
    known = np.isin(r.movies, movie_ids)
    on_scale = np.isclose(r.ratings[:, None], scale[None, :]).any(1)  # NaN is on no scale
    valid = r.take(known & on_scale)
    nearest = np.abs(valid.ratings[:, None] - scale[None, :]).argmin(1)
    valid = Ratings(valid.users, valid.movies, scale[nearest], valid.timestamps)  # exact levels
    held_out = val.concat(test)
    log_pairs, fit_pairs, held_pairs = _pair_ids(valid, fit, held_out)
    held = np.isin(log_pairs, held_pairs)
    kept, kept_pairs = valid.take(~held), log_pairs[~held]
    _, from_end = np.unique(kept_pairs[::-1], return_index=True)
    latest = np.sort(len(kept_pairs) - 1 - from_end)  # each pair's last entry, stream order
    replaced = np.isin(fit_pairs, kept_pairs)
    merged = fit.take(~replaced).concat(kept.take(latest))
    base_users = np.union1d(fit.users, val.users)
    report = LogMerge(
        read=len(r) + log.malformed,
        applied=len(latest),
        superseded=len(kept_pairs) - len(latest),
        skipped_malformed=log.malformed,
        skipped_unknown_movie=int((~known).sum()),
        skipped_off_scale=int((known & ~on_scale).sum()),
        skipped_held_out=int(held.sum()),
        replaced=int(replaced.sum()),
        new_users=len(np.setdiff1d(kept.users, base_users)),
        last_id=log.last_id,
    )
    return merged, report


def _pair_ids(*parts: Ratings) -> list[np.ndarray]:
    """One integer per distinct (user, movie) pair across ``parts``, aligned with their rows."""
    pairs = np.concatenate([np.stack([p.users, p.movies], axis=1) for p in parts])
    _, inverse = np.unique(pairs, axis=0, return_inverse=True)
    bounds = np.cumsum([len(p) for p in parts])[:-1]
    return np.split(inverse.reshape(-1), bounds)
