"""The evaluation as a client sees it: top-n lists and predicted ratings from the server's engine.

Every figure here comes out of ``server.engine.Engine.run``, the code behind ``Recommend``
and ``PredictRatings``, fed the hidden states the server computes on a cache miss. A client
that asks the server for the same users gets the same lists and ratings, and scoring them
with ``trainer.evaluate`` gives the same figures.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from rbm.checkpoint import Checkpoint
from server.backends import TorchPass
from server.engine import Engine, PredictQuery, Query, Recommendation, TopNQuery
from trainer.data import Ratings
from trainer.evaluate import RELEVANT_AT, ranking_metrics_from_lists, rating_metrics

__all__ = [
    "ServedTop",
    "engine_for",
    "evaluate_served",
    "served_predictions",
    "served_ranking_metrics",
    "served_rating_metrics",
    "served_top_n",
]

CHUNK = 256  # users per engine pass: a server batch is at most this large too


@dataclass(frozen=True)
class ServedTop:
    """One user's Recommend answer: MovieLens ids best first, scores, predicted ratings."""

    movie_ids: list[int]
    scores: list[float]
    predicted: list[float]


def engine_for(ckpt: Checkpoint, device: str | torch.device = "cpu") -> Engine:
    """The serving engine of a checkpoint that is not in a registry yet (torch backend)."""
    dev = torch.device(device)
    return Engine(ckpt, "evaluation", dev, TorchPass(ckpt, dev))


def _run(engine: Engine, users: Sequence[int], queries: Sequence[Query]) -> Iterator[object]:
    """Engine.run over ``users`` in chunks, as cache misses (states computed in the pass)."""
    for start in range(0, len(users), CHUNK):
        chunk = list(users[start : start + CHUNK])
        rated = [engine.user_ratings(u, {}) for u in chunk]
        yield from engine.run(chunk, rated, queries[start : start + CHUNK]).outputs


def served_top_n(engine: Engine, users: Sequence[int], n: int) -> list[ServedTop]:
    """What ``Recommend(user, n)`` answers for each user."""
    out = []
    for rec in _run(engine, users, [TopNQuery(n)] * len(users)):
        assert isinstance(rec, Recommendation)
        ids = [engine.movie_ids[m] for m in rec.movies]
        out.append(ServedTop(ids, rec.scores, rec.predicted))
    return out


def served_predictions(
    engine: Engine, users: Sequence[int], movie_ids: Sequence[Sequence[int]]
) -> list[list[float]]:
    """What ``PredictRatings(user, movie_ids)`` answers for each user (ids in the catalogue)."""
    queries = [PredictQuery(tuple(engine.movie_index[m] for m in ids)) for ids in movie_ids]
    out = []
    for values in _run(engine, users, queries):
        assert isinstance(values, list)
        out.append(values)
    return out


def evaluate_served(engine: Engine, test: Ratings, k: int = 10) -> dict[str, float]:
    """RMSE/MAE of PredictRatings on every test pair; top-k metrics of Recommend(user, k)."""
    return served_rating_metrics(engine, test) | served_ranking_metrics(engine, test, k)


def served_rating_metrics(engine: Engine, test: Ratings) -> dict[str, float]:
    """RMSE/MAE of PredictRatings on every test pair.

    Test movies outside the model's catalogue are left out (a client would get NOT_FOUND
    for them).
    """
    known = np.isin(test.movies, np.asarray(engine.movie_ids))
    pairs = test.take(known)
    users = np.unique(pairs.users)
    order = np.argsort(pairs.users, kind="stable")
    grouped = np.split(order, np.searchsorted(pairs.users[order], users[1:]))
    movies = [pairs.movies[g].tolist() for g in grouped]
    predicted = served_predictions(engine, users.tolist(), movies)
    truth = np.concatenate([pairs.ratings[g] for g in grouped]) if grouped else np.empty(0)
    low, high = engine.ckpt.levels[0], engine.ckpt.levels[-1]
    return rating_metrics(
        torch.tensor([v for row in predicted for v in row], dtype=torch.float64),
        torch.from_numpy(truth.astype(np.float64)),
        low,
        high,
    )


def served_ranking_metrics(engine: Engine, test: Ratings, k: int = 10) -> dict[str, float]:
    """Top-k metrics of Recommend(user, k) for every user with a test rating >= 4."""
    liked = test.ratings >= RELEVANT_AT - 1e-6
    relevant: dict[int, set[int]] = {}
    for user, movie in zip(test.users[liked].tolist(), test.movies[liked].tolist(), strict=True):
        relevant.setdefault(user, set()).add(movie)
    ranked_users = sorted(relevant)
    tops = served_top_n(engine, ranked_users, k)
    lists = [t.movie_ids for t in tops]
    return ranking_metrics_from_lists(lists, [relevant[u] for u in ranked_users], k)
