"""Train on a data set's split, evaluate against baselines, and package a checkpoint.

Training (``fit_models``) runs on every rank of a distributed run; evaluation and the
checkpoint (``evaluate_models``) on rank 0 only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from rbm.checkpoint import Checkpoint, ItemModel
from rbm.implicit import combine_implicit
from rbm.model import RANKINGS, Ranking, RatingInference, RBMConfig, RBMParams
from trainer.baselines import (
    EASE,
    MAX_DENSE_MOVIES,
    BiasBaseline,
    ItemKNN,
    choose_ease_lambda,
    popularity_scores,
)
from trainer.data import Dataset, Ratings, holdout_split
from trainer.distributed import Communicator, LocalCommunicator
from trainer.evaluate import ranking_metrics, rating_metrics
from trainer.indexing import IndexedRatings, Indexer
from trainer.loop import EpochProgress
from trainer.predict import predict_indexed
from trainer.rating_log import LogMerge, RatingLog, merge_log
from trainer.served_eval import engine_for, evaluate_served, served_ranking_metrics
from trainer.train import (
    EpochReport,
    TrainConfig,
    TrainResult,
    model_configs,
    refit_softmax,
    train,
)
from trainer.train_implicit import implicit_phase, train_implicit
from trainer.train_item import refit_item, train_item_based

__all__ = [
    "LIKED_WEIGHTS",
    "MAX_BLEND_RANKING_MOVIES",
    "MAX_KNN_MOVIES",
    "FittedModels",
    "TrainOutcome",
    "evaluate_models",
    "fit_models",
]

MAX_KNN_MOVIES = MAX_DENSE_MOVIES
# The blend in the ranking adds an item-RBM pass over every movie, (batch, levels, movies),
# to each Recommend batch: the automatic choice tries it only up to this many movies, where
# that pass is small (bench/capacity.py's larger shapes assume it off).
MAX_BLEND_RANKING_MOVIES = MAX_DENSE_MOVIES


@dataclass(frozen=True)
class TrainOutcome:
    """The trained model, its test metrics and the baselines' metrics on the same split."""

    checkpoint: Checkpoint
    metrics: dict[str, float]
    baselines: dict[str, dict[str, float]]
    history: list[EpochReport]
    rating_log: LogMerge | None = None  # what merging the rating log did, if one was read
    skipped_baselines: dict[str, str] = field(default_factory=dict)  # name -> why


# The weights of log P(liked) in the liked_and_rated score that the ranking choice tries.
LIKED_WEIGHTS = (1.0, 0.5, 0.25, 0.1)


@dataclass(frozen=True)
class _Models:
    params: RBMParams
    implicit: RBMParams | None  # several implicit RBMs side by side (combine_implicit)
    item: ItemModel | None
    n_movies: int
    train_users: np.ndarray  # MovieLens ids of the item RBM's visible units, in row order
    implicit_models: int = 1
    rating_inference: RatingInference = "mean_field"


@dataclass(frozen=True)
class _Choice:
    """A ranking score, the weight of log P(liked) in liked_and_rated, and whether the
    item-based blend enters it."""

    ranking: Ranking
    liked_weight: float = 1.0
    blend_ranking: bool = False


def _checkpoint(
    ds: Dataset,
    models: _Models,
    config: RBMConfig,
    own: IndexedRatings,
    choice: _Choice,
) -> Checkpoint:
    """The model as the server will load it, with ``own`` as its users' known ratings."""
    return Checkpoint(
        config=config,
        params=models.params.to("cpu"),
        levels=tuple(float(x) for x in ds.levels),
        movie_ids=torch.from_numpy(ds.movie_ids.astype(np.int64)),
        titles=list(ds.titles),
        user_ids=torch.from_numpy(models.train_users.astype(np.int64)),
        user_indptr=torch.from_numpy(own.indptr),
        user_movies=torch.from_numpy(own.movies),
        user_levels=torch.from_numpy(own.levels),
        popularity=popularity_scores(own, models.n_movies),
        dataset=ds.name,
        ranking=choice.ranking,
        implicit=None if models.implicit is None else models.implicit.to("cpu"),
        item=models.item,
        blend_ranking=choice.blend_ranking,
        liked_weight=choice.liked_weight,
        implicit_models=models.implicit_models,
        rating_inference=models.rating_inference,
    )


def _choose_ranking(
    ds: Dataset,
    models: _Models,
    cfg: TrainConfig,
    config: RBMConfig,
    fit: IndexedRatings,
    val: Ratings,
) -> tuple[_Choice, float]:
    """The ranking score whose served top-10 has the best NDCG on the validation slice.

    liked_and_rated is tried with each weight of ``LIKED_WEIGHTS``, and every score but
    rated (which the blend leaves alone) without and with the item-based blend, as
    ``_blend_options`` allows; ties go to the earlier candidate (without the blend first,
    then RANKINGS' order, then the larger weight).
    """
    candidates = [
        _Choice(r, w, b)
        for b in _blend_options(cfg, models)
        for r in RANKINGS
        if not (b and r == "rated")
        for w in (LIKED_WEIGHTS if r == "liked_and_rated" else (1.0,))
    ]
    ndcg = {}
    for c in candidates:  # the choice leaves predicted ratings alone: rank only
        ckpt = _checkpoint(ds, models, config, fit, c)
        ndcg[c] = served_ranking_metrics(engine_for(ckpt, cfg.device), val)["ndcg@10"]
    best = max(candidates, key=lambda c: ndcg[c])
    return best, ndcg[best]


