"""The serving logic behind the RPCs, free of gRPC: validation, hidden states, batching, updates."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol, TypeVar

from ratinglog import Entry, entry_key
from server.batcher import Batcher, BatcherConfig
from server.engine import (
    Engine,
    PredictQuery,
    Query,
    Recommendation,
    TopNQuery,
    UserRatings,
)
from server.errors import InvalidArgument, NotFound, ServiceError, Unavailable
from server.hidden_cache import CacheKey, HiddenCache
from server.model_holder import ModelHolder
from server.ratings import MAX_UPDATE_ID, Applied, RatingLog, RatingRecord, UserOverlay

__all__ = [
    "MAX_N",
    "MAX_PREDICT",
    "PredictJob",
    "Predicted",
    "RecommendJob",
    "Recommender",
    "Served",
    "Similar",
]

MAX_N = 1000
MAX_PREDICT = 10_000
MAX_LISTED = 10_000  # exclude_movie_ids or candidate_movie_ids of one request
MAX_FUTURE_S = 86_400  # a timestamp more than a day ahead is a client bug, not a clock skew
LOG_RETRY_S = 1.0  # how long batches skip the rating log after it failed to answer

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class RecommendJob:
    """One Recommend request as the batcher sees it."""

    user_id: int
    n: int
    include_rated: bool
    exclude: tuple[int, ...] = ()  # MovieLens ids never returned
    candidates: tuple[int, ...] = ()  # when non-empty, rank only these MovieLens ids


@dataclass(frozen=True)
class PredictJob:
    """One PredictRatings request as the batcher sees it (MovieLens movie ids)."""

    user_id: int
    movie_ids: tuple[int, ...]
    skip_unknown: bool = False  # unknown movies get NaN instead of failing the request


Job = RecommendJob | PredictJob


@dataclass(frozen=True)
class Served:
    """A Recommend response, best first, in columns, and the version that computed it.

    Columns rather than one record per movie: the servicer copies them straight into the
    protobuf message, and this is built for every request of every batch.
    """

    version: str
    movie_ids: list[int]
    scores: list[float]
    predicted: list[float]
    titles: list[str]
    fallback: str = ""  # "" for a personal answer, "popularity" for a user without ratings


@dataclass(frozen=True)
class Similar:
    """A SimilarMovies response: nearest first, with cosine similarities."""

    version: str
    movie_ids: list[int]
    scores: list[float]
    titles: list[str]


@dataclass(frozen=True)
class Predicted:
    """A PredictRatings response and the version that computed it."""

    version: str
    ratings: list[float]


Result = Served | Predicted | ServiceError  # a per-request error travels back as a value
Answered = Served | ServiceError  # a request answered without a pass
NOT_RUN: Result = ServiceError("internal: request was not computed")  # replaced for live rows


@dataclass(frozen=True)
class UpdateAck:
    """What UpdateRatings acknowledges: the log entry, whether it applies, a repeat or not."""

    log_id: str
    applied: bool  # the serving version knows the movie (else kept for the next retrain)
    duplicate: bool  # the update_id was stored before: nothing new was logged


class Archive(Protocol):
    """Log entries trimmed from the stream, kept in order (``ratinglog.archive``)."""

    @property
    def last_id(self) -> str | None:
        """The newest archived entry id, None when empty."""
        ...

    def pages(self, after: str | None = None) -> Iterator[list[Entry]]:
        """Archived entries strictly after ``after``, oldest first, a page at a time."""
        ...


@dataclass
class ReplayStats:
    """The last overlay build, for metrics."""

    seconds: float = 0.0
    entries: int = 0
    from_archive: int = 0


@dataclass(frozen=True)
class _UserState:
    ratings: UserRatings  # training ratings + streamed ones
    key: CacheKey


def _check_user(user_id: int) -> None:
    # MovieLens ids start at 1, and 0 is what a request that forgot user_id carries.
    if user_id <= 0:
        raise InvalidArgument(f"user_id must be positive, got {user_id}")


class Recommender:
    """Answers Recommend, PredictRatings and rating updates on the holder's current engine."""

    def __init__(
        self,
        holder: ModelHolder,
        cache: HiddenCache,
        rating_log: RatingLog,
        batcher_config: BatcherConfig,
        worker: Executor | None = None,
        archive: Archive | None = None,
    ) -> None:
        self.holder = holder
        self.cache = cache
        # Each version has its own overlay (the entries after its point): the current one's,
        # and the next one's while it is being prepared.
        self._overlays: dict[str, UserOverlay] = {}
        self.rating_log = rating_log
        self.archive = archive
        self.replayed = ReplayStats()
        self.batcher: Batcher[Job, Result] = Batcher(self._run_batch, batcher_config)
        # One worker, the model thread: every tensor operation of a request runs on it, one
        # pass at a time (the event loop never waits on the device), and a dedicated
        # executor skips the context copy of asyncio.to_thread on every batch.
        self._worker = worker or ThreadPoolExecutor(1, thread_name_prefix="model")
        self._log_down_until = 0.0

    async def close(self) -> None:
        """Stop batching (queued requests fail) and release the model thread."""
        await self.batcher.close()
        self._worker.shutdown(wait=True)

    async def recommend(self, job: RecommendJob, timeout_s: float | None = None) -> Served:
        """Top-n movies for a user, computed in a batch with concurrent requests."""
        _check_user(job.user_id)
        if not 1 <= job.n <= MAX_N:
            raise InvalidArgument(f"n must be between 1 and {MAX_N}, got {job.n}")
        listed = {"exclude_movie_ids": job.exclude, "candidate_movie_ids": job.candidates}
        for name, ids in listed.items():
            if len(ids) > MAX_LISTED:
                raise InvalidArgument(f"at most {MAX_LISTED} {name} per request, got {len(ids)}")
        result = await self.batcher.submit(job, timeout_s)
        if isinstance(result, ServiceError):
            raise result
        assert isinstance(result, Served)
        return result

    async def similar(self, movie_id: int, n: int) -> Similar:
        """The ``n`` movies nearest to ``movie_id`` in the serving model."""
        if not 1 <= n <= MAX_N:
            raise InvalidArgument(f"n must be between 1 and {MAX_N}, got {n}")
        engine = self.holder.require()
        movie = engine.movie_index.get(movie_id)
        if movie is None:
            raise NotFound(f"movie {movie_id} is not in model version {engine.version}")
        near = await self._on_model_thread(engine.similar, movie, n)
        ids, titles = engine.movie_ids, engine.ckpt.titles
        return Similar(
            engine.version,
            [ids[m] for m in near.movies],
            near.scores,
            [titles[m] for m in near.movies],
        )

    async def predict(self, job: PredictJob, timeout_s: float | None = None) -> Predicted:
        """Predicted rating of each movie for the user, in request order."""
        _check_user(job.user_id)
        if len(job.movie_ids) > MAX_PREDICT:
            raise InvalidArgument(
                f"at most {MAX_PREDICT} movie_ids per request, got {len(job.movie_ids)}"
            )
        result = await self.batcher.submit(job, timeout_s)
        if isinstance(result, ServiceError):
            raise result
        assert isinstance(result, Predicted)
        return result

    async def _run_batch(self, jobs: list[Job]) -> list[Result]:
        engine = self.holder.require()  # the whole batch is computed on one version
        overlay = self.overlay_of(engine)
        await self._follow_log(overlay)
        queries = [self._query(engine, job) for job in jobs]
        # A query that is already answered (an error, or nothing to rank) skips the pass.
        results: list[Result] = [q if isinstance(q, Answered) else NOT_RUN for q in queries]
        live = [(i, q) for i, q in enumerate(queries) if not isinstance(q, Answered)]
        if not live:
            return results
        states = [self._state(engine, overlay, jobs[i].user_id) for i, _ in live]
        cached = await self.cache.get_many([s.key for s in states])
        passed = await self._on_model_thread(
            engine.run,
            [jobs[i].user_id for i, _ in live],
            [s.ratings for s in states],
            [q for _, q in live],
            [v if v is not None and v.shape == (engine.hidden_width,) else None for v in cached],
        )
        await self.cache.set_many([(states[b].key, v) for b, v in passed.computed.items()])
        for (i, _), out in zip(live, passed.outputs, strict=True):
            results[i] = self._response(engine, jobs[i], out)
        return results

    async def _on_model_thread(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._worker, fn, *args)

    @staticmethod
    def _query(engine: Engine, job: Job) -> Query | Answered:
        index = engine.movie_index
        if isinstance(job, RecommendJob):
            # Unknown ids are skipped: a newer catalogue may hold movies this version lacks.
            exclude = tuple(m for mid in job.exclude if (m := index.get(mid)) is not None)
            candidates = tuple(m for mid in job.candidates if (m := index.get(mid)) is not None)
            if job.candidates and not candidates:  # every candidate unknown: none to rank
                return Served(engine.version, [], [], [], [])
            return TopNQuery(job.n, job.include_rated, exclude, candidates)
        movies = []
        for mid in job.movie_ids:
            idx = index.get(mid)
            if idx is None and not job.skip_unknown:
                return NotFound(f"movie {mid} is not in model version {engine.version}")
            if idx is not None:
                movies.append(idx)
        return PredictQuery(tuple(movies))

    @staticmethod
    def _response(engine: Engine, job: Job, out: Recommendation | list[float]) -> Result:
        if isinstance(out, list):
            assert isinstance(job, PredictJob)
            if len(out) < len(job.movie_ids):  # skipped unknown movies come back as NaN
                known = iter(out)
                index = engine.movie_index
                out = [next(known) if m in index else math.nan for m in job.movie_ids]
            return Predicted(engine.version, out)
        titles, ids = engine.ckpt.titles, engine.movie_ids
        return Served(
            engine.version,
            [ids[m] for m in out.movies],
            out.scores,
            out.predicted,
            [titles[m] for m in out.movies],
            out.fallback,
        )

    # -- the overlay of each version -------------------------------------------------------
    def overlay_of(self, engine: Engine) -> UserOverlay:
        """The overlay of ``engine``'s version (built by ``prepare`` before it was served)."""
        overlay = self._overlays.get(engine.identity)
        if overlay is None:  # an engine set without prepare (tests): start at its point
            overlay = self._overlays[engine.identity] = UserOverlay(point=engine.log_point)
        if len(self._overlays) > 1 and engine is self.holder.engine:
            # The previous version is no longer served: its overlay goes (batches already
            # running on it hold their own reference).
            self._overlays = {engine.identity: overlay}
        return overlay

    def built_overlay(self, engine: Engine) -> UserOverlay | None:
        """The overlay of ``engine``'s version if built, without touching any (for metrics)."""
        return self._overlays.get(engine.identity)

    async def prepare(self, engine: Engine) -> None:
        """Build the overlay of a version about to be served: the log after its point.

        Entries trimmed from the stream come from the archive (a rollback to a version
        older than the trim); the rest from the stream, a page at a time. A stream that
        does not answer is caught up by the next batches; an archive that cannot be read
        fails the version (it would serve without acknowledged ratings).
        """
        started = time.monotonic()
        overlay = UserOverlay(point=engine.log_point)
        from_archive = 0
        archived = self.archive.last_id if self.archive is not None else None
        point = engine.log_point
        if archived is not None and (point is None or entry_key(archived) > entry_key(point)):
            assert self.archive is not None
            pages = self.archive.pages(after=point)
            empty: list[Entry] = []
            while page := await asyncio.to_thread(next, pages, empty):
                from_archive += len(overlay.apply_entries(page))
        try:
            await overlay.replay(self.rating_log)
        except Unavailable as exc:  # batches catch up from where this stopped
            log.warning("rating log not replayed yet for version %s: %s", engine.version, exc)
        streamed = overlay.replayed
        self._overlays[engine.identity] = overlay
        self.replayed = ReplayStats(
            time.monotonic() - started, from_archive + streamed, from_archive
        )
        log.info(
            "version %s: replayed %d rating-log entries after %s (%d from the archive) in %.2fs",
            engine.version,
            self.replayed.entries,
            point or "the start",
            from_archive,
            self.replayed.seconds,
        )

    # -- UpdateRatings ---------------------------------------------------------------------
    async def update(self, record: RatingRecord, update_id: str = "") -> UpdateAck:
        """Validate, log durably (once per ``update_id``), then apply the log's new entries.

        Raises InvalidArgument for a bad update and Unavailable when the log cannot store
        it: nothing is applied unless the log has it. A movie the serving version does not
        know is stored all the same (``applied=False``): the next retrain adds it.
        """
        engine = self.holder.require()
        self._validate(engine, record, update_id)
        stamped = (
            record
            if record.timestamp
            else RatingRecord(record.user_id, record.movie_id, record.rating, int(time.time()))
        )
        stored = await self.rating_log.append(stamped, update_id)
        # Apply through the log, not directly: every replica then applies the same entries
        # in the same order. Should the read fail now, the entry is stored but not yet
        # visible here, so the client is told to retry (with its update_id, harmlessly).
        applied = await self.overlay_of(engine).catch_up(self.rating_log)
        for entry in applied:
            if entry.record.user_id == record.user_id:
                await self._update_cached(engine, entry)
        known = record.movie_id in engine.movie_index
        return UpdateAck(stored.entry_id, known, stored.duplicate)

    async def _update_cached(self, engine: Engine, entry: Applied) -> None:
        """O(F): move the cached hidden state past one entry by swapping one weight row."""
        user, movie_id = entry.record.user_id, entry.record.movie_id
        before = CacheKey(self.holder.model, engine.identity, user, entry.previous_position)
        movie, level = engine.movie_index.get(movie_id), engine.level_of.get(entry.record.rating)
        if movie is None or level is None:
            return  # logged under a version that knew it; this one skips it (user_ratings too)
        (cached,) = await self.cache.get_many([before])
        if cached is None or cached.shape != (engine.hidden_width,):
            return
        old_level = (
            engine.level_of.get(entry.previous)
            if entry.previous is not None
            else engine.user_ratings(user, {}).level_of(movie)  # a rating from training
        )
        new = await self._on_model_thread(engine.moved_state, cached, movie, level, old_level)
        after = CacheKey(self.holder.model, engine.identity, user, entry.entry_id)
        await self.cache.set_many([(after, new)])

    async def _follow_log(self, overlay: UserOverlay) -> None:
        """Apply entries other replicas logged, so this batch sees every acknowledged update."""
        if time.monotonic() < self._log_down_until:
            return
        try:
            await overlay.catch_up(self.rating_log)
        except Unavailable as exc:  # answer from what we have; updates refuse meanwhile
            self._log_down_until = time.monotonic() + LOG_RETRY_S
            log.warning("rating log unreachable, serving without new updates: %s", exc)

    @staticmethod
    def _validate(engine: Engine, record: RatingRecord, update_id: str) -> None:
        _check_user(record.user_id)
        if record.movie_id <= 0:
            raise InvalidArgument(f"movie_id must be positive, got {record.movie_id}")
        if len(update_id) > MAX_UPDATE_ID:
            raise InvalidArgument(f"update_id is longer than {MAX_UPDATE_ID} characters")
        level = engine.level_of.get(record.rating) if math.isfinite(record.rating) else None
        if level is None:
            scale = ", ".join(f"{v:g}" for v in engine.ckpt.levels)
            raise InvalidArgument(f"rating {record.rating} is not on the model's scale ({scale})")
        if record.timestamp < 0 or record.timestamp > time.time() + MAX_FUTURE_S:
            raise InvalidArgument(f"timestamp {record.timestamp} is not a sane Unix time")

    # -- hidden states ---------------------------------------------------------------------
    def _state(self, engine: Engine, overlay: UserOverlay, user_id: int) -> _UserState:
        streamed, position = overlay.get(user_id)
        ratings = engine.user_ratings(user_id, streamed)
        key = CacheKey(self.holder.model, engine.identity, user_id, position)
        return _UserState(ratings, key)
