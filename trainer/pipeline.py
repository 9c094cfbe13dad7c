"""Train on a data set's split, evaluate against baselines, and package a checkpoint.

Training (``fit_models``) runs on every rank of a distributed run; evaluation and the
checkpoint (``evaluate_models``) on rank 0 only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from rbm.checkpoint import Checkpoint, ItemModel, stacked_hidden_pre
from rbm.model import RANKINGS, Ranking, RBMConfig, RBMParams
from rbm.scoring import Scorer
from trainer.baselines import BiasBaseline, ItemKNN, popularity_scores
from trainer.data import Dataset, Ratings, holdout_split
from trainer.distributed import Communicator, LocalCommunicator
from trainer.evaluate import ranking_metrics, rating_metrics
from trainer.indexing import IndexedRatings, Indexer
from trainer.predict import predict_indexed
from trainer.rating_log import LogMerge, RatingLog, merge_log
from trainer.train import EpochReport, TrainConfig, TrainResult, train
from trainer.train_implicit import train_implicit
from trainer.train_item import train_item_based

__all__ = [
    "MAX_KNN_MOVIES",
    "FittedModels",
    "TrainOutcome",
    "evaluate_models",
    "fit_models",
]

MAX_KNN_MOVIES = 20_000


@dataclass(frozen=True)
class TrainOutcome:
    """The trained model, its test metrics and the baselines' metrics on the same split."""

    checkpoint: Checkpoint
    metrics: dict[str, float]
    baselines: dict[str, dict[str, float]]
    history: list[EpochReport]
    rating_log: LogMerge | None = None  # what merging the rating log did, if one was read


def _scorer_fn(
    model: _Models,
    context: IndexedRatings,
    levels: torch.Tensor,
    ranking: Ranking,
    popularity: torch.Tensor,
    want: Literal["score", "expected"],
) -> Callable[[np.ndarray], torch.Tensor]:
    """(B,) CSR rows of ``context`` -> the serving pass's scores or expected ratings (B, M)."""
    scorer = Scorer(
        model.params, levels, ranking, popularity.to(levels.device), model.implicit, model.item
    )
    item_row = model.item_rows(context.user_ids)  # (U,) -1 where the item RBM has no such user

    def score(rows: np.ndarray) -> torch.Tensor:
        batch = context.batch(rows).to(levels.device)
        with torch.no_grad():
            pre = stacked_hidden_pre(model.params, model.implicit, batch, model.n_movies)
            item_rows = torch.from_numpy(item_row[rows]).to(levels.device)
            scores, expected = scorer(pre, item_rows)
        out: torch.Tensor = scores if want == "score" else expected
        return out

    return score


@dataclass(frozen=True)
class _Models:
    params: RBMParams
    implicit: RBMParams | None
    item: ItemModel | None
    n_movies: int
    train_users: np.ndarray  # MovieLens ids of the item RBM's visible units, in row order

    def item_rows(self, user_ids: np.ndarray) -> np.ndarray:
        """Row of each user in the item RBM, -1 for users it does not know."""
        pos = np.clip(np.searchsorted(self.train_users, user_ids), 0, len(self.train_users) - 1)
        return np.where(self.train_users[pos] == user_ids, pos, -1).astype(np.int64)


def _choose_ranking(
    model: _Models, fit: IndexedRatings, val: IndexedRatings, levels: torch.Tensor
) -> tuple[Ranking, float]:
    """The ranking score with the best NDCG@10 on the validation slice, and that NDCG."""
    popularity = popularity_scores(fit, model.n_movies)
    levels_np = levels.cpu().numpy()
    ndcg = {
        r: ranking_metrics(
            _scorer_fn(model, fit, levels, r, popularity, want="score"), fit, val, levels_np
        )["ndcg@10"]
        for r in RANKINGS
    }
    best = max(ndcg, key=lambda r: ndcg[r])
    return best, ndcg[best]


def _at_pairs(
    expected_fn: Callable[[np.ndarray], torch.Tensor], targets: IndexedRatings, chunk: int = 256
) -> torch.Tensor:
    """The serving pass's expected rating at each (row, movie) entry of ``targets``."""
    out = []
    for start in range(0, len(targets.user_ids), chunk):
        rows = np.arange(start, min(start + chunk, len(targets.user_ids)))
        dense = expected_fn(rows)  # (B, M)
        lo, hi = targets.indptr[rows[0]], targets.indptr[rows[-1] + 1]
        local = np.repeat(np.arange(len(rows)), np.diff(targets.indptr[rows[0] : rows[-1] + 2]))
        out.append(dense[torch.from_numpy(local), torch.from_numpy(targets.movies[lo:hi])])
    return torch.cat(out) if out else torch.empty(0)


