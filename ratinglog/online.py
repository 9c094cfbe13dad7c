"""Online evaluation: per served version, how many recommended movies users then rated.

The impression stream (``{prefix}:impressions``, ``ratinglog.impressions``) says which
movies each version recommended to each user, and when; the rating log (``{prefix}:ratings``)
says which movies users rated, and when. Both times are entry ids from the same Redis clock
(a rating's own ``ts`` field is the client's word and is not used). The figures, per version:

- A (version, user, movie) pair is *recommended* once, at its first impression time ``t0``
  by that version; later impressions of the same pair add nothing.
- Only *settled* pairs count, those whose window has closed (``t0 + window <= now``): an
  open window could still be rated, so counting it would hold a version that started later
  to a shorter wait. Pairs still open are reported as ``pending``.
- ``recommended``: settled pairs; ``users``: distinct users among them.
- ``rated_after``: settled pairs whose user rated the movie at ``t`` with
  ``t0 < t <= t0 + window``. A rating at or before ``t0`` is ignored (the pair still counts as
  recommended): the recommendation cannot have caused it.
- ``liked_after``: those whose first rating in the window is >= 4.
- ``hit_rate`` = rated_after / recommended, ``like_rate`` = liked_after / recommended
  (0.0 with nothing recommended); ``first_ms``, ``last_ms``: the first and last ``t0`` counted.

``compare`` says whether a canary's hit rate is significantly below another version's, over
the same period: both versions' pairs are restricted to those first recommended at or after
the later of the two versions' first impressions, so a production version that also served
before the canary existed is judged on the same days. The test is a one-sided two-proportion
z-test (pairs as independent trials, an approximation: one user's pairs are correlated);
with fewer than ``min_recommended`` pairs on either side the verdict is "undecided".

Memory: the impression stream holds up to about a million entries of about ten movies; the
pairs live in numpy arrays (never a Python object per pair) and of the rating log only the
ratings of recommended pairs are kept. Both streams are read a page at a time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from statistics import NormalDist
from typing import Any, Literal, TypeVar, cast

import numpy as np
import numpy.typing as npt
import redis

from ratinglog.archive import RatingArchive
from ratinglog.format import MalformedEntry, entry_key, stream_key
from ratinglog.impressions import Impression, decode_impression, impressions_key
from ratinglog.retention import read_full_log
from ratinglog.stream import Page, RawEntry

__all__ = [
    "LIKED",
    "Outcome",
    "Outcomes",
    "RatingRow",
    "Skipped",
    "Verdict",
    "VersionFigures",
    "compare",
    "compare_versions",
    "online_figures",
    "outcomes",
    "read_outcomes",
    "redis_now_ms",
]

LIKED = 4.0  # a rating at least this high is a "like"
PAGE_SIZE = 5_000  # entries per XRANGE: an impression holds about ten movies
_CHUNK = 10_000  # rows turned into arrays at a time
_FOLD_ROWS = 1_000_000  # impression rows buffered before folding them at least
_INT64 = 2**63
_MAX_SEQ = 2**64 - 1

Outcome = Literal["worse", "not worse", "undecided"]
RatingRow = tuple[int, int, int, float]  # (millis, user_id, movie_id, rating)
I64 = npt.NDArray[np.int64]
Bools = npt.NDArray[np.bool_]
T = TypeVar("T")


@dataclass(frozen=True)
class VersionFigures:
    """One version's online figures over settled pairs (see the module docstring)."""

    version: str
    users: int
    recommended: int
    rated_after: int
    liked_after: int
    pending: int
    first_ms: int | None
    last_ms: int | None

    @property
    def hit_rate(self) -> float:
        """rated_after / recommended; 0.0 with nothing recommended."""
        return self.rated_after / self.recommended if self.recommended else 0.0

    @property
    def like_rate(self) -> float:
        """liked_after / recommended; 0.0 with nothing recommended."""
        return self.liked_after / self.recommended if self.recommended else 0.0

    def as_dict(self) -> dict[str, Any]:
        """The JSON object of ``rbm-ratings online --json``: the issue's keys first."""
        return {
            "version": self.version,
            "users": self.users,
            "recommended": self.recommended,
            "rated_after": self.rated_after,
            "liked_after": self.liked_after,
            "hit_rate": self.hit_rate,
            "like_rate": self.like_rate,
            "pending": self.pending,
            "first_ms": self.first_ms,
            "last_ms": self.last_ms,
        }


