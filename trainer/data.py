"""MovieLens loaders: ratings, the movie catalogue with titles, and train/test splits.

Ids stay the data set's own (MovieLens) ids here; the mapping to indices happens in
``trainer.indexing``. ``--data-dir`` may name the folder that holds ``ml-100k/`` etc. or
the data set's folder itself.
"""

from __future__ import annotations

import csv
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainer.download import DataUnavailable, ensure_dataset

__all__ = [
    "DATASETS",
    "DataUnavailable",
    "Dataset",
    "Ratings",
    "holdout_split",
    "load_dataset",
    "resolve_data_dir",
]

ML100K_SPLITS = ("u1", "u2", "u3", "u4", "u5", "ua", "ub")
DATASETS = ("ml-100k", "ml-1m", "ml-latest-small", "ml-25m")
HALF_STAR_LEVELS = tuple(x / 2 for x in range(1, 11))
WHOLE_STAR_LEVELS = (1.0, 2.0, 3.0, 4.0, 5.0)


@dataclass(frozen=True)
class Ratings:
    """Parallel arrays of (user id, movie id, rating, timestamp)."""

    users: np.ndarray  # int64 MovieLens user ids
    movies: np.ndarray  # int64 MovieLens movie ids
    ratings: np.ndarray  # float32 rating values
    timestamps: np.ndarray  # int64 seconds

    def __len__(self) -> int:
        return int(self.users.shape[0])

    @classmethod
    def from_lists(
        cls, users: list[int], movies: list[int], ratings: list[float], stamps: list[int]
    ) -> Ratings:
        """Ratings from parallel lists, with the dtypes above."""
        return cls(
            np.asarray(users, dtype=np.int64),
            np.asarray(movies, dtype=np.int64),
            np.asarray(ratings, dtype=np.float32),
            np.asarray(stamps, dtype=np.int64),
        )

    def concat(self, other: Ratings) -> Ratings:
        """These ratings followed by ``other``'s."""
        return Ratings(
            np.concatenate([self.users, other.users]),
            np.concatenate([self.movies, other.movies]),
            np.concatenate([self.ratings, other.ratings]),
            np.concatenate([self.timestamps, other.timestamps]),
        )

    def take(self, mask_or_index: np.ndarray) -> Ratings:
        """The subset selected by a boolean mask or an index array."""
        return Ratings(
            self.users[mask_or_index],
            self.movies[mask_or_index],
            self.ratings[mask_or_index],
            self.timestamps[mask_or_index],
        )


@dataclass(frozen=True)
class Dataset:
    """A train/test split of one data set, with its catalogue and rating scale."""

    name: str
    split: str
    train: Ratings
    test: Ratings
    movie_ids: np.ndarray  # int64, the whole catalogue, ascending
    titles: list[str]  # aligned with movie_ids
    levels: tuple[float, ...]
    fingerprint: str  # sha256 over the files read, for the registry's metadata


def resolve_data_dir(cli_value: str | None) -> Path:
    """``--data-dir``, else ``$RBMREC_DATA``, else ``./data``."""
    return Path(cli_value or os.environ.get("RBMREC_DATA") or "data")


def _read_tab_ratings(path: Path, sep: str) -> Ratings:
    users, movies, ratings, stamps = [], [], [], []
    with path.open(encoding="latin-1") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            u, m, r, t = line.split(sep)
            users.append(int(u))
            movies.append(int(m))
            ratings.append(float(r))
            stamps.append(int(t))
    return Ratings.from_lists(users, movies, ratings, stamps)


