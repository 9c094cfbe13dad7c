"""Rating predictions for indexed (user, movie) pairs, used by validation and evaluation."""

from __future__ import annotations

import numpy as np
import torch

from rbm.model import (
    RatingInference,
    RBMConfig,
    RBMParams,
    entry_level_probabilities,
    hidden_input,
    hidden_probabilities,
)
from trainer.indexing import IndexedRatings

__all__ = ["hidden_states", "predict_indexed"]


def hidden_states(
    params: RBMParams, config: RBMConfig, context: IndexedRatings, chunk: int = 4096
) -> torch.Tensor:
    """P(h | the user's ratings in ``context``) for every CSR row: (U, F)."""
    device = params.weights.device
    out = []
    for start in range(0, len(context.user_ids), chunk):
        rows = np.arange(start, min(start + chunk, len(context.user_ids)))
        batch = context.batch(rows).to(device)
        out.append(hidden_probabilities(hidden_input(params, batch, config.n_movies)))
    return torch.cat(out) if out else torch.empty(0, config.n_hidden, device=device)


def predict_indexed(
    params: RBMParams,
    config: RBMConfig,
    context: IndexedRatings,
    targets: IndexedRatings,
    levels: torch.Tensor,
    inference: RatingInference = "mean_field",
    chunk: int = 65536,
) -> torch.Tensor:
    """Expected rating of each entry of ``targets`` (CSR order), given ``context``'s ratings.

    Both CSRs must share the same user rows; ``inference`` is as the server's (rbm.model).
    """
    device = params.weights.device
    hidden = hidden_states(params, config, context)
    rows_all = np.repeat(np.arange(len(targets.user_ids)), np.diff(targets.indptr))
    preds = []
    for start in range(0, len(rows_all), chunk):
        rows = torch.from_numpy(rows_all[start : start + chunk]).to(device)
        movies = torch.from_numpy(targets.movies[start : start + chunk]).to(device)
        probs = entry_level_probabilities(params, hidden, rows, movies, config, inference)
        preds.append(probs @ levels.to(device))
    return torch.cat(preds) if preds else torch.empty(0, device=device)
