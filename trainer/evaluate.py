"""One evaluation protocol for the RBM and the baselines (see README, "Evaluation").

Rating: RMSE and MAE over all test pairs, predictions clipped to the rating range.
Ranking: for every test user with at least one test rating >= 4, rank every movie the
user did not rate in training; Precision@k, Recall@k, NDCG@k (binary gain, log2 discount,
ideal over min(relevant, k)) and HR@k, averaged over those users.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from trainer.indexing import IndexedRatings

__all__ = ["RELEVANT_AT", "ranking_metrics", "ranking_metrics_from_lists", "rating_metrics"]

RELEVANT_AT = 4.0
ScoreFn = Callable[[np.ndarray], torch.Tensor]  # CSR rows (B,) -> scores (B, M)


def rating_metrics(
    predicted: torch.Tensor, truth: torch.Tensor, low: float, high: float
) -> dict[str, float]:
    """RMSE and MAE with predictions clipped to [low, high]."""
    err = predicted.clamp(low, high).double().cpu() - truth.double().cpu()
    return {"rmse": float(torch.sqrt((err**2).mean())), "mae": float(err.abs().mean())}


def ranking_metrics_from_lists(
    tops: Sequence[Sequence[int]], relevant: Sequence[set[int]], k: int = 10
) -> dict[str, float]:
    """Precision, recall, NDCG and hit rate at ``k`` of ranked lists against relevant sets.

    One list and one non-empty set per user, in the same order; ids of any kind. This is
    how a client scores what ``Recommend`` returned, and how every model here is scored.
    """
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    totals = np.zeros(4)
    for top, rel in zip(tops, relevant, strict=True):
        hits = np.array([m in rel for m in list(top)[:k]], dtype=float)
        hits = np.pad(hits, (0, k - len(hits)))  # a short list scores zeros where it ran out
        ideal = discounts[: min(len(rel), k)].sum()
        totals += (
            hits.sum() / k,
            hits.sum() / len(rel),
            (hits * discounts).sum() / ideal,
            hits.any(),
        )
    n = max(len(tops), 1)
    keys = (f"precision@{k}", f"recall@{k}", f"ndcg@{k}", f"hr@{k}")
    return {key: float(v / n) for key, v in zip(keys, totals, strict=True)} | {
        "ranking_users": float(len(tops))
    }


def ranking_metrics(
    score_fn: ScoreFn,
    train: IndexedRatings,
    test: IndexedRatings,
    levels: np.ndarray,
    k: int = 10,
    chunk: int = 256,
) -> dict[str, float]:
    """Top-k metrics of dense scores, rated-in-``train`` movies left out (same CSR rows)."""
    relevant_level = int(np.searchsorted(levels, RELEVANT_AT - 1e-6))
    users, relevant = [], []
    for u in range(len(test.user_ids)):
        lo, hi = test.indptr[u], test.indptr[u + 1]
        liked = set(test.movies[lo:hi][test.levels[lo:hi] >= relevant_level].tolist())
        if liked:
            users.append(u)
            relevant.append(liked)
    tops: list[list[int]] = []
    for start in range(0, len(users), chunk):
        rows = np.asarray(users[start : start + chunk])
        scores = score_fn(rows).float().cpu().clone()  # (B, M)
        for b, u in enumerate(rows):
            scores[
                b, torch.from_numpy(train.movies[train.indptr[u] : train.indptr[u + 1]])
            ] = -torch.inf
        tops += torch.topk(scores, k, dim=1).indices.tolist()  # (B, k)
    return ranking_metrics_from_lists(tops, relevant, k)
