"""A trained model on disk: tensors in safetensors, everything else in JSON. Never a pickle.

A checkpoint directory holds all the server needs to answer without the training data:
weights and biases, the rating levels, the MovieLens ids of movies and users, titles,
popularity for cold start, and each known user's training ratings (CSR) so that hidden
states can be computed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from rbm.encoder import HiddenEncoder
from rbm.implicit import implicit_config
from rbm.model import (
    RANKINGS,
    RATING_INFERENCES,
    ItemModel,
    Ranking,
    RatingBlend,
    RatingInference,
    RatingsBatch,
    RBMConfig,
    RBMParams,
)
from rbm.scoring import Scorer

__all__ = [
    "CHECKPOINT_FILES",
    "Checkpoint",
    "CheckpointError",
    "ItemModel",
    "load_checkpoint",
    "save_checkpoint",
    "smoke_test",
]

FORMAT = "rbmrec-checkpoint/1"
TENSORS_FILE = "model.safetensors"
JSON_FILE = "model.json"
CHECKPOINT_FILES = (TENSORS_FILE, JSON_FILE)
# The checkpoint's own tensors, stored under their field names; the RBMs' parameters are
# stored by RBMParams.named under these prefixes.
DATA_TENSORS = ("movie_ids", "user_ids", "user_indptr", "user_movies", "user_levels", "popularity")
IMPLICIT_PREFIX, ITEM_PREFIX = "implicit_", "item_"


class CheckpointError(ValueError):
    """A checkpoint directory is missing, unreadable or inconsistent."""


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
    blend_ranking: bool = False  # whether the item-based blend also enters the ranking
    liked_weight: float = 1.0  # the weight of log P(liked) in the liked_and_rated score
    implicit_models: int = 1  # how many implicit RBMs ``implicit`` holds side by side
    # How predicted ratings are computed; versions from before the choice are mean-field.
    rating_inference: RatingInference = "mean_field"

    @property
    def hidden_width(self) -> int:
        """Width of a user's hidden pre-activation: F, plus F' with an implicit RBM."""
        return self.encoder().width

    @cached_property
    def movie_index(self) -> dict[int, int]:
        """MovieLens movie id -> catalogue index."""
        return {int(m): i for i, m in enumerate(self.movie_ids.tolist())}

    @cached_property
    def user_row(self) -> dict[int, int]:
        """MovieLens user id -> row of the users seen in training (and in the item RBM)."""
        return {int(u): i for i, u in enumerate(self.user_ids.tolist())}

    @cached_property
    def level_of(self) -> dict[float, int]:
        """Rating value -> level index."""
        return {float(v): i for i, v in enumerate(self.levels)}

    def encoder(self, device: torch.device | str = "cpu") -> HiddenEncoder:
        """Ratings -> hidden pre-activations, with the RBMs' parameters on ``device``."""
        implicit = None if self.implicit is None else self.implicit.to(device)
        return HiddenEncoder(self.params.to(device), implicit, self.config.n_movies)

    def hidden_pre(self, batch: RatingsBatch) -> Tensor:
        """The users' hidden pre-activations, both models side by side: (B, hidden_width)."""
        return self.encoder().encode(batch)

    def scorer(self, device: torch.device | str = "cpu") -> Scorer:
        """The serving pass, with the ranking score this model was trained to use."""
        levels = torch.tensor(self.levels, dtype=torch.float32)
        scorer = Scorer(
            self.params,
            levels,
            self.ranking,
            self.popularity,
            self.implicit,
            self.item,
            self.blend_ranking,
            self.liked_weight,
            1.0 / self.implicit_models,
            self.user_indptr.diff(),
            self.rating_inference,
        )
        return scorer.eval().to(device)

    def movie_vectors(self) -> Tensor:
        """Each movie as a unit vector for nearness by cosine: (M, D).

        Each RBM of the version describes a movie its own way: the softmax RBM by its weight
        rows of every rating level, the implicit RBM by its weight row (who rated it at
        all), the item RBM by P(h | the movie's training ratings) (who rated it, and how).
        Each view is centred on the catalogue's mean (what all movies share, being rated at
        all, would make every movie near every other) and scaled to unit length; the views
        are put side by side, so the cosine is the mean of the views' cosines. On
        ml-100k the views together gave more plausible neighbours than any one alone.
        """
        k, m = self.config.n_levels, self.config.n_movies
        views = [self.params.weights.view(k, m, -1).transpose(0, 1).reshape(m, -1)]
        if self.implicit is not None:
            views.append(self.implicit.weights)
        if self.item is not None:
            views.append(self.item.movie_hidden)
        units = [_unit_rows(v - v.mean(0, keepdim=True)) for v in views]
        return torch.cat(units, dim=1).div(len(units) ** 0.5)

    @cached_property
    def _bounds(self) -> list[int]:
        # A list: indexing it is ~10x cheaper than a tensor, and serving does it per request.
        bounds: list[int] = self.user_indptr.tolist()
        return bounds

    def training_ratings(self, row: int) -> tuple[Tensor, Tensor]:
        """Movie and level indices the user at ``row`` rated in training: two views, no copy."""
        lo, hi = self._bounds[row], self._bounds[row + 1]
        return self.user_movies[lo:hi], self.user_levels[lo:hi]

    def user_batch(self, user_rows: list[int]) -> RatingsBatch:
        """The training ratings of the users at ``user_rows`` (indices into user_ids)."""
        rows, movies, levels = [], [], []
        for b, u in enumerate(user_rows):
            user_movies, user_levels = self.training_ratings(u)
            movies.append(user_movies)
            levels.append(user_levels)
            rows.append(torch.full((user_movies.numel(),), b, dtype=torch.int64))
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
                if self.implicit_models < 1 or n_hidden % self.implicit_models:
                    raise ValueError(
                        f"{n_hidden} implicit hidden units do not split into "
                        f"{self.implicit_models} implicit RBMs"
                    )
            if not 0.0 <= self.liked_weight < float("inf"):
                raise ValueError(f"liked_weight {self.liked_weight} must be finite and >= 0")
            if self.item is not None:
                n_item = self.item.params.hidden_bias.numel()
                users = int(self.user_ids.numel())
                self.item.params.check(RBMConfig(max(users, 1), self.config.n_levels, n_item))
                if tuple(self.item.movie_hidden.shape) != (self.config.n_movies, n_item):
                    raise ValueError("item_movie_hidden must be (movies, item hidden units)")
                if not 0.0 <= self.item.blend <= 1.0:
                    raise ValueError(f"item blend {self.item.blend} is outside [0, 1]")
                if self.item.rating_blend is not None:
                    self.item.rating_blend.check()
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
        if self.rating_inference not in RATING_INFERENCES:
            raise CheckpointError(f"unknown rating inference {self.rating_inference!r}")
        if self.user_levels.numel() and (
            int(self.user_levels.min()) < 0 or int(self.user_levels.max()) >= self.config.n_levels
        ):
            raise CheckpointError("a user rating has an unknown level")


