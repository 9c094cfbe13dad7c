"""Maps MovieLens ids and rating values to the dense indices the model works in."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from rbm.model import RatingsBatch
from trainer.data import Dataset, Ratings

__all__ = ["IndexedRatings", "Indexer"]


@dataclass(frozen=True)
class IndexedRatings:
    """Ratings as index arrays, sorted by user: CSR over users of (movie, level)."""

    user_ids: np.ndarray  # (U,) MovieLens ids, row u of the CSR is user_ids[u]
    indptr: np.ndarray  # (U+1,)
    movies: np.ndarray  # (nnz,) movie indices
    levels: np.ndarray  # (nnz,) level indices

    def batch(self, user_rows: np.ndarray) -> RatingsBatch:
        """The entries of the given CSR rows as a RatingsBatch (row b = user_rows[b])."""
        starts, ends = self.indptr[user_rows], self.indptr[user_rows + 1]
        lengths = ends - starts
        rows = np.repeat(np.arange(len(user_rows)), lengths)
        out_starts = np.cumsum(lengths) - lengths
        idx = np.arange(int(lengths.sum())) + np.repeat(starts - out_starts, lengths)
        return RatingsBatch(
            rows=torch.from_numpy(rows.astype(np.int64)),
            movies=torch.from_numpy(self.movies[idx]),
            levels=torch.from_numpy(self.levels[idx]),
            n_rows=len(user_rows),
        )


class Indexer:
    """Movie index = position in the catalogue; level index = position in the rating levels."""

    def __init__(self, dataset: Dataset) -> None:
        self.movie_ids = dataset.movie_ids
        self.levels = np.asarray(dataset.levels, dtype=np.float32)

    @property
    def n_movies(self) -> int:
        """Catalogue size M."""
        return int(self.movie_ids.shape[0])

    def movie_index(self, movie_ids: np.ndarray) -> np.ndarray:
        """Catalogue positions of ``movie_ids``; -1 for a movie not in the catalogue."""
        pos = np.searchsorted(self.movie_ids, movie_ids)
        pos = np.clip(pos, 0, self.n_movies - 1)
        return np.where(self.movie_ids[pos] == movie_ids, pos, -1)

    def level_index(self, ratings: np.ndarray) -> np.ndarray:
        """Level positions of rating values; raises ValueError for a value off the scale."""
        pos = np.clip(np.searchsorted(self.levels, ratings), 0, len(self.levels) - 1)
        bad = ~np.isclose(self.levels[pos], ratings)
        if bad.any():
            raise ValueError(f"rating {float(ratings[bad][0])} is not on the scale {self.levels}")
        return pos.astype(np.int64)

    def index(self, ratings: Ratings, user_ids: np.ndarray | None = None) -> IndexedRatings:
        """CSR of ``ratings`` over ``user_ids`` (default: users present); drops unknown movies."""
        movies = self.movie_index(ratings.movies)
        keep = movies >= 0
        users = ratings.users[keep]
        if user_ids is None:
            user_ids = np.unique(users)
        rows = np.searchsorted(user_ids, users)
        rows = np.clip(rows, 0, max(len(user_ids) - 1, 0))
        known = user_ids[rows] == users if len(user_ids) else np.zeros(len(users), dtype=bool)
        rows, m, lv = (
            rows[known],
            movies[keep][known],
            self.level_index(ratings.ratings[keep][known]),
        )
        order = np.lexsort((m, rows))
        counts = np.bincount(rows, minlength=len(user_ids))
        indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return IndexedRatings(user_ids, indptr, m[order].astype(np.int64), lv[order])
