"""Hidden pre-activations from ratings: the one place that turns ratings into a user state.

A user's state is the softmax RBM's hidden pre-activation (hidden biases plus one weight
row per rating), then, with an implicit RBM, that model's (biases plus one row per rated
movie). Both are sums over ratings, so one new rating moves the state by one row: the
server caches states and updates them in O(F) for that reason.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from rbm.implicit import implicit_hidden_input
from rbm.model import RatingsBatch, RBMParams, hidden_input, visible_units

__all__ = ["HiddenEncoder"]


@dataclass(frozen=True)
class HiddenEncoder:
    """Ratings -> hidden pre-activations (B, width), on the device its tensors live on."""

    params: RBMParams
    implicit: RBMParams | None
    n_movies: int

    @property
    def width(self) -> int:
        """F, plus F' with an implicit RBM."""
        extra = 0 if self.implicit is None else self.implicit.hidden_bias.numel()
        return self.params.hidden_bias.numel() + extra

    @property
    def device(self) -> torch.device:
        """Where the encoder's tensors, and so its inputs, live."""
        return self.params.weights.device

    def encode(self, batch: RatingsBatch) -> Tensor:
        """The users' pre-activations, both models side by side: (B, width)."""
        pre = hidden_input(self.params, batch, self.n_movies)
        if self.implicit is None:
            return pre
        return torch.cat([pre, implicit_hidden_input(self.implicit, batch)], dim=1)

    def encode_one(self, movies: Tensor, levels: Tensor) -> Tensor:
        """One user's pre-activation from its (movie, level) index tensors: (width,).

        The same sums as ``encode``, as one gather and one reduction: this runs per request
        on a cache miss, where a batch's index_add costs several times more.
        """
        movies = movies.to(self.device)
        units = visible_units(movies, levels.to(self.device), self.n_movies)
        pre = self.params.hidden_bias + self.params.weights[units].sum(0)
        if self.implicit is None:
            return pre
        return torch.cat([pre, self.implicit.hidden_bias + self.implicit.weights[movies].sum(0)])

    def unit_row(self, movie: int, level: int) -> Tensor:
        """What a rating of ``movie`` at ``level`` adds to the pre-activation: (width,)."""
        row = self.params.weights[visible_units(movie, level, self.n_movies)]
        if self.implicit is None:
            return row
        # Changing a rating subtracts the old unit's row and adds the new one: the implicit
        # part (the movie was rated either way) cancels out, as it should.
        return torch.cat([row, self.implicit.weights[movie]])
