"""The ranking and rating metrics, against figures worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from trainer.evaluate import ranking_metrics, ranking_metrics_from_lists, rating_metrics
from trainer.indexing import IndexedRatings


def test_ranking_metrics_from_lists_by_hand() -> None:
    # User A: hits at ranks 1 and 3 of k=3, 2 relevant.
    #   precision 2/3, recall 2/2, DCG 1 + 1/log2(4) = 1.5, ideal 1 + 1/log2(3) = 1.6309,
    #   NDCG 0.91972, hit 1.
    # User B: no hit among 3, 1 relevant: all zero.
    # User C: a short list (1 of 3), hit at rank 1, 4 relevant: precision 1/3, recall 1/4,
    #   DCG 1, ideal 1 + 1/log2(3) + 1/2 = 2.1309 (min(4, k) = 3 terms), NDCG 0.46929, hit 1.
    tops = [[10, 11, 12], [20, 21, 22], [30]]
    relevant = [{10, 12}, {99}, {30, 31, 32, 33}]
    got = ranking_metrics_from_lists(tops, relevant, k=3)
    ideal_a = 1 + 1 / math.log2(3)
    assert got["precision@3"] == pytest.approx((2 / 3 + 0 + 1 / 3) / 3)
    assert got["recall@3"] == pytest.approx((1 + 0 + 1 / 4) / 3)
    assert got["ndcg@3"] == pytest.approx((1.5 / ideal_a + 0 + 1 / (ideal_a + 0.5)) / 3)
    assert got["hr@3"] == pytest.approx(2 / 3)
    assert got["ranking_users"] == 3


def test_a_list_longer_than_k_is_cut_at_k() -> None:
    # The hit at rank 2 lies beyond k=1: it must not count.
    assert ranking_metrics_from_lists([[1, 2]], [{2}], k=1)["hr@1"] == 0.0


def test_dense_ranking_metrics_leave_out_training_movies() -> None:
    # One user, 4 movies. Movie 0 is rated in training and scores highest, so it is masked;
    # the top-1 is then movie 2, which the test part rates 5 (relevant): NDCG@1 = 1.
    train = IndexedRatings(np.array([7]), np.array([0, 1]), np.array([0]), np.array([4]))
    test = IndexedRatings(np.array([7]), np.array([0, 1]), np.array([2]), np.array([4]))
    levels = np.array([1.0, 2.0, 3.0, 4.0, 5.0], dtype=np.float32)
    scores = torch.tensor([[9.0, 0.0, 5.0, 1.0]])
    got = ranking_metrics(lambda rows: scores, train, test, levels, k=1)
    assert got["ndcg@1"] == 1.0 and got["ranking_users"] == 1
    # Without the mask movie 0 would be first, and a miss.
    empty = IndexedRatings(
        np.array([7]), np.array([0, 0]), np.array([], dtype=np.int64), np.array([], dtype=np.int64)
    )
    assert ranking_metrics(lambda rows: scores, empty, test, levels, k=1)["ndcg@1"] == 0.0


def test_rating_metrics_clip_to_the_scale() -> None:
    # Predictions 0 and 6 clip to 1 and 5; errors against 2 and 5 are -1 and 0:
    # RMSE sqrt(1/2), MAE 1/2.
    got = rating_metrics(torch.tensor([0.0, 6.0]), torch.tensor([2.0, 5.0]), 1.0, 5.0)
    assert got["rmse"] == pytest.approx(math.sqrt(0.5))
    assert got["mae"] == pytest.approx(0.5)
