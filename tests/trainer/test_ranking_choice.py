"""rbm-train's ranking choice: the score whose served top-10 is best on validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rbm.model import ItemModel, RBMConfig, RBMParams
from trainer import pipeline
from trainer.data import Dataset, Ratings
from trainer.distributed import LocalCommunicator
from trainer.indexing import IndexedRatings
from trainer.pipeline import LIKED_WEIGHTS, _Choice, _choose_ranking, _Models
from trainer.train import TrainConfig
from trainer.train_implicit import ImplicitResult

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
    #     w * log P(>= 4) = w * (about -39), + log sigmoid(4) = -0.02: 10 first again for
    #     every weight w tried (the smallest, 0.1, gives -3.9), NDCG 1/log2(3).
    #   rated ranks 20 first: NDCG 1.
    level_bias = torch.full((5, 3), -30.0)
    level_bias[4, 0] = level_bias[0, 1] = level_bias[2, 2] = 10.0  # (K, M)
    params = RBMParams(torch.zeros(15, 1), level_bias.reshape(-1), torch.zeros(1))
    implicit = RBMParams(torch.zeros(3, 1), torch.tensor([-3.0, 4.0, 0.0]), torch.zeros(1))
    models = _Models(params, implicit, None, 3, np.array([1, 2]))
    fit = IndexedRatings(np.array([1, 2]), np.array([0, 1, 2]), np.array([2, 2]), np.array([2, 2]))
    val = _ratings([1, 2], [20, 20], [5.0, 5.0])
    ds = Dataset("tiny", "holdout", _ratings([], [], []), val, MOVIES, ["a", "b", "c"], LEVELS, "")
    choice, ndcg = _choose_ranking(ds, models, TrainConfig(), RBMConfig(3, 5, 1), fit, val)
    assert choice.ranking == "rated"
    assert ndcg == pytest.approx(1.0)
    assert 1 / math.log2(3) < ndcg


def test_the_weight_of_log_p_liked_is_chosen_on_validation_too() -> None:
    # Four movies; both users rated movie 30 in training and liked movie 20 in validation.
    #   movie 10: surely rated 5 (log P(liked) ~ 0), rarely rated: log P(rated) = -3.05
    #   movie 20: rated 5 with P 0.12 (log P(liked) = -2.13), log P(rated) = -1.31
    #   movie 40: surely rated 1 (log P(liked) ~ -19), often rated: log P(rated) = -0.69
    # rated alone puts 40 first, 20 second: NDCG 1/log2(3); expected_rating puts 10 first.
    # liked_and_rated with weight 1: 10 (-3.05) before 20 (-3.44): NDCG 1/log2(3) again.
    # With weight 0.5, 20 (-2.37) beats 10 (-3.05) and 40 (-10.3): NDCG 1, the only way.
    level_bias = torch.full((5, 4), -10.0)
    level_bias[4, 0] = 10.0
    level_bias[0, 1], level_bias[4, 1] = 2.0, 0.0
    level_bias[2, 2] = level_bias[0, 3] = 10.0
    params = RBMParams(torch.zeros(20, 1), level_bias.reshape(-1), torch.zeros(1))
    implicit = RBMParams(torch.zeros(4, 1), torch.tensor([-3.0, -1.0, 0.0, 0.0]), torch.zeros(1))
    models = _Models(params, implicit, None, 4, np.array([1, 2]))
    fit = IndexedRatings(np.array([1, 2]), np.array([0, 1, 2]), np.array([2, 2]), np.array([2, 2]))
    val = _ratings([1, 2], [20, 20], [5.0, 5.0])
    movies = np.array([10, 20, 30, 40])
    ds = Dataset("tiny", "holdout", _ratings([], [], []), val, movies, list("abcd"), LEVELS, "")
    choice, ndcg = _choose_ranking(ds, models, TrainConfig(), RBMConfig(4, 5, 1), fit, val)
    assert choice == _Choice("liked_and_rated", 0.5)  # ties: the larger weight
    assert ndcg == pytest.approx(1.0)
    assert 0.5 in LIKED_WEIGHTS and 1.0 in LIKED_WEIGHTS


def _blend_case() -> tuple[Dataset, _Models, IndexedRatings, Ratings]:
    """Two users who liked movie 20 in validation, where only the item-based RBM says so.

    The user-based RBM says movie 10 is rated 5 and movie 20 rated 1; the implicit RBM
    that 10 is rated far more often; movie 30 is rated by both in training. The item-based
    RBM (one hidden unit: 0 for movie 10, 1 for movie 20) says 10 is rated 1 and 20 rated
    5, and its share is 1. Without the blend every score puts 10 first (NDCG 1/log2(3));
    with it, expected_rating puts 20 first (NDCG 1).
    """
    level_bias = torch.full((5, 3), -30.0)
    level_bias[4, 0] = level_bias[0, 1] = level_bias[2, 2] = 10.0  # (K, M)
    params = RBMParams(torch.zeros(15, 1), level_bias.reshape(-1), torch.zeros(1))
    implicit = RBMParams(torch.zeros(3, 1), torch.tensor([4.0, -3.0, 0.0]), torch.zeros(1))
    # Item visible unit k*U + u; two users, so level k's rows are 2k and 2k + 1.
    weights, bias = torch.zeros(10, 1), torch.full((10,), -30.0)
    weights[0:2], bias[0:2] = -40.0, 20.0  # level 1: likely where the hidden unit is 0
    weights[8:10], bias[8:10] = 40.0, -20.0  # level 5: likely where it is 1
    item = ItemModel(
        RBMParams(weights, bias, torch.zeros(1)), torch.tensor([[0.0], [1.0], [0.5]]), 1.0
    )
    models = _Models(params, implicit, item, 3, np.array([1, 2]))
    fit = IndexedRatings(np.array([1, 2]), np.array([0, 1, 2]), np.array([2, 2]), np.array([2, 2]))
    val = _ratings([1, 2], [20, 20], [5.0, 5.0])
    ds = Dataset("tiny", "holdout", _ratings([], [], []), val, MOVIES, ["a", "b", "c"], LEVELS, "")
    return ds, models, fit, val


@pytest.mark.parametrize(
    ("asked", "limit", "blended"),
    [(None, 3, True), (True, 3, True), (False, 3, False), (None, 2, False), (True, 2, True)],
)
def test_the_blend_enters_the_ranking_where_validation_says_it_helps(
    monkeypatch: pytest.MonkeyPatch, asked: bool | None, limit: int, blended: bool
) -> None:
    # asked None: chosen on validation, for catalogues up to MAX_BLEND_RANKING_MOVIES;
    # True or False (--blend-ranking, --no-blend-ranking) forces it either way.
    monkeypatch.setattr(pipeline, "MAX_BLEND_RANKING_MOVIES", limit)
    ds, models, fit, val = _blend_case()
    cfg = TrainConfig(blend_ranking=asked)
    choice, ndcg = _choose_ranking(ds, models, cfg, RBMConfig(3, 5, 1), fit, val)
    assert choice.blend_ranking is blended
    if blended:
        assert choice == _Choice("expected_rating", 1.0, True)  # ties: the earlier score
        assert ndcg == pytest.approx(1.0)
    else:
        assert ndcg == pytest.approx(1 / math.log2(3))


def test_without_an_item_model_the_blend_is_never_tried() -> None:
    ds, models, fit, val = _blend_case()
    alone = _Models(models.params, models.implicit, None, 3, models.train_users)
    cfg = TrainConfig(blend_ranking=True)
    choice, ndcg = _choose_ranking(ds, alone, cfg, RBMConfig(3, 5, 1), fit, val)
    assert not choice.blend_ranking
    assert ndcg == pytest.approx(1 / math.log2(3))


@pytest.mark.parametrize(("better", "chosen"), [(0.03, 0.03), (0.01, None)])
def test_the_implicit_rbms_train_at_the_rate_best_on_validation(
    monkeypatch: pytest.MonkeyPatch, better: float, chosen: float | None
) -> None:
    # The first implicit RBM is trained at every rate; the others at the winner's only.
    calls: list[tuple[int, float | None]] = []

    def fake(*args: object) -> ImplicitResult:
        member, rate = args[7], args[8] if len(args) > 8 else None
        assert isinstance(member, int)
        calls.append((member, rate))  # type: ignore[arg-type]
        effective = 0.01 if rate is None else rate
        params = RBMParams(torch.full((3, 1), float(member)), torch.zeros(3), torch.zeros(1))
        return ImplicitResult(params, 1, 0.2 if effective == better else 0.1)

    monkeypatch.setattr(pipeline, "train_implicit", fake)
    phases: list[str] = []
    cfg = TrainConfig(implicit_learning_rate=0.01, implicit_alt_learning_rates=(0.03,))
    empty = IndexedRatings(
        np.array([1]), np.array([0, 0]), np.array([], dtype=np.int64), np.array([], dtype=np.int64)
    )
    members = pipeline._train_implicit_members(
        empty, empty, 3, np.asarray(LEVELS), cfg, LocalCommunicator(), phases.append, None
    )
    assert calls == [(0, None), (0, 0.03), (1, chosen), (2, chosen)]
    assert [float(m.weights[0, 0]) for m in members] == [0.0, 1.0, 2.0]
    suffix = "" if chosen is None else f" lr={chosen:g}"
    assert phases == [
        "implicit RBM",
        "implicit RBM lr=0.03",
        f"implicit RBM 2{suffix}",
        f"implicit RBM 3{suffix}",
    ]
