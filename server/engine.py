"""One loaded model version on one device: id maps, hidden states and the batched scoring pass.

Nothing here knows gRPC or Redis. A request is computed entirely on one ``Engine``, and the
engine never changes after construction, so a hot swap is replacing a reference.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from rbm.checkpoint import Checkpoint, load_checkpoint
from server.backends import ScoreFn, make_score_fn

__all__ = ["Engine", "PredictQuery", "Query", "Recommendation", "TopNQuery", "UserRatings"]

# A user's ratings as {movie index: level index}.
UserRatings = Mapping[int, int]


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
        score_fn: ScoreFn,
        backend: str = "torch",
    ) -> None:
        self.ckpt = ckpt
        self.version = version
        self.device = device
        self.backend = backend
        self.config = ckpt.config
        self.score_fn = score_fn
        self.params = ckpt.params.to(device)
        self.movie_index = {int(m): i for i, m in enumerate(ckpt.movie_ids.tolist())}
        self.movie_ids: list[int] = ckpt.movie_ids.tolist()
        self.user_row = {int(u): i for i, u in enumerate(ckpt.user_ids.tolist())}
        self.popularity = ckpt.popularity.to(device)
        self.level_of = {float(v): i for i, v in enumerate(ckpt.levels)}

    @classmethod
    def load(
        cls, directory: Path, version: str, device: torch.device, backend: str = "torch"
    ) -> Engine:
        """Load and check a checkpoint directory, then warm the scoring pass once."""
        ckpt = load_checkpoint(directory)
        engine = cls(
            ckpt, version, device, make_score_fn(backend, ckpt, directory, device), backend
        )
        engine.run([engine.hidden_pre({})], [{}], [TopNQuery(1)])
        return engine

    @property
    def n_movies(self) -> int:
        """Catalogue size."""
        return self.config.n_movies

    def base_ratings(self, user_id: int) -> dict[int, int]:
        """The user's training ratings, {movie index: level index}; empty for an unknown user."""
        row = self.user_row.get(user_id)
        if row is None:
            return {}
        lo, hi = int(self.ckpt.user_indptr[row]), int(self.ckpt.user_indptr[row + 1])
        movies = self.ckpt.user_movies[lo:hi].tolist()
        return dict(zip(movies, self.ckpt.user_levels[lo:hi].tolist(), strict=True))

    def hidden_pre(self, ratings: UserRatings) -> Tensor:
        """Hidden pre-activation from {movie index: level index}: (F,) on the device."""
        if not ratings:
            return self.params.hidden_bias.clone()
        movies = torch.tensor(list(ratings.keys()), dtype=torch.int64)
        levels = torch.tensor(list(ratings.values()), dtype=torch.int64)
        units = (levels * self.n_movies + movies).to(self.device)
        return self.params.hidden_bias + self.params.weights[units].sum(0)

    def unit_row(self, movie: int, level: int) -> Tensor:
        """The weight row that a rating of ``movie`` at ``level`` adds to the pre-activation."""
        return self.params.weights[level * self.n_movies + movie]

    @torch.inference_mode()
    def run(
        self, hidden_pre: Sequence[Tensor], rated: Sequence[UserRatings], queries: Sequence[Query]
    ) -> list[Recommendation | list[float]]:
        """One scoring pass for a batch of users, then each row's top-n or predictions.

        Users with no ratings at all get popularity order (their RBM scores carry no
        information about them).
        """
        h = torch.stack(list(hidden_pre)).to(self.device)  # (B, F)
        scores, expected = self.score_fn(h)  # (B, M) each
        top_rows = [b for b, q in enumerate(queries) if isinstance(q, TopNQuery)]
        tops = self._top_n(scores, expected, rated, queries, top_rows) if top_rows else {}
        out: list[Recommendation | list[float]] = []
        for b, q in enumerate(queries):
            if isinstance(q, TopNQuery):
                out.append(tops[b])
            else:
                idx = torch.tensor(q.movies, dtype=torch.int64, device=self.device)
                out.append(expected[b, idx].tolist())
        return out

    def _top_n(
        self,
        scores: Tensor,
        expected: Tensor,
        rated: Sequence[UserRatings],
        queries: Sequence[Query],
        rows: list[int],
    ) -> dict[int, Recommendation]:
        sel = torch.tensor(rows, device=self.device)
        s, e = scores[sel], expected[sel]  # (R, M)
        cold = torch.tensor([not rated[b] for b in rows], device=self.device)
        s = torch.where(cold.unsqueeze(1), self.popularity.expand_as(s), s)
        mask_rows: list[int] = []
        mask_cols: list[int] = []
        for r, b in enumerate(rows):
            q = queries[b]
            if isinstance(q, TopNQuery) and not q.include_rated:
                mask_rows.extend([r] * len(rated[b]))
                mask_cols.extend(rated[b].keys())
        if mask_rows:
            where = (
                torch.tensor(mask_rows, device=self.device),
                torch.tensor(mask_cols, device=self.device),
            )
            s = s.index_put(where, torch.tensor(-torch.inf, device=self.device))
        ns = [q.n for q in queries if isinstance(q, TopNQuery)]
        top_s, top_i = torch.topk(s, min(max(ns), self.n_movies), dim=1)  # (R, k)
        top_e = torch.gather(e, 1, top_i)
        top_s, top_i, top_e = top_s.cpu(), top_i.cpu(), top_e.cpu()  # one transfer per batch
        out = {}
        for r, (b, n) in enumerate(zip(rows, ns, strict=True)):
            keep = torch.isfinite(top_s[r, :n])
            out[b] = Recommendation(
                top_i[r, :n][keep].tolist(),
                top_s[r, :n][keep].tolist(),
                top_e[r, :n][keep].tolist(),
            )
        return out
