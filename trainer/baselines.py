"""Baselines evaluated in the same run and split as the RBM: mean, biases, popularity, item-kNN."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from trainer.indexing import IndexedRatings

__all__ = ["BiasBaseline", "ItemKNN", "popularity_scores"]


def _rows(csr: IndexedRatings) -> np.ndarray:
    return np.repeat(np.arange(len(csr.user_ids)), np.diff(csr.indptr))


@dataclass(frozen=True)
class BiasBaseline:
    """r(u, m) = mu + b_u + b_m, fitted by regularised alternating least squares."""

    mu: float
    user_bias: np.ndarray  # (U,)
    item_bias: np.ndarray  # (M,)

    @classmethod
    def fit(
        cls,
        train: IndexedRatings,
        levels: np.ndarray,
        n_movies: int,
        reg_user: float = 15.0,
        reg_item: float = 10.0,
        iterations: int = 10,
    ) -> BiasBaseline:
        """Fit on ``train``; the regularisers shrink sparse users and movies toward mu."""
        rows, movies, r = _rows(train), train.movies, levels[train.levels].astype(np.float64)
        mu = float(r.mean()) if r.size else 0.0
        bu, bm = np.zeros(len(train.user_ids)), np.zeros(n_movies)
        for _ in range(iterations):
            resid = r - mu - bm[movies]
            bu = np.bincount(rows, resid, len(bu)) / (reg_user + np.bincount(rows, None, len(bu)))
            resid = r - mu - bu[rows]
            bm = np.bincount(movies, resid, n_movies) / (
                reg_item + np.bincount(movies, None, n_movies)
            )
        return cls(mu, bu, bm)

    def predict(self, targets: IndexedRatings) -> torch.Tensor:
        """Predictions for ``targets`` (CSR rows shared with the training CSR)."""
        return torch.from_numpy(
            self.mu + self.user_bias[_rows(targets)] + self.item_bias[targets.movies]
        )


def popularity_scores(train: IndexedRatings, n_movies: int) -> torch.Tensor:
    """Number of training ratings per movie: (M,)."""
    return torch.from_numpy(np.bincount(train.movies, minlength=n_movies).astype(np.float32))


@dataclass(frozen=True)
class ItemKNN:
    """Item-based kNN on who-rated-what: cosine similarity, each item's k nearest kept.

    A user's score for a movie sums the similarities of the movies it rated to that
    movie. Dense (M x M): a baseline for catalogues of up to ~20k movies.
    """

    similarity: torch.Tensor  # (M, M), row j holds movie j's k nearest neighbours

    @classmethod
    def fit(cls, train: IndexedRatings, n_movies: int, k: int = 50) -> ItemKNN:
        """Cosine similarity between movies' binary rating columns, pruned to k per row."""
        x = torch.zeros(len(train.user_ids), n_movies)
        x[torch.from_numpy(_rows(train)), torch.from_numpy(train.movies)] = 1.0
        norms = x.sum(0).sqrt().clamp_min(1e-9)  # (M,)
        sim = (x.t() @ x) / norms[:, None] / norms[None, :]  # (M, M)
        sim.fill_diagonal_(0.0)
        top = torch.topk(sim, min(k, n_movies - 1), dim=1)
        pruned = torch.zeros_like(sim).scatter_(1, top.indices, top.values)
        return cls(pruned)

    def scores(self, train: IndexedRatings, rows: np.ndarray) -> torch.Tensor:
        """(B, M) scores for the users at CSR ``rows`` of ``train``."""
        x = torch.zeros(len(rows), self.similarity.shape[0])
        for b, u in enumerate(rows):
            x[b, torch.from_numpy(train.movies[train.indptr[u] : train.indptr[u + 1]])] = 1.0
        return x @ self.similarity
