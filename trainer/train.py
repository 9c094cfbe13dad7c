"""The user-based softmax RBM (a case per user, CD-k) and the per-model training configs.

``TrainConfig`` is the flat configuration the CLI builds and every registered version
stores; ``model_configs`` derives from it the ``LoopConfig`` of each of the three RBMs,
which ``trainer.loop.run_loop`` trains.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch

from rbm.model import (
    RATING_INFERENCES,
    CDStats,
    RatingInference,
    RBMConfig,
    RBMParams,
    cd_statistics,
)
from trainer.distributed import Communicator
from trainer.indexing import IndexedRatings
from trainer.loop import (
    EpochProgress,
    LocalStats,
    LoopConfig,
    LoopModel,
    momentum_step,
    reduced_stats,
    run_fixed,
    run_loop,
    state_tensors,
)
from trainer.predict import predict_indexed

__all__ = [
    "EpochReport",
    "ModelConfigs",
    "TrainConfig",
    "TrainResult",
    "minibatch_stats",
    "model_configs",
    "momentum_step",
    "refit_softmax",
    "softmax_model",
    "softmax_stats",
    "state_tensors",
    "train",
    "visible_bias_from_counts",
]


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters; saved with every registered version."""

    n_hidden: int = 100
    epochs: int = 40
    batch_size: int = 20  # users per minibatch
    learning_rate: float = 0.02  # on per-user-averaged gradients
    lr_decay: float = 0.96  # per epoch; without decay the model overfits after ~20 epochs
    momentum: float = 0.9  # after the first `momentum_warmup` epochs, 0.5 before
    momentum_warmup: int = 5
    weight_decay: float = 0.003
    cd_k_start: int = 1
    cd_k_max: int = 5
    cd_k_every: int = 10  # raise k by one every this many epochs, up to cd_k_max
    patience: int = 5  # epochs without a better validation RMSE before stopping
    val_fraction: float = 0.05
    seed: int = 0
    device: str = "cpu"
    # The implicit-feedback RBM (who rated what), used for ranking; 0 hidden units: none.
    n_hidden_implicit: int = 200
    implicit_epochs: int = 30
    implicit_learning_rate: float = 0.01
    implicit_weight_decay: float = 0.015
    # Other learning rates tried for the first implicit RBM; the best on validation is kept
    # and the other members train with it (ml-100k chose 0.01, ml-latest-small 0.03).
    implicit_alt_learning_rates: tuple[float, ...] = (0.03,)
    # Its NDCG@10 can dip for several epochs before it rises past popularity's plateau.
    implicit_patience: int = 10
    # Several implicit RBMs from different seeds, their logits averaged when serving.
    implicit_models: int = 3
    # The item-based RBM (one case per movie), blended in for users seen in training.
    n_hidden_item: int = 200  # 0: none
    item_epochs: int = 60
    # Whether the item-based blend also enters the ranking: None chooses on validation
    # (catalogues up to MAX_BLEND_RANKING_MOVIES), True or False forces it.
    blend_ranking: bool | None = None
    # Train the user- and item-based RBMs again on the whole training part (the validation
    # slice too) for the epochs early stopping chose; the choices made on validation stay.
    refit: bool = True
    # How predicted ratings are computed (rbm.model.RatingInference), in validation and
    # in serving; the version records it.
    rating_inference: RatingInference = "second_order"

    def __post_init__(self) -> None:
        positive = ("n_hidden", "epochs", "batch_size", "cd_k_start", "cd_k_max", "cd_k_every")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.learning_rate <= 0 or not 0 < self.lr_decay <= 1:
            raise ValueError("learning_rate must be > 0 and lr_decay in (0, 1]")
        if not 0 <= self.momentum < 1 or self.weight_decay < 0:
            raise ValueError("momentum must be in [0, 1) and weight_decay >= 0")
        if any(lr <= 0 for lr in self.implicit_alt_learning_rates) or self.implicit_patience < 1:
            raise ValueError("implicit learning rates must be > 0 and implicit_patience >= 1")
        if self.n_hidden_implicit < 0 or self.implicit_epochs < 1 or self.implicit_models < 1:
            raise ValueError(
                "n_hidden_implicit must be >= 0, implicit_epochs and implicit_models >= 1"
            )
        if self.n_hidden_item < 0 or self.item_epochs < 1:
            raise ValueError("n_hidden_item must be >= 0 and item_epochs >= 1")
        if not 0 < self.val_fraction < 0.5:
            raise ValueError("val_fraction must be in (0, 0.5)")
        if self.rating_inference not in RATING_INFERENCES:
            raise ValueError(f"rating_inference must be one of {', '.join(RATING_INFERENCES)}")

    def cd_k(self, epoch: int) -> int:
        """CD steps of the user-based RBM at ``epoch`` (0-based); see ``LoopConfig.cd_k``."""
        return model_configs(self).user.cd_k(epoch)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for metadata."""
        return asdict(self)


@dataclass(frozen=True)
class ModelConfigs:
    """The three RBMs' loop configurations; None for a model the TrainConfig turns off."""

    user: LoopConfig
    implicit: LoopConfig | None
    item: LoopConfig | None


