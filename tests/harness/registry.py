"""Registries of a test's own: a copy of the session's trained one, versions registered again."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from rbm.checkpoint import load_checkpoint, save_checkpoint
from rbm.onnx_export import ONNX_FILE
from registry.records import VersionMeta
from registry.store import FileRegistry
from tests.harness.cli import TrainedModel


def copy_registry(trained: TrainedModel, into: Path) -> FileRegistry:
    """A copy of the session's registry at ``into/registry``: version 1, in production."""
    root = into / "registry"
    shutil.copytree(trained.registry, root)
    return FileRegistry(root)


def register_copy(
    registry: FileRegistry, corrupt: str | None = None, rating_log_until: str | None = None
) -> int:
    """Register version 1's model again as a new version; return its number.

    ``corrupt``: "shapes" (a consistent manifest over a model with wrong shapes) or
    "truncated" (half the weight file), broken in a way checksums cannot see.
    ``rating_log_until``: the rating-log entry the copy claims to have absorbed.
    """
    if corrupt not in (None, "shapes", "truncated"):
        raise ValueError(f"unknown corruption {corrupt!r}")
    first = registry.get_version("rbm", 1)
    ckpt = load_checkpoint(first.path)

    def write(d: Path) -> None:
        save_checkpoint(ckpt, d)
        shutil.copy(first.path / ONNX_FILE, d / ONNX_FILE)
        if corrupt == "shapes":
            meta = json.loads((d / "model.json").read_text())
            meta["config"]["n_hidden"] += 1
            (d / "model.json").write_text(json.dumps(meta))
        elif corrupt == "truncated":
            data = (d / "model.safetensors").read_bytes()
            (d / "model.safetensors").write_bytes(data[: len(data) // 2])

    meta = VersionMeta(
        metrics=first.meta.metrics,
        params=first.meta.params,
        parent_version=1,
        rating_log_until=rating_log_until,
    )
    return registry.register("rbm", write, meta).version
