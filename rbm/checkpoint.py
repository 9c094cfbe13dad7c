"""A trained model on disk: tensors in safetensors, everything else in JSON. Never a pickle.

A checkpoint directory holds all the server needs to answer without the training data:
weights and biases, the rating levels, the MovieLens ids of movies and users, titles,
popularity for cold start, and each known user's training ratings (CSR) so that hidden
states can be computed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from rbm.implicit import implicit_config, implicit_hidden_input
from rbm.model import (
    RANKINGS,
    Ranking,
    RatingsBatch,
    RBMConfig,
    RBMParams,
    hidden_input,
    level_probabilities,
)

__all__ = [
    "CHECKPOINT_FILES",
    "Checkpoint",
    "CheckpointError",
    "ItemModel",
    "load_checkpoint",
    "save_checkpoint",
    "smoke_test",
    "stacked_hidden_pre",
]

FORMAT = "rbmrec-checkpoint/1"
TENSORS_FILE = "model.safetensors"
JSON_FILE = "model.json"
CHECKPOINT_FILES = (TENSORS_FILE, JSON_FILE)


class CheckpointError(ValueError):
    """A checkpoint directory is missing, unreadable or inconsistent."""


@dataclass
class ItemModel:
    """The item-based softmax RBM: a case per movie, visible units = the training users.

    Its visible unit k*U + u is "user row u rated the movie at level k", with user rows
    those of ``Checkpoint.user_ids``. ``movie_hidden`` holds P(h | the movie's training
    ratings); ``blend`` is the share of its prediction for users it knows.
    """

    params: RBMParams  # weights (K*U, F2), visible_bias (K*U,), hidden_bias (F2,)
    movie_hidden: Tensor  # (M, F2)
    blend: float


@dataclass
class Checkpoint:
    """Everything one trained model needs to serve."""

    config: RBMConfig
    params: RBMParams
    levels: tuple[float, ...]  # rating value of each level, ascending
    movie_ids: Tensor  # (M,) int64 MovieLens ids, index = movie index
    titles: list[str]  # (M,)
    user_ids: Tensor  # (U,) int64 MovieLens ids of users seen in training
    user_indptr: Tensor  # (U+1,) int64 CSR row pointers into user_movies/user_levels
    user_movies: Tensor  # (nnz,) int64 movie indices
    user_levels: Tensor  # (nnz,) int64 level indices
    popularity: Tensor  # (M,) float32 number of training ratings per movie
    dataset: str = ""
    ranking: Ranking = "expected_rating"  # which ranking score of rbm.scoring the server uses
    implicit: RBMParams | None = None  # the implicit-feedback RBM (rbm.implicit), if trained
    item: ItemModel | None = None  # the item-based RBM, if trained

    @property
    def hidden_width(self) -> int:
        """Width of a user's hidden pre-activation: F, plus F' with an implicit RBM."""
        extra = 0 if self.implicit is None else self.implicit.hidden_bias.numel()
        return self.config.n_hidden + extra

    def hidden_pre(self, batch: RatingsBatch) -> Tensor:
        """The users' hidden pre-activations, both models side by side: (B, hidden_width)."""
        return stacked_hidden_pre(self.params, self.implicit, batch, self.config.n_movies)

    def user_batch(self, user_rows: list[int]) -> RatingsBatch:
        """The training ratings of the users at ``user_rows`` (indices into user_ids)."""
        rows, movies, levels = [], [], []
        for b, u in enumerate(user_rows):
            lo, hi = int(self.user_indptr[u]), int(self.user_indptr[u + 1])
            movies.append(self.user_movies[lo:hi])
            levels.append(self.user_levels[lo:hi])
            rows.append(torch.full((hi - lo,), b, dtype=torch.int64))
        empty = torch.empty(0, dtype=torch.int64)
        return RatingsBatch(
            rows=torch.cat(rows) if rows else empty,
            movies=torch.cat(movies) if movies else empty,
            levels=torch.cat(levels) if levels else empty,
            n_rows=len(user_rows),
        )

    def check(self) -> None:
        """Raise CheckpointError if shapes, ids or values are inconsistent."""
        try:
            self.params.check(self.config)
            if self.implicit is not None:
                n_hidden = self.implicit.hidden_bias.numel()
                self.implicit.check(implicit_config(self.config.n_movies, max(n_hidden, 1)))
            if self.item is not None:
                n_item = self.item.params.hidden_bias.numel()
                users = int(self.user_ids.numel())
                self.item.params.check(RBMConfig(max(users, 1), self.config.n_levels, n_item))
                if tuple(self.item.movie_hidden.shape) != (self.config.n_movies, n_item):
                    raise ValueError("item_movie_hidden must be (movies, item hidden units)")
                if not 0.0 <= self.item.blend <= 1.0:
                    raise ValueError(f"item blend {self.item.blend} is outside [0, 1]")
        except ValueError as exc:
            raise CheckpointError(str(exc)) from exc
        m, u = self.config.n_movies, int(self.user_ids.numel())
        if len(self.levels) != self.config.n_levels:
            raise CheckpointError(f"{len(self.levels)} levels, config says {self.config.n_levels}")
        if list(self.levels) != sorted(set(self.levels)):
            raise CheckpointError("rating levels must be distinct and ascending")
        if self.movie_ids.numel() != m or len(self.titles) != m or self.popularity.numel() != m:
            raise CheckpointError("movie_ids, titles and popularity must have one entry per movie")
        if (
            self.user_indptr.numel() != u + 1
            or int(self.user_indptr[-1]) != self.user_movies.numel()
        ):
            raise CheckpointError("user_indptr does not match the user ratings")
        if self.user_movies.numel() != self.user_levels.numel():
            raise CheckpointError("user_movies and user_levels differ in length")
        if self.user_movies.numel() and (
            int(self.user_movies.min()) < 0 or int(self.user_movies.max()) >= m
        ):
            raise CheckpointError("a user rating points outside the movie catalogue")
        if self.ranking not in RANKINGS:
            raise CheckpointError(f"unknown ranking score {self.ranking!r}")
        if self.user_levels.numel() and (
            int(self.user_levels.min()) < 0 or int(self.user_levels.max()) >= self.config.n_levels
        ):
            raise CheckpointError("a user rating has an unknown level")