@dataclass(frozen=True)
class FittedModels:
    """What training produced, the same on every rank, and the data it was trained on."""

    models: _Models
    rbm_config: RBMConfig
    ranking: Ranking
    result: TrainResult  # the user-based RBM's
    val_rmse: float  # of the served prediction (the blend, with an item RBM)
    val_ndcg: float
    train: Ratings  # the data set's training part, with the rating log merged in
    rating_log: LogMerge | None


def fit_models(
    ds: Dataset,
    cfg: TrainConfig,
    on_epoch: Callable[[EpochReport], None] | None = None,
    comm: Communicator | None = None,
    log: RatingLog | None = None,
) -> FittedModels:
    """Train the three RBMs, early-stopped on a validation slice of the training data.

    With a process group in ``comm`` every rank takes part and gets the same models; the
    choices made on validation are rank 0's. ``log`` is merged into the fitting part.
    """
    comm = comm or LocalCommunicator()
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
    result = train(fit, val, rbm_config, levels, cfg, on_epoch, comm)
    params = result.params
    implicit = (
        train_implicit(fit, val, ix.n_movies, levels_np, cfg, comm=comm).params
        if cfg.n_hidden_implicit
        else None
    )
    item, val_rmse = None, result.best_val_rmse
    if cfg.n_hidden_item:
        user_val = predict_indexed(params, rbm_config, fit, val, levels)
        own_all = ix.index(train_all, train_users)
        item, val_rmse = train_item_based(
            fit, val, own_all, user_val, ix.n_movies, levels, cfg, comm
        )
    models = _Models(params, implicit, item, ix.n_movies, train_users)
    ranking, val_ndcg = comm.decide(lambda: _choose_ranking(models, fit, val, levels))
    return FittedModels(models, rbm_config, ranking, result, val_rmse, val_ndcg, train_all, merge)


def evaluate_models(ds: Dataset, cfg: TrainConfig, fitted: FittedModels) -> TrainOutcome:
    """Evaluate on the split's test part against baselines, and package the checkpoint."""
    ix = Indexer(ds)
    levels_np = np.asarray(ds.levels, dtype=np.float32)
    levels = torch.from_numpy(levels_np).to(cfg.device)
    models, result = fitted.models, fitted.result
    # Test users unseen in training get empty context rows: the model's fallback.
    all_users = np.union1d(models.train_users, ds.test.users)
    context, test = ix.index(fitted.train, all_users), ix.index(ds.test, all_users)
    truth = levels[torch.from_numpy(test.levels).to(cfg.device)]
    lo, hi = ds.levels[0], ds.levels[-1]
    pop = popularity_scores(context, ix.n_movies)
    expected_fn = _scorer_fn(models, context, levels, "expected_rating", pop, want="expected")
    metrics = rating_metrics(_at_pairs(expected_fn, test), truth, lo, hi)
    score_fn = _scorer_fn(models, context, levels, fitted.ranking, pop, want="score")
    metrics |= ranking_metrics(score_fn, context, test, levels_np)
    metrics |= {
        "val_rmse": fitted.val_rmse,  # of the served prediction (the blend, with an item RBM)
        "val_rmse_user_rbm": result.best_val_rmse,
        "val_ndcg@10": fitted.val_ndcg,
        "best_epoch": float(result.best_epoch),
    }

    bias = BiasBaseline.fit(context, levels_np, ix.n_movies)
    baselines = {
        "global_mean": rating_metrics(torch.full_like(truth, bias.mu), truth, lo, hi),
        "bias": rating_metrics(bias.predict(test).to(truth), truth, lo, hi),
        "popularity": ranking_metrics(
            lambda rows: pop.expand(len(rows), -1), context, test, levels_np
        ),
    }
    if ix.n_movies <= MAX_KNN_MOVIES:  # the dense baseline does not fit larger catalogues
        knn = ItemKNN.fit(context, ix.n_movies)
        baselines["item_knn"] = ranking_metrics(
            lambda rows: knn.scores(context, rows), context, test, levels_np
        )

    own = ix.index(fitted.train, models.train_users)
    ckpt = Checkpoint(
        config=fitted.rbm_config,
        params=models.params.to("cpu"),
        levels=tuple(float(x) for x in ds.levels),
        movie_ids=torch.from_numpy(ds.movie_ids.astype(np.int64)),
        titles=list(ds.titles),
        user_ids=torch.from_numpy(models.train_users.astype(np.int64)),
        user_indptr=torch.from_numpy(own.indptr),
        user_movies=torch.from_numpy(own.movies),
        user_levels=torch.from_numpy(own.levels),
        popularity=popularity_scores(own, ix.n_movies),
        dataset=ds.name,
        ranking=fitted.ranking,
        implicit=None if models.implicit is None else models.implicit.to("cpu"),
        item=models.item,
    )
    return TrainOutcome(ckpt, metrics, baselines, result.history, fitted.rating_log)
