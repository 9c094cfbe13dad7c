"""The softmax-visible RBM for collaborative filtering (Salakhutdinov, Mnih and Hinton, 2007).

Each user is one training case. A movie the user rated is one K-way softmax visible unit;
movies the user did not rate are absent from that case, not zeros. Hidden units are binary.

Visible units are laid out level-major: unit ``k * M + m`` is "movie m rated at level k".
Keeping the M movies of one level contiguous makes the softmax over the K levels a
reduction over a strided dimension, which was ~5x faster on CPU than over a contiguous
last dimension of size K (see shared/FINDINGS.md).

Everything here is a pure function of tensors, shared by the trainer, the server and the
ONNX export. It imports only torch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal, TypeVar

import torch
from torch import Tensor

__all__ = [
    "LIKED_AT",
    "RANKINGS",
    "RATING_INFERENCES",
    "CDStats",
    "ItemModel",
    "RBMConfig",
    "RBMParams",
    "Ranking",
    "RatingBlend",
    "RatingInference",
    "RatingsBatch",
    "cd_statistics",
    "entry_level_probabilities",
    "hidden_input",
    "hidden_probabilities",
    "level_probabilities",
    "second_order_term",
    "visible_units",
]


# The ranking scores rbm.scoring can compute; a checkpoint names the one it serves.
Ranking = Literal["expected_rating", "liked_and_rated", "rated"]
RANKINGS: tuple[Ranking, ...] = ("expected_rating", "liked_and_rated", "rated")
LIKED_AT = 4.0  # a rating at or above this counts as liked (the evaluation's relevance)

# How a predicted rating's level distribution P(v_m = k | the user's ratings) is computed.
# The exact one is b_mk + sum_j softplus(x_j + W_mkj) (x: the hidden pre-activation); the
# mean-field one takes its first-order expansion in W, b_mk + sum_j p_j W_mkj, and the
# second-order one adds (1/2) sum_j p_j (1 - p_j) W_mkj^2, one more matrix product. On the
# validation slices of ml-100k u1..u5 the second order matched the exact one to 1e-4 RMSE
# and beat the mean field (docs/training.md). Ranking scores stay mean-field.
RatingInference = Literal["mean_field", "second_order"]
RATING_INFERENCES: tuple[RatingInference, ...] = ("mean_field", "second_order")


@dataclass(frozen=True)
class RBMConfig:
    """Shape of the model: M movies, K rating levels, F hidden units."""

    n_movies: int
    n_levels: int
    n_hidden: int

    def __post_init__(self) -> None:
        for name in ("n_movies", "n_levels", "n_hidden"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    @property
    def n_visible(self) -> int:
        """Number of visible units, K * M."""
        return self.n_levels * self.n_movies


_PARAM_NAMES = ("weights", "visible_bias", "hidden_bias")


@dataclass
class RBMParams:
    """Weights (K*M, F), visible biases (K*M,) and hidden biases (F,)."""

    weights: Tensor
    visible_bias: Tensor
    hidden_bias: Tensor

    @classmethod
    def init(
        cls, config: RBMConfig, generator: torch.Generator, visible_bias: Tensor | None = None
    ) -> RBMParams:
        """Small random weights, zero hidden biases, visible biases as given (or zero)."""
        w = 0.01 * torch.randn(config.n_visible, config.n_hidden, generator=generator)
        vb = torch.zeros(config.n_visible) if visible_bias is None else visible_bias.clone()
        return cls(weights=w, visible_bias=vb, hidden_bias=torch.zeros(config.n_hidden))

    def to(self, device: torch.device | str) -> RBMParams:
        """A copy on ``device``."""
        return RBMParams(
            self.weights.to(device), self.visible_bias.to(device), self.hidden_bias.to(device)
        )

    def clone(self) -> RBMParams:
        """A copy that later in-place updates of this one do not touch."""
        return RBMParams(self.weights.clone(), self.visible_bias.clone(), self.hidden_bias.clone())

    def named(self, prefix: str = "") -> dict[str, Tensor]:
        """The three tensors under the names a checkpoint file stores them by."""
        return {prefix + name: getattr(self, name) for name in _PARAM_NAMES}

    @classmethod
    def from_named(cls, tensors: dict[str, Tensor], prefix: str = "") -> RBMParams:
        """The inverse of ``named``; KeyError if one is missing."""
        return cls(*(tensors[prefix + name] for name in _PARAM_NAMES))

    def check(self, config: RBMConfig) -> None:
        """Raise ValueError if the tensors do not match ``config`` or hold NaN/inf."""
        expected = {
            "weights": (config.n_visible, config.n_hidden),
            "visible_bias": (config.n_visible,),
            "hidden_bias": (config.n_hidden,),
        }
        for name, shape in expected.items():
            t: Tensor = getattr(self, name)
            if tuple(t.shape) != shape:
                raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {shape}")
            if not bool(torch.isfinite(t).all()):
                raise ValueError(f"{name} holds NaN or infinite values")


@dataclass(frozen=True)
class RatingBlend:
    """How the user- and item-based expected ratings u and i combine for a known user.

    ``bias + user_weight*u + item_weight*i + (i - u)*(movie_slope*m + user_slope*n)``, with
    m and n the log(1 + training ratings) of the movie and of the user, less their centres:
    a linear blend (its weights need not sum to one: both RBMs' expectations are pulled
    toward the mean, and the fit stretches them back) whose item share moves with how
    much is known of the movie and the user. Fitted by least squares on validation.
    """

    bias: float = 0.0
    user_weight: float = 1.0
    item_weight: float = 0.0
    movie_slope: float = 0.0
    user_slope: float = 0.0
    movie_center: float = 0.0
    user_center: float = 0.0

    @classmethod
    def from_share(cls, share: float) -> RatingBlend:
        """The plain mix ``share*i + (1 - share)*u`` (what versions before the fit served)."""
        return cls(user_weight=1.0 - share, item_weight=share)

    def apply(self, user: Tensor, item: Tensor, movie_log: Tensor, user_log: Tensor) -> Tensor:
        """The blended rating; ``movie_log`` and ``user_log`` broadcast against u and i."""
        slope = self.movie_slope * (movie_log - self.movie_center) + self.user_slope * (
            user_log - self.user_center
        )
        return self.bias + self.user_weight * user + self.item_weight * item + (item - user) * slope

    def check(self) -> None:
        """Raise ValueError if a coefficient is NaN or infinite."""
        if not all(math.isfinite(v) for v in asdict(self).values()):
            raise ValueError(f"rating blend {self} holds NaN or infinite values")


@dataclass
class ItemModel:
    """The item-based softmax RBM: a case per movie, visible units = the training users.

    Its visible unit k*U + u is "user row u rated the movie at level k", with user rows
    those of ``Checkpoint.user_ids``. ``movie_hidden`` holds P(h | the movie's training
    ratings); ``blend`` is the share of its level distribution mixed into P(liked) when
    the ranking uses the blend, and ``rating_blend`` how its expected rating combines with
    the user-based one (None: ``blend`` as a plain mix, as versions before it had).
    """

    params: RBMParams  # weights (K*U, F2), visible_bias (K*U,), hidden_bias (F2,)
    movie_hidden: Tensor  # (M, F2)
    blend: float
    rating_blend: RatingBlend | None = None

    @property
    def ratings(self) -> RatingBlend:
        """The rating blend this model serves."""
        return self.rating_blend or RatingBlend.from_share(self.blend)


@dataclass(frozen=True)
class RatingsBatch:
    """The rated entries of B users: user ``rows[e]`` rated ``movies[e]`` at ``levels[e]``.

    ``rows`` index into the batch (0..B-1), ``movies`` into the catalogue (0..M-1) and
    ``levels`` into the rating levels (0..K-1). All are int64 tensors of length nnz.
    """

    rows: Tensor
    movies: Tensor
    levels: Tensor
    n_rows: int

    def to(self, device: torch.device | str) -> RatingsBatch:
        """A copy on ``device``."""
        return RatingsBatch(
            self.rows.to(device), self.movies.to(device), self.levels.to(device), self.n_rows
        )


IndexT = TypeVar("IndexT", int, Tensor)


def visible_units(movies: IndexT, levels: IndexT, n_movies: int) -> IndexT:
    """Index of the visible unit for (movie, level) pairs: ``level * M + movie``."""
    return levels * n_movies + movies


def hidden_input(params: RBMParams, batch: RatingsBatch, n_movies: int) -> Tensor:
    """Hidden pre-activation c + sum of the weight rows of each user's rated units: (B, F).

    This is a sum over the user's ratings, so one new rating changes it by one weight row;
    the server caches it per user for that reason.
    """
    units = visible_units(batch.movies, batch.levels, n_movies)  # (nnz,)
    out = params.hidden_bias.expand(batch.n_rows, -1).clone()  # (B, F)
    out.index_add_(0, batch.rows, params.weights[units])
    return out


def _all_level_units(movies: Tensor, n_levels: int, n_movies: int) -> Tensor:
    """(nnz, K) visible-unit indices of every level of each entry's movie."""
    level_offsets = torch.arange(n_levels, device=movies.device) * n_movies  # (K,)
    return movies.unsqueeze(1) + level_offsets.unsqueeze(0)