def stacked_hidden_pre(
    params: RBMParams, implicit: RBMParams | None, batch: RatingsBatch, n_movies: int
) -> Tensor:
    """Softmax-RBM pre-activation, then the implicit RBM's if there is one: (B, F [+ F'])."""
    pre = hidden_input(params, batch, n_movies)
    if implicit is None:
        return pre
    return torch.cat([pre, implicit_hidden_input(implicit, batch)], dim=1)


def save_checkpoint(ckpt: Checkpoint, directory: Path) -> None:
    """Write ``ckpt`` into ``directory`` (created if missing)."""
    ckpt.check()
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {
        "weights": ckpt.params.weights,
        "visible_bias": ckpt.params.visible_bias,
        "hidden_bias": ckpt.params.hidden_bias,
        "movie_ids": ckpt.movie_ids,
        "user_ids": ckpt.user_ids,
        "user_indptr": ckpt.user_indptr,
        "user_movies": ckpt.user_movies,
        "user_levels": ckpt.user_levels,
        "popularity": ckpt.popularity,
    }
    if ckpt.item is not None:
        tensors |= {
            "item_weights": ckpt.item.params.weights,
            "item_visible_bias": ckpt.item.params.visible_bias,
            "item_hidden_bias": ckpt.item.params.hidden_bias,
            "item_movie_hidden": ckpt.item.movie_hidden,
        }
    if ckpt.implicit is not None:
        tensors |= {
            "implicit_weights": ckpt.implicit.weights,
            "implicit_visible_bias": ckpt.implicit.visible_bias,
            "implicit_hidden_bias": ckpt.implicit.hidden_bias,
        }
    save_file(
        {k: v.detach().cpu().contiguous() for k, v in tensors.items()},
        str(directory / TENSORS_FILE),
    )
    meta: dict[str, Any] = {
        "format": FORMAT,
        "config": {
            "n_movies": ckpt.config.n_movies,
            "n_levels": ckpt.config.n_levels,
            "n_hidden": ckpt.config.n_hidden,
        },
        "levels": list(ckpt.levels),
        "titles": ckpt.titles,
        "dataset": ckpt.dataset,
        "ranking": ckpt.ranking,
        "item_blend": None if ckpt.item is None else ckpt.item.blend,
    }
    (directory / JSON_FILE).write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")


def load_checkpoint(directory: Path) -> Checkpoint:
    """Read and check a checkpoint; raise CheckpointError on any problem."""
    try:
        meta = json.loads((directory / JSON_FILE).read_text(encoding="utf-8"))
        t = load_file(str(directory / TENSORS_FILE))
    except FileNotFoundError as exc:
        raise CheckpointError(f"missing checkpoint file: {exc.filename}") from exc
    except Exception as exc:  # safetensors and json raise several types for corrupt files
        raise CheckpointError(f"unreadable checkpoint in {directory}: {exc}") from exc
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"unknown checkpoint format {meta.get('format')!r}")
    try:
        config = RBMConfig(**meta["config"])
        ckpt = Checkpoint(
            config=config,
            params=RBMParams(t["weights"], t["visible_bias"], t["hidden_bias"]),
            levels=tuple(float(x) for x in meta["levels"]),
            movie_ids=t["movie_ids"],
            titles=list(meta["titles"]),
            user_ids=t["user_ids"],
            user_indptr=t["user_indptr"],
            user_movies=t["user_movies"],
            user_levels=t["user_levels"],
            popularity=t["popularity"],
            dataset=str(meta.get("dataset", "")),
            ranking=meta.get("ranking", "expected_rating"),
            implicit=(
                RBMParams(
                    t["implicit_weights"], t["implicit_visible_bias"], t["implicit_hidden_bias"]
                )
                if "implicit_weights" in t
                else None
            ),
            item=(
                ItemModel(
                    RBMParams(t["item_weights"], t["item_visible_bias"], t["item_hidden_bias"]),
                    t["item_movie_hidden"],
                    float(meta["item_blend"]),
                )
                if "item_weights" in t
                else None
            ),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"inconsistent checkpoint in {directory}: {exc}") from exc
    ckpt.check()
    return ckpt


def smoke_test(directory: Path) -> None:
    """Load the checkpoint and predict for one user; raise if anything is off."""
    ckpt = load_checkpoint(directory)
    rows = [0] if ckpt.user_ids.numel() else []
    batch = (
        ckpt.user_batch(rows)
        if rows
        else RatingsBatch(*(torch.empty(0, dtype=torch.int64),) * 3, n_rows=1)
    )
    pre = ckpt.hidden_pre(batch)
    hidden = torch.sigmoid(pre[:, : ckpt.config.n_hidden])
    probs = level_probabilities(ckpt.params, hidden, ckpt.config.n_levels)
    sums = probs.sum(dim=1)
    if not bool(torch.isfinite(probs).all()) or not torch.allclose(sums, torch.ones_like(sums)):
        raise CheckpointError("the model's predictions are not valid probabilities")
