"""The implicit-feedback RBM (rbm.implicit): its hooks for the training loop (CD-1, NDCG)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch

from rbm.implicit import implicit_cd_statistics, implicit_config, implicit_hidden_input, log_p_rated
from rbm.model import CDStats, RBMParams
from trainer.distributed import Communicator
from trainer.evaluate import ranking_metrics
from trainer.indexing import IndexedRatings
from trainer.loop import EpochProgress, LocalStats, LoopModel, reduced_stats, run_loop
from trainer.train import TrainConfig, model_configs

__all__ = [
    "ImplicitResult",
    "implicit_minibatch_stats",
    "implicit_model",
    "implicit_phase",
    "implicit_stats",
    "train_implicit",
]


@dataclass(frozen=True)
class ImplicitResult:
    """The best parameters found and when."""

    params: RBMParams
    best_epoch: int
    best_val_ndcg: float


def _dense(csr: IndexedRatings, rows: np.ndarray, n_movies: int) -> torch.Tensor:
    """Rated/unrated indicators of the users at ``rows``: (B, M)."""
    batch = csr.batch(rows)
    x = torch.zeros(len(rows), n_movies)
    x[batch.rows, batch.movies] = 1.0
    return x


def implicit_stats(data: IndexedRatings, n_movies: int) -> LocalStats:
    """The loop's statistics hook: CD-1 statistics of the users at some of ``data``'s rows."""

    def stats(params: RBMParams, rows: np.ndarray, k: int, gen: torch.Generator | None) -> CDStats:
        if k != 1:  # rbm.implicit has only CD-1: a schedule asking for more is a mistake
            raise ValueError(f"the implicit RBM trains with CD-1, not CD-{k}")
        visible = _dense(data, rows, n_movies).to(params.weights.device)  # (B, M)
        return implicit_cd_statistics(params, visible, gen)

    return stats


def implicit_minibatch_stats(
    params: RBMParams,
    data: IndexedRatings,
    rows: np.ndarray,
    n_movies: int,
    gen: torch.Generator | None,
    comm: Communicator,
) -> CDStats:
    """CD-1 statistics of the users at CSR ``rows``, summed over every rank's share of them."""
    return reduced_stats(implicit_stats(data, n_movies), params, rows, 1, gen, comm)


def _val_ndcg(
    params: RBMParams, fit: IndexedRatings, val: IndexedRatings, levels: np.ndarray
) -> float:
    def score(rows: np.ndarray) -> torch.Tensor:
        pre = implicit_hidden_input(params, fit.batch(rows).to(params.weights.device))
        return log_p_rated(params, pre)

    return ranking_metrics(score, fit, val, levels)["ndcg@10"]


def implicit_model(
    fit: IndexedRatings, val: IndexedRatings, n_movies: int, levels: np.ndarray, n_hidden: int
) -> LoopModel:
    """The loop's hooks: visible biases from how often each movie is rated, NDCG@10 on ``val``."""
    config = implicit_config(n_movies, n_hidden)
    rated = np.bincount(fit.movies, minlength=n_movies) / max(len(fit.user_ids), 1)
    p = torch.from_numpy(np.clip(rated, 1e-4, 1 - 1e-4).astype(np.float32))
    return LoopModel(
        n_cases=len(fit.user_ids),
        init=lambda gen: RBMParams.init(config, gen, torch.log(p / (1 - p))),
        stats=implicit_stats(fit, n_movies),
        validate=lambda params: _val_ndcg(params, fit, val, levels),
    )


def implicit_phase(member: int, learning_rate: float | None = None) -> str:
    """The progress name of implicit RBM ``member`` of an average: "implicit RBM", "... 2".

    With ``learning_rate``, a rate tried besides the configured one: "implicit RBM lr=0.03".
    """
    name = "implicit RBM" if member == 0 else f"implicit RBM {member + 1}"
    return name if learning_rate is None else f"{name} lr={learning_rate:g}"


def train_implicit(
    fit: IndexedRatings,
    val: IndexedRatings,
    n_movies: int,
    levels: np.ndarray,
    cfg: TrainConfig,
    on_epoch: Callable[[EpochProgress], None] | None = None,
    comm: Communicator | None = None,
    member: int = 0,
    learning_rate: float | None = None,
) -> ImplicitResult:
    """Train on who-rated-what in ``fit``; keep the epoch with the best NDCG@10 on ``val``.

    This model overfits, hence the early stop (at rate 0.01 on ml-100k its best epoch is
    near the end of the 30-epoch budget; at 0.05 it was about 11). Distributed as
    ``trainer.train.train`` is: shared schedule, summed statistics. ``member`` r of an
    average of several draws its own random numbers (seed offset 1 + r; member 0 draws
    what a single implicit RBM always drew).
    ``learning_rate`` replaces ``cfg.implicit_learning_rate`` (its progress name says so).
    """
    spec = model_configs(cfg).implicit
    if spec is None:
        raise ValueError("n_hidden_implicit is 0: there is no implicit RBM to train")
    spec = replace(
        spec,
        name=implicit_phase(member, learning_rate),
        seed_offset=spec.seed_offset + member,
        learning_rate=spec.learning_rate if learning_rate is None else learning_rate,
    )
    model = implicit_model(fit, val, n_movies, levels, spec.n_hidden)
    result = run_loop(spec, model, comm, on_epoch)
    return ImplicitResult(result.params, result.best_epoch, result.best_val)
