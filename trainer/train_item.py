"""The item-based softmax RBM (one training case per movie) and its blend with the user-based one.

Transposed, the same sparse CD-k code trains it: a case is a movie, its visible units are
the users who rated it. It predicts ratings better than the user-based RBM here, but it
knows only users seen in training, so the server blends the two for those users and uses
the user-based RBM alone for the others.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from rbm.checkpoint import ItemModel
from rbm.model import RatingBlend, RatingInference, RBMConfig, RBMParams, hidden_input
from trainer.distributed import Communicator, LocalCommunicator
from trainer.indexing import IndexedRatings
from trainer.loop import EpochProgress, run_loop
from trainer.predict import predict_indexed
from trainer.train import TrainConfig, model_configs, refit_softmax, softmax_model

__all__ = ["BLEND_WEIGHTS", "ItemFit", "refit_item", "train_item_based", "transpose"]

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


@dataclass(frozen=True)
class ItemFit:
    """The item-based RBM trained on the fitting part, as early stopping left it."""

    model: ItemModel  # with its rating blend, chosen on validation
    val_rmse: float  # of the served blend on validation
    best_epoch: int


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
) -> ItemFit:
    """Train on ``fit`` (user-major CSRs sharing rows), choose the blend on ``val``.

    ``user_pred_val`` are the user-based RBM's predictions of ``val`` in its CSR order.
    The model's movie hidden states come from ``full``.
    Distributed, the ranks share out movies (this model's cases); rank 0 picks the blend.
    """
    spec = model_configs(cfg).item
    if spec is None:
        raise ValueError("n_hidden_item is 0: there is no item-based RBM to train")
    comm = comm or LocalCommunicator()
    n_users = len(fit.user_ids)
    fit_t, val_t, full_t = (transpose(c, n_movies) for c in (fit, val, full))
    config = RBMConfig(n_users, len(levels), spec.n_hidden)
    hooks = softmax_model(fit_t, val_t, config, levels, spec.device, cfg.rating_inference)
    trained = run_loop(spec, hooks, comm, on_epoch)
    params = trained.params
    share, rating_blend, rmse = comm.decide(
        lambda: _choose_blend(
            params,
            config,
            fit,
            fit_t,
            val_t,
            val,
            user_pred_val,
            levels,
            n_movies,
            cfg.rating_inference,
        )
    )
    model = _item_model(params, full_t, n_users, share, rating_blend)
    return ItemFit(model, rmse, trained.best_epoch)


def refit_item(
    fitted: ItemFit,
    full: IndexedRatings,
    n_movies: int,
    cfg: TrainConfig,
    comm: Communicator | None = None,
    on_epoch: Callable[[EpochProgress], None] | None = None,
) -> ItemModel:
    """The item-based RBM trained again on ``full`` for its best epoch count, same blend."""
    spec = model_configs(cfg).item
    if spec is None:
        raise ValueError("n_hidden_item is 0: there is no item-based RBM to refit")
    old, n_users = fitted.model, len(full.user_ids)
    n_levels = old.params.visible_bias.numel() // n_users
    full_t = transpose(full, n_movies)
    config = RBMConfig(n_users, n_levels, spec.n_hidden)
    params = refit_softmax(full_t, config, spec, fitted.best_epoch, comm, on_epoch)
    return _item_model(params, full_t, n_users, old.blend, old.rating_blend)


def _item_model(
    params: RBMParams,
    full_t: IndexedRatings,
    n_users: int,
    share: float,
    blend: RatingBlend | None,
) -> ItemModel:
    """The served item model: on CPU, with P(h | each movie's ratings in ``full_t``)."""
    with torch.no_grad():
        batch = full_t.batch(np.arange(len(full_t.user_ids))).to(params.weights.device)
        movie_hidden = torch.sigmoid(hidden_input(params, batch, n_users))  # (M, F2)
    return ItemModel(params.to("cpu"), movie_hidden.cpu(), share, blend)


def _choose_blend(
    params: RBMParams,
    config: RBMConfig,
    fit: IndexedRatings,
    fit_t: IndexedRatings,
    val_t: IndexedRatings,
    val: IndexedRatings,
    user_pred_val: torch.Tensor,
    levels: torch.Tensor,
    n_movies: int,
    inference: RatingInference,
) -> tuple[float, RatingBlend, float]:
    """The mix share best on validation, the rating blend fitted there, and its RMSE.

    The share (a plain mix) is what a ranking on the blend mixes P(liked) with; ratings
    use the ``RatingBlend``, fitted by least squares on the same slice (five numbers,
    against some 4,000 validation ratings on ml-100k). ``user_pred_val`` and the item
    RBM's predictions must both come from ``inference``, the one the server will use.
    """
    item_pred = predict_indexed(params, config, fit_t, val_t, levels, inference)
    # Align the two prediction orders (user-major and movie-major) on (user, movie).
    user_order = np.argsort(_aligned(val, n_movies), kind="stable")
    item_order = np.argsort(_keys_t(val_t, n_movies), kind="stable")
    u = user_pred_val.cpu().double()[torch.from_numpy(user_order)]
    i = item_pred.cpu().double()[torch.from_numpy(item_order)]
    truth = levels.cpu().double()[torch.from_numpy(val.levels[user_order])]
    rows = np.repeat(np.arange(len(val.user_ids)), np.diff(val.indptr))[user_order]
    movie_log = torch.log1p(torch.from_numpy(np.bincount(fit.movies, minlength=n_movies)))
    user_log = torch.log1p(torch.from_numpy(np.diff(fit.indptr)))
    m_log, u_log = movie_log[val.movies[user_order]].double(), user_log[rows].double()
    lo, hi = float(levels.min()), float(levels.max())

    def rmse(blend: RatingBlend) -> float:
        predicted = blend.apply(u, i, m_log, u_log).clamp(lo, hi)
        return float(torch.sqrt((predicted - truth).pow(2).mean()))

    share = min(BLEND_WEIGHTS, key=lambda a: rmse(RatingBlend.from_share(a)))
    fitted = _fit_blend(u, i, m_log, u_log, truth)
    if rmse(fitted) >= rmse(RatingBlend.from_share(share)):  # too few ratings to fit on
        fitted = RatingBlend.from_share(share)
    return share, fitted, rmse(fitted)


def _fit_blend(
    u: torch.Tensor,
    i: torch.Tensor,
    movie_log: torch.Tensor,
    user_log: torch.Tensor,
    y: torch.Tensor,
) -> RatingBlend:
    """Least squares of ``RatingBlend``'s five coefficients, its features centred on the slice."""
    if len(y) < 2 * 5:
        return RatingBlend.from_share(0.0)
    m_center, u_center = float(movie_log.mean()), float(user_log.mean())
    gap = i - u
    columns = [
        torch.ones_like(u),
        u,
        i,
        gap * (movie_log - m_center),
        gap * (user_log - u_center),
    ]
    solution = torch.linalg.lstsq(torch.stack(columns, 1), y.unsqueeze(1)).solution
    bias, wu, wi, sm, su = (float(x) for x in solution.squeeze(1))
    return RatingBlend(bias, wu, wi, sm, su, m_center, u_center)
