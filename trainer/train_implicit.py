"""Training the implicit-feedback RBM (rbm.implicit): CD-1, early-stopped on validation NDCG."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from rbm.implicit import implicit_cd_statistics, implicit_config, implicit_hidden_input, log_p_rated
from rbm.model import CDStats, RBMParams
from trainer.distributed import Communicator, LocalCommunicator
from trainer.evaluate import ranking_metrics
from trainer.indexing import IndexedRatings
from trainer.train import TrainConfig, momentum_step, state_tensors

__all__ = ["ImplicitResult", "implicit_minibatch_stats", "train_implicit"]

log = logging.getLogger(__name__)


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


def implicit_minibatch_stats(
    params: RBMParams,
    data: IndexedRatings,
    rows: np.ndarray,
    n_movies: int,
    gen: torch.Generator | None,
    comm: Communicator,
) -> CDStats:
    """CD-1 statistics of the users at CSR ``rows``, summed over every rank's share of them."""
    visible = _dense(data, comm.shard(rows), n_movies).to(params.weights.device)  # (B, M)
    return comm.reduce_stats(implicit_cd_statistics(params, visible, gen))


def _val_ndcg(
    params: RBMParams, fit: IndexedRatings, val: IndexedRatings, levels: np.ndarray
) -> float:
    def score(rows: np.ndarray) -> torch.Tensor:
        pre = implicit_hidden_input(params, fit.batch(rows).to(params.weights.device))
        return log_p_rated(params, pre)

    return ranking_metrics(score, fit, val, levels)["ndcg@10"]


def train_implicit(
    fit: IndexedRatings,
    val: IndexedRatings,
    n_movies: int,
    levels: np.ndarray,
    cfg: TrainConfig,
    on_epoch: Callable[[int, float], None] | None = None,
    comm: Communicator | None = None,
) -> ImplicitResult:
    """Train on who-rated-what in ``fit``; keep the epoch with the best NDCG@10 on ``val``.

    This model overfits fast (its best epoch is usually below 15), hence the early stop.
    Distributed as ``trainer.train.train`` is: shared schedule, summed statistics.
    """
    comm = comm or LocalCommunicator()
    device = torch.device(cfg.device)
    gen = torch.Generator(device=device).manual_seed(comm.sampling_seed(cfg.seed + 1))
    rng = np.random.default_rng(cfg.seed + 1)
    config = implicit_config(n_movies, cfg.n_hidden_implicit)
    rated = np.bincount(fit.movies, minlength=n_movies) / max(len(fit.user_ids), 1)
    p = torch.from_numpy(np.clip(rated, 1e-4, 1 - 1e-4).astype(np.float32))
    params = RBMParams.init(
        config, torch.Generator().manual_seed(cfg.seed + 1), torch.log(p / (1 - p))
    ).to(device)
    velocity = [
        torch.zeros_like(t) for t in (params.weights, params.visible_bias, params.hidden_bias)
    ]
    comm.sync(state_tensors(params, velocity))
    best = ImplicitResult(params, 0, -math.inf)
    lr, n_users = cfg.implicit_learning_rate, len(fit.user_ids)
    for epoch in range(cfg.implicit_epochs):
        momentum = cfg.momentum if epoch >= cfg.momentum_warmup else 0.5
        order = rng.permutation(n_users)
        for start in range(0, n_users, cfg.batch_size):
            rows = order[start : start + cfg.batch_size]
            stats = implicit_minibatch_stats(params, fit, rows, n_movies, gen, comm)
            momentum_step(
                params, velocity, stats, len(rows), lr, momentum, cfg.implicit_weight_decay
            )
        lr *= cfg.lr_decay
        comm.sync(state_tensors(params, velocity))  # before anything is decided on them
        ndcg = comm.decide(lambda: _val_ndcg(params, fit, val, levels))
        if on_epoch is not None:
            on_epoch(epoch + 1, ndcg)
        if ndcg > best.best_val_ndcg:
            best = ImplicitResult(
                RBMParams(
                    params.weights.clone(), params.visible_bias.clone(), params.hidden_bias.clone()
                ),
                epoch + 1,
                ndcg,
            )
        elif epoch + 1 - best.best_epoch >= cfg.patience:
            log.info("implicit RBM: early stop at epoch %d (best %d)", epoch + 1, best.best_epoch)
            break
    return best