def _blend_options(cfg: TrainConfig, models: _Models) -> tuple[bool, ...]:
    """Whether the ranking choice tries the item-based blend out of it, in it, or both."""
    if models.item is None or cfg.blend_ranking is False:
        return (False,)
    if cfg.blend_ranking:
        return (True,)
    return (False, True) if models.n_movies <= MAX_BLEND_RANKING_MOVIES else (False,)


def _train_implicit_members(
    fit: IndexedRatings,
    val: IndexedRatings,
    n_movies: int,
    levels: np.ndarray,
    cfg: TrainConfig,
    comm: Communicator,
    phase: Callable[[str], None],
    on_progress: Callable[[EpochProgress], None] | None,
) -> list[RBMParams]:
    """``cfg.implicit_models`` implicit RBMs, at the learning rate best on validation.

    The first member is trained at each rate (the configured one, then
    ``implicit_alt_learning_rates``); the best validation NDCG@10 wins, ties to the
    earlier, and the other members train at the winner's rate. Every rank gets the same
    validation figures from the loop (rank 0's), so every rank makes the same choice.
    """
    phase(implicit_phase(0))
    best = train_implicit(fit, val, n_movies, levels, cfg, on_progress, comm, 0)
    rate = cfg.implicit_learning_rate
    for alt in cfg.implicit_alt_learning_rates:
        phase(implicit_phase(0, alt))
        other = train_implicit(fit, val, n_movies, levels, cfg, on_progress, comm, 0, alt)
        if other.best_val_ndcg > best.best_val_ndcg:
            best, rate = other, alt
    members = [best.params]
    chosen = None if rate == cfg.implicit_learning_rate else rate
    for member in range(1, cfg.implicit_models):
        phase(implicit_phase(member, chosen))
        members.append(
            train_implicit(
                fit, val, n_movies, levels, cfg, on_progress, comm, member, chosen
            ).params
        )
    return members


@dataclass(frozen=True)
class FittedModels:
    """What training produced, the same on every rank, and the data it was trained on."""

    models: _Models
    rbm_config: RBMConfig
    choice: _Choice  # the ranking score, chosen on the validation slice
    result: TrainResult  # the user-based RBM's
    val_rmse: float  # of the served prediction (the blend, with an item RBM)
    val_ndcg: float
    train: Ratings  # the data set's training part, with the rating log merged in
    rating_log: LogMerge | None
    fit_part: Ratings  # ``train`` less the validation slice
    val_part: Ratings  # the validation slice the ranking (and EASE's lambda) is chosen on


def fit_models(
    ds: Dataset,
    cfg: TrainConfig,
    on_epoch: Callable[[EpochReport], None] | None = None,
    comm: Communicator | None = None,
    log: RatingLog | None = None,
    *,
    on_progress: Callable[[EpochProgress], None] | None = None,
    on_phase: Callable[[str], None] | None = None,
) -> FittedModels:
    """Train the three RBMs, early-stopped on a validation slice of the training data.

    With a process group in ``comm`` every rank takes part and gets the same models; the
    choices made on validation are rank 0's. ``log`` is merged into the fitting part.

    Progress: ``on_phase`` gets each step's name as it starts ("user RBM", "implicit RBM",
    "item RBM": their ``LoopConfig.name``; then "ranking", the choice on validation),
    ``on_epoch`` each epoch of the user-based RBM, ``on_progress`` each epoch of the
    implicit and item-based RBMs.
    """
    comm = comm or LocalCommunicator()
    phase = on_phase or (lambda name: None)
    ix = Indexer(ds)
    levels_np = np.asarray(ds.levels, dtype=np.float32)
    levels = torch.from_numpy(levels_np).to(cfg.device)
    fit_part, val_part = holdout_split(ds.train, cfg.val_fraction, cfg.seed)
    train_all, merge = ds.train, None
    if log is not None:
        fit_part, merge = merge_log(fit_part, val_part, ds.test, log, ds.movie_ids, ds.levels)
        train_all = fit_part.concat(val_part)
    train_users = np.unique(train_all.users)
    fit, val = ix.index(fit_part, train_users), ix.index(val_part, train_users)
    rbm_config = RBMConfig(ix.n_movies, len(ds.levels), cfg.n_hidden)
    phase("user RBM")
    result = train(fit, val, rbm_config, levels, cfg, on_epoch, comm)
    params = result.params
    implicit = None
    if cfg.n_hidden_implicit:
        implicit = combine_implicit(
            _train_implicit_members(fit, val, ix.n_movies, levels_np, cfg, comm, phase, on_progress)
        )
    item, item_fit, val_rmse = None, None, result.best_val_rmse
    own_all = ix.index(train_all, train_users)
    if cfg.n_hidden_item:
        phase("item RBM")
        user_val = predict_indexed(params, rbm_config, fit, val, levels, cfg.rating_inference)
        item_fit = train_item_based(
            fit, val, own_all, user_val, ix.n_movies, levels, cfg, comm, on_progress
        )
        item, val_rmse = item_fit.model, item_fit.val_rmse
    models = _Models(
        params,
        implicit,
        item,
        ix.n_movies,
        train_users,
        cfg.implicit_models,
        cfg.rating_inference,
    )
    phase("ranking")
    choice, val_ndcg = comm.decide(
        lambda: _choose_ranking(ds, models, cfg, rbm_config, fit, val_part)
    )
    if cfg.refit:  # after every choice made on validation, which a refit model has seen
        specs = model_configs(cfg)
        phase(f"{specs.user.name} refit")
        refitted = refit_softmax(
            own_all, rbm_config, specs.user, result.best_epoch, comm, on_progress
        )
        models = replace(models, params=refitted)
        if item_fit is not None and specs.item is not None:
            phase(f"{specs.item.name} refit")
            refitted_item = refit_item(item_fit, own_all, ix.n_movies, cfg, comm, on_progress)
            models = replace(models, item=refitted_item)
    return FittedModels(
        models,
        rbm_config,
        choice,
        result,
        val_rmse,
        val_ndcg,
        train_all,
        merge,
        fit_part,
        val_part,
    )


