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
from rbm.model import entry_level_probabilities
from rbm.scoring import Scorer

__all__ = ["Engine", "Recommendation", "UserRatings"]

# A user's ratings as {movie index: level index}.
UserRatings = Mapping[int, int]


@dataclass(frozen=True)
class Recommendation:
    """Top movies for one user, best first, as catalogue indices."""

    movies: list[int]
    scores: list[float]
    predicted: list[float]


class Engine:
    """A checkpoint ready to serve on ``device``."""

    def __init__(self, ckpt: Checkpoint, version: str, device: torch.device) -> None:
        self.ckpt = ckpt
        self.version = version
        self.device = device
        self.config = ckpt.config
        self.levels = torch.tensor(ckpt.levels, dtype=torch.float32)
        self.scorer = Scorer(ckpt.params, self.levels).to(device).eval()
        self.params = ckpt.params.to(device)
        self.movie_index = {int(m): i for i, m in enumerate(ckpt.movie_ids.tolist())}
        self.movie_ids = ckpt.movie_ids.tolist()
        self.user_row = {int(u): i for i, u in enumerate(ckpt.user_ids.tolist())}
        self.popularity = ckpt.popularity.to(device)
        self.level_of = {float(v): i for i, v in enumerate(ckpt.levels)}

    @classmethod
    def load(cls, directory: Path, version: str, device: torch.device) -> Engine:
        """Load and check a checkpoint directory, then warm the scoring pass once."""
        engine = cls(load_checkpoint(directory), version, device)
        engine.recommend([engine.params.hidden_bias.clone()], [{}], [1], [False])
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
        return dict(
            zip(
                self.ckpt.user_movies[lo:hi].tolist(),
                self.ckpt.user_levels[lo:hi].tolist(),
                strict=True,
            )
        )

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

    @torch.no_grad()
    def recommend(
        self,
        hidden_pre: Sequence[Tensor],
        rated: Sequence[UserRatings],
        n: Sequence[int],
        include_rated: Sequence[bool],
    ) -> list[Recommendation]:
        """One matrix pass for a batch of users; users with no ratings get popularity order."""
        batch = len(hidden_pre)
        h = torch.stack(list(hidden_pre)).to(self.device)  # (B, F)
        scores, expected = self.scorer(h)  # (B, M) each
        cold = torch.tensor([not r for r in rated], device=self.device)
        scores = torch.where(cold.unsqueeze(1), self.popularity.expand(batch, -1), scores)
        rows: list[int] = []
        cols: list[int] = []
        for b, (r, inc) in enumerate(zip(rated, include_rated, strict=True)):
            if r and not inc:
                rows.extend([b] * len(r))
                cols.extend(r.keys())
        if rows:
            scores = scores.index_put(
                (torch.tensor(rows, device=self.device), torch.tensor(cols, device=self.device)),
                torch.tensor(-torch.inf, device=self.device),
            )
        k = min(max(n), self.n_movies)
        top_scores, top_idx = torch.topk(scores, k, dim=1)  # (B, k)
        top_pred = torch.gather(expected, 1, top_idx)
        out = []
        for b in range(batch):
            s, i, p = top_scores[b, : n[b]], top_idx[b, : n[b]], top_pred[b, : n[b]]
            keep = torch.isfinite(s)
            out.append(Recommendation(i[keep].tolist(), s[keep].tolist(), p[keep].tolist()))
        return out

    @torch.no_grad()
    def predict(self, hidden_pre: Tensor, movies: Sequence[int]) -> list[float]:
        """Expected rating of ``movies`` (indices) for one user."""
        if not movies:
            return []
        hidden = torch.sigmoid(hidden_pre.to(self.device)).unsqueeze(0)  # (1, F)
        idx = torch.tensor(list(movies), dtype=torch.int64, device=self.device)
        rows = torch.zeros_like(idx)
        probs = entry_level_probabilities(self.params, hidden, rows, idx, self.config)  # (n, K)
        result: list[float] = (probs @ self.levels.to(self.device)).tolist()
        return result
