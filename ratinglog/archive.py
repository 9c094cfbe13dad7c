"""The archive of a rating log: what was trimmed from the stream, kept as files in the registry.

Layout under ``<registry>/_ratings/<prefix>/`` (model names cannot start with ``_``, so
the registry never lists it)::

    MANIFEST.json          every segment: file, sha256, first and last entry id, rows
    000001.csv.gz ...      append-only segments, gzip CSV
                           ``entry_id,user_id,movie_id,rating,timestamp``, in log order
    .lock                  fcntl.flock that serializes appends; readers never take it

A segment is written to a temp file, fsynced and renamed, and only then recorded in the
manifest, which is replaced atomically: the manifest alone says what the archive holds. A
segment file it does not list is what a killed append left behind, ignored by readers and
overwritten by the next append.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import fcntl
import gzip
import hashlib
import io
import itertools
import json
import os
import re
import signal
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ratinglog.format import RatingRecord, entry_key
from ratinglog.stream import Entry
from registry.fsio import atomic_write_bytes

__all__ = ["ARCHIVE_DIR", "KILL_ENV", "MANIFEST", "ArchiveCorrupt", "RatingArchive", "Segment"]

ARCHIVE_DIR = "_ratings"  # under the registry root; "_" keeps it out of the model names
MANIFEST = "MANIFEST.json"
_LOCK = ".lock"
_FORMAT = "rbmrec-rating-archive/1"
_SEGMENT_NAME = re.compile(r"[0-9]{6,}\.csv\.gz")
_ENTRY_ID = re.compile(r"[0-9]+-[0-9]+")
_HEADER = ("entry_id", "user_id", "movie_id", "rating", "timestamp")
# Test hook: "POINT" or "POINT:N" SIGKILLs this process at POINT (of segment N, 1-based),
# so that tests can kill a trim exactly between two of its steps.
KILL_ENV = "RBMREC_RATINGS_KILL_AT"


class ArchiveCorrupt(Exception):
    """The archive's manifest or a segment is unreadable or fails its checksum."""


@dataclass(frozen=True)
class Segment:
    """One archived file as the manifest records it."""

    file: str  # name inside the archive folder
    sha256: str  # of the file's (compressed) bytes
    first_id: str
    last_id: str
    rows: int

    def to_dict(self) -> dict[str, Any]:
        """The segment's manifest record."""
        return dataclasses.asdict(self)


