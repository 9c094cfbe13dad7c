"""The implicit-feedback RBM: which movies a user rates, as binary visible units.

Every movie is one Bernoulli visible unit, on when the user rated it, whatever the
rating; hidden units are binary. It models P(rated | user), the signal that makes
ranking work (rating prediction alone ranks rarely rated movies first). The hidden
pre-activation is, as in the softmax RBM, the hidden biases plus one weight row per rated
movie, so the server caches and updates it the same way.

The negative phase reconstructs all M movies: an epoch costs O(users x movies x F).
"""

from __future__ import annotations

import torch
from torch import Tensor

from rbm.model import CDStats, RatingsBatch, RBMConfig, RBMParams, hidden_input

__all__ = [
    "combine_implicit",
    "implicit_cd_statistics",
    "implicit_config",
    "implicit_hidden_input",
    "log_p_rated",
    "log_sigmoid",
]


def implicit_config(n_movies: int, n_hidden: int) -> RBMConfig:
    """The implicit RBM's shape: M binary visible units (one "level"), F hidden units."""
    return RBMConfig(n_movies=n_movies, n_levels=1, n_hidden=n_hidden)


def implicit_hidden_input(params: RBMParams, batch: RatingsBatch) -> Tensor:
    """Hidden pre-activation from the movies each user rated (levels ignored): (B, F)."""
    rated = RatingsBatch(batch.rows, batch.movies, torch.zeros_like(batch.movies), batch.n_rows)
    return hidden_input(params, rated, params.visible_bias.numel())


def combine_implicit(members: list[RBMParams]) -> RBMParams:
    """Several implicit RBMs as one, for averaging their logits at serving time.

    Hidden units side by side (weights (M, R*F), hidden biases (R*F,)), visible biases
    averaged. A user's pre-activation in the combined model is the members' side by side,
    so the encoder and the server's cached states need nothing new; the mean of the
    members' visible logits is b + (1/R) * sigmoid(pre) @ W^T, which the scorer computes
    with ``implicit_scale`` = 1/R. One member is returned as it is.
    """
    if not members:
        raise ValueError("no implicit RBM to combine")
    if len(members) == 1:
        return members[0]
    return RBMParams(
        weights=torch.cat([p.weights for p in members], dim=1),
        visible_bias=torch.stack([p.visible_bias for p in members]).mean(0),
        hidden_bias=torch.cat([p.hidden_bias for p in members]),
    )


def log_sigmoid(x: Tensor) -> Tensor:
    """log(sigmoid(x)), written so that its ONNX export stays exact for very negative x.

    Exported, F.logsigmoid becomes Log(Sigmoid(x)), and ONNX Runtime's fast Sigmoid is off
    by ~1e-3 relative far in the tail; here the tail is x itself plus a tiny correction.
    """
    return x.clamp(max=0.0) - torch.log1p(torch.exp(-x.abs()))


def log_p_rated(params: RBMParams, hidden_pre: Tensor) -> Tensor:
    """log P(rated | h) for every movie, mean-field: (B, F) -> (B, M)."""
    hidden = torch.sigmoid(hidden_pre)
    return log_sigmoid(torch.addmm(params.visible_bias, hidden, params.weights.t()))


def implicit_cd_statistics(
    params: RBMParams, visible: Tensor, generator: torch.Generator | None
) -> CDStats:
    """CD-1 statistics for a dense batch of rated/unrated indicators (B, M), summed over users."""
    ph0 = torch.sigmoid(visible @ params.weights + params.hidden_bias)  # (B, F)
    h = torch.bernoulli(ph0, generator=generator)
    pv = torch.sigmoid(torch.addmm(params.visible_bias, h, params.weights.t()))  # (B, M)
    ph1 = torch.sigmoid(pv @ params.weights + params.hidden_bias)  # (B, F)
    return CDStats(
        weights=visible.t() @ ph0 - pv.t() @ ph1,
        visible_bias=(visible - pv).sum(0),
        hidden_bias=(ph0 - ph1).sum(0),
        recon_sq_error=float(((visible - pv) ** 2).sum()),
        n_entries=int(visible.numel()),
    )