def _read_csv_ratings(path: Path) -> Ratings:
    users, movies, ratings, stamps = [], [], [], []
    with path.open(encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            users.append(int(row["userId"]))
            movies.append(int(row["movieId"]))
            ratings.append(float(row["rating"]))
            stamps.append(int(row["timestamp"]))
    return Ratings.from_lists(users, movies, ratings, stamps)


def _fingerprint(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for p in paths:
        digest.update(p.name.encode())
        digest.update(hashlib.sha256(p.read_bytes()).digest())
    return digest.hexdigest()


def _catalogue_100k(folder: Path) -> tuple[np.ndarray, list[str]]:
    ids, titles = [], []
    with (folder / "u.item").open(encoding="latin-1") as fh:
        for line in fh:
            if line.strip():
                fields = line.split("|")
                ids.append(int(fields[0]))
                titles.append(fields[1])
    return np.asarray(ids, dtype=np.int64), titles


def _catalogue_dat(path: Path) -> tuple[np.ndarray, list[str]]:
    ids, titles = [], []
    with path.open(encoding="latin-1") as fh:
        for line in fh:
            if line.strip():
                mid, title, _genres = line.rstrip("\n").split("::")
                ids.append(int(mid))
                titles.append(title)
    return np.asarray(ids, dtype=np.int64), titles


def _catalogue_csv(path: Path) -> tuple[np.ndarray, list[str]]:
    ids, titles = [], []
    with path.open(encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            ids.append(int(row["movieId"]))
            titles.append(row["title"])
    return np.asarray(ids, dtype=np.int64), titles


def holdout_split(ratings: Ratings, fraction: float, seed: int) -> tuple[Ratings, Ratings]:
    """Seeded per-user holdout: about ``fraction`` of each user's ratings go to the test part.

    Users with fewer than 2 ratings keep all of them in training, so every test user has
    training data.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"holdout fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    test_mask = np.zeros(len(ratings), dtype=bool)
    order = np.argsort(ratings.users, kind="stable")
    bounds = np.flatnonzero(np.diff(ratings.users[order])) + 1
    for group in np.split(order, bounds):
        if group.size < 2:
            continue
        n_test = max(1, round(fraction * group.size))
        n_test = min(n_test, group.size - 1)
        test_mask[rng.choice(group, size=n_test, replace=False)] = True
    return ratings.take(~test_mask), ratings.take(test_mask)


def load_dataset(
    name: str, data_dir: Path, split: str, seed: int = 0, holdout: float = 0.2
) -> Dataset:
    """Load ``name`` from ``data_dir`` (downloading it where possible) and split it."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    folder = ensure_dataset(name, data_dir)
    levels: tuple[float, ...]
    if name == "ml-100k":
        movie_ids, titles = _catalogue_100k(folder)
        if split in ML100K_SPLITS:
            paths = [folder / f"{split}.base", folder / f"{split}.test"]
            train = _read_tab_ratings(paths[0], "\t")
            test = _read_tab_ratings(paths[1], "\t")
        elif split == "holdout":
            paths = [folder / "u.data"]
            train, test = holdout_split(_read_tab_ratings(paths[0], "\t"), holdout, seed)
        else:
            raise ValueError(
                f"unknown split {split!r} for ml-100k; choose holdout or {', '.join(ML100K_SPLITS)}"
            )
        levels = WHOLE_STAR_LEVELS
    else:
        if split != "holdout":
            raise ValueError(f"{name} has no canonical splits; use --split holdout")
        if name == "ml-1m":
            paths = [folder / "ratings.dat"]
            all_ratings = _read_tab_ratings(paths[0], "::")
            movie_ids, titles = _catalogue_dat(folder / "movies.dat")
            levels = WHOLE_STAR_LEVELS
        else:
            paths = [folder / "ratings.csv"]
            all_ratings = _read_csv_ratings(paths[0])
            movie_ids, titles = _catalogue_csv(folder / "movies.csv")
            levels = HALF_STAR_LEVELS
        train, test = holdout_split(all_ratings, holdout, seed)
    order = np.argsort(movie_ids)
    return Dataset(
        name=name,
        split=split,
        train=train,
        test=test,
        movie_ids=movie_ids[order],
        titles=[titles[i] for i in order],
        levels=levels,
        fingerprint=_fingerprint(paths),
    )
