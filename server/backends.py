"""Scoring backends: the same serving pass run by PyTorch or by ONNX Runtime.

Both take a batch of hidden pre-activations (B, width) and the users' item-RBM rows, rank
every movie, and then give final predicted ratings at the movies asked for, as torch
tensors on the engine's device.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from rbm.checkpoint import Checkpoint
from rbm.onnx_export import INPUT_NAME, ITEM_ROWS_NAME, ONNX_FILE
from rbm.scoring import scorer_for

__all__ = ["BACKENDS", "OnnxPass", "ScorePass", "TorchPass", "make_score_pass"]

BACKENDS = ("torch", "onnx")


class ScorePass(Protocol):
    """One version's scoring pass: rank every movie, then expected ratings at some of them."""

    def score(self, hidden_pre: Tensor, item_rows: Tensor) -> tuple[Tensor, Tensor]:
        """Ranking scores (B, M) and what ``expected_at`` needs from the same pass."""
        ...

    def expected_at(self, state: Tensor, item_rows: Tensor, movies: Tensor) -> Tensor:
        """Final predicted ratings (B, n) at ``movies`` (B, n) of the rows ``state`` holds."""
        ...


class TorchPass:
    """The PyTorch pass: ``rbm.scoring.Scorer``, the item-based blend only where served."""

    def __init__(self, ckpt: Checkpoint, device: torch.device) -> None:
        self.scorer = scorer_for(ckpt).to(device)

    def score(self, hidden_pre: Tensor, item_rows: Tensor) -> tuple[Tensor, Tensor]:
        """Scores and the rating-level logits (B, K, M)."""
        with torch.inference_mode():
            return self.scorer.score_logits(hidden_pre)

    def expected_at(self, state: Tensor, item_rows: Tensor, movies: Tensor) -> Tensor:
        """The user-based expected ratings at ``movies``, blended with the item-based RBM."""
        with torch.inference_mode():
            expected = self.scorer.expected_at(state, movies)
            return self.scorer.blend_at(expected, item_rows, movies)


class OnnxPass:
    """The registry's ONNX export on ONNX Runtime: it already blends every movie."""

    def __init__(self, version_dir: Path, device: torch.device) -> None:
        import onnxruntime as ort  # only the onnx backend needs it

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # like torch: the event loop needs the other core
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(
            str(version_dir / ONNX_FILE), options, providers=providers
        )
        self.declared = {i.name for i in self.session.get_inputs()}  # the export drops unused
        self.device = device

    def score(self, hidden_pre: Tensor, item_rows: Tensor) -> tuple[Tensor, Tensor]:
        """Scores and the final expected ratings, each (B, M)."""
        feed = {INPUT_NAME: hidden_pre.detach().to("cpu", torch.float32).numpy()}
        if ITEM_ROWS_NAME in self.declared:
            feed[ITEM_ROWS_NAME] = item_rows.detach().to("cpu", torch.int64).numpy()
        scores, expected = self.session.run(None, feed)
        return (
            torch.from_numpy(np.asarray(scores)).to(self.device),
            torch.from_numpy(np.asarray(expected)).to(self.device),
        )

    def expected_at(self, state: Tensor, item_rows: Tensor, movies: Tensor) -> Tensor:
        """The exported pass's expected ratings at ``movies``."""
        return torch.gather(state, 1, movies)


def make_score_pass(
    backend: str, ckpt: Checkpoint, version_dir: Path, device: torch.device
) -> ScorePass:
    """The scoring pass of ``backend`` ("torch" or "onnx") for one version."""
    if backend == "torch":
        return TorchPass(ckpt, device)
    if backend == "onnx":
        return OnnxPass(version_dir, device)
    raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