@dataclass
class Skipped:
    """Entries set aside as malformed while reading, per stream."""

    impressions: int = 0
    ratings: int = 0


@dataclass(frozen=True)
class Outcomes:
    """Every recommended pair, at its first impression, and whether it was rated within
    the window; ``figures`` aggregates them for a given ``now``."""

    versions: tuple[str, ...]  # pair_version indexes this
    pair_version: I64
    pair_user: I64
    first: I64  # t0, in Redis millis
    rated: Bools
    liked: Bools
    window_ms: int

    def figures(self, now_ms: int, since_ms: int | None = None) -> list[VersionFigures]:
        """Per version (sorted by number), the pairs first recommended at or after
        ``since_ms``; only those settled by ``now_ms`` count."""
        period = self.first >= since_ms if since_ms is not None else np.ones_like(self.rated)
        settled = period & (self.first + self.window_ms <= now_ms)
        figures = [self._one(i, settled, period & ~settled) for i in range(len(self.versions))]
        return _sort_versions(figures, key=lambda f: f.version)

    def first_impression(self, version: str) -> int | None:
        """When ``version`` first recommended anything (settled or not); None if never."""
        if version not in self.versions:
            return None
        mask = self.pair_version == self.versions.index(version)
        return int(self.first[mask].min()) if mask.any() else None

    def _one(self, index: int, settled: Bools, pending: Bools) -> VersionFigures:
        mine = self.pair_version == index
        counted = settled & mine
        times = self.first[counted]
        return VersionFigures(
            version=self.versions[index],
            users=int(np.unique(self.pair_user[counted]).size),
            recommended=int(counted.sum()),
            rated_after=int((self.rated & counted).sum()),
            liked_after=int((self.liked & counted).sum()),
            pending=int((pending & mine).sum()),
            first_ms=int(times.min()) if times.size else None,
            last_ms=int(times.max()) if times.size else None,
        )


@dataclass(frozen=True)
class Verdict:
    """Whether a canary's hit rate is significantly below the other version's."""

    outcome: Outcome
    canary_rate: float
    production_rate: float
    z: float | None  # None when undecided
    reason: str  # one line


def _sort_versions(items: Iterable[T], key: Callable[[T], str]) -> list[T]:
    """``items`` by version number; a version that is not a number sorts after, by name."""

    def order(item: T) -> tuple[int, int, str]:
        name = key(item)
        return (0, int(name), "") if name.isdigit() else (1, 0, name)

    return sorted(items, key=order)


def online_figures(
    impressions: Iterable[tuple[int, Impression]],
    ratings: Iterable[RatingRow],
    window_ms: int,
    now_ms: int,
) -> list[VersionFigures]:
    """Per-version figures from impressions and ratings with their Redis times, in millis."""
    return outcomes(impressions, ratings, window_ms).figures(now_ms)


def outcomes(
    impressions: Iterable[tuple[int, Impression]], ratings: Iterable[RatingRow], window_ms: int
) -> Outcomes:
    """Every recommended pair's first impression and what its user did in the window after."""
    return _outcomes(_ImpressionRows.of(impressions), lambda _start: ratings, window_ms)


def compare(
    canary: VersionFigures,
    production: VersionFigures,
    min_recommended: int = 1000,
    alpha: float = 0.05,
) -> Verdict:
    """A one-sided two-proportion z-test of the canary's hit rate against production's."""
    rates = (canary.hit_rate, production.hit_rate)
    n1, n2 = canary.recommended, production.recommended
    if min(n1, n2) < min_recommended:
        reason = (
            f"too few settled recommendations to tell: {n1} of the canary and {n2} of "
            f"production, {min_recommended} each needed"
        )
        return Verdict("undecided", *rates, None, reason)
    z = _z(canary.rated_after, n1, production.rated_after, n2)
    critical = -NormalDist().inv_cdf(1 - alpha)
    worse = z < critical
    relation = "<" if worse else ">="
    reason = (
        f"hit rate {rates[0]:.4f} against {rates[1]:.4f} (z = {z:.2f} {relation} "
        f"{critical:.3f}, alpha {alpha:g}; {n1} and {n2} recommendations)"
    )
    return Verdict("worse" if worse else "not worse", *rates, z, reason)


