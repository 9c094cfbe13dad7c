"""Scoring backends: the same serving pass run by PyTorch or by ONNX Runtime.

Both take a batch of hidden pre-activations (B, width) and the users' item-RBM rows and
return (score, expected rating), each (B, M), as torch tensors on the engine's device.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from rbm.checkpoint import Checkpoint
from rbm.onnx_export import INPUT_NAME, ITEM_ROWS_NAME, ONNX_FILE
from rbm.scoring import scorer_for

__all__ = ["BACKENDS", "ScoreFn", "make_score_fn"]

ScoreFn = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]  # (hidden_pre, item_rows)
# (expected at some movies (B, n), item_rows (B,), movies (B, n)) -> blended (B, n)
BlendFn = Callable[[Tensor, Tensor, Tensor], Tensor]
BACKENDS = ("torch", "onnx")


def _torch(ckpt: Checkpoint, device: torch.device) -> tuple[ScoreFn, BlendFn | None]:
    scorer = scorer_for(ckpt).to(device)

    def score(hidden_pre: Tensor, item_rows: Tensor) -> tuple[Tensor, Tensor]:
        with torch.inference_mode():
            return scorer.rank(hidden_pre)  # the item blend follows, at the movies served

    def blend(expected: Tensor, item_rows: Tensor, movies: Tensor) -> Tensor:
        with torch.inference_mode():
            return scorer.blend_at(expected, item_rows, movies)

    return score, (blend if scorer.blend > 0.0 else None)


def _onnx(version_dir: Path, device: torch.device) -> tuple[ScoreFn, BlendFn | None]:
    import onnxruntime as ort  # only the onnx backend needs it

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # like torch: the event loop needs the other core
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    session = ort.InferenceSession(str(version_dir / ONNX_FILE), options, providers=providers)

    declared = {i.name for i in session.get_inputs()}  # the export drops an unused input

    def score(hidden_pre: Tensor, item_rows: Tensor) -> tuple[Tensor, Tensor]:
        feed = {INPUT_NAME: hidden_pre.detach().to("cpu", torch.float32).numpy()}
        if ITEM_ROWS_NAME in declared:
            feed[ITEM_ROWS_NAME] = item_rows.detach().to("cpu", torch.int64).numpy()
        scores, expected = session.run(None, feed)
        return (
            torch.from_numpy(np.asarray(scores)).to(device),
            torch.from_numpy(np.asarray(expected)).to(device),
        )

    return score, None  # the exported pass already blends every movie


def make_score_fn(
    backend: str, ckpt: Checkpoint, version_dir: Path, device: torch.device
) -> tuple[ScoreFn, BlendFn | None]:
    """The scoring pass of ``backend`` ("torch" or "onnx") for one version.

    With a blend function, the pass's expected ratings are the user-based RBM's and the
    caller blends the item-based RBM in at the movies it serves; without one, they are
    final.
    """
    if backend == "torch":
        return _torch(ckpt, device)
    if backend == "onnx":
        return _onnx(version_dir, device)
    raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