def save_checkpoint(ckpt: Checkpoint, directory: Path) -> None:
    """Write ``ckpt`` into ``directory`` (created if missing)."""
    ckpt.check()
    directory.mkdir(parents=True, exist_ok=True)
    tensors = ckpt.params.named() | {name: getattr(ckpt, name) for name in DATA_TENSORS}
    if ckpt.implicit is not None:
        tensors |= ckpt.implicit.named(IMPLICIT_PREFIX)
    if ckpt.item is not None:
        tensors |= ckpt.item.params.named(ITEM_PREFIX)
        tensors[ITEM_PREFIX + "movie_hidden"] = ckpt.item.movie_hidden
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
        "rating_blend": (
            None
            if ckpt.item is None or ckpt.item.rating_blend is None
            else asdict(ckpt.item.rating_blend)
        ),
        "blend_ranking": ckpt.blend_ranking,
        "liked_weight": ckpt.liked_weight,
        "implicit_models": ckpt.implicit_models,
        "rating_inference": ckpt.rating_inference,
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
            params=RBMParams.from_named(t),
            levels=tuple(float(x) for x in meta["levels"]),
            titles=list(meta["titles"]),
            dataset=str(meta.get("dataset", "")),
            ranking=meta.get("ranking", "expected_rating"),
            blend_ranking=bool(meta.get("blend_ranking", False)),
            liked_weight=float(meta.get("liked_weight", 1.0)),
            implicit_models=int(meta.get("implicit_models", 1)),
            rating_inference=meta.get("rating_inference", "mean_field"),
            implicit=(
                RBMParams.from_named(t, IMPLICIT_PREFIX)
                if IMPLICIT_PREFIX + "weights" in t
                else None
            ),
            item=(
                ItemModel(
                    RBMParams.from_named(t, ITEM_PREFIX),
                    t[ITEM_PREFIX + "movie_hidden"],
                    float(meta["item_blend"]),
                    _rating_blend(meta.get("rating_blend")),
                )
                if ITEM_PREFIX + "weights" in t
                else None
            ),
            **{name: t[name] for name in DATA_TENSORS},
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"inconsistent checkpoint in {directory}: {exc}") from exc
    ckpt.check()
    return ckpt


def _rating_blend(stored: dict[str, Any] | None) -> RatingBlend | None:
    """The rating blend stored in the JSON; None for versions from before it."""
    return None if stored is None else RatingBlend(**{k: float(v) for k, v in stored.items()})


def smoke_test(directory: Path) -> None:
    """Load the checkpoint and run the serving pass for one user; raise if anything is off."""
    ckpt = load_checkpoint(directory)
    row = [0] if ckpt.user_ids.numel() else []
    batch = (
        ckpt.user_batch(row)
        if row
        else RatingsBatch(*(torch.empty(0, dtype=torch.int64),) * 3, n_rows=1)
    )
    item_rows = torch.tensor([0 if row else -1])
    scorer = ckpt.scorer()
    with torch.inference_mode():
        hidden_pre = ckpt.hidden_pre(batch)
        scores, logits = scorer.score(hidden_pre, item_rows)
        predicted = scorer.predict_at(logits, hidden_pre, item_rows, None)
    low, high = ckpt.levels[0], ckpt.levels[-1]
    if not bool(torch.isfinite(scores).all()):
        raise CheckpointError("the model's ranking scores are not finite")
    if not bool(((predicted >= low - 1e-4) & (predicted <= high + 1e-4)).all()):
        raise CheckpointError(f"the model's predicted ratings leave the scale [{low}, {high}]")


def _unit_rows(x: Tensor) -> Tensor:
    return x.div(x.norm(dim=1, keepdim=True).clamp_min(1e-12))