def compare_versions(
    found: Outcomes,
    canary: str,
    production: str,
    now_ms: int,
    min_recommended: int = 1000,
    alpha: float = 0.05,
) -> tuple[Verdict, list[VersionFigures]]:
    """``compare`` over the same period for both versions; also the two figures it used."""
    starts = [found.first_impression(canary), found.first_impression(production)]
    missing = [v for v, start in zip((canary, production), starts, strict=True) if start is None]
    if missing:
        reason = f"no impression of version {missing[0]} in the stream yet"
        return Verdict("undecided", 0.0, 0.0, None, reason), []
    since = max(cast(list[int], starts))
    by_version = {f.version: f for f in found.figures(now_ms, since_ms=since)}
    pair = [by_version[canary], by_version[production]]
    return compare(pair[0], pair[1], min_recommended, alpha), pair


def redis_now_ms(client: redis.Redis) -> int:
    """Now on the Redis clock, in millis: the clock both streams' entry ids come from."""
    seconds, micros = client.time()
    return int(seconds) * 1000 + int(micros) // 1000


def read_outcomes(
    client: redis.Redis,
    archive: RatingArchive,
    window_ms: int,
    now_ms: int,
    page_size: int = PAGE_SIZE,
    on_page: Callable[[int], None] | None = None,
) -> tuple[Outcomes, Skipped]:
    """``outcomes`` of the streams under ``archive.prefix`` (and of the ratings ``archive``
    holds) up to ``now_ms``; raises RedisError and ArchiveCorrupt."""
    skipped = Skipped()
    key = impressions_key(archive.prefix)
    shown = _read_impressions(client, key, now_ms, page_size, skipped, on_page)

    def ratings(start_ms: int) -> Iterable[RatingRow]:
        pages = _rating_pages(client, archive, start_ms, now_ms, page_size)
        return _rating_rows(pages, skipped, on_page)

    return _outcomes(_ImpressionRows.of(shown), ratings, window_ms), skipped


def _outcomes(
    rows: _ImpressionRows, ratings_from: Callable[[int], Iterable[RatingRow]], window_ms: int
) -> Outcomes:
    """``outcomes`` of ``rows``; ``ratings_from(ms)`` gives the ratings from ms on."""
    if window_ms < 1:
        raise ValueError(f"the window must be at least 1 ms, got {window_ms}")
    start = rows.first_ms()
    # A rating before the first impression follows none of them: not even read.
    ratings = ratings_from(start) if start is not None else ()
    pairs = _Pairs.first_impressions(rows)
    rated, liked = pairs.rated_within(*pairs.ratings_of(ratings), window_ms)
    return Outcomes(pairs.versions, pairs.version, pairs.user, pairs.first, rated, liked, window_ms)


def _read_impressions(
    client: redis.Redis,
    key: str,
    now_ms: int,
    page_size: int,
    skipped: Skipped,
    on_page: Callable[[int], None] | None,
) -> Iterator[tuple[int, Impression]]:
    for page in _pages(client, key, "-", str(now_ms), page_size):
        for raw_id, fields in page:
            try:
                yield entry_key(raw_id.decode())[0], _checked(decode_impression(fields))
            except MalformedEntry:
                skipped.impressions += 1
        if on_page is not None:
            on_page(len(page))


def _rating_rows(
    pages: Iterable[Page], skipped: Skipped, on_page: Callable[[int], None] | None
) -> Iterator[RatingRow]:
    for page in pages:
        skipped.ratings += len(page.malformed)
        for entry_id, r in page.entries:
            yield entry_key(entry_id)[0], r.user_id, r.movie_id, r.rating
        if on_page is not None:
            on_page(page.size)


def _rating_pages(
    client: redis.Redis, archive: RatingArchive, start_ms: int, now_ms: int, page_size: int
) -> Iterator[Page]:
    """The log from ``start_ms`` on, archive then stream, until past ``now_ms``.

    ``read_full_log``'s walk from a start instead of the beginning: ``rbm-ratings trim``
    may have moved the ratings that followed old impressions into the archive, and may
    move more while this reads (the archive is looked at again after each XRANGE).
    """
    after = f"{start_ms - 1}-{_MAX_SEQ}" if start_ms > 0 else None
    pages = read_full_log(client, stream_key(archive.prefix), archive, page_size, after)
    for page in pages:
        yield page
        if page.last_id is not None and entry_key(page.last_id)[0] > now_ms:
            return


