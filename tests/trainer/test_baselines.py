"""The baselines on data small enough that every expected number is worked out by hand below."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from trainer.baselines import BiasBaseline, ItemKNN, popularity_scores
from trainer.indexing import IndexedRatings

# Level index i is the rating i + 1: an implementation that averaged level indices instead
# of rating values would be off by exactly one everywhere.
LEVELS = np.array([1.0, 2.0, 3.0, 4.0, 5.0], dtype=np.float32)


def _csr(rows: list[list[tuple[int, float]]]) -> IndexedRatings:
    """One CSR row per user (ids 10, 20, ...) from (movie index, rating value) pairs."""
    movies = [m for row in rows for m, _ in row]
    levels = [int(np.searchsorted(LEVELS, r)) for row in rows for _, r in row]
    indptr = np.concatenate([[0], np.cumsum([len(row) for row in rows])]).astype(np.int64)
    return IndexedRatings(
        np.arange(1, len(rows) + 1, dtype=np.int64) * 10,
        indptr,
        np.asarray(movies, dtype=np.int64),
        np.asarray(levels, dtype=np.int64),
    )


# -- BiasBaseline -------------------------------------------------------------------------


def test_bias_without_regularisation_fits_an_additive_table_exactly_in_one_pass() -> None:
    #          m0  m1
    #   u0      5   3
    #   u1      4   2
    # mu = (5 + 3 + 4 + 2) / 4 = 3.5
    # b_u (b_m still 0) = each user's mean of r - mu:
    #   u0: ((5 - 3.5) + (3 - 3.5)) / 2 = (1.5 - 0.5) / 2 = 0.5
    #   u1: ((4 - 3.5) + (2 - 3.5)) / 2 = (0.5 - 1.5) / 2 = -0.5
    # b_m = each movie's mean of r - mu - b_u:
    #   m0: ((5 - 3.5 - 0.5) + (4 - 3.5 + 0.5)) / 2 = (1 + 1) / 2 = 1
    #   m1: ((3 - 3.5 - 0.5) + (2 - 3.5 + 0.5)) / 2 = (-1 - 1) / 2 = -1
    # and mu + b_u + b_m gives back every rating: 3.5 + 0.5 + 1 = 5, 3.5 - 0.5 - 1 = 2, ...
    train = _csr([[(0, 5.0), (1, 3.0)], [(0, 4.0), (1, 2.0)]])
    bias = BiasBaseline.fit(train, LEVELS, 2, reg_user=0.0, reg_item=0.0, iterations=1)
    assert bias.mu == pytest.approx(3.5)
    np.testing.assert_allclose(bias.user_bias, [0.5, -0.5])
    np.testing.assert_allclose(bias.item_bias, [1.0, -1.0])
    np.testing.assert_allclose(bias.predict(train).numpy(), [5.0, 3.0, 4.0, 2.0])


def test_bias_regularisers_shrink_toward_the_mean_step_by_step() -> None:
    # u0 rated m0 5 and m1 3; u1 rated m0 4; m2 nobody. reg_user = reg_item = 1.
    # mu = (5 + 3 + 4) / 3 = 4; residuals r - mu = [1, -1, 0]
    # b_u = sum of residuals / (reg + count), b_m likewise:
    # iteration 1 (b_m = 0):
    #   b_u0 = (1 - 1) / (1 + 2) = 0          b_u1 = 0 / (1 + 1) = 0
    #   b_m0 = (1 + 0) / (1 + 2) = 1/3        b_m1 = -1 / (1 + 1) = -1/2    b_m2 = 0 / 1 = 0
    # iteration 2: r - mu - b_m = [1 - 1/3, -1 + 1/2, 0 - 1/3] = [2/3, -1/2, -1/3]
    #   b_u0 = (2/3 - 1/2) / 3 = 1/18         b_u1 = (-1/3) / 2 = -1/6
    #   r - mu - b_u = [1 - 1/18, -1 - 1/18, 0 + 1/6] = [17/18, -19/18, 1/6]
    #   b_m0 = (17/18 + 1/6) / 3 = (20/18) / 3 = 10/27
    #   b_m1 = (-19/18) / 2 = -19/36          b_m2 = 0
    train = _csr([[(0, 5.0), (1, 3.0)], [(0, 4.0)]])
    one = BiasBaseline.fit(train, LEVELS, 3, reg_user=1.0, reg_item=1.0, iterations=1)
    np.testing.assert_allclose(one.user_bias, [0.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(one.item_bias, [1 / 3, -1 / 2, 0.0])
    two = BiasBaseline.fit(train, LEVELS, 3, reg_user=1.0, reg_item=1.0, iterations=2)
    assert two.mu == pytest.approx(4.0)
    np.testing.assert_allclose(two.user_bias, [1 / 18, -1 / 6])
    np.testing.assert_allclose(two.item_bias, [10 / 27, -19 / 36, 0.0])

    # Predictions for pairs nobody saw: u1 x m1 = 4 - 1/6 - 19/36 = (144 - 6 - 19) / 36 = 119/36
    # and u0 x m2 (no ratings, no movie bias) = 4 + 1/18 = 73/18.
    targets = _csr([[(2, 1.0)], [(1, 1.0)]])  # the rating values do not matter to predict
    np.testing.assert_allclose(two.predict(targets).numpy(), [73 / 18, 119 / 36])


def test_bias_of_a_user_without_training_ratings_is_zero() -> None:
    # u1's row is empty: b_u1 = 0 / (reg + 0) = 0, so it gets mu + b_m.
    # mu = (2 + 4) / 2 = 3; iteration 1 with reg 1: b_u0 = ((2 - 3) + (4 - 3)) / (1 + 2) = 0,
    # b_m0 = (2 - 3) / (1 + 1) = -1/2, b_m1 = (4 - 3) / (1 + 1) = 1/2.
    train = _csr([[(0, 2.0), (1, 4.0)], []])
    bias = BiasBaseline.fit(train, LEVELS, 2, reg_user=1.0, reg_item=1.0, iterations=1)
    np.testing.assert_allclose(bias.user_bias, [0.0, 0.0])
    np.testing.assert_allclose(bias.item_bias, [-0.5, 0.5])
    targets = _csr([[], [(0, 1.0), (1, 1.0)]])
    np.testing.assert_allclose(bias.predict(targets).numpy(), [2.5, 3.5])


# -- popularity_scores --------------------------------------------------------------------


def test_popularity_counts_training_ratings_per_movie() -> None:
    # m0: u0 and u1 -> 2; m1: nobody -> 0; m2: u0, u1 and u2 -> 3; m3: u2 -> 1; m4: nobody.
    # The rating values do not count: a 1-star rating is as much a rating as a 5-star one.
    train = _csr([[(0, 5.0), (2, 1.0)], [(0, 1.0), (2, 2.0)], [(2, 3.0), (3, 4.0)]])
    scores = popularity_scores(train, 5)
    assert scores.dtype == torch.float32
    assert scores.tolist() == [2.0, 0.0, 3.0, 1.0, 0.0]


# -- ItemKNN ------------------------------------------------------------------------------

# Who rated what (the ratings' values do not matter to item-kNN):
#          m0  m1  m2  m3
#   u0      x   x   .   .
#   u1      x   x   x   .
#   u2      .   x   x   .
#   u3      .   .   x   .
# Raters per movie: m0 2, m1 3, m2 3, m3 0. Co-raters: (m0, m1) 2, (m0, m2) 1, (m1, m2) 2.
# Cosine = co-raters / sqrt(n_i * n_j):
#   (m0, m1) = 2 / sqrt(6),  (m0, m2) = 1 / sqrt(6),  (m1, m2) = 2 / sqrt(9) = 2/3
# and 0 with m3 (nobody rated it: 0 co-raters, its norm is clamped, not divided by zero).
S01, S02, S12 = 2 / math.sqrt(6), 1 / math.sqrt(6), 2 / 3  # 0.816, 0.408, 0.667
KNN_TRAIN = [[(0, 4.0), (1, 2.0)], [(0, 5.0), (1, 5.0), (2, 1.0)], [(1, 3.0), (2, 3.0)], [(2, 4.0)]]


def test_item_knn_similarity_is_cosine_over_who_rated_what() -> None:
    knn = ItemKNN.fit(_csr(KNN_TRAIN), 4, k=3)  # k = M - 1: nothing pruned
    expected = [
        [0.0, S01, S02, 0.0],  # the diagonal is zeroed: a movie is not its own neighbour
        [S01, 0.0, S12, 0.0],
        [S02, S12, 0.0, 0.0],
        [0.0, 0.0, 0.0, 0.0],
    ]
    np.testing.assert_allclose(knn.similarity.numpy(), expected, atol=1e-6)


def test_item_knn_keeps_each_movies_k_nearest() -> None:
    # k = 1: row m0 keeps m1 (S01 = 0.816 > S02 = 0.408); row m1 keeps m0 (0.816 > S12 = 0.667);
    # row m2 keeps m1 (0.667 > 0.408); row m3 is all zeros and stays so.
    knn = ItemKNN.fit(_csr(KNN_TRAIN), 4, k=1)
    expected = [
        [0.0, S01, 0.0, 0.0],
        [S01, 0.0, 0.0, 0.0],
        [0.0, S12, 0.0, 0.0],
        [0.0, 0.0, 0.0, 0.0],
    ]
    np.testing.assert_allclose(knn.similarity.numpy(), expected, atol=1e-6)


def test_item_knn_scores_sum_the_rated_movies_rows() -> None:
    # A user's score for movie j = sum over the movies i it rated of similarity[i, j].
    # Unpruned (k = 3):
    #   u3 rated m2 only:  row m2              = [S02, S12, 0, 0]
    #   u0 rated m0, m1:   row m0 + row m1     = [S01, S01, S02 + S12, 0]
    # Pruned to k = 1:
    #   u3:                row m2              = [0, S12, 0, 0]
    #   u0:                row m0 + row m1     = [S01, S01, 0, 0]
    train = _csr(KNN_TRAIN)
    rows = np.array([3, 0])  # CSR rows, in the order asked for
    full = ItemKNN.fit(train, 4, k=3).scores(train, rows)
    np.testing.assert_allclose(
        full.numpy(), [[S02, S12, 0.0, 0.0], [S01, S01, S02 + S12, 0.0]], atol=1e-6
    )
    pruned = ItemKNN.fit(train, 4, k=1).scores(train, rows)
    np.testing.assert_allclose(
        pruned.numpy(), [[0.0, S12, 0.0, 0.0], [S01, S01, 0.0, 0.0]], atol=1e-6
    )
