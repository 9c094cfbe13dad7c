"""The request mechanics of one loaded model version: ids, masks, top-n, rows of a batch.

The model itself (id maps, hidden pre-activations, the scoring API) is ``rbm``'s
``Checkpoint``; this wraps it for a batch of requests. Nothing here knows gRPC or Redis, so
the trainer's evaluation runs this same code. A request is computed entirely on one
``Engine``, and the engine never changes after construction, so a hot swap is replacing a
reference.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path

import torch
from torch import Tensor

from rbm.checkpoint import Checkpoint, load_checkpoint
from rbm.model import RatingsBatch, RBMParams
from server.backends import ScoredBatch, ScorePass, make_score_pass, torch_side
from server.device_link import DeviceLink

__all__ = [
    "POPULARITY",
    "BatchResult",
    "Engine",
    "Neighbours",
    "PredictQuery",
    "Query",
    "Recommendation",
    "TopNQuery",
    "UserRatings",
]


@dataclass(frozen=True)
class UserRatings:
    """A user's ratings as parallel int64 tensors of movie and level indices (CPU)."""

    movies: Tensor
    levels: Tensor

    def __len__(self) -> int:
        return int(self.movies.numel())

    def level_of(self, movie: int) -> int | None:
        """The level the user gave ``movie``, if rated."""
        hit = (self.movies == movie).nonzero()
        return int(self.levels[hit[0, 0]]) if hit.numel() else None


_EMPTY = torch.empty(0, dtype=torch.int64)


@dataclass(frozen=True)
class TopNQuery:
    """The best ``n`` movies, leaving out rated ones unless ``include_rated``.

    ``exclude`` movies are never returned; a non-empty ``candidates`` ranks only those
    (both catalogue indices).
    """

    n: int
    include_rated: bool = False
    exclude: tuple[int, ...] = ()
    candidates: tuple[int, ...] = ()


@dataclass(frozen=True)
class PredictQuery:
    """Expected ratings of these movie indices."""

    movies: tuple[int, ...]


Query = TopNQuery | PredictQuery


POPULARITY = "popularity"  # the fallback of a user without ratings the model can use


@dataclass(frozen=True)
class Recommendation:
    """Top movies for one user, best first, as catalogue indices.

    ``fallback`` is empty for a personal answer, ``POPULARITY`` for a user the model knows
    nothing about.
    """

    movies: list[int]
    scores: list[float]
    predicted: list[float]
    fallback: str = ""