def _pages(
    client: redis.Redis, key: str, start: str, end: str, page_size: int
) -> Iterator[list[RawEntry]]:
    """XRANGE from ``start`` to ``end`` (inclusive), ``page_size`` entries a reply."""
    while True:
        page = cast(list[RawEntry], client.xrange(key, min=start, max=end, count=page_size))
        if page:
            yield page
        if len(page) < page_size:
            return
        start = f"({page[-1][0].decode()}"


def _checked(impression: Impression) -> Impression:
    """``impression``, if its ids fit the int64 arrays they go into."""
    ids = (impression.user_id, *impression.movie_ids)
    if not all(-_INT64 <= i < _INT64 for i in ids):
        raise MalformedEntry("an id is out of the int64 range")
    return impression


def _chunks(items: Iterable[T], size: int = _CHUNK) -> Iterator[list[T]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


@dataclass
class _ImpressionRows:
    """Impressions flattened to rows (version, user, movie, millis), as arrays.

    A user asking again mostly gets the same movies, so rows are folded into first
    impressions (``_first_rows``) whenever the buffer outgrows what is folded already:
    memory follows the distinct pairs, not the impressions, at a sort's amortised cost.
    """

    versions: list[str] = field(default_factory=list)
    folded: _Columns = field(default_factory=lambda: _columns([], [], [], []))
    buffer: list[_Columns] = field(default_factory=list)
    buffered: int = 0

    @classmethod
    def of(cls, impressions: Iterable[tuple[int, Impression]]) -> _ImpressionRows:
        """Every row of ``impressions``, converted a chunk at a time."""
        rows = cls()
        for chunk in _chunks(impressions):
            rows._add(chunk)
        return rows

    def _add(self, chunk: Sequence[tuple[int, Impression]]) -> None:
        index = {v: i for i, v in enumerate(self.versions)}
        for _, imp in chunk:
            if imp.version not in index:
                index[imp.version] = len(self.versions)
                self.versions.append(imp.version)
        counts = [len(imp.movie_ids) for _, imp in chunk]
        self.buffer.append(
            _columns(
                np.repeat(np.array([index[imp.version] for _, imp in chunk], np.int64), counts),
                np.repeat(np.array([imp.user_id for _, imp in chunk], np.int64), counts),
                [m for _, imp in chunk for m in imp.movie_ids],
                np.repeat(np.array([t for t, _ in chunk], np.int64), counts),
            )
        )
        self.buffered += sum(counts)
        if self.buffered >= max(_FOLD_ROWS, self.folded[0].size):
            self.first_rows()

    def first_rows(self) -> _Columns:
        """The distinct (version, user, movie) rows, each at its earliest millis."""
        if self.buffer:
            parts = [self.folded, *self.buffer]
            self.buffer, self.buffered = [], 0
            merged = [np.concatenate(column) for column in zip(*parts, strict=True)]
            self.folded = _first_rows((merged[0], merged[1], merged[2], merged[3]))
        return self.folded

    def first_ms(self) -> int | None:
        """The earliest impression time; None when there are no rows."""
        millis = self.first_rows()[3]
        return int(millis.min()) if millis.size else None


_Columns = tuple[I64, I64, I64, I64]  # version index, user, movie, millis


def _columns(version: Any, user: Any, movie: Any, millis: Any) -> _Columns:
    return (
        np.asarray(version, np.int64),
        np.asarray(user, np.int64),
        np.asarray(movie, np.int64),
        np.asarray(millis, np.int64),
    )


def _first_rows(columns: _Columns) -> _Columns:
    """One row per (version, user, movie): the one with the smallest millis."""
    version, user, movie, millis = columns
    # Sorted by version, user, movie, then time: a group's first row is the earliest.
    order = np.lexsort((millis, movie, user, version))
    version, user, movie, millis = version[order], user[order], movie[order], millis[order]
    start = np.ones(order.size, np.bool_)
    start[1:] = (version[1:] != version[:-1]) | (user[1:] != user[:-1]) | (movie[1:] != movie[:-1])
    return version[start], user[start], movie[start], millis[start]


def _concat(parts: list[npt.NDArray[Any]], dtype: type[np.generic]) -> npt.NDArray[Any]:
    return np.concatenate(parts) if parts else np.empty(0, dtype)


@dataclass(frozen=True)
class _Pairs:
    """The distinct (version, user, movie) pairs and their first impression times.

    ``key`` is a dense (user, movie) code, ``user_index * movies + movie_index`` over the
    impressions' distinct users and movies (at most rows², far below 2**63), so a rating
    finds its pair with one ``searchsorted`` and the arrays never hold Python objects.
    """

    versions: tuple[str, ...]
    version: I64
    user: I64
    key: I64
    first: I64
    users: I64  # distinct users, sorted
    movies: I64  # distinct movies, sorted
    keys: I64  # distinct keys, sorted

    @classmethod
    def first_impressions(cls, rows: _ImpressionRows) -> _Pairs:
        """One pair per (version, user, movie), at its earliest impression."""
        version, user, movie, millis = rows.first_rows()
        users, user_index = np.unique(user, return_inverse=True)
        movies, movie_index = np.unique(movie, return_inverse=True)
        key = user_index.astype(np.int64) * max(movies.size, 1) + movie_index
        keys = np.unique(key)
        return cls(tuple(rows.versions), version, user, key, millis, users, movies, keys)

    def ratings_of(self, ratings: Iterable[RatingRow]) -> tuple[I64, I64, npt.NDArray[np.float64]]:
        """The ratings of recommended pairs only: their pair keys, times and values."""
        keys: list[I64] = []
        times: list[I64] = []
        values: list[npt.NDArray[np.float64]] = []
        for chunk in _chunks(ratings):
            millis, user, movie, value = zip(*chunk, strict=True)
            key, kept = self._key_of(np.array(user, np.int64), np.array(movie, np.int64))
            keys.append(key[kept])
            times.append(np.array(millis, np.int64)[kept])
            values.append(np.array(value, np.float64)[kept])
        return (
            cast(I64, _concat(keys, np.int64)),
            cast(I64, _concat(times, np.int64)),
            cast(npt.NDArray[np.float64], _concat(values, np.float64)),
        )

    def _key_of(self, user: I64, movie: I64) -> tuple[I64, Bools]:
        """The pair key of each (user, movie), and whether that pair was recommended."""
        if not self.keys.size:
            return np.zeros(user.size, np.int64), np.zeros(user.size, np.bool_)
        # searchsorted gives where each would go; equality says whether it is there.
        u = np.searchsorted(self.users, user).clip(max=self.users.size - 1)
        m = np.searchsorted(self.movies, movie).clip(max=self.movies.size - 1)
        known = (self.users[u] == user) & (self.movies[m] == movie)
        key = u.astype(np.int64) * self.movies.size + m
        at = np.searchsorted(self.keys, key).clip(max=self.keys.size - 1)
        return key, known & (self.keys[at] == key)

    def rated_within(
        self, key: I64, millis: I64, value: npt.NDArray[np.float64], window_ms: int
    ) -> tuple[Bools, Bools]:
        """Per pair: rated in (t0, t0 + window], and whether that first such rating is liked.

        Pairs and ratings are sorted together by (key, time), a rating before a pair at the
        same time (a rating at t0 does not follow it); a pair's first rating after t0 is
        then the next rating row, if it has the pair's key.
        """
        n_pairs = self.key.size
        rated = np.zeros(n_pairs, np.bool_)
        liked = np.zeros(n_pairs, np.bool_)
        if not n_pairs or not key.size:
            return rated, liked
        all_key = np.concatenate([self.key, key])
        all_ms = np.concatenate([self.first, millis])
        is_pair = np.concatenate([np.ones(n_pairs, np.bool_), np.zeros(key.size, np.bool_)])
        order = np.lexsort((is_pair, all_ms, all_key))
        size = order.size
        # For every sorted row, the next rating row at or after it (size: none).
        rating_at = np.where(is_pair[order], size, np.arange(size))
        following = np.minimum.accumulate(rating_at[::-1])[::-1]
        rows = np.flatnonzero(is_pair[order])
        pair = order[rows]
        found = following[rows] < size
        rating = order[np.where(found, following[rows], 0)]  # junk where not found
        hit = found & (all_key[rating] == all_key[pair])
        hit &= all_ms[rating] <= all_ms[pair] + window_ms
        rated[pair] = hit
        liked[pair] = hit & (value[np.where(hit, rating - n_pairs, 0)] >= LIKED)
        return rated, liked


def _z(hits1: int, n1: int, hits2: int, n2: int) -> float:
    """The two-proportion z statistic with the pooled rate; 0.0 when both rates are 0 or 1."""
    pooled = (hits1 + hits2) / (n1 + n2)
    spread = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    return (hits1 / n1 - hits2 / n2) / spread if spread else 0.0
