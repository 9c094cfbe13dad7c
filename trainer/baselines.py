"""Baselines fitted in the same run and split as the RBM: mean, biases, popularity, kNN, EASE."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np
import torch

from trainer.evaluate import ranking_metrics
from trainer.indexing import IndexedRatings

__all__ = [
    "EASE",
    "EASE_LAMBDAS",
    "MAX_DENSE_MOVIES",
    "BiasBaseline",
    "EaseChoice",
    "ItemKNN",
    "choose_ease_lambda",
    "popularity_scores",
]

# Item-kNN and EASE hold dense (M, M) matrices: 20k movies is 1.6 GB in float32 (3.2 GB and an
# O(M^3) inverse in float64 for EASE); ml-25m's ~59k movies would not fit.
MAX_DENSE_MOVIES = 20_000
# Steck (2019) found the best lambda in the hundreds on MovieLens-sized data; the grid spans
# that range with a factor of about 2 between neighbours.
EASE_LAMBDAS = (50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0)


def _rows(csr: IndexedRatings) -> np.ndarray:
    return np.repeat(np.arange(len(csr.user_ids)), np.diff(csr.indptr))


def _rated(train: IndexedRatings, rows: np.ndarray, n_movies: int) -> torch.Tensor:
    """(B, M) binary who-rated-what of the users at CSR ``rows``."""
    x = torch.zeros(len(rows), n_movies)
    for b, u in enumerate(rows):
        x[b, torch.from_numpy(train.movies[train.indptr[u] : train.indptr[u + 1]])] = 1.0
    return x


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
        return _rated(train, rows, self.similarity.shape[0]) @ self.similarity


@dataclass(frozen=True)
class _Rated:
    """The binary who-rated-what matrix X and its smaller Gram matrix, once for a lambda grid."""

    x: torch.Tensor  # (U, M) float64
    inner: torch.Tensor  # X X^T (U, U) when U < M, else X^T X (M, M)

    @classmethod
    def of(cls, train: IndexedRatings, n_movies: int) -> _Rated:
        """X of ``train`` (every CSR row a user, empty rows included)."""
        x = torch.zeros(len(train.user_ids), n_movies, dtype=torch.float64)
        x[torch.from_numpy(_rows(train)), torch.from_numpy(train.movies)] = 1.0
        return cls(x, x @ x.t() if x.shape[0] < x.shape[1] else x.t() @ x)

    def precision(self, lam: float) -> torch.Tensor:
        """P = (X^T X + lambda I)^-1: (M, M) float64."""
        g = self.inner.clone()
        g.diagonal().add_(lam)
        # G is symmetric positive definite for lambda > 0: Cholesky is the stable, cheap inverse.
        inv = torch.cholesky_inverse(torch.linalg.cholesky(g))
        if self.inner.shape[0] == self.x.shape[1]:
            return inv
        # Fewer users than movies (ml-latest-small: 610 x 9742): Woodbury,
        # P = (I - X^T (X X^T + lambda I)^-1 X) / lambda, inverts U x U instead of M x M.
        p = -(self.x.t() @ (inv @ self.x))  # (M, M)
        p.diagonal().add_(1.0)
        return p / lam


@dataclass(frozen=True)
class EASE:
    """Steck's EASE (2019): item-item weights B from a ridge regression with diag(B) = 0.

    Closed form: P = (X^T X + lambda I)^-1, B = I - P diag(1 / diag(P)), X the binary
    who-rated-what matrix of the training part; a user's scores are x_u B. Dense (M x M).
    """

    weights: torch.Tensor  # (M, M) float32, B
    lam: float

    @classmethod
    def fit(cls, train: IndexedRatings, n_movies: int, lam: float) -> EASE:
        """The closed form on ``train``'s binary matrix."""
        return cls._from(_Rated.of(train, n_movies), lam)

    @classmethod
    def _from(cls, rated: _Rated, lam: float) -> EASE:
        p = rated.precision(lam)  # (M, M)
        b = -p / p.diagonal()[None, :]  # column j divided by P_jj
        b.fill_diagonal_(0.0)
        return cls(b.float(), lam)

    def scores(self, train: IndexedRatings, rows: np.ndarray) -> torch.Tensor:
        """(B, M) scores for the users at CSR ``rows`` of ``train``."""
        return _rated(train, rows, self.weights.shape[0]) @ self.weights


@dataclass(frozen=True)
class EaseChoice:
    """The lambda with the best validation NDCG@10, and every lambda's figure."""

    lam: float
    val_ndcg: dict[float, float]


def choose_ease_lambda(
    fit: IndexedRatings,
    val: IndexedRatings,
    n_movies: int,
    levels: np.ndarray,
    lambdas: tuple[float, ...] = EASE_LAMBDAS,
) -> EaseChoice:
    """EASE fitted on ``fit`` per lambda, scored on ``val`` (same CSR rows); ties: smaller lambda.

    The same footing as the RBM's ranking choice: the fitting part as context, the
    validation slice's liked movies as relevant; the test part is never seen.
    """
    rated = _Rated.of(fit, n_movies)
    ndcg = {}
    for lam in lambdas:
        model = EASE._from(rated, lam)
        metrics = ranking_metrics(partial(model.scores, fit), fit, val, levels)
        ndcg[lam] = metrics["ndcg@10"]
    best = max(lambdas, key=lambda lam: (ndcg[lam], -lam))
    return EaseChoice(best, ndcg)
