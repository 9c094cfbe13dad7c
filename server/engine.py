"""One loaded model version on one device: id maps, hidden states and the batched scoring pass.

Nothing here knows gRPC or Redis. A request is computed entirely on one ``Engine``, and the
engine never changes after construction, so a hot swap is replacing a reference.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from rbm.checkpoint import Checkpoint, load_checkpoint
from server.backends import ScorePass, make_score_pass

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
    """A checkpoint ready to serve on ``device`` with one scoring backend."""

    def __init__(
        self,
        ckpt: Checkpoint,
        version: str,
        device: torch.device,
        scoring: ScorePass,
        backend: str = "torch",
    ) -> None:
        self.ckpt = ckpt
        self.version = version
        self.device = device
        self.backend = backend
        self.config = ckpt.config
        self.scoring = scoring
        self.params = ckpt.params.to(device)
        self.implicit = None if ckpt.implicit is None else ckpt.implicit.to(device)
        self.hidden_width = ckpt.hidden_width
        self.movie_index = {int(m): i for i, m in enumerate(ckpt.movie_ids.tolist())}
        self.movie_ids: list[int] = ckpt.movie_ids.tolist()
        self.user_row = {int(u): i for i, u in enumerate(ckpt.user_ids.tolist())}
        self.user_bounds: list[int] = ckpt.user_indptr.tolist()
        self.popularity = ckpt.popularity.to(device)
        self.level_of = {float(v): i for i, v in enumerate(ckpt.levels)}

    @classmethod
    def load(
        cls, directory: Path, version: str, device: torch.device, backend: str = "torch"
    ) -> Engine:
        """Load and check a checkpoint directory, then warm the scoring pass once."""
        ckpt = load_checkpoint(directory)
        scoring = make_score_pass(backend, ckpt, directory, device)
        engine = cls(ckpt, version, device, scoring, backend)
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
        if row is None:
            movies, levels = _EMPTY, _EMPTY
        else:
            lo, hi = self.user_bounds[row], self.user_bounds[row + 1]
            movies, levels = self.ckpt.user_movies[lo:hi], self.ckpt.user_levels[lo:hi]
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
        """Hidden biases plus the user's weight rows: (hidden_width,) on the device.

        With an implicit RBM its part (biases plus one row per rated movie) follows.
        """
        units = (ratings.levels * self.n_movies + ratings.movies).to(self.device)
        pre = self.params.hidden_bias + self.params.weights[units].sum(0)
        if self.implicit is None:
            return pre
        rated = ratings.movies.to(self.device)
        return torch.cat([pre, self.implicit.hidden_bias + self.implicit.weights[rated].sum(0)])

    def unit_row(self, movie: int, level: int) -> Tensor:
        """What a rating of ``movie`` at ``level`` adds to the pre-activation: (hidden_width,)."""
        row = self.params.weights[level * self.n_movies + movie]
        if self.implicit is None:
            return row
        # Changing a rating subtracts the old unit's row and adds the new one: the implicit
        # part (the movie was rated either way) cancels out, as it should.
        return torch.cat([row, self.implicit.weights[movie]])

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
        scores, state = self.scoring.score(h, item_rows)  # (B, M) and the pass's state
        top_rows = [b for b, q in enumerate(queries) if isinstance(q, TopNQuery)]
        tops = self._top_n(scores, state, item_rows, rated, queries, top_rows) if top_rows else {}
        out: list[Recommendation | list[float]] = []
        for b, q in enumerate(queries):
            if isinstance(q, TopNQuery):
                out.append(tops[b])
            else:
                idx = torch.tensor([q.movies], dtype=torch.int64, device=self.device)  # (1, n)
                at = self.scoring.expected_at(state[b : b + 1], item_rows[b : b + 1], idx)
                out.append(at[0].tolist())
        return out

    def _top_n(
        self,
        scores: Tensor,
        state: Tensor,
        item_rows: Tensor,
        rated: Sequence[UserRatings],
        queries: Sequence[Query],
        rows: list[int],
    ) -> dict[int, Recommendation]:
        if len(rows) != len(queries):  # a mixed batch: rank only the Recommend rows
            sel = torch.tensor(rows, device=self.device)
            scores, state, item_rows = scores[sel], state[sel], item_rows[sel]  # (R, ...)
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
        top_e = self.scoring.expected_at(state, item_rows, top_i)
        s_list, i_list, e_list = top_s.tolist(), top_i.tolist(), top_e.tolist()  # one copy each
        out = {}
        for r, (b, q) in enumerate(zip(rows, tops, strict=True)):
            n = q.n
            while n and s_list[r][n - 1] == -math.inf:  # fewer unrated movies than n
                n -= 1
            out[b] = Recommendation(i_list[r][:n], s_list[r][:n], e_list[r][:n])
        return out