class Engine:
    """A checkpoint ready to serve on ``device`` with one scoring backend.

    ``identity`` names the model's content (version and checksum): cached hidden states are
    keyed by it, so two registries that both hold a "version 1" never share them.
    """

    def __init__(
        self,
        ckpt: Checkpoint,
        version: str,
        device: torch.device,
        scoring: ScorePass,
        backend: str = "torch",
        identity: str = "",
        log_point: str | None = None,
    ) -> None:
        self.version = version
        self.identity = identity or version
        # The last rating-log entry the version absorbed (None: trained without the log).
        self.log_point = log_point
        self.device = device
        self.backend = backend
        self.config = ckpt.config
        self.scoring = scoring
        self.link = DeviceLink(device)  # every copy between host and device goes through it
        self.encoder = ckpt.encoder(device)
        self.ckpt = ckpt = self._released(ckpt)
        self.hidden_width = self.encoder.width
        self.movie_index = ckpt.movie_index
        self.movie_ids: list[int] = ckpt.movie_ids.tolist()
        self.user_row = ckpt.user_row
        self.level_of = ckpt.level_of
        self.popularity = ckpt.popularity.to(device)

    def _released(self, ckpt: Checkpoint) -> Checkpoint:
        """The checkpoint less the weights that the scoring pass and the encoder now hold.

        Kept, a version's weights would sit in memory twice (four times during a swap): the
        scorers keep the item RBM in their own per-user layout, and off the host the encoder
        holds the RBMs' weights on the device. What stays is what serving still reads: ids,
        titles, the users' training ratings, and the movies' features for SimilarMovies
        (on the device, beside the weights they are computed with).
        """
        item = ckpt.item
        if item is not None:
            empty = torch.empty(0)
            item = replace(item, params=RBMParams(empty, empty, empty))
            if not self.link.on_host:
                (movie_hidden,) = self.link.send([item.movie_hidden])
                item = replace(item, movie_hidden=movie_hidden)
        if self.link.on_host:
            return replace(ckpt, item=item)
        return replace(ckpt, params=self.encoder.params, implicit=self.encoder.implicit, item=item)

    @classmethod
    def load(
        cls,
        directory: Path,
        version: str,
        device: torch.device,
        backend: str = "torch",
        identity: str = "",
        log_point: str | None = None,
        warm_batch: int = 64,
    ) -> Engine:
        """Load and check a checkpoint directory, then warm the scoring pass once.

        ``warm_batch``: the largest batch the server will run, warmed at that shape.
        """
        ckpt = load_checkpoint(directory)
        scoring = make_score_pass(backend, ckpt, directory, device)
        side = torch_side(backend, device)
        engine = cls(ckpt, version, side, scoring, backend, identity, log_point)
        engine.run(*engine._warm_batch(max(1, warm_batch)))
        return engine

    def _warm_batch(
        self, size: int
    ) -> tuple[list[int], list[UserRatings], list[Query], list[Tensor | None]]:
        """One batch of ``size`` rows taking every branch of ``run``, so that the first real
        batch pays no first-call costs (kernel choice, allocator growth, ONNX shapes).

        Rows mix known and cold users, masked and include_rated top-n, exclude and candidate
        filters, PredictRatings, and a cache hit beside the misses.
        """
        known = next(iter(self.user_row), None)
        rated = self.user_ratings(known, {}) if known is not None else UserRatings(_EMPTY, _EMPTY)
        some = tuple(range(min(3, self.n_movies)))
        kinds: list[Query] = [
            TopNQuery(10),
            TopNQuery(10, include_rated=True),
            TopNQuery(10, exclude=some),
            TopNQuery(10, candidates=some),
            PredictQuery(some),
        ]
        users = [known if known is not None and b % 3 else -1 for b in range(size)]
        ratings = [rated if u != -1 else UserRatings(_EMPTY, _EMPTY) for u in users]
        queries = [kinds[b % len(kinds)] for b in range(size)]
        cached: list[Tensor | None] = [None] * size
        if size > 1 and len(rated):  # one hit, so the hit/miss merge runs too
            cached[1] = self.hidden_pre(rated)
        return users, ratings, queries, cached

    @torch.inference_mode()
    def similar(self, movie: int, n: int) -> Neighbours:
        """The ``n`` movies nearest to ``movie`` (cosine of ``Checkpoint.movie_vectors``)."""
        vectors = self._movie_vectors
        near = vectors @ vectors[movie]  # (M,)
        near[movie] = -torch.inf  # never the movie itself
        k = min(n, self.n_movies - 1)
        top_s, top_i = torch.topk(near, k)
        scores, movies = self.link.receive([top_s, top_i.to(torch.int32)])
        return Neighbours(movies.tolist(), scores.tolist())

    @cached_property
    def _movie_vectors(self) -> Tensor:
        # Built at the first SimilarMovies call, not at load: most versions never get one.
        # Computed where the weights are (``_released`` left them on the device).
        return self.ckpt.movie_vectors()

    @property
    def where(self) -> str:
        """Where the scoring pass really runs, for GetModelInfo and logs."""
        return self.scoring.where

    @property
    def n_movies(self) -> int:
        """Catalogue size."""
        return self.config.n_movies

    def user_ratings(self, user_id: int, streamed: Mapping[int, float]) -> UserRatings:
        """Training ratings of the user, overlaid with its streamed {movie id: rating}.

        Movies or ratings this version does not know are skipped (a newer catalogue may
        lack them). Without streamed ratings this is two views into the checkpoint.
        """
        row = self.user_row.get(user_id)
        movies, levels = (_EMPTY, _EMPTY) if row is None else self.ckpt.training_ratings(row)
        if not streamed:
            return UserRatings(movies, levels)
        merged = dict(zip(movies.tolist(), levels.tolist(), strict=True))
        for movie_id, value in streamed.items():
            movie, level = self.movie_index.get(movie_id), self.level_of.get(value)
            if movie is not None and level is not None:
                merged[movie] = level
        return UserRatings(
            torch.tensor(list(merged.keys()), dtype=torch.int64),
            torch.tensor(list(merged.values()), dtype=torch.int64),
        )

    @torch.inference_mode()
    def hidden_pre(self, ratings: UserRatings) -> Tensor:
        """The user's hidden pre-activation, as the cache holds it: (hidden_width,) on the host."""
        movies, levels = self.link.send([ratings.movies, ratings.levels])
        state = self.encoder.encode_one(movies, levels)
        (host,) = self.link.receive([state])
        return host

    @torch.inference_mode()
    def moved_state(self, state: Tensor, movie: int, level: int, old_level: int | None) -> Tensor:
        """A cached (host) state after the user rated ``movie`` at ``level``, in O(F).

        ``old_level`` is the user's previous rating of the movie, if any: its row goes out.
        """
        (on_device,) = self.link.send([state])
        moved = on_device + self.encoder.unit_row(movie, level)
        if old_level is not None:
            moved = moved - self.encoder.unit_row(movie, old_level)
        (host,) = self.link.receive([moved])
        return host

    @torch.inference_mode()
    def run(
        self,
        user_ids: Sequence[int],
        rated: Sequence[UserRatings],
        queries: Sequence[Query],
        cached: Sequence[Tensor | None] | None = None,
    ) -> BatchResult:
        """One scoring pass for a batch of users, then each row's top-n or predictions.

        ``cached`` holds the rows' hidden states from the cache (host tensors; None for a
        miss): the misses are computed here, in the pass, and come back in the result for
        the cache. Users with no ratings at all get popularity order (their RBM scores carry
        no information about them).
        """
        plan = _Plan.of(self, user_ids, rated, queries, cached or [None] * len(queries))
        inputs = plan.on_device(self.link)
        h = self._hidden(plan, inputs, cached)
        scored = self.scoring.score(h, inputs.item_rows)
        results: list[Tensor] = []
        if plan.top_rows:
            top_s, top_i, top_e = self._top_n(plan, inputs, scored)
            results += [top_s, top_i.to(torch.int32), top_e]
        if plan.predict_rows:
            results.append(scored.predicted_at(inputs.predict_rows, inputs.predict_movies))
        if plan.misses:
            results.append(h if len(plan.misses) == len(queries) else h[inputs.misses])
        return plan.unpack(self.link.receive(results))

    def _hidden(
        self, plan: _Plan, inputs: _DeviceInputs, cached: Sequence[Tensor | None] | None
    ) -> Tensor:
        """The batch's hidden pre-activations on the device: cache hits, then the misses."""
        fresh = self.encoder.encode(inputs.miss_ratings) if plan.misses else None
        rows = [v for b in plan.hits if cached and (v := cached[b]) is not None]
        hits = self.link.stack(rows) if rows else None
        if hits is None:
            assert fresh is not None
            return fresh
        if fresh is None:
            return hits  # every row a hit, in batch order
        h = torch.empty(len(plan.queries), self.hidden_width, device=self.device)
        h[inputs.hits] = hits
        h[inputs.misses] = fresh
        return h

    def _top_n(
        self, plan: _Plan, inputs: _DeviceInputs, scored: ScoredBatch
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Scores, movie indices and predicted ratings of the top-n rows: each (R, k)."""
        all_rows = len(plan.top_rows) == len(plan.queries)
        scores = scored.scores if all_rows else scored.scores[inputs.top_rows]  # (R, M)
        if any(plan.cold):
            cold = inputs.cold.bool().unsqueeze(1)
            scores = torch.where(cold, self.popularity.expand_as(scores), scores)
        if plan.any_masked:
            blocked = torch.zeros_like(scores, dtype=torch.bool)
            if plan.any_candidates:  # a row with candidates allows those and no other
                blocked[inputs.candidate_rows] = True
                blocked[inputs.allow_rows, inputs.allow_movies] = False
            blocked[inputs.mask_rows, inputs.mask_movies] = True  # rated, or excluded
            scores = scores.masked_fill(blocked, -torch.inf)
        top_s, top_i = torch.topk(scores, plan.k, dim=1)
        return top_s, top_i, scored.predicted_at(inputs.top_rows, top_i)


@dataclass(frozen=True)
class Neighbours:
    """Movies near one movie, nearest first, as catalogue indices with cosine similarities."""

    movies: list[int]
    scores: list[float]


@dataclass(frozen=True)
class BatchResult:
    """A pass's answers in batch order, and the hidden states it computed (host tensors)."""

    outputs: list[Recommendation | list[float]]
    computed: dict[int, Tensor]  # batch row -> the hidden state of a cache miss


@dataclass(frozen=True)
class _DeviceInputs:
    """Every integer input of a pass, on the device (from one copy)."""

    item_rows: Tensor  # (B,) each user's item-RBM row, -1 for none
    hits: Tensor  # batch rows whose hidden state came from the cache
    misses: Tensor  # batch rows whose hidden state is computed in the pass
    miss_ratings: RatingsBatch  # the misses' ratings, rows indexing ``misses``
    top_rows: Tensor  # batch rows of the top-n queries
    cold: Tensor  # per top-n row: 1 for a user without ratings
    mask_rows: Tensor  # (top-n row, movie) pairs never recommended: rated or excluded
    mask_movies: Tensor
    candidate_rows: Tensor  # top-n rows that rank only their candidates
    allow_rows: Tensor  # (top-n row, movie) pairs of those candidates
    allow_movies: Tensor
    predict_rows: Tensor  # batch rows of the PredictRatings queries
    predict_movies: Tensor  # (P, W) their movies, padded with movie 0


@dataclass(frozen=True)
class _Plan:
    """A batch laid out on the host: which rows do what, and every index the pass needs."""

    queries: Sequence[Query]
    hits: list[int]
    misses: list[int]
    top_rows: list[int]
    predict_rows: list[int]
    k: int  # how many movies the top-n rows take from the pass
    cold: list[bool]  # per top-n row: a user without ratings, answered by popularity
    any_masked: bool  # some top-n row leaves movies out (rated, excluded, not a candidate)
    any_candidates: bool
    host: list[Tensor]  # the int64 inputs, in _DeviceInputs's order

    @classmethod
    def of(
        cls,
        engine: Engine,
        user_ids: Sequence[int],
        rated: Sequence[UserRatings],
        queries: Sequence[Query],
        cached: Sequence[Tensor | None],
    ) -> _Plan:
        """Lay out a batch for ``engine``."""
        hits = [b for b, value in enumerate(cached) if value is not None]
        misses = [b for b, value in enumerate(cached) if value is None]
        tops = [(b, q) for b, q in enumerate(queries) if isinstance(q, TopNQuery)]
        top_rows = [b for b, _ in tops]
        predict = [(b, q.movies) for b, q in enumerate(queries) if isinstance(q, PredictQuery)]
        cold = [not rated[b] for b in top_rows]
        left_out = [_left_out(q, rated[b]) for b, q in tops]  # per top-n row: movies
        with_candidates = [r for r, (_, q) in enumerate(tops) if q.candidates]
        miss_rows = _owners([len(rated[b]) for b in misses])
        width = max((len(m) for _, m in predict), default=0)
        padded = torch.zeros(len(predict), max(width, 1), dtype=torch.int64)
        for r, (_, movies) in enumerate(predict):
            padded[r, : len(movies)] = torch.tensor(movies, dtype=torch.int64)
        host = [
            torch.tensor([engine.user_row.get(u, -1) for u in user_ids], dtype=torch.int64),
            _ints(hits),
            _ints(misses),
            miss_rows,
            _cat([rated[b].movies for b in misses]),
            _cat([rated[b].levels for b in misses]),
            _ints(top_rows),
            _ints([int(c) for c in cold]),
            _owners([len(m) for m in left_out]),
            _cat(left_out),
            _ints(with_candidates),
            _ints(with_candidates).repeat_interleave(
                _ints([len(tops[r][1].candidates) for r in with_candidates])
            ),
            _ints([m for r in with_candidates for m in tops[r][1].candidates]),
            _ints([b for b, _ in predict]),
            padded,
        ]
        return cls(
            queries=queries,
            hits=hits,
            misses=misses,
            top_rows=top_rows,
            predict_rows=[b for b, _ in predict],
            k=min(max((q.n for _, q in tops), default=1), engine.n_movies),
            cold=cold,
            any_masked=any(m.numel() for m in left_out) or bool(with_candidates),
            any_candidates=bool(with_candidates),
            host=host,
        )

    def on_device(self, link: DeviceLink) -> _DeviceInputs:
        """The inputs on the link's device, in one copy."""
        (item_rows, hits, misses, miss_rows, movies, levels, top_rows, cold, mask_rows,
         mask_movies, candidate_rows, allow_rows, allow_movies, predict_rows,
         predict_movies) = link.send(self.host)  # fmt: skip
        return _DeviceInputs(
            item_rows=item_rows,
            hits=hits,
            misses=misses,
            miss_ratings=RatingsBatch(miss_rows, movies, levels, len(self.misses)),
            top_rows=top_rows,
            cold=cold,
            mask_rows=mask_rows,
            mask_movies=mask_movies,
            candidate_rows=candidate_rows,
            allow_rows=allow_rows,
            allow_movies=allow_movies,
            predict_rows=predict_rows,
            predict_movies=predict_movies,
        )

    def unpack(self, host: list[Tensor]) -> BatchResult:
        """The pass's results (host tensors, in ``Engine.run``'s order) per batch row."""
        out: dict[int, Recommendation | list[float]] = {}
        parts = iter(host)
        if self.top_rows:
            s_list, i_list, e_list = (next(parts).tolist() for _ in range(3))
            for r, b in enumerate(self.top_rows):
                query = self.queries[b]
                assert isinstance(query, TopNQuery)
                n = min(query.n, self.k)  # a catalogue smaller than n gives what it has
                while n and s_list[r][n - 1] == -math.inf:  # fewer unrated movies than n
                    n -= 1
                fallback = POPULARITY if self.cold[r] else ""
                out[b] = Recommendation(i_list[r][:n], s_list[r][:n], e_list[r][:n], fallback)
        if self.predict_rows:
            values = next(parts).tolist()
            for r, b in enumerate(self.predict_rows):
                query = self.queries[b]
                assert isinstance(query, PredictQuery)
                out[b] = values[r][: len(query.movies)]
        # Each state is cloned out of the batch's buffer: a view would keep the whole buffer
        # alive for as long as the in-process cache keeps the state.
        states = next(parts) if self.misses else None
        computed = (
            {b: states[r].clone() for r, b in enumerate(self.misses)} if states is not None else {}
        )
        return BatchResult([out[b] for b in range(len(self.queries))], computed)


def _left_out(query: TopNQuery, rated: UserRatings) -> Tensor:
    """The movies a top-n query must never return: excluded ones, and rated ones unless asked."""
    excluded = _ints(query.exclude)
    if query.include_rated or not rated:
        return excluded
    return torch.cat([rated.movies, excluded]) if query.exclude else rated.movies


def _ints(values: Sequence[int]) -> Tensor:
    return torch.tensor(values, dtype=torch.int64)


def _cat(parts: Sequence[Tensor]) -> Tensor:
    return torch.cat(list(parts)) if parts else _EMPTY


def _owners(lengths: Sequence[int]) -> Tensor:
    """Entry -> row index for rows of these lengths: [2, 1] -> [0, 0, 1]."""
    return torch.repeat_interleave(_ints(list(range(len(lengths)))), _ints(lengths))
