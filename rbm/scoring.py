"""The serving computation, shared by the server, the evaluation and the ONNX export.

Input is each user's hidden pre-activation (hidden biases plus the weight rows of the
movies it rated); output is a ranking score and the expected rating for every movie.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rbm.model import RBMParams

__all__ = ["Scorer"]


class Scorer(nn.Module):
    """hidden pre-activation (B, F) -> (score (B, M), expected rating (B, M))."""

    weights_t: Tensor
    visible_bias: Tensor
    levels: Tensor

    def __init__(self, params: RBMParams, levels: Tensor) -> None:
        super().__init__()
        n_levels = int(levels.numel())
        # Wᵀ stored contiguous: addmm on (F, K*M) beat F.linear on W ~2x for small batches.
        self.register_buffer("weights_t", params.weights.t().contiguous())  # (F, K*M)
        self.register_buffer("visible_bias", params.visible_bias.clone())  # (K*M,)
        self.register_buffer("levels", levels.to(params.weights).view(1, n_levels, 1))
        self.n_levels = n_levels

    def forward(self, hidden_pre: Tensor) -> tuple[Tensor, Tensor]:
        """Scores and expected ratings for every movie."""
        hidden = torch.sigmoid(hidden_pre)  # (B, F)
        logits = torch.addmm(self.visible_bias, hidden, self.weights_t)  # (B, K*M)
        probs = torch.softmax(logits.view(hidden.shape[0], self.n_levels, -1), dim=1)  # (B, K, M)
        expected = (probs * self.levels).sum(dim=1)  # (B, M)
        return expected, expected
