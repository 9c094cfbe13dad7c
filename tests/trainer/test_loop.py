"""The generic training loop on a toy model, the per-model configs, and the blend choice."""

from __future__ import annotations

import logging
import math
from dataclasses import astuple, fields, replace

import numpy as np
import pytest
import torch

from rbm.model import CDStats, RatingBlend, RBMConfig, RBMParams
from trainer.indexing import IndexedRatings
from trainer.loop import EpochProgress, LoopConfig, LoopModel, run_fixed, run_loop
from trainer.train import TrainConfig, model_configs
from trainer.train_item import _choose_blend, transpose

TOY = RBMConfig(n_movies=3, n_levels=1, n_hidden=2)


def _spec(**changes: object) -> LoopConfig:
    base = LoopConfig(
        name="toy",
        n_hidden=TOY.n_hidden,
        epochs=8,
        cases_per_batch=2,
        learning_rate=0.1,
        lr_decay=1.0,
        momentum=0.0,
        momentum_warmup=0,
        weight_decay=0.0,
        cd_k_start=1,
        cd_k_max=1,
        cd_k_every=1,
        patience=3,
        goal="minimize",
        metric="val_toy",
        seed=0,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


class _Toy:
    """A model whose every step adds to the weights and whose validation figures are scripted."""

    def __init__(self, figures: list[float]) -> None:
        self.figures = figures
        self.seen: list[torch.Tensor] = []  # the weights each validation saw

    def stats(self, params: RBMParams, rows: np.ndarray, k: int, gen: object) -> CDStats:
        grow = torch.ones_like(params.weights) * len(rows)  # weights grow every step: no repeats
        zeros = (torch.zeros_like(params.visible_bias), torch.zeros_like(params.hidden_bias))
        return CDStats(grow, *zeros, recon_sq_error=0.0, n_entries=len(rows))

    def validate(self, params: RBMParams) -> float:
        self.seen.append(params.weights.clone())
        return self.figures[len(self.seen) - 1]

    def hooks(self) -> LoopModel:
        return LoopModel(
            n_cases=5,
            init=lambda gen: RBMParams.init(TOY, gen),
            stats=self.stats,
            validate=self.validate,
        )


# Best 1.5 at epoch 4, then three epochs without better: patience 3 stops at epoch 7,
# before epoch 8's 0.1 (which a loop that ignored patience would keep).
FIGURES = [3.0, 2.0, 2.5, 1.5, 1.6, 1.5, 1.8, 0.1]


@pytest.mark.parametrize("goal", ["minimize", "maximize"])
def test_early_stop_keeps_the_best_epochs_parameters(
    goal: str, caplog: pytest.LogCaptureFixture
) -> None:
    sign = 1.0 if goal == "minimize" else -1.0
    toy = _Toy([sign * f for f in FIGURES])
    progress: list[EpochProgress] = []
    with caplog.at_level(logging.INFO, logger="trainer.loop"):
        result = run_loop(_spec(goal=goal), toy.hooks(), on_epoch=progress.append)
    assert [p.epoch for p in progress] == [1, 2, 3, 4, 5, 6, 7]
    assert [p.best_epoch for p in progress] == [1, 2, 2, 4, 4, 4, 4]  # a tie is no better
    assert result.best_epoch == 4 and result.best_val == sign * 1.5
    assert torch.equal(result.params.weights, toy.seen[3])  # a copy of epoch 4's weights
    assert not torch.equal(result.params.weights, toy.seen[-1])
    assert [r.epoch for r in result.history] == [1, 2, 3, 4, 5, 6, 7]
    assert "toy: early stop at epoch 7 (best 4)" in caplog.messages


@pytest.mark.parametrize(
    ("patience", "stopped_at", "best"),
    [(1, 3, 2), (2, 6, 4), (4, 8, 8)],  # 2: epoch 6 only ties epoch 4's 1.5
)
def test_patience_counts_epochs_since_the_best(patience: int, stopped_at: int, best: int) -> None:
    toy = _Toy(FIGURES)
    result = run_loop(_spec(patience=patience), toy.hooks())
    assert len(result.history) == stopped_at
    assert result.best_epoch == best
    assert torch.equal(result.params.weights, toy.seen[best - 1])


def test_steady_improvement_runs_the_whole_budget() -> None:
    toy = _Toy([10.0 - e for e in range(8)])
    result = run_loop(_spec(patience=1), toy.hooks())
    assert len(result.history) == 8 and result.best_epoch == 8


def test_a_non_finite_figure_fails_the_run() -> None:
    with pytest.raises(FloatingPointError, match="toy: val_toy is nan at epoch 2"):
        run_loop(_spec(), _Toy([1.0, math.nan, 0.5]).hooks())


def test_a_fixed_run_trains_its_epochs_without_validating_and_keeps_the_last() -> None:
    toy = _Toy([])  # a validation would index past the empty script
    progress: list[EpochProgress] = []
    result = run_fixed(_spec(epochs=4), toy.hooks(), on_epoch=progress.append)
    assert [p.epoch for p in progress] == [1, 2, 3, 4] and toy.seen == []
    assert all(math.isnan(p.val) for p in progress) and result.best_epoch == 4
    # The same steps as the first four epochs of an early-stopped run, and its last weights.
    steady = _Toy([10.0 - e for e in range(4)])
    same = run_loop(_spec(epochs=4), steady.hooks())
    assert torch.equal(result.params.weights, same.params.weights)


def test_the_same_seed_trains_the_same_weights() -> None:
    a, b = (run_loop(_spec(), _Toy(FIGURES).hooks()).params.weights for _ in range(2))
    other = run_loop(_spec(seed_offset=1), _Toy(FIGURES).hooks()).params.weights
    assert torch.equal(a, b) and not torch.equal(a, other)  # the init differs by seed


def test_schedules() -> None:
    spec = _spec(
        learning_rate=1.0, lr_decay=0.5, momentum=0.9, momentum_warmup=2, cd_k_max=3, cd_k_every=2
    )
    rates = spec.learning_rates()
    assert [next(rates) for _ in range(3)] == [1.0, 0.5, 0.25]
    assert [spec.momentum_at(e) for e in range(4)] == [0.5, 0.5, 0.9, 0.9]
    assert [spec.cd_k(e) for e in range(7)] == [1, 1, 2, 2, 3, 3, 3]


def test_a_bad_spec_is_refused() -> None:
    with pytest.raises(ValueError, match="cases_per_batch"):
        _spec(cases_per_batch=0)
    with pytest.raises(ValueError, match="goal"):
        _spec(goal="sideways")


# The flags' config is saved in every registered version's metadata: its names are a contract.
TRAIN_CONFIG_FIELDS = {
    "n_hidden",
    "epochs",
    "batch_size",
    "learning_rate",
    "lr_decay",
    "momentum",
    "momentum_warmup",
    "weight_decay",
    "cd_k_start",
    "cd_k_max",
    "cd_k_every",
    "patience",
    "val_fraction",
    "seed",
    "device",
    "n_hidden_implicit",
    "implicit_epochs",
    "implicit_learning_rate",
    "implicit_weight_decay",
    "n_hidden_item",
    "item_epochs",
}


def test_train_config_keeps_every_field_name() -> None:
    assert {f.name for f in fields(TrainConfig)} >= TRAIN_CONFIG_FIELDS


def test_model_configs_derive_each_models_budget() -> None:
    cfg = TrainConfig(
        n_hidden=7,
        epochs=3,
        batch_size=13,
        seed=5,
        n_hidden_implicit=9,
        implicit_epochs=4,
        n_hidden_item=11,
        item_epochs=6,
    )
    specs = model_configs(cfg)
    assert specs.implicit is not None and specs.item is not None
    assert (specs.user.n_hidden, specs.user.epochs, specs.user.goal) == (7, 3, "minimize")
    assert (specs.implicit.n_hidden, specs.implicit.epochs, specs.implicit.goal) == (
        9,
        4,
        "maximize",
    )
    assert (specs.item.n_hidden, specs.item.epochs) == (11, 6)
    assert specs.implicit.learning_rate == cfg.implicit_learning_rate
    assert specs.implicit.weight_decay == cfg.implicit_weight_decay
    assert {specs.implicit.cd_k(e) for e in range(50)} == {1}
    assert [s.model_seed for s in (specs.user, specs.implicit, specs.item)] == [5, 6, 5]
    assert specs.item.cases_per_batch == specs.user.cases_per_batch == 13
    assert [cfg.cd_k(e) for e in (0, 10, 100)] == [1, 2, 5]
    off = model_configs(TrainConfig(n_hidden_implicit=0, n_hidden_item=0))
    assert off.implicit is None and off.item is None


# The blend choice. Two users, three movies; user-major and movie-major orders differ, so a
# misaligned blend would compare predictions of different (user, movie) pairs.
LEVELS = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
N_MOVIES = 3
VAL = IndexedRatings(
    user_ids=np.array([10, 20]),
    indptr=np.array([0, 2, 5]),
    movies=np.array([0, 2, 0, 1, 2]),
    levels=np.array([1, 3, 2, 1, 3]),  # true ratings 2, 4, 3, 2, 4: inside 1..5 after +-1
)


@pytest.mark.parametrize(
    ("user_offset", "item_offset", "blend", "rmse"),
    [
        (1.0, -1.0, 0.5, 0.0),  # errors cancel half and half
        (1.0, 0.0, 1.0, 0.0),  # the item RBM is exact
        (0.0, 1.0, 0.0, 0.0),  # the user RBM is exact
        # a*(t - 0.5) + (1 - a)*(t + 1) = t + 1 - 1.5a: a = 0.7 is nearest 2/3, error -0.05
        (1.0, -0.5, 0.7, 0.05),
    ],
)
def test_the_blend_with_the_lowest_validation_rmse_is_chosen(
    monkeypatch: pytest.MonkeyPatch,
    user_offset: float,
    item_offset: float,
    blend: float,
    rmse: float,
) -> None:
    val_t = transpose(VAL, N_MOVIES)
    item_pred = LEVELS[torch.from_numpy(val_t.levels)] + item_offset  # movie-major order
    user_pred = LEVELS[torch.from_numpy(VAL.levels)] + user_offset  # user-major order

    def predict(*args: object) -> torch.Tensor:
        assert args[3] is val_t  # the item RBM predicts the transposed validation entries
        return item_pred

    monkeypatch.setattr("trainer.train_item.predict_indexed", predict)
    params = RBMParams.init(RBMConfig(2, 5, 1), torch.Generator().manual_seed(0))
    fit_t = transpose(VAL, N_MOVIES)  # unused by the stand-in prediction
    config = RBMConfig(2, 5, 1)
    got_blend, rating_blend, got_rmse = _choose_blend(
        params, config, VAL, fit_t, val_t, VAL, user_pred, LEVELS, N_MOVIES, "mean_field"
    )
    assert got_blend == blend
    # Five validation ratings are too few to fit five coefficients on: the share serves.
    assert rating_blend == RatingBlend.from_share(blend)
    assert got_rmse == pytest.approx(rmse, abs=1e-6)


def test_the_rating_blend_is_fitted_on_validation_and_beats_any_share(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 40 users x 12 movies; the truth is a known linear blend of the two predictions whose
    # item share grows with the movie's and the user's training counts.
    gen = np.random.default_rng(0)
    n_users, n_movies = 40, 12
    indptr = np.arange(0, n_users * n_movies + 1, n_movies)
    movies = np.tile(np.arange(n_movies), n_users)
    fit = IndexedRatings(
        np.arange(n_users),
        np.concatenate([[0], np.cumsum(gen.integers(1, 30, n_users))]),
        np.zeros(0, dtype=np.int64),
        np.zeros(0, dtype=np.int64),
    )
    fit_movies = gen.integers(0, n_movies, int(fit.indptr[-1]))
    fit = IndexedRatings(fit.user_ids, fit.indptr, fit_movies, np.zeros_like(fit_movies))
    user_pred = torch.from_numpy(gen.uniform(2.0, 4.0, len(movies)))
    item_pred = torch.from_numpy(gen.uniform(2.0, 4.0, len(movies)))
    m_log = np.log1p(np.bincount(fit_movies, minlength=n_movies))[movies]
    u_log = np.log1p(np.diff(fit.indptr))[np.repeat(np.arange(n_users), n_movies)]
    want = RatingBlend(0.2, 0.3, 0.8, 0.1, -0.05, float(m_log.mean()), float(u_log.mean()))
    truth = want.apply(user_pred, item_pred, torch.from_numpy(m_log), torch.from_numpy(u_log))
    levels = torch.linspace(1.0, 5.0, 81, dtype=torch.float64)  # a 0.05 grid
    level_of = torch.round((truth - 1.0) / 0.05).long()
    val = IndexedRatings(np.arange(n_users), indptr, movies, level_of.numpy())
    val_t = transpose(val, n_movies)
    order = np.lexsort((np.repeat(np.arange(n_users), n_movies), movies))
    monkeypatch.setattr(
        "trainer.train_item.predict_indexed", lambda *args: item_pred[torch.from_numpy(order)]
    )
    params = RBMParams.init(RBMConfig(n_users, 5, 1), torch.Generator().manual_seed(0))
    share, fitted, rmse = _choose_blend(
        params,
        RBMConfig(n_users, 5, 1),
        fit,
        val_t,
        val_t,
        val,
        user_pred,
        levels,
        n_movies,
        "mean_field",
    )
    for got, expected in zip(astuple(fitted), astuple(want), strict=True):
        assert got == pytest.approx(expected, abs=0.02)
    assert rmse < 0.02  # what is left is the rounding to the 0.05 grid (~0.0144)
    shared = RatingBlend.from_share(share).apply(
        user_pred, item_pred, torch.from_numpy(m_log), torch.from_numpy(u_log)
    )
    assert float(torch.sqrt((shared - truth).pow(2).mean())) > 5 * rmse
