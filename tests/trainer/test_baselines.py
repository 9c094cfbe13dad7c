"""The baselines on data small enough that every expected number is worked out by hand below."""

from __future__ import annotations

import math
from dataclasses import replace
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import numpy as np
import pytest
import torch

from trainer.baselines import EASE, BiasBaseline, ItemKNN, choose_ease_lambda, popularity_scores
from trainer.data import holdout_split, load_dataset
from trainer.evaluate import ranking_metrics
from trainer.indexing import IndexedRatings
from trainer.pipeline import FittedModels, _baselines
from trainer.train import TrainConfig

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


# -- EASE ---------------------------------------------------------------------------------


def test_ease_on_two_movies_by_hand() -> None:
    # u0 rated m0 and m1, u1 rated m0:  X = [[1, 1], [1, 0]],  X^T X = [[2, 1], [1, 1]].
    # lambda = 1:  G = [[3, 1], [1, 2]],  det 5,  P = G^-1 = [[2, -1], [-1, 3]] / 5.
    # B_ij = -P_ij / P_jj off the diagonal, 0 on it:
    #   B_01 = (1/5) / (3/5) = 1/3      B_10 = (1/5) / (2/5) = 1/2
    # Scores x_u B:  u0 [1, 1] -> [1/2, 1/3];  u1 [1, 0] -> [0, 1/3].
    train = _csr([[(0, 5.0), (1, 1.0)], [(0, 3.0)]])  # the rating values do not matter
    ease = EASE.fit(train, 2, 1.0)
    np.testing.assert_allclose(ease.weights.numpy(), [[0.0, 1 / 3], [1 / 2, 0.0]], atol=1e-6)
    np.testing.assert_allclose(
        ease.scores(train, np.array([0, 1])).numpy(), [[1 / 2, 1 / 3], [0.0, 1 / 3]], atol=1e-6
    )


# Who rated what, as many users as movies (KNN_TRAIN: X^T X is inverted) and fewer users
# than movies (X X^T is, through Woodbury's identity): the same closed form either way.
SQUARE = [[1, 1, 0, 0], [1, 1, 1, 0], [0, 1, 1, 0], [0, 0, 1, 0]]
WIDE = [[1, 1, 0, 0, 1, 0], [0, 1, 1, 0, 0, 0], [1, 0, 1, 1, 1, 0]]


@pytest.mark.parametrize("who", [SQUARE, WIDE], ids=["square", "wide"])
@pytest.mark.parametrize("lam", [0.5, 10.0, 500.0])
def test_ease_equals_the_closed_form_computed_directly(who: list[list[int]], lam: float) -> None:
    # Steck (2019): B = I - P diag(1 / diag(P)), P = (X^T X + lambda I)^-1; its diagonal is
    # then 1 - P_jj / P_jj = 0. The last movie nobody rated: its column of B is 0.
    x = np.array(who, dtype=np.float64)
    m = x.shape[1]
    p = np.linalg.inv(x.T @ x + lam * np.eye(m))
    expected = np.eye(m) - p @ np.diag(1 / np.diag(p))
    train = _csr([[(j, 3.0) for j in np.flatnonzero(row)] for row in x])
    ease = EASE.fit(train, m, lam)
    assert ease.lam == lam
    np.testing.assert_allclose(ease.weights.numpy(), expected, rtol=1e-5, atol=1e-7)
    assert ease.weights.diagonal().abs().max() == 0.0
    np.testing.assert_allclose(ease.weights[:, -1].numpy(), 0.0, atol=1e-7)
    np.testing.assert_allclose(
        ease.scores(train, np.arange(len(x))).numpy(), x @ expected, rtol=1e-5, atol=1e-6
    )


def test_ease_lambda_is_the_best_on_validation() -> None:
    # 30 users x 12 movies, each user's last rated movie held out as liked validation. The
    # choice must be the grid's best NDCG@10 there, each figure that lambda's own fit's.
    rng = np.random.default_rng(0)
    rated = [rng.choice(12, size=5, replace=False).tolist() for _ in range(30)]
    fit = _csr([[(m, 3.0) for m in r[:-1]] for r in rated])
    val = _csr([[(r[-1], 5.0)] for r in rated])
    grid = (0.1, 10.0, 1000.0)
    choice = choose_ease_lambda(fit, val, 12, LEVELS, grid)
    assert set(choice.val_ndcg) == set(grid)
    assert choice.val_ndcg[choice.lam] == max(choice.val_ndcg.values())
    for lam in grid:
        ease = EASE.fit(fit, 12, lam)
        expected = ranking_metrics(partial(ease.scores, fit), fit, val, LEVELS)["ndcg@10"]
        assert choice.val_ndcg[lam] == pytest.approx(expected)


def test_ease_on_ml100k_u1_beats_popularity_and_its_lambda_ignores_the_test_part(
    movielens: Path,
) -> None:
    # The pipeline's baselines on the real u1 split, EASE's lambda chosen on the validation
    # slice rbm-train uses. A different test part changes the test figures, never lambda.
    ds = load_dataset("ml-100k", movielens, "u1")
    cfg = TrainConfig()
    fit_part, val_part = holdout_split(ds.train, cfg.val_fraction, cfg.seed)
    fitted = cast(
        FittedModels,
        SimpleNamespace(
            models=SimpleNamespace(train_users=np.unique(ds.train.users)),
            train=ds.train,
            fit_part=fit_part,
            val_part=val_part,
        ),
    )
    baselines, skipped = _baselines(ds, fitted)
    assert skipped == {}
    ease = baselines["ease"]
    assert ease["ndcg@10"] > baselines["popularity"]["ndcg@10"] + 0.1  # measured 0.443 vs 0.245
    assert ease["ranking_users"] == baselines["popularity"]["ranking_users"]
    assert ease["lambda"] in (50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0)

    half = replace(ds, test=ds.test.take(np.arange(len(ds.test)) % 2 == 0))
    other, _ = _baselines(half, fitted)
    assert other["ease"]["ndcg@10"] != ease["ndcg@10"]
    assert other["ease"]["lambda"] == ease["lambda"]
    assert other["ease"]["val_ndcg@10"] == ease["val_ndcg@10"]