def second_order_term(hidden: Tensor) -> Tensor:
    """The weight of W^2 in the second-order logits, p (1 - p) / 2: same shape as ``hidden``."""
    return 0.5 * hidden * (1.0 - hidden)


def _entry_level_probs(
    params: RBMParams,
    hidden: Tensor,
    rows: Tensor,
    units: Tensor,
    inference: RatingInference = "mean_field",
) -> Tensor:
    """Softmax over levels for entries given hidden (B, F) and their (nnz, K) units: (nnz, K)."""
    w = params.weights[units]  # (nnz, K, F)
    logits = torch.einsum("ekf,ef->ek", w, hidden[rows]) + params.visible_bias[units]
    if inference == "second_order":
        logits = logits + torch.einsum("ekf,ef->ek", w * w, second_order_term(hidden)[rows])
    return torch.softmax(logits, dim=1)


def entry_level_probabilities(
    params: RBMParams,
    hidden: Tensor,
    rows: Tensor,
    movies: Tensor,
    config: RBMConfig,
    inference: RatingInference = "mean_field",
) -> Tensor:
    """P(level | hidden) for (row, movie) pairs only: hidden (B, F), pairs (n,) -> (n, K)."""
    units = _all_level_units(movies, config.n_levels, config.n_movies)
    return _entry_level_probs(params, hidden, rows, units, inference)