def evaluate_models(ds: Dataset, cfg: TrainConfig, fitted: FittedModels) -> TrainOutcome:
    """Package the checkpoint, then evaluate it as served on the split's test part.

    The model's figures come from the server's engine on the checkpoint that gets
    registered (``trainer.served_eval``); the baselines are scored on the same test part.
    """
    ix = Indexer(ds)
    models, result = fitted.models, fitted.result
    own = ix.index(fitted.train, models.train_users)
    ckpt = _checkpoint(ds, models, fitted.rbm_config, own, fitted.choice)
    metrics = evaluate_served(engine_for(ckpt, cfg.device), ds.test)
    metrics |= {
        "val_rmse": fitted.val_rmse,  # of the served prediction (the blend, with an item RBM)
        "val_rmse_user_rbm": result.best_val_rmse,
        "val_ndcg@10": fitted.val_ndcg,
        "best_epoch": float(result.best_epoch),
    }
    baselines, skipped = _baselines(ds, fitted)
    return TrainOutcome(ckpt, metrics, baselines, result.history, fitted.rating_log, skipped)


def _baselines(
    ds: Dataset, fitted: FittedModels
) -> tuple[dict[str, dict[str, float]], dict[str, str]]:
    """Global mean, biases, popularity, item-kNN and EASE, fitted on the training part.

    Also returns the baselines left out, with the reason. EASE's lambda is chosen on the
    validation slice, fitted on the fitting part, as the RBM's ranking is.
    """
    ix = Indexer(ds)
    levels_np = np.asarray(ds.levels, dtype=np.float32)
    # Test users unseen in training get empty context rows, as the server's fallback does.
    all_users = np.union1d(fitted.models.train_users, ds.test.users)
    context, test = ix.index(fitted.train, all_users), ix.index(ds.test, all_users)
    truth = torch.from_numpy(levels_np[test.levels])
    lo, hi = ds.levels[0], ds.levels[-1]
    pop = popularity_scores(context, ix.n_movies)
    bias = BiasBaseline.fit(context, levels_np, ix.n_movies)
    baselines = {
        "global_mean": rating_metrics(torch.full_like(truth, bias.mu), truth, lo, hi),
        "bias": rating_metrics(bias.predict(test).to(truth), truth, lo, hi),
        "popularity": ranking_metrics(
            lambda rows: pop.expand(len(rows), -1), context, test, levels_np
        ),
    }
    if ix.n_movies > MAX_DENSE_MOVIES:  # the dense baselines do not fit larger catalogues
        why = f"{ix.n_movies} movies > {MAX_DENSE_MOVIES}: a dense movies x movies matrix"
        return baselines, {"item_knn": why, "ease": why}
    knn = ItemKNN.fit(context, ix.n_movies)
    baselines["item_knn"] = ranking_metrics(
        lambda rows: knn.scores(context, rows), context, test, levels_np
    )
    users = fitted.models.train_users
    fit, val = ix.index(fitted.fit_part, users), ix.index(fitted.val_part, users)
    choice = choose_ease_lambda(fit, val, ix.n_movies, levels_np)
    ease = EASE.fit(context, ix.n_movies, choice.lam)  # refitted on the whole training part
    baselines["ease"] = ranking_metrics(
        lambda rows: ease.scores(context, rows), context, test, levels_np
    ) | {"lambda": choice.lam, "val_ndcg@10": choice.val_ndcg[choice.lam]}
    return baselines, {}