def model_configs(cfg: TrainConfig) -> ModelConfigs:
    """Each RBM's configuration, from the flat one the CLI builds and versions record."""
    user = _softmax_config(cfg, "user RBM", cfg.n_hidden, cfg.epochs)
    implicit = _implicit_config(cfg) if cfg.n_hidden_implicit else None
    # The item-based RBM's cases are movies, but TrainConfig has one batch size, and the
    # item RBM has always used it as its number of movies per minibatch; kept so that
    # the same seed trains the same model as before.
    item = (
        _softmax_config(cfg, "item RBM", cfg.n_hidden_item, cfg.item_epochs)
        if cfg.n_hidden_item
        else None
    )
    return ModelConfigs(user, implicit, item)


def _implicit_config(cfg: TrainConfig) -> LoopConfig:
    """The implicit RBM's config: CD-1, its own rate and decay, early-stopped on NDCG@10."""
    return LoopConfig(
        name="implicit RBM",
        n_hidden=cfg.n_hidden_implicit,
        epochs=cfg.implicit_epochs,
        cases_per_batch=cfg.batch_size,  # users, as for the user-based RBM
        learning_rate=cfg.implicit_learning_rate,
        lr_decay=cfg.lr_decay,
        momentum=cfg.momentum,
        momentum_warmup=cfg.momentum_warmup,
        weight_decay=cfg.implicit_weight_decay,
        cd_k_start=1,  # CD-1 throughout: rbm.implicit has no CD-k
        cd_k_max=1,
        cd_k_every=1,
        patience=cfg.implicit_patience,
        goal="maximize",
        metric="val_ndcg@10",
        seed=cfg.seed,
        seed_offset=1,  # its own random numbers, apart from the softmax RBMs'
        device=cfg.device,
    )


def _softmax_config(cfg: TrainConfig, name: str, n_hidden: int, epochs: int) -> LoopConfig:
    """A softmax RBM's config: the shared CD-k schedule, early-stopped on validation RMSE.

    Seed offset 0 for both softmax RBMs: the item RBM has always drawn from the run's seed.
    """
    return LoopConfig(
        name=name,
        n_hidden=n_hidden,
        epochs=epochs,
        cases_per_batch=cfg.batch_size,
        learning_rate=cfg.learning_rate,
        lr_decay=cfg.lr_decay,
        momentum=cfg.momentum,
        momentum_warmup=cfg.momentum_warmup,
        weight_decay=cfg.weight_decay,
        cd_k_start=cfg.cd_k_start,
        cd_k_max=cfg.cd_k_max,
        cd_k_every=cfg.cd_k_every,
        patience=cfg.patience,
        goal="minimize",
        metric="val_rmse",
        seed=cfg.seed,
        device=cfg.device,
    )


@dataclass(frozen=True)
class EpochReport:
    """What one epoch measured."""

    epoch: int
    cd_k: int
    recon_rmse: float  # RMSE (in levels) of the CD reconstruction of the training ratings
    val_rmse: float


@dataclass
class TrainResult:
    """The best parameters found and the per-epoch history."""

    params: RBMParams
    best_epoch: int
    best_val_rmse: float
    history: list[EpochReport] = field(default_factory=list)


def visible_bias_from_counts(
    train: IndexedRatings, n_movies: int, n_levels: int, prior_strength: float = 2.0
) -> torch.Tensor:
    """log P(level | movie) from training counts, smoothed toward the global level frequencies."""
    counts = np.zeros((n_levels, n_movies), dtype=np.float64)
    np.add.at(counts, (train.levels, train.movies), 1.0)
    global_freq = (counts.sum(1) + 1.0) / (counts.sum() + n_levels)  # (K,)
    smoothed = counts + prior_strength * global_freq[:, None]
    probs = smoothed / smoothed.sum(0, keepdims=True)
    return torch.from_numpy(np.log(probs).reshape(-1).astype(np.float32))  # level-major


