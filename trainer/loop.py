"""One training loop for every RBM here: minibatch CD with momentum, decay and early stopping.

A model brings three hooks (``LoopModel``): its initial parameters, the CD statistics of
some of its training cases, and a validation figure. The loop owns what the three RBMs
share: seeding, the momentum and learning-rate schedules, the minibatch order, the
distributed reduction and sync, keeping the best epoch's parameters and stopping early.
A model's hyper-parameters come as a ``LoopConfig``; ``trainer.train.model_configs``
derives the three models' from the CLI's flat ``TrainConfig``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from rbm.model import CDStats, RBMParams
from trainer.distributed import Communicator, LocalCommunicator

__all__ = [
    "EpochProgress",
    "Goal",
    "LocalStats",
    "LoopConfig",
    "LoopModel",
    "LoopResult",
    "momentum_step",
    "reduced_stats",
    "run_fixed",
    "run_loop",
    "state_tensors",
]

log = logging.getLogger(__name__)

Goal = Literal["minimize", "maximize"]

# (params, CSR rows of this rank's cases, CD steps, sampling generator) -> their CD statistics
LocalStats = Callable[[RBMParams, np.ndarray, int, torch.Generator | None], CDStats]


@dataclass(frozen=True)
class LoopConfig:
    """One RBM's training hyper-parameters, in the loop's neutral terms (cases, not users)."""

    name: str  # in log lines and progress reports: "user RBM", "implicit RBM", "item RBM"
    n_hidden: int
    epochs: int
    cases_per_batch: int  # training cases (users or movies) per global minibatch
    learning_rate: float  # on per-case-averaged statistics, first epoch
    lr_decay: float  # per epoch
    momentum: float  # after the first `momentum_warmup` epochs
    momentum_warmup: int
    weight_decay: float  # on the weights only
    cd_k_start: int
    cd_k_max: int
    cd_k_every: int  # raise k by one every this many epochs, up to cd_k_max
    patience: int  # epochs without a better validation figure before stopping
    goal: Goal  # whether a better validation figure is lower or higher
    metric: str  # the validation figure's name, for reports
    seed: int  # the run's seed
    seed_offset: int = 0  # added to `seed`, so models can draw different numbers
    device: str = "cpu"
    warmup_momentum: float = 0.5  # during the warm-up: large early gradients overshoot

    def __post_init__(self) -> None:
        positive = ("n_hidden", "epochs", "cases_per_batch", "cd_k_start", "cd_k_max")
        for name in (*positive, "cd_k_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{self.name}: {name} must be >= 1, got {getattr(self, name)}")
        if self.learning_rate <= 0 or self.weight_decay < 0:
            raise ValueError(f"{self.name}: learning_rate must be > 0 and weight_decay >= 0")
        if self.goal not in ("minimize", "maximize"):
            raise ValueError(f"{self.name}: goal must be minimize or maximize, got {self.goal}")

    @property
    def model_seed(self) -> int:
        """The seed of this model's generators."""
        return self.seed + self.seed_offset

    def cd_k(self, epoch: int) -> int:
        """CD steps for ``epoch`` (0-based): starts at cd_k_start and grows as training goes on."""
        return min(self.cd_k_max, self.cd_k_start + epoch // self.cd_k_every)

    def momentum_at(self, epoch: int) -> float:
        """Momentum for ``epoch`` (0-based)."""
        return self.momentum if epoch >= self.momentum_warmup else self.warmup_momentum

    def learning_rates(self) -> Iterator[float]:
        """The learning rate of each epoch in turn, without end."""
        lr = self.learning_rate
        while True:
            yield lr
            lr *= self.lr_decay  # a running product, as before: the same floats bit for bit


@dataclass(frozen=True)
class LoopModel:
    """What one RBM brings to the loop."""

    n_cases: int  # training cases; the minibatches are rows 0..n_cases-1, shuffled
    init: Callable[[torch.Generator], RBMParams]  # initial params on CPU, from this generator
    stats: LocalStats  # CD statistics of the cases at the given rows, summed over them
    validate: Callable[[RBMParams], float]  # the validation figure, computed on rank 0 only


@dataclass(frozen=True)
class EpochProgress:
    """What one epoch of one model measured, for progress callbacks."""

    model: str  # LoopConfig.name
    epoch: int  # 1-based
    epochs: int  # the budget (training may stop earlier)
    cd_k: int
    recon_rmse: float  # RMSE of the CD reconstruction of the training cases
    metric: str  # what `val` is, e.g. "val_rmse"
    val: float
    best_epoch: int  # so far, this epoch included


@dataclass
class LoopResult:
    """The parameters of the best validation epoch, and the per-epoch history."""

    params: RBMParams
    best_epoch: int  # 0 if no epoch had a finite, better-than-nothing figure
    best_val: float
    history: list[EpochProgress] = field(default_factory=list)


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


def reduced_stats(
    local: LocalStats,
    params: RBMParams,
    rows: np.ndarray,
    k: int,
    gen: torch.Generator | None,
    comm: Communicator,
) -> CDStats:
    """``local``'s statistics of this rank's share of ``rows``, summed over every rank's share."""
    return comm.reduce_stats(local(params, comm.shard(rows), k, gen))


@dataclass
class _State:
    """What the loop updates: the parameters, their velocity and the two random streams."""

    params: RBMParams
    velocity: list[torch.Tensor]
    gen: torch.Generator  # Gibbs sampling: each rank its own stream
    rng: np.random.Generator  # the minibatch order: the same on every rank

    @classmethod
    def start(cls, spec: LoopConfig, model: LoopModel, comm: Communicator) -> _State:
        """Seeded generators and initial parameters, identical on every rank."""
        device, seed = torch.device(spec.device), spec.model_seed
        gen = torch.Generator(device=device).manual_seed(comm.sampling_seed(seed))
        rng = np.random.default_rng(seed)
        params = model.init(torch.Generator().manual_seed(seed)).to(device)
        velocity = [
            torch.zeros_like(t) for t in (params.weights, params.visible_bias, params.hidden_bias)
        ]
        state = cls(params, velocity, gen, rng)
        comm.sync(state.tensors())  # the seed already agrees; this makes sure
        return state

    def tensors(self) -> list[torch.Tensor]:
        """Everything a step updates."""
        return state_tensors(self.params, self.velocity)


@dataclass
class _Best:
    """The best validation figure so far, its epoch and a copy of its parameters."""

    goal: Goal
    params: RBMParams
    epoch: int = 0
    value: float = field(init=False)

    def __post_init__(self) -> None:
        self.value = math.inf if self.goal == "minimize" else -math.inf

    def offer(self, epoch: int, value: float, params: RBMParams) -> None:
        """Keep ``params`` (a copy) if ``value`` beats the best so far; NaN never does."""
        better = value < self.value if self.goal == "minimize" else value > self.value
        if better:
            self.params, self.epoch, self.value = _copy(params), epoch, value


def run_loop(
    spec: LoopConfig,
    model: LoopModel,
    comm: Communicator | None = None,
    on_epoch: Callable[[EpochProgress], None] | None = None,
) -> LoopResult:
    """Train ``model`` as ``spec`` says; return the parameters of its best validation epoch.

    With a process group in ``comm``, every rank runs the same minibatch schedule, computes
    the statistics of its share of each minibatch, and applies the summed update; rank 0
    alone validates and every rank follows its figure.
    """
    comm = comm or LocalCommunicator()
    state = _State.start(spec, model, comm)
    best = _Best(spec.goal, _copy(state.params))
    history: list[EpochProgress] = []
    for epoch, lr in zip(range(1, spec.epochs + 1), spec.learning_rates(), strict=False):
        k, recon_rmse = _run_epoch(spec, model, state, epoch - 1, lr, comm)
        comm.sync(state.tensors())  # before anything is decided on them
        val = comm.decide(lambda: model.validate(state.params))
        best.offer(epoch, val, state.params)
        progress = EpochProgress(
            spec.name, epoch, spec.epochs, k, recon_rmse, spec.metric, val, best.epoch
        )
        history.append(progress)
        if on_epoch is not None:
            on_epoch(progress)
        if not math.isfinite(val):
            raise FloatingPointError(f"{spec.name}: {spec.metric} is {val} at epoch {epoch}")
        if best.epoch != epoch and epoch - best.epoch >= spec.patience:
            log.info("%s: early stop at epoch %d (best %d)", spec.name, epoch, best.epoch)
            break
    return LoopResult(best.params, best.epoch, best.value, history)


def run_fixed(
    spec: LoopConfig,
    model: LoopModel,
    comm: Communicator | None = None,
    on_epoch: Callable[[EpochProgress], None] | None = None,
) -> LoopResult:
    """Train ``model`` for exactly ``spec.epochs`` epochs and return the last parameters.

    For a refit on data that includes the validation slice, with the epoch count an
    early-stopped run chose: nothing is left to validate on, so nothing is (``val`` NaN).
    """
    comm = comm or LocalCommunicator()
    state = _State.start(spec, model, comm)
    history: list[EpochProgress] = []
    for epoch, lr in zip(range(1, spec.epochs + 1), spec.learning_rates(), strict=False):
        k, recon_rmse = _run_epoch(spec, model, state, epoch - 1, lr, comm)
        comm.sync(state.tensors())
        progress = EpochProgress(
            spec.name, epoch, spec.epochs, k, recon_rmse, spec.metric, math.nan, epoch
        )
        history.append(progress)
        if on_epoch is not None:
            on_epoch(progress)
    return LoopResult(state.params, spec.epochs, math.nan, history)


def _run_epoch(
    spec: LoopConfig, model: LoopModel, state: _State, epoch: int, lr: float, comm: Communicator
) -> tuple[int, float]:
    """One pass over the shuffled cases (``epoch`` 0-based): its CD k and reconstruction RMSE."""
    k, momentum = spec.cd_k(epoch), spec.momentum_at(epoch)
    sq, n = 0.0, 0
    order = state.rng.permutation(model.n_cases)
    for start in range(0, model.n_cases, spec.cases_per_batch):
        rows = order[start : start + spec.cases_per_batch]
        stats = reduced_stats(model.stats, state.params, rows, k, state.gen, comm)
        momentum_step(
            state.params, state.velocity, stats, len(rows), lr, momentum, spec.weight_decay
        )
        sq += stats.recon_sq_error
        n += stats.n_entries
    return k, math.sqrt(sq / max(n, 1))


def _copy(params: RBMParams) -> RBMParams:
    """A copy that later in-place updates do not touch."""
    return RBMParams(
        params.weights.clone(), params.visible_bias.clone(), params.hidden_bias.clone()
    )
