"""The training loop on real data: repeatable with a seed, better than chance."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from rbm.model import RBMConfig, level_probabilities
from trainer.data import Dataset, holdout_split, load_dataset
from trainer.evaluate import ranking_metrics, rating_metrics
from trainer.indexing import IndexedRatings, Indexer
from trainer.predict import hidden_states, predict_indexed
from trainer.train import TrainConfig, TrainResult, train


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread: two on a busy 2-core machine make training ~10x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def u1(movielens: Path) -> Dataset:
    return load_dataset("ml-100k", movielens, "u1")


def _train_twice(u1: Dataset, seed_b: int) -> tuple[torch.Tensor, torch.Tensor]:
    users = np.unique(u1.train.users)[:200]  # a slice keeps this fast
    part = u1.train.take(np.isin(u1.train.users, users))
    fit, val = holdout_split(part, 0.05, seed=0)
    ix = Indexer(u1)
    config = RBMConfig(ix.n_movies, 5, 20)
    levels = torch.tensor(u1.levels)
    out = []
    for seed in (0, seed_b):
        cfg = TrainConfig(n_hidden=20, epochs=3, seed=seed)
        result = train(ix.index(fit, users), ix.index(val, users), config, levels, cfg)
        out.append(result.params.weights)
    return out[0], out[1]


def test_a_fixed_seed_gives_identical_weights(u1: Dataset) -> None:
    a, b = _train_twice(u1, seed_b=0)
    assert torch.equal(a, b)


def test_another_seed_gives_other_weights(u1: Dataset) -> None:
    a, b = _train_twice(u1, seed_b=1)
    assert not torch.equal(a, b)


@dataclass(frozen=True)
class Trained:
    """The user-based RBM trained on all of u1.base, and the data it is judged on."""

    result: TrainResult
    config: RBMConfig
    levels: torch.Tensor
    fit: IndexedRatings  # u1.base less the validation slice
    val: IndexedRatings  # the validation slice (same CSR rows)
    context: IndexedRatings  # all of u1.base (same CSR rows as test)
    test: IndexedRatings  # u1.test, for the users of u1.base


@pytest.fixture(scope="module")
def trained_rbm(u1: Dataset) -> Trained:
    """10 epochs of the default schedule with 20 hidden units: seconds on 2 cores."""
    ix = Indexer(u1)
    fit_part, val_part = holdout_split(u1.train, 0.05, seed=0)
    users = np.unique(u1.train.users)  # 459 of u1.test's 462 users are among them
    fit, val = ix.index(fit_part, users), ix.index(val_part, users)
    config = RBMConfig(ix.n_movies, len(u1.levels), 20)
    levels = torch.tensor(u1.levels, dtype=torch.float32)
    result = train(fit, val, config, levels, TrainConfig(n_hidden=20, epochs=10, seed=0))
    return Trained(
        result, config, levels, fit, val, ix.index(u1.train, users), ix.index(u1.test, users)
    )


def _rmse(predicted: torch.Tensor, data: IndexedRatings, levels: torch.Tensor) -> float:
    truth = levels[torch.from_numpy(data.levels)]
    return rating_metrics(predicted, truth, float(levels[0]), float(levels[-1]))["rmse"]


def test_rmse_beats_predicting_the_global_mean(trained_rbm: Trained) -> None:
    t = trained_rbm
    # The trivial predictor: every rating is the mean of the ratings it could learn from.
    fit_mean = float(t.levels[torch.from_numpy(t.fit.levels)].mean())
    val_mean_rmse = _rmse(torch.full((len(t.val.levels),), fit_mean), t.val, t.levels)
    assert t.result.best_val_rmse < val_mean_rmse - 0.05, (t.result.best_val_rmse, val_mean_rmse)

    # On the held-out test split, with every training rating as the users' context.
    predicted = predict_indexed(t.result.params, t.config, t.context, t.test, t.levels)
    train_mean = float(t.levels[torch.from_numpy(t.context.levels)].mean())
    test_mean_rmse = _rmse(torch.full((len(t.test.levels),), train_mean), t.test, t.levels)
    test_rmse = _rmse(predicted, t.test, t.levels)
    assert test_rmse < test_mean_rmse - 0.05, (test_rmse, test_mean_rmse)  # ~1.02 vs ~1.15


def test_training_improves_on_where_it_started(trained_rbm: Trained) -> None:
    # The visible biases start at each movie's smoothed rating distribution, which alone
    # beats the global mean; the weights learned must do better than that start.
    history = [epoch.val_rmse for epoch in trained_rbm.result.history]
    assert len(history) == 10
    assert trained_rbm.result.best_val_rmse < history[0] - 0.005, history  # ~0.99 vs ~1.012


def test_ndcg_beats_a_random_ranking(trained_rbm: Trained) -> None:
    t = trained_rbm
    hidden = hidden_states(t.result.params, t.config, t.context)
    level_values = t.levels.view(1, -1, 1)

    def expected_rating(rows: np.ndarray) -> torch.Tensor:  # (B, M)
        probs = level_probabilities(t.result.params, hidden[torch.from_numpy(rows)], len(t.levels))
        return (probs * level_values).sum(dim=1)

    generator = torch.Generator().manual_seed(0)

    def random(rows: np.ndarray) -> torch.Tensor:
        return torch.rand(len(rows), t.config.n_movies, generator=generator)

    levels = t.levels.numpy()
    model = ranking_metrics(expected_rating, t.context, t.test, levels)
    chance = ranking_metrics(random, t.context, t.test, levels)
    assert model["ranking_users"] == chance["ranking_users"] > 400
    assert model["ndcg@10"] > 2 * chance["ndcg@10"], (model, chance)  # ~0.09 vs ~0.017
    assert model["hr@10"] > chance["hr@10"]