def level_probabilities(params: RBMParams, hidden: Tensor, n_levels: int) -> Tensor:
    """P(level | hidden) for every movie, dense: hidden (B, F) -> (B, K, M)."""
    logits = torch.addmm(params.visible_bias, hidden, params.weights.t())  # (B, K*M)
    return torch.softmax(logits.view(hidden.shape[0], n_levels, -1), dim=1)


@dataclass(frozen=True)
class CDStats:
    """CD-k gradient (data minus model statistics), summed over the minibatch's users."""

    weights: Tensor
    visible_bias: Tensor
    hidden_bias: Tensor
    recon_sq_error: float  # squared error of the reconstruction's expected level, summed
    n_entries: int


def cd_statistics(
    params: RBMParams,
    batch: RatingsBatch,
    config: RBMConfig,
    k: int,
    generator: torch.Generator | None,
) -> CDStats:
    """Contrastive divergence CD-k statistics for one minibatch, touching only rated entries.

    The negative phase reconstructs only the movies each user rated, so the cost is
    O(nnz * K * F), never O(users * movies). Hidden states are sampled between steps; the
    last reconstruction and the last hidden layer use probabilities (Hinton's practical
    guide), which lowers the variance of the estimate. ``generator=None`` with ``k`` steps
    still samples, using torch's default generator.
    """
    if k < 1:
        raise ValueError(f"CD needs k >= 1, got {k}")
    m, n_levels = config.n_movies, config.n_levels
    pos_units = visible_units(batch.movies, batch.levels, m)  # (nnz,)
    all_units = _all_level_units(batch.movies, n_levels, m)  # (nnz, K)
    ph0 = torch.sigmoid(hidden_input(params, batch, m))  # (B, F)

    ph = ph0
    pv = torch.empty(0)
    for step in range(k):
        h = torch.bernoulli(ph, generator=generator)  # (B, F)
        pv = _entry_level_probs(params, h, batch.rows, all_units)  # (nnz, K)
        last = step == k - 1
        if last:
            # Mean-field hidden input: sum_k pv[e, k] * W[unit(e, k)].
            contrib = torch.einsum("ek,ekf->ef", pv, params.weights[all_units])
        else:
            sampled = torch.multinomial(pv, 1, generator=generator).squeeze(1)  # (nnz,)
            contrib = params.weights[visible_units(batch.movies, sampled, m)]
        pre = params.hidden_bias.expand(batch.n_rows, -1).clone()
        pre.index_add_(0, batch.rows, contrib)
        ph = torch.sigmoid(pre)

    d_w = torch.zeros_like(params.weights)
    d_w.index_add_(0, pos_units, ph0[batch.rows])
    neg = pv.unsqueeze(2) * ph[batch.rows].unsqueeze(1)  # (nnz, K, F)
    d_w.index_add_(0, all_units.reshape(-1), -neg.reshape(-1, config.n_hidden))
    d_vb = torch.zeros_like(params.visible_bias)
    d_vb.index_add_(0, pos_units, torch.ones_like(pos_units, dtype=d_vb.dtype))
    d_vb.index_add_(0, all_units.reshape(-1), -pv.reshape(-1))
    d_hb = (ph0 - ph).sum(0)

    level_idx = torch.arange(n_levels, device=pv.device, dtype=pv.dtype)
    recon = pv @ level_idx  # expected level index per entry, (nnz,)
    sq = float(((recon - batch.levels.to(pv.dtype)) ** 2).sum())
    return CDStats(d_w, d_vb, d_hb, sq, int(batch.rows.numel()))


def hidden_probabilities(pre_activation: Tensor) -> Tensor:
    """P(h = 1 | v) from the hidden pre-activation."""
    return torch.sigmoid(pre_activation)
