"""rbm-train's ranking choice: the score whose served top-10 is best on validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rbm.model import RBMConfig, RBMParams
from trainer.data import Dataset, Ratings
from trainer.indexing import IndexedRatings
from trainer.pipeline import _choose_ranking, _Models
from trainer.train import TrainConfig

MOVIES = np.array([10, 20, 30])
LEVELS = (1.0, 2.0, 3.0, 4.0, 5.0)


def _ratings(users: list[int], movies: list[int], ratings: list[float]) -> Ratings:
    n = len(users)
    return Ratings(
        np.array(users, dtype=np.int64),
        np.array(movies, dtype=np.int64),
        np.array(ratings, dtype=np.float32),
        np.zeros(n, dtype=np.int64),
    )


def test_the_ranking_with_the_best_served_validation_ndcg_wins() -> None:
    # No weights, so every user gets the biases' answer. Movie 10 is surely rated 5 but
    # rarely rated at all; movie 20 is surely rated 1 but nearly everyone rates it; movie 30
    # is rated by both users in training, so it is never recommended to them.
    # Validation: both users liked movie 20.
    #   expected_rating ranks 10 before 20: a hit at rank 2, NDCG 1/log2(3).
    #   liked_and_rated: 10 scores log(~1) + log sigmoid(-3) = -3.05, 20 scores
    #     log P(>= 4) = about -20, + log sigmoid(4) = -0.02: 10 first again, NDCG 1/log2(3).
    #   rated ranks 20 first: NDCG 1.
    level_bias = torch.full((5, 3), -10.0)
    level_bias[4, 0] = level_bias[0, 1] = level_bias[2, 2] = 10.0  # (K, M)
    params = RBMParams(torch.zeros(15, 1), level_bias.reshape(-1), torch.zeros(1))
    implicit = RBMParams(torch.zeros(3, 1), torch.tensor([-3.0, 4.0, 0.0]), torch.zeros(1))
    models = _Models(params, implicit, None, 3, np.array([1, 2]))
    fit = IndexedRatings(np.array([1, 2]), np.array([0, 1, 2]), np.array([2, 2]), np.array([2, 2]))
    val = _ratings([1, 2], [20, 20], [5.0, 5.0])
    ds = Dataset("tiny", "holdout", _ratings([], [], []), val, MOVIES, ["a", "b", "c"], LEVELS, "")
    ranking, ndcg = _choose_ranking(ds, models, TrainConfig(), RBMConfig(3, 5, 1), fit, val)
    assert ranking == "rated"
    assert ndcg == pytest.approx(1.0)
    assert 1 / math.log2(3) < ndcg
