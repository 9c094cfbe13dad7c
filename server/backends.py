"""Scoring backends: the same serving pass run by PyTorch or by ONNX Runtime.

Both take a batch of hidden pre-activations (B, width) and the users' item-RBM rows and
return the same thing: a ``ScoredBatch`` with every movie's ranking score and a way to get
final predicted ratings at the movies asked for, as torch tensors on the engine's device.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from rbm.checkpoint import Checkpoint
from rbm.onnx_export import INPUT_NAME, ITEM_ROWS_NAME, ONNX_FILE
from rbm.scoring import Scorer

__all__ = [
    "BACKENDS",
    "OnnxPass",
    "ScorePass",
    "ScoredBatch",
    "TorchPass",
    "make_score_pass",
    "onnx_providers",
    "torch_side",
]

BACKENDS = ("torch", "onnx")


class ScoredBatch(Protocol):
    """One pass over a batch of users: scores now, predicted ratings on demand."""

    @property
    def scores(self) -> Tensor:
        """Ranking scores of every movie: (B, M)."""
        ...

    def predicted_at(self, rows: Tensor, movies: Tensor) -> Tensor:
        """Final predicted ratings (R, n) of batch rows ``rows`` (R,) at ``movies`` (R, n)."""
        ...


class ScorePass(Protocol):
    """One version's scoring pass."""

    @property
    def where(self) -> str:
        """Where the pass really runs, e.g. "cuda:0" or "cpu (onnxruntime ...)"."""
        ...

    def score(self, hidden_pre: Tensor, item_rows: Tensor) -> ScoredBatch:
        """Score every movie for a batch of users."""
        ...


@dataclass(frozen=True)
class _LogitsScored:
    """The torch pass keeps the rating-level logits; ratings are computed where asked."""

    scorer: Scorer
    scores: Tensor  # (B, M)
    logits: Tensor  # (B, K, M)
    hidden_pre: Tensor  # (B, width)
    item_rows: Tensor  # (B,)

    def predicted_at(self, rows: Tensor, movies: Tensor) -> Tensor:
        """The blended expected ratings at ``movies``: a (R, K, n) softmax, not (R, K, M)."""
        with torch.inference_mode():
            return self.scorer.predict_at(
                self.logits[rows], self.hidden_pre[rows], self.item_rows[rows], movies
            )


@dataclass(frozen=True)
class _DenseScored:
    """The exported graph already predicts every movie; ratings are picked from it."""

    scores: Tensor  # (B, M)
    predicted: Tensor  # (B, M)

    def predicted_at(self, rows: Tensor, movies: Tensor) -> Tensor:
        """Gather the exported predictions at ``movies``."""
        return torch.gather(self.predicted[rows], 1, movies)


class TorchPass:
    """The PyTorch pass: the checkpoint's ``rbm.scoring.Scorer`` on the engine's device."""

    def __init__(self, ckpt: Checkpoint, device: torch.device) -> None:
        self.scorer = ckpt.scorer(device)
        self.where = str(device)

    def score(self, hidden_pre: Tensor, item_rows: Tensor) -> ScoredBatch:
        """Scores of every movie, and the logits that ratings are computed from."""
        with torch.inference_mode():
            scores, logits = self.scorer.score(hidden_pre, item_rows)
        return _LogitsScored(self.scorer, scores, logits, hidden_pre, item_rows)


def onnx_providers(device: torch.device) -> list[str]:
    """ONNX Runtime providers for ``device``; ValueError when this install has none for it."""
    import onnxruntime as ort  # only the onnx backend needs it

    if device.type == "cpu":
        return ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    raise ValueError(
        f"--backend onnx cannot run on {device.type}: this onnxruntime has only "
        f"{', '.join(ort.get_available_providers())} (install onnxruntime-gpu, or serve "
        "--backend torch)"
    )


class OnnxPass:
    """The registry's ONNX export of the same ``Scorer`` on ONNX Runtime.

    Its inputs and outputs are host tensors (the engine around it runs on the CPU): on
    CUDA, ONNX Runtime's provider copies them itself.
    """

    def __init__(self, version_dir: Path, device: torch.device) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # like torch: the event loop needs the other core
        self.session = ort.InferenceSession(
            str(version_dir / ONNX_FILE), options, providers=onnx_providers(device)
        )
        self.declared = {i.name for i in self.session.get_inputs()}  # the export drops unused
        provider = self.session.get_providers()[0]
        self.where = f"{'cuda' if provider.startswith('CUDA') else 'cpu'} (onnxruntime {provider})"

    def score(self, hidden_pre: Tensor, item_rows: Tensor) -> ScoredBatch:
        """Scores and predicted ratings of every movie, from the exported graph."""
        feed = {INPUT_NAME: hidden_pre.detach().to(torch.float32).numpy()}
        if ITEM_ROWS_NAME in self.declared:
            feed[ITEM_ROWS_NAME] = item_rows.detach().numpy()
        scores, predicted = self.session.run(None, feed)
        return _DenseScored(
            torch.from_numpy(np.asarray(scores)), torch.from_numpy(np.asarray(predicted))
        )


def torch_side(backend: str, device: torch.device) -> torch.device:
    """Where the engine's own tensors live: the device, except around ONNX (the host)."""
    return torch.device("cpu") if backend == "onnx" else device


def make_score_pass(
    backend: str, ckpt: Checkpoint, version_dir: Path, device: torch.device
) -> ScorePass:
    """The scoring pass of ``backend`` ("torch" or "onnx") for one version."""
    if backend == "torch":
        return TorchPass(ckpt, device)
    if backend == "onnx":
        return OnnxPass(version_dir, device)
    raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
