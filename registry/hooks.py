"""Model-specific steps the CLI runs (load-and-predict, ONNX export), injected as callables.

The registry must not import torch or the model package at import time, so the
default hooks import `rbm` lazily, on first use.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from registry.errors import ErrorCode, RegistryError

__all__ = ["ModelHooks", "default_hooks"]


@dataclass(frozen=True)
class ModelHooks:
    """Model-specific steps, injected so the registry never imports torch itself."""

    smoke_test: Callable[[Path], None]  # load the version and predict; raise on failure
    export_onnx: Callable[[Path, Path], None]  # (version_dir, output_file)


def _lazy(module: str, name: str) -> Callable[..., None]:
    # Imported on first use: torch is slow to import and absent on some hosts.
    try:
        return cast(Callable[..., None], getattr(importlib.import_module(module), name))
    except (ImportError, AttributeError) as exc:
        raise RegistryError(
            f"model hook {module}.{name} is unavailable: {exc}", ErrorCode.FAILED_PRECONDITION
        ) from exc


def default_hooks() -> ModelHooks:
    """Return hooks that call rbm.checkpoint.smoke_test and rbm.onnx_export.export_onnx."""
    return ModelHooks(
        smoke_test=lambda vdir: _lazy("rbm.checkpoint", "smoke_test")(vdir),
        export_onnx=lambda vdir, out: _lazy("rbm.onnx_export", "export_onnx")(vdir, out),
    )
