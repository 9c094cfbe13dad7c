"""Export the serving computation (``rbm.scoring.Scorer``) to ONNX with a dynamic batch dimension.

The graph takes a batch of hidden pre-activations (and the users' rows in the item-based
RBM, -1 for users it does not know) and returns each movie's ranking score and expected
rating, exactly the pass the server runs, so ONNX Runtime can serve it.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

from rbm.checkpoint import Checkpoint, load_checkpoint

__all__ = [
    "INPUT_NAME",
    "ITEM_ROWS_NAME",
    "ONNX_FILE",
    "OUTPUT_NAMES",
    "export_checkpoint",
    "export_onnx",
]

ONNX_FILE = "model.onnx"
INPUT_NAME = "hidden_pre"
ITEM_ROWS_NAME = "item_rows"
OUTPUT_NAMES = ("score", "expected_rating")


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    # The exporter logs about optional packages (torchvision) and warns about its own
    # internals; neither concerns us, and warnings are errors in the test suite.
    noisy = logging.getLogger("torch.onnx")
    level = noisy.level
    noisy.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        noisy.setLevel(level)


def export_checkpoint(ckpt: Checkpoint, output: Path) -> None:
    """Write the ONNX model of ``ckpt``'s serving pass to ``output``."""
    import onnx  # imported here: only export needs it

    scorer = ckpt.scorer("cpu")
    example = (torch.zeros(2, ckpt.hidden_width), torch.zeros(2, dtype=torch.int64))
    batch = torch.export.Dim("batch")
    with _quiet_exporter():
        program = torch.onnx.export(
            scorer,
            example,
            input_names=[INPUT_NAME, ITEM_ROWS_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_shapes=({0: batch}, {0: batch}),
            dynamo=True,
            verbose=False,
        )
    if program is None:
        raise RuntimeError("torch.onnx.export returned no program")
    program.save(str(output))
    onnx.checker.check_model(onnx.load(str(output)), full_check=True)


def export_onnx(version_dir: Path, output: Path) -> None:
    """Export the checkpoint in ``version_dir`` to ``output`` (used by ``rbm-registry``)."""
    export_checkpoint(load_checkpoint(version_dir), output)