class RatingArchive:
    """The archived part of the stream ``{prefix}:ratings``, under a registry root."""

    def __init__(self, root: Path, prefix: str) -> None:
        self.path = Path(root).absolute() / ARCHIVE_DIR / _folder_name(prefix)
        self.prefix = prefix
        self._cache: tuple[tuple[int, int, int], list[Segment]] | None = None

    # ---- reading: never locks, sees only what the manifest lists ------------------------

    def segments(self) -> list[Segment]:
        """The segments the manifest lists, oldest first; raises ArchiveCorrupt."""
        manifest = self.path / MANIFEST
        try:
            st = manifest.stat()
        except FileNotFoundError:
            return []
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)  # the manifest is only ever replaced
        if self._cache is None or self._cache[0] != stamp:
            self._cache = (stamp, _parse_manifest(manifest))
        return list(self._cache[1])

    @property
    def last_id(self) -> str | None:
        """The newest archived entry id; None while the archive is empty."""
        segments = self.segments()
        return segments[-1].last_id if segments else None

    @property
    def entries(self) -> int:
        """How many entries the archive holds."""
        return sum(segment.rows for segment in self.segments())

    def pages(self, after: str | None = None, until: str | None = None) -> Iterator[list[Entry]]:
        """The entries after ``after`` (and up to ``until``), one segment a page, in log order.

        Every segment is checked against its sha256 before any of its entries is yielded;
        raises ArchiveCorrupt.
        """
        low = None if after is None else entry_key(after)
        high = None if until is None else entry_key(until)
        for segment in self.segments():
            if low is not None and entry_key(segment.last_id) <= low:
                continue
            if high is not None and entry_key(segment.first_id) > high:
                return
            entries = self._read(segment)
            page = [
                (entry_id, record)
                for entry_id, record in entries
                if (low is None or entry_key(entry_id) > low)
                and (high is None or entry_key(entry_id) <= high)
            ]
            if page:
                yield page

    def _read(self, segment: Segment) -> list[Entry]:
        where = self.path / segment.file
        try:
            data = where.read_bytes()
        except FileNotFoundError:
            raise ArchiveCorrupt(f"archive segment {where} is missing") from None
        if hashlib.sha256(data).hexdigest() != segment.sha256:
            raise ArchiveCorrupt(f"archive segment {where} does not match its sha256")
        try:
            entries = _decode(gzip.decompress(data))
        except (OSError, EOFError, ValueError, csv.Error) as exc:  # gzip, csv, int(), float()
            raise ArchiveCorrupt(f"archive segment {where} is unreadable: {exc}") from exc
        ids = (entries[0][0], entries[-1][0]) if entries else None
        if len(entries) != segment.rows or ids != (segment.first_id, segment.last_id):
            raise ArchiveCorrupt(f"archive segment {where} does not hold what the manifest says")
        return entries

    # ---- writing: serialized by the archive's lock --------------------------------------

    def append(self, entries: Sequence[Entry]) -> Segment | None:
        """Archive the entries after ``last_id`` as one new segment; None if none is new.

        ``entries`` must be in log order. Appending what the archive already holds is a
        no-op, so a rerun after a kill at any point neither loses nor repeats an entry.
        """
        _check_order(entries)
        self.path.mkdir(parents=True, exist_ok=True)
        with self._lock():
            segments = self.segments()
            if segments:
                newest = entry_key(segments[-1].last_id)
                entries = [entry for entry in entries if entry_key(entry[0]) > newest]
            if not entries:
                return None
            number = len(segments) + 1
            name = f"{number:06d}.csv.gz"
            # mtime=0: the same entries make the same bytes, so a rerun's segment is the same.
            data = gzip.compress(_encode(entries), mtime=0)
            # Replaces a killed append's leftover of the same number.
            atomic_write_bytes(self.path / name, data, lambda: _kill_point("segment-temp", number))
            _kill_point("segment", number)
            digest = hashlib.sha256(data).hexdigest()
            segment = Segment(name, digest, entries[0][0], entries[-1][0], len(entries))
            manifest = {
                "format": _FORMAT,
                "prefix": self.prefix,
                "segments": [s.to_dict() for s in [*segments, segment]],
            }
            # Last: until the manifest lists it, the segment is not part of the archive.
            atomic_write_bytes(self.path / MANIFEST, json.dumps(manifest, indent=1).encode())
            _kill_point("manifest", number)
        return segment

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        fd = os.open(self.path / _LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            _remove_temp_files(self.path)  # a killed append's; no append is running now
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the flock


def _folder_name(prefix: str) -> str:
    """``prefix`` as one safe path component: "/" and "." escaped, so never "..", never hidden."""
    if not prefix:
        raise ValueError("the rating log prefix must not be empty")
    name = quote(prefix, safe=":").replace(".", "%2E")
    if len(name.encode()) > 200:
        raise ValueError(f"the rating log prefix is too long for a folder name: {prefix[:40]!r}...")
    return name


def _check_order(entries: Sequence[Entry]) -> None:
    keys = [entry_key(entry_id) for entry_id, _ in entries]
    if any(a >= b for a, b in itertools.pairwise(keys)):
        raise ValueError("archive entries must be in log order, each id once")


def _encode(entries: Sequence[Entry]) -> bytes:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(_HEADER)
    for entry_id, r in entries:
        writer.writerow((entry_id, r.user_id, r.movie_id, repr(r.rating), r.timestamp))
    return text.getvalue().encode()


def _decode(data: bytes) -> list[Entry]:
    rows = csv.reader(io.StringIO(data.decode()))
    if tuple(next(rows, ())) != _HEADER:
        raise ValueError("the CSV header is not " + ",".join(_HEADER))
    return [
        (entry_id, RatingRecord(int(user), int(movie), float(rating), int(ts)))
        for entry_id, user, movie, rating, ts in rows
    ]


def _parse_manifest(path: Path) -> list[Segment]:
    try:
        data = json.loads(path.read_bytes())
        if data.get("format") != _FORMAT:
            raise ValueError(f"unknown format {data.get('format')!r}")
        segments = [Segment(**record) for record in data["segments"]]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ArchiveCorrupt(f"archive manifest {path} is unreadable: {exc}") from exc
    for segment in segments:  # the name becomes a path: never let it leave the folder
        if not _SEGMENT_NAME.fullmatch(str(segment.file)):
            raise ArchiveCorrupt(f"archive manifest {path} names a bad file {segment.file!r}")
        ids = (str(segment.first_id), str(segment.last_id))
        if not all(_ENTRY_ID.fullmatch(i) for i in ids) or type(segment.rows) is not int:
            raise ArchiveCorrupt(f"archive manifest {path} has a bad record for {segment.file}")
    return segments


def _remove_temp_files(folder: Path) -> None:
    for leftover in folder.glob(".*.tmp"):
        leftover.unlink(missing_ok=True)


def _kill_point(point: str, number: int | None = None) -> None:
    """SIGKILL this process here if $RBMREC_RATINGS_KILL_AT names this point (tests only)."""
    wanted = os.environ.get(KILL_ENV)
    if not wanted:
        return
    name, _, at = wanted.partition(":")
    if name == point and (not at or number is None or int(at) == number):
        os.kill(os.getpid(), signal.SIGKILL)
