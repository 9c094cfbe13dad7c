"""The item-based softmax RBM (one training case per movie) and its blend with the user-based one.

Transposed, the same sparse CD-k code trains it: a case is a movie, its visible units are
the users who rated it. It predicts ratings better than the user-based RBM here, but it
knows only users seen in training, so the server blends the two for those users and uses
the user-based RBM alone for the others.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from rbm.checkpoint import ItemModel
from rbm.model import RBMConfig, RBMParams, hidden_input
from trainer.distributed import Communicator, LocalCommunicator
from trainer.indexing import IndexedRatings
from trainer.loop import EpochProgress, run_loop
from trainer.predict import predict_indexed
from trainer.train import TrainConfig, model_configs, softmax_model

__all__ = ["BLEND_WEIGHTS", "train_item_based", "transpose"]

BLEND_WEIGHTS = tuple(x / 10 for x in range(11))  # share of the item-based prediction


def transpose(csr: IndexedRatings, n_movies: int) -> IndexedRatings:
    """Movies as rows, user rows as columns: (M rows, each listing user row indices)."""
    user_rows = np.repeat(np.arange(len(csr.user_ids)), np.diff(csr.indptr))
    order = np.lexsort((user_rows, csr.movies))
    counts = np.bincount(csr.movies, minlength=n_movies)
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return IndexedRatings(
        np.arange(n_movies), indptr, user_rows[order].astype(np.int64), csr.levels[order]
    )


def _aligned(csr: IndexedRatings, n_movies: int) -> np.ndarray:
    """Keys (user row * M + movie) of a user-major CSR's entries."""
    rows = np.repeat(np.arange(len(csr.user_ids)), np.diff(csr.indptr))
    keys: np.ndarray = rows * n_movies + csr.movies
    return keys


def _keys_t(csr_t: IndexedRatings, n_movies: int) -> np.ndarray:
    movies = np.repeat(np.arange(len(csr_t.user_ids)), np.diff(csr_t.indptr))
    keys: np.ndarray = csr_t.movies * n_movies + movies
    return keys


def train_item_based(
    fit: IndexedRatings,
    val: IndexedRatings,
    full: IndexedRatings,
    user_pred_val: torch.Tensor,
    n_movies: int,
    levels: torch.Tensor,
    cfg: TrainConfig,
    comm: Communicator | None = None,
    on_epoch: Callable[[EpochProgress], None] | None = None,
) -> tuple[ItemModel, float]:
    """Train on ``fit`` (user-major CSRs sharing rows), choose the blend on ``val``.

    ``user_pred_val`` are the user-based RBM's predictions of ``val`` in its CSR order.
    Returns the model (movie hidden states from ``full``) and the blend's validation RMSE.
    Distributed, the ranks share out movies (this model's cases); rank 0 picks the blend.
    """
    spec = model_configs(cfg).item
    if spec is None:
        raise ValueError("n_hidden_item is 0: there is no item-based RBM to train")
    comm = comm or LocalCommunicator()
    n_users = len(fit.user_ids)
    fit_t, val_t, full_t = (transpose(c, n_movies) for c in (fit, val, full))
    config = RBMConfig(n_users, len(levels), spec.n_hidden)
    hooks = softmax_model(fit_t, val_t, config, levels, spec.device)
    params = run_loop(spec, hooks, comm, on_epoch).params
    blend, rmse = comm.decide(
        lambda: _choose_blend(params, config, fit_t, val_t, val, user_pred_val, levels, n_movies)
    )
    with torch.no_grad():
        batch = full_t.batch(np.arange(n_movies)).to(params.weights.device)
        movie_hidden = torch.sigmoid(hidden_input(params, batch, n_users))  # (M, F2)
    model = ItemModel(params.to("cpu"), movie_hidden.cpu(), blend)
    return model, rmse


def _choose_blend(
    params: RBMParams,
    config: RBMConfig,
    fit_t: IndexedRatings,
    val_t: IndexedRatings,
    val: IndexedRatings,
    user_pred_val: torch.Tensor,
    levels: torch.Tensor,
    n_movies: int,
) -> tuple[float, float]:
    """The share of the item-based prediction with the best validation RMSE, and that RMSE."""
    item_pred = predict_indexed(params, config, fit_t, val_t, levels)
    # Align the two prediction orders (user-major and movie-major) on (user, movie).
    user_order = np.argsort(_aligned(val, n_movies), kind="stable")
    item_order = np.argsort(_keys_t(val_t, n_movies), kind="stable")
    u = user_pred_val.cpu()[torch.from_numpy(user_order)]
    i = item_pred.cpu()[torch.from_numpy(item_order)]
    truth = levels.cpu()[torch.from_numpy(val.levels[user_order])]
    lo, hi = float(levels.min()), float(levels.max())
    rmse = {
        a: float(torch.sqrt(((a * i + (1 - a) * u).clamp(lo, hi) - truth).pow(2).mean()))
        for a in BLEND_WEIGHTS
    }
    blend = min(rmse, key=lambda a: rmse[a])
    return blend, rmse[blend]
