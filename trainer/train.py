"""The training loop: minibatch CD-k with momentum, weight decay and early stopping."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from rbm.model import CDStats, RBMConfig, RBMParams, cd_statistics
from trainer.distributed import Communicator, LocalCommunicator
from trainer.indexing import IndexedRatings
from trainer.predict import predict_indexed

__all__ = [
    "EpochReport",
    "TrainConfig",
    "TrainResult",
    "minibatch_stats",
    "momentum_step",
    "state_tensors",
    "train",
    "visible_bias_from_counts",
]

log = logging.getLogger(__name__)


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
    implicit_learning_rate: float = 0.05
    implicit_weight_decay: float = 0.001
    # The item-based RBM (one case per movie), blended in for users seen in training.
    n_hidden_item: int = 100  # 0: none
    item_epochs: int = 60

    def __post_init__(self) -> None:
        positive = ("n_hidden", "epochs", "batch_size", "cd_k_start", "cd_k_max", "cd_k_every")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.learning_rate <= 0 or not 0 < self.lr_decay <= 1:
            raise ValueError("learning_rate must be > 0 and lr_decay in (0, 1]")
        if not 0 <= self.momentum < 1 or self.weight_decay < 0:
            raise ValueError("momentum must be in [0, 1) and weight_decay >= 0")
        if self.n_hidden_implicit < 0 or self.implicit_epochs < 1:
            raise ValueError("n_hidden_implicit must be >= 0 and implicit_epochs >= 1")
        if self.n_hidden_item < 0 or self.item_epochs < 1:
            raise ValueError("n_hidden_item must be >= 0 and item_epochs >= 1")
        if not 0 < self.val_fraction < 0.5:
            raise ValueError("val_fraction must be in (0, 0.5)")

    def cd_k(self, epoch: int) -> int:
        """CD steps for ``epoch`` (0-based): starts at cd_k_start and grows as training goes on."""
        return min(self.cd_k_max, self.cd_k_start + epoch // self.cd_k_every)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for metadata."""
        return asdict(self)


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
) -> float:
    """RMSE on ``val`` with hidden states computed from ``context`` (same CSR rows)."""
    pred = predict_indexed(params, config, context, val, levels)
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
    """Train an RBM on ``train_part``, early-stopping on RMSE over ``val_part``.

    With a process group in ``comm``, every rank runs the same minibatch schedule, computes
    the statistics of its share of each minibatch, and applies the summed update.
    """
    comm = comm or LocalCommunicator()
    device = torch.device(config.device)
    gen = torch.Generator(device=device).manual_seed(comm.sampling_seed(config.seed))
    rng = np.random.default_rng(config.seed)  # the same shuffle on every rank
    cpu_gen = torch.Generator().manual_seed(config.seed)
    vb = visible_bias_from_counts(train_part, rbm_config.n_movies, rbm_config.n_levels)
    params = RBMParams.init(rbm_config, cpu_gen, vb).to(device)
    velocity = [
        torch.zeros_like(t) for t in (params.weights, params.visible_bias, params.hidden_bias)
    ]
    comm.sync(state_tensors(params, velocity))  # the seed already agrees; this makes sure
    n_users = len(train_part.user_ids)
    best = TrainResult(params=_copy(params), best_epoch=-1, best_val_rmse=math.inf)
    lr = config.learning_rate
    for epoch in range(config.epochs):
        k = config.cd_k(epoch)
        momentum = config.momentum if epoch >= config.momentum_warmup else 0.5
        sq, n = 0.0, 0
        order = rng.permutation(n_users)
        for start in range(0, n_users, config.batch_size):
            rows = order[start : start + config.batch_size]
            stats = minibatch_stats(params, train_part, rows, rbm_config, k, gen, comm)
            momentum_step(params, velocity, stats, len(rows), lr, momentum, config.weight_decay)
            sq += stats.recon_sq_error
            n += stats.n_entries
        lr *= config.lr_decay
        comm.sync(state_tensors(params, velocity))  # before anything is decided on them
        val = comm.decide(
            lambda: _val_rmse(params, rbm_config, train_part, val_part, levels.to(device))
        )
        report = EpochReport(epoch + 1, k, math.sqrt(sq / max(n, 1)), val)
        best.history.append(report)
        if on_epoch is not None:
            on_epoch(report)
        if not math.isfinite(val):
            raise FloatingPointError(f"validation RMSE is {val} at epoch {epoch + 1}")
        if val < best.best_val_rmse:
            best.params, best.best_epoch, best.best_val_rmse = _copy(params), epoch + 1, val
        elif epoch + 1 - best.best_epoch >= config.patience:
            log.info("early stop at epoch %d (best %d)", epoch + 1, best.best_epoch)
            break
    return best


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
    batch = data.batch(comm.shard(rows)).to(params.weights.device)
    return comm.reduce_stats(cd_statistics(params, batch, rbm_config, k, gen))


def state_tensors(params: RBMParams, velocity: list[torch.Tensor]) -> list[torch.Tensor]:
    """Everything a training step updates, to keep in step across ranks."""
    return [params.weights, params.visible_bias, params.hidden_bias, *velocity]


def momentum_step(
    params: RBMParams,
    velocity: list[torch.Tensor],
    stats: CDStats,
    n_cases: int,
    lr: float,
    momentum: float,
    weight_decay: float,
) -> None:
    """One gradient-ascent step with momentum on per-case-averaged CD statistics, in place.

    Weight decay applies to the weights only, not the biases.
    """
    scale = 1.0 / n_cases
    grads = (
        stats.weights * scale - weight_decay * params.weights,
        stats.visible_bias * scale,
        stats.hidden_bias * scale,
    )
    tensors = (params.weights, params.visible_bias, params.hidden_bias)
    for t, v, g in zip(tensors, velocity, grads, strict=True):
        v.mul_(momentum).add_(g, alpha=lr)
        t.add_(v)


def _copy(params: RBMParams) -> RBMParams:
    return RBMParams(
        params.weights.clone(), params.visible_bias.clone(), params.hidden_bias.clone()
    )
