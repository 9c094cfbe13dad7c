"""How long the stream keeps an entry: until every aliased version absorbed it; then the archive.

A version records ``rating_log_until``, the last entry it was trained on, and a server
serving it replays only the entries after that. So the stream may drop every entry up to
the oldest such point among the versions an alias points to, once the archive holds them:
``trim`` archives first and trims second, and both steps are idempotent, so a trim killed
at any point loses nothing and a rerun finishes it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import cast

import redis

from ratinglog.archive import RatingArchive, _kill_point
from ratinglog.format import entry_key
from ratinglog.stream import Entry, Page, RawEntry, decode_page, read_after
from registry.store import FileRegistry

__all__ = [
    "PAGE_SIZE",
    "SEGMENT_ROWS",
    "StreamStatus",
    "TrimResult",
    "absorbed_until",
    "next_id",
    "read_full_log",
    "stream_status",
    "trim",
]

log = logging.getLogger(__name__)

PAGE_SIZE = 10_000  # entries per XRANGE: bounded replies, few round trips
SEGMENT_ROWS = 100_000  # entries per archive segment: a few MB, checked and read whole
_MAX_SEQ = 2**64 - 1


def absorbed_until(registry: FileRegistry, model: str, prefix: str | None = None) -> str | None:
    """The oldest ``rating_log_until`` among the versions an alias points to now.

    None when no alias is set or any of those versions absorbed nothing (of the stream of
    ``prefix``, when given: a version trained on another prefix's log absorbed none of it).
    """
    points = []
    for version in sorted(set(registry.aliases(model).values())):
        meta = registry.get_version(model, version).meta
        trained_on = meta.params.get("ratings_log")
        other = isinstance(trained_on, dict) and trained_on.get("prefix") not in (None, prefix)
        if meta.rating_log_until is None or (prefix is not None and other):
            return None
        points.append(meta.rating_log_until)
    return min(points, key=entry_key, default=None)


def next_id(entry_id: str) -> str:
    """The smallest entry id after ``entry_id`` ("5-3" -> "5-4"): XTRIM MINID keeps it."""
    millis, seq = entry_key(entry_id)
    return f"{millis + 1}-0" if seq == _MAX_SEQ else f"{millis}-{seq + 1}"


@dataclass(frozen=True)
class StreamStatus:
    """The stream's length and its oldest and newest entry ids (None while it is empty)."""

    length: int
    first_id: str | None
    last_id: str | None


def stream_status(client: redis.Redis, key: str) -> StreamStatus:
    """XLEN and the ids at both ends of the stream; raises RedisError."""
    first = cast(list[RawEntry], client.xrange(key, count=1))
    last = cast(list[RawEntry], client.xrevrange(key, count=1))
    length = int(client.xlen(key))
    return StreamStatus(
        length, first[0][0].decode() if first else None, last[0][0].decode() if last else None
    )


@dataclass(frozen=True)
class TrimResult:
    """What one trim did."""

    until: str | None  # every entry up to it is archived and gone; None: nothing to do
    archived: int  # entries this run added to the archive
    trimmed: int  # entries XTRIM removed from the stream
    length: int  # entries the stream holds now


def trim(
    client: redis.Redis,
    key: str,
    archive: RatingArchive,
    until: str | None,
    *,
    page_size: int = PAGE_SIZE,
    segment_rows: int = SEGMENT_ROWS,
    on_archived: Callable[[int], None] | None = None,
) -> TrimResult:
    """Archive the ratings up to ``until`` that the archive lacks, then XTRIM them away.

    ``on_archived(n)`` hears of each batch of entries archived. Raises RedisError,
    ArchiveCorrupt and OSError; a rerun after any of them (or a kill) completes the trim.
    """
    if until is None:
        return TrimResult(None, 0, 0, int(client.xlen(key)))
    batch: list[Entry] = []
    archived, skipped, newest = 0, 0, None
    for page in _range(client, key, archive.last_id, until, page_size):
        batch += page.entries
        skipped += len(page.malformed)
        newest = page.entries[-1][0] if page.entries else newest
        while len(batch) >= segment_rows:
            archived += _append(archive, batch[:segment_rows], on_archived)
            batch = batch[segment_rows:]
    archived += _append(archive, batch, on_archived)
    if skipped:  # they are not ratings: the archive has no place for them
        log.warning("trimming %d malformed entries of %s that were never archived", skipped, key)
    held = archive.last_id
    if newest is not None and (held is None or entry_key(held) < entry_key(newest)):
        # Cannot happen unless the archive was swapped meanwhile; never trim what it lacks.
        raise RuntimeError(f"the archive {archive.path} lacks {newest}; nothing was trimmed")
    _kill_point("xtrim")
    trimmed = int(client.xtrim(key, minid=next_id(until), approximate=False))
    _kill_point("trimmed")
    return TrimResult(until, archived, trimmed, int(client.xlen(key)))


def _range(
    client: redis.Redis, key: str, after: str | None, until: str, page_size: int
) -> Iterator[Page]:
    """The stream's entries after ``after`` and up to ``until``, a page at a time."""
    while True:
        low = "-" if after is None else f"({after}"
        page = decode_page(cast(list[RawEntry], client.xrange(key, low, until, count=page_size)))
        yield page
        if page.size < page_size or page.last_id is None:
            return
        after = page.last_id


def _append(
    archive: RatingArchive, batch: list[Entry], on_archived: Callable[[int], None] | None
) -> int:
    segment = archive.append(batch)
    added = 0 if segment is None else segment.rows
    if on_archived is not None and added:
        on_archived(added)
    return added


def read_full_log(
    client: redis.Redis,
    key: str,
    archive: RatingArchive,
    page_size: int = PAGE_SIZE,
    after: str | None = None,
) -> Iterator[Page]:
    """Every entry logged after ``after`` (None: ever), the archive's then the stream's, in
    log order, once each.

    A trim running meanwhile moves entries from the stream to the archive: after each
    XRANGE the archive is looked at again, and what it gained past the entries read so far
    is read from it instead (the stream may have lost those before the XRANGE ran). Raises
    RedisError and ArchiveCorrupt.
    """
    cursor = after
    held = archive.last_id  # entries up to it come from the archive
    if held is not None and (cursor is None or entry_key(held) > entry_key(cursor)):
        for entries in archive.pages(after=cursor, until=held):
            yield Page(entries, [], entries[-1][0])
        cursor = held
    while True:
        page = read_after(client, key, cursor, page_size)
        # A trim writes the manifest before it trims: if the archive did not grow past the
        # cursor by now, no entry after the cursor was trimmed before the XRANGE above.
        held = archive.last_id
        if held is not None and (cursor is None or entry_key(held) > entry_key(cursor)):
            for entries in archive.pages(after=cursor, until=held):
                yield Page(entries, [], entries[-1][0])
            cursor = held  # this page is read again from there: it may have a gap
            continue
        yield page
        if page.size < page_size or page.last_id is None:
            return
        cursor = page.last_id