def _val_rmse(
    params: RBMParams,
    config: RBMConfig,
    context: IndexedRatings,
    val: IndexedRatings,
    levels: torch.Tensor,
    inference: RatingInference,
) -> float:
    """RMSE on ``val`` with hidden states computed from ``context`` (same CSR rows)."""
    pred = predict_indexed(params, config, context, val, levels, inference)
    truth = levels[torch.from_numpy(val.levels).to(levels.device)]
    return float(torch.sqrt(((pred - truth) ** 2).mean()))


def train(
    train_part: IndexedRatings,
    val_part: IndexedRatings,
    rbm_config: RBMConfig,
    levels: torch.Tensor,
    config: TrainConfig,
    on_epoch: Callable[[EpochReport], None] | None = None,
    comm: Communicator | None = None,
) -> TrainResult:
    """Train the user-based RBM on ``train_part``, early-stopping on RMSE over ``val_part``.

    ``rbm_config`` gives the shape (its n_hidden is normally ``config.n_hidden``). With a
    process group in ``comm``, every rank runs the same minibatch schedule, computes the
    statistics of its share of each minibatch, and applies the summed update.
    """
    spec = model_configs(config).user
    model = softmax_model(
        train_part, val_part, rbm_config, levels, spec.device, config.rating_inference
    )
    progress = None if on_epoch is None else lambda p: on_epoch(_report(p))
    result = run_loop(spec, model, comm, progress)
    history = [_report(p) for p in result.history]
    return TrainResult(result.params, result.best_epoch, result.best_val, history)


def _report(progress: EpochProgress) -> EpochReport:
    return EpochReport(progress.epoch, progress.cd_k, progress.recon_rmse, progress.val)


def softmax_model(
    train_part: IndexedRatings,
    val_part: IndexedRatings,
    rbm_config: RBMConfig,
    levels: torch.Tensor,
    device: str,
    inference: RatingInference,
) -> LoopModel:
    """The loop's hooks for a softmax RBM with a case per CSR row (users, or movies transposed).

    Validation RMSE predicts with ``inference``, as the server will.
    """
    on_device = levels.to(device)
    return _softmax_hooks(
        train_part,
        rbm_config,
        lambda params: _val_rmse(params, rbm_config, train_part, val_part, on_device, inference),
    )


def _softmax_hooks(
    data: IndexedRatings, rbm_config: RBMConfig, validate: Callable[[RBMParams], float]
) -> LoopModel:
    """Initial parameters (visible biases from ``data``'s counts) and CD-k statistics."""
    vb = visible_bias_from_counts(data, rbm_config.n_movies, rbm_config.n_levels)
    return LoopModel(
        n_cases=len(data.user_ids),
        init=lambda gen: RBMParams.init(rbm_config, gen, vb),
        stats=softmax_stats(data, rbm_config),
        validate=validate,
    )


def refit_softmax(
    data: IndexedRatings,
    rbm_config: RBMConfig,
    spec: LoopConfig,
    epochs: int,
    comm: Communicator | None = None,
    on_epoch: Callable[[EpochProgress], None] | None = None,
) -> RBMParams:
    """A softmax RBM trained on all of ``data`` for ``epochs`` epochs as ``spec`` says.

    The refit after early stopping: the same schedule and seed, on data that now includes
    the validation slice, for the epoch count that slice chose; hence no validation.
    """
    model = _softmax_hooks(data, rbm_config, lambda params: math.nan)
    fixed = replace(spec, name=f"{spec.name} refit", epochs=max(epochs, 1))
    return run_fixed(fixed, model, comm, on_epoch).params


def softmax_stats(data: IndexedRatings, rbm_config: RBMConfig) -> LocalStats:
    """The loop's statistics hook: CD-k statistics of the cases at some of ``data``'s rows."""

    def stats(params: RBMParams, rows: np.ndarray, k: int, gen: torch.Generator | None) -> CDStats:
        batch = data.batch(rows).to(params.weights.device)
        return cd_statistics(params, batch, rbm_config, k, gen)

    return stats


def minibatch_stats(
    params: RBMParams,
    data: IndexedRatings,
    rows: np.ndarray,
    rbm_config: RBMConfig,
    k: int,
    gen: torch.Generator | None,
    comm: Communicator,
) -> CDStats:
    """CD-k statistics of the users at CSR ``rows``, summed over every rank's share of them."""
    return reduced_stats(softmax_stats(data, rbm_config), params, rows, k, gen, comm)
