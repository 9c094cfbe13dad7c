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
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from rbm.checkpoint import Checkpoint, load_checkpoint
from server.backends import ScoredBatch, ScorePass, make_score_pass

__all__ = ["Engine", "PredictQuery", "Query", "Recommendation", "TopNQuery", "UserRatings"]


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
    """The best ``n`` movies, leaving out rated ones unless ``include_rated``."""

    n: int
    include_rated: bool = False


@dataclass(frozen=True)
class PredictQuery:
    """Expected ratings of these movie indices."""

    movies: tuple[int, ...]


Query = TopNQuery | PredictQuery


@dataclass(frozen=True)
class Recommendation:
    """Top movies for one user, best first, as catalogue indices."""

    movies: list[int]
    scores: list[float]
    predicted: list[float]


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
    ) -> None:
        self.ckpt = ckpt
        self.version = version
        self.identity = identity or version
        self.device = device
        self.backend = backend
        self.config = ckpt.config
        self.scoring = scoring
        self.encoder = ckpt.encoder(device)
        self.hidden_width = self.encoder.width
        self.movie_index = ckpt.movie_index
        self.movie_ids: list[int] = ckpt.movie_ids.tolist()
        self.user_row = ckpt.user_row
        self.level_of = ckpt.level_of
        self.popularity = ckpt.popularity.to(device)

    @classmethod
    def load(
        cls,
        directory: Path,
        version: str,
        device: torch.device,
        backend: str = "torch",
        identity: str = "",
    ) -> Engine:
        """Load and check a checkpoint directory, then warm the scoring pass once."""
        ckpt = load_checkpoint(directory)
        scoring = make_score_pass(backend, ckpt, directory, device)
        engine = cls(ckpt, version, device, scoring, backend, identity)
        nobody = UserRatings(_EMPTY, _EMPTY)
        engine.run([-1], [engine.hidden_pre(nobody)], [nobody], [TopNQuery(1)])
        return engine

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

    def hidden_pre(self, ratings: UserRatings) -> Tensor:
        """The user's hidden pre-activation: (hidden_width,) on the device."""
        return self.encoder.encode_one(ratings.movies, ratings.levels)

    def unit_row(self, movie: int, level: int) -> Tensor:
        """What a rating of ``movie`` at ``level`` adds to the pre-activation: (hidden_width,)."""
        return self.encoder.unit_row(movie, level)

    @torch.inference_mode()
    def run(
        self,
        user_ids: Sequence[int],
        hidden_pre: Sequence[Tensor],
        rated: Sequence[UserRatings],
        queries: Sequence[Query],
    ) -> list[Recommendation | list[float]]:
        """One scoring pass for a batch of users, then each row's top-n or predictions.

        Users with no ratings at all get popularity order (their RBM scores carry no
        information about them).
        """
        h = torch.stack(list(hidden_pre)).to(self.device)  # (B, F)
        item_rows = torch.tensor([self.user_row.get(u, -1) for u in user_ids], device=self.device)
        scored = self.scoring.score(h, item_rows)
        top_rows = [b for b, q in enumerate(queries) if isinstance(q, TopNQuery)]
        out: dict[int, Recommendation | list[float]] = {}
        if top_rows:
            out |= self._top_n(scored, rated, queries, top_rows)
        predict_rows = [b for b, q in enumerate(queries) if isinstance(q, PredictQuery)]
        if predict_rows:
            out |= self._predict(scored, queries, predict_rows)
        return [out[b] for b in range(len(queries))]

    def _predict(
        self, scored: ScoredBatch, queries: Sequence[Query], rows: list[int]
    ) -> dict[int, Recommendation | list[float]]:
        # All PredictRatings rows in one call, padded to the longest: one copy back.
        wanted = [q.movies for q in queries if isinstance(q, PredictQuery)]
        width = max(1, max(len(m) for m in wanted))
        padded = torch.zeros(len(rows), width, dtype=torch.int64)
        for r, movies in enumerate(wanted):
            padded[r, : len(movies)] = torch.tensor(movies, dtype=torch.int64)
        sel = torch.tensor(rows, device=self.device)
        values = scored.predicted_at(sel, padded.to(self.device)).tolist()
        return {b: values[r][: len(m)] for r, (b, m) in enumerate(zip(rows, wanted, strict=True))}

    def _top_n(
        self,
        scored: ScoredBatch,
        rated: Sequence[UserRatings],
        queries: Sequence[Query],
        rows: list[int],
    ) -> dict[int, Recommendation | list[float]]:
        sel = torch.tensor(rows, device=self.device)
        scores = scored.scores if len(rows) == len(queries) else scored.scores[sel]  # (R, M)
        tops = [q for q in queries if isinstance(q, TopNQuery)]
        user_rated = [rated[b] for b in rows]
        if not all(user_rated):
            cold_rows = torch.tensor([not r for r in user_rated], device=self.device)
            scores = torch.where(cold_rows.unsqueeze(1), self.popularity.expand_as(scores), scores)
        masked = [r for r, q in enumerate(tops) if not q.include_rated and user_rated[r]]
        if masked:
            lengths = torch.tensor([len(user_rated[r]) for r in masked])
            mask_rows = torch.repeat_interleave(torch.tensor(masked), lengths)
            mask_cols = torch.cat([user_rated[r].movies for r in masked])
            scores = scores.index_put(
                (mask_rows.to(self.device), mask_cols.to(self.device)),
                torch.tensor(-torch.inf, device=self.device),
            )
        k = min(max(q.n for q in tops), self.n_movies)
        top_s, top_i = torch.topk(scores, k, dim=1)  # (R, k)
        top_e = scored.predicted_at(sel, top_i)
        s_list, i_list, e_list = top_s.tolist(), top_i.tolist(), top_e.tolist()  # one copy each
        out: dict[int, Recommendation | list[float]] = {}
        for r, (b, q) in enumerate(zip(rows, tops, strict=True)):
            n = min(q.n, k)  # a catalogue smaller than n gives what it has
            while n and s_list[r][n - 1] == -math.inf:  # fewer unrated movies than n
                n -= 1
            out[b] = Recommendation(i_list[r][:n], s_list[r][:n], e_list[r][:n])
        return out
