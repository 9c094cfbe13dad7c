"""The training loop on real data: repeatable with a seed, better than chance."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from rbm.model import RBMConfig
from trainer.data import holdout_split, load_dataset
from trainer.indexing import Indexer
from trainer.train import TrainConfig, train


def _train_twice(movielens: Path, seed_b: int) -> tuple[torch.Tensor, torch.Tensor]:
    ds = load_dataset("ml-100k", movielens, "u1")
    users = np.unique(ds.train.users)[:200]  # a slice keeps this fast
    part = ds.train.take(np.isin(ds.train.users, users))
    fit, val = holdout_split(part, 0.05, seed=0)
    ix = Indexer(ds)
    config = RBMConfig(ix.n_movies, 5, 20)
    levels = torch.tensor(ds.levels)
    out = []
    for seed in (0, seed_b):
        cfg = TrainConfig(n_hidden=20, epochs=3, seed=seed)
        result = train(ix.index(fit, users), ix.index(val, users), config, levels, cfg)
        out.append(result.params.weights)
    return out[0], out[1]


def test_a_fixed_seed_gives_identical_weights(movielens: Path) -> None:
    a, b = _train_twice(movielens, seed_b=0)
    assert torch.equal(a, b)


def test_another_seed_gives_other_weights(movielens: Path) -> None:
    a, b = _train_twice(movielens, seed_b=1)
    assert not torch.equal(a, b)
