"""The serving computation, shared by the server, the evaluation and the ONNX export.

Input is each user's hidden pre-activation (hidden biases plus the weight rows of the
movies it rated); output is a ranking score and the expected rating for every movie.

Three ranking scores exist; the trainer picks one on its validation slice:

- ``expected_rating``: E[rating | h]. Rating prediction alone ranks rarely rated movies
  first, because the model is confidently positive about movies few people saw.
- ``rated``: log P(rated), the probability that the user rates the movie at all.
- ``liked_and_rated``: log P(rating >= 4 | h) + log P(rated), the log-probability that
  the user both watches and likes the movie.

P(rated) comes from the implicit-feedback RBM (``rbm.implicit``) when the checkpoint has
one, whose hidden pre-activation then follows the softmax RBM's in the input; without it,
from each movie's share of training ratings (the same for every user).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rbm.checkpoint import Checkpoint
from rbm.implicit import log_sigmoid
from rbm.model import LIKED_AT, RANKINGS, Ranking, RBMParams

__all__ = ["LIKED_AT", "RANKINGS", "Ranking", "Scorer", "scorer_for"]


class Scorer(nn.Module):
    """hidden pre-activation (B, F) -> (score (B, M), expected rating (B, M))."""

    weights_t: Tensor
    visible_bias: Tensor
    levels: Tensor
    log_rated: Tensor
    implicit_weights: Tensor
    implicit_visible_bias: Tensor

    def __init__(
        self,
        params: RBMParams,
        levels: Tensor,
        ranking: Ranking = "expected_rating",
        popularity: Tensor | None = None,
        implicit: RBMParams | None = None,
    ) -> None:
        super().__init__()
        if ranking not in RANKINGS:
            raise ValueError(f"unknown ranking {ranking!r}; choose one of {RANKINGS}")
        n_levels = int(levels.numel())
        n_movies = params.visible_bias.numel() // n_levels
        # Wᵀ stored contiguous: addmm on (F, K*M) beat F.linear on W ~2x for small batches.
        self.register_buffer("weights_t", params.weights.t().contiguous())  # (F, K*M)
        self.register_buffer("visible_bias", params.visible_bias.clone())  # (K*M,)
        self.register_buffer("levels", levels.to(params.weights).view(1, n_levels, 1))
        counts = torch.zeros(n_movies) if popularity is None else popularity.float()
        # +1 smoothing: a movie nobody rated in training is unlikely, not impossible.
        log_rated = torch.log((counts + 1) / (counts.sum() + n_movies))
        self.register_buffer("log_rated", log_rated.to(params.weights))  # (M,)
        self.n_levels = n_levels
        self.n_hidden = params.hidden_bias.numel()
        self.has_implicit = implicit is not None
        if implicit is not None:  # buffers, so that .to(device) and the ONNX export see them
            self.register_buffer("implicit_weights", implicit.weights.to(params.weights))
            self.register_buffer("implicit_visible_bias", implicit.visible_bias.to(params.weights))
        self.ranking = ranking
        self.liked_from = int((levels < LIKED_AT).sum())  # first level counted as liked

    def forward(self, hidden_pre: Tensor) -> tuple[Tensor, Tensor]:
        """Scores and expected ratings for every movie."""
        hidden = torch.sigmoid(hidden_pre[:, : self.n_hidden])  # (B, F)
        logits = torch.addmm(self.visible_bias, hidden, self.weights_t)  # (B, K*M)
        probs = torch.softmax(logits.view(hidden.shape[0], self.n_levels, -1), dim=1)  # (B, K, M)
        expected = (probs * self.levels).sum(dim=1)  # (B, M)
        if self.ranking == "expected_rating":
            return expected, expected
        log_rated = self._log_rated(hidden_pre[:, self.n_hidden :])  # (B, M) or (M,)
        if self.ranking == "rated":
            return log_rated.expand_as(expected), expected
        # In log space throughout: log of a sum of small probabilities loses digits.
        levels_view = logits.view(hidden.shape[0], self.n_levels, -1)  # (B, K, M)
        log_liked = torch.logsumexp(levels_view[:, self.liked_from :, :], dim=1) - torch.logsumexp(
            levels_view, dim=1
        )  # (B, M)
        return log_liked + log_rated, expected

    def _log_rated(self, implicit_pre: Tensor) -> Tensor:
        if not self.has_implicit:
            return self.log_rated
        p_h = torch.sigmoid(implicit_pre)  # (B, F')
        logits = torch.addmm(self.implicit_visible_bias, p_h, self.implicit_weights.t())
        return log_sigmoid(logits)  # (B, M)


def scorer_for(ckpt: Checkpoint) -> Scorer:
    """The serving pass of a checkpoint, with the ranking score it was trained to use."""
    levels = torch.tensor(ckpt.levels, dtype=torch.float32)
    return Scorer(ckpt.params, levels, ckpt.ranking, ckpt.popularity, ckpt.implicit).eval()
