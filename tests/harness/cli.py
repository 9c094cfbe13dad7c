"""The project's console scripts as tests run them, and the MovieLens copy they read."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


def movielens_dir() -> Path:
    """The folder that holds ml-100k/ (and ml-latest-small/)."""
    for candidate in (os.environ.get("RBMREC_DATA"), ROOT.parent / "shared" / "movielens"):
        if candidate and (Path(candidate) / "ml-100k" / "u.data").is_file():
            return Path(candidate)
    raise RuntimeError(
        "MovieLens ml-100k not found: set $RBMREC_DATA to a folder holding ml-100k/ "
        "(the shared copy lives in ../shared/movielens)"
    )


@dataclass(frozen=True)
class TrainedModel:
    """A registry holding one model trained on ml-100k u1.base, promoted to production."""

    registry: Path
    report: dict[str, object]


def run_cli(
    name: str, *args: str, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run one of the project's console scripts and capture its output."""
    proc = subprocess.run(
        [str(BIN / name), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(env or {})},
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{name} {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def train_args(
    registry: Path | None,
    *extra: str,
    dataset: str = "ml-100k",
    split: str = "u1",
    epochs: int = 20,
    promote: bool = True,
    data_dir: Path | None = None,
) -> list[str]:
    """rbm-train's arguments for one quiet --json run; ``registry=None``: --no-register."""
    args = ["--dataset", dataset, "--data-dir", str(data_dir or movielens_dir())]
    args += ["--split", split, "--epochs", str(epochs), "--json", "--quiet"]
    if registry is None:
        args.append("--no-register")
    else:
        args += ["--registry", str(registry)]
        if promote:
            args.append("--promote")
    return [*args, *extra]


def train_model(
    registry: Path | None,
    *extra: str,
    dataset: str = "ml-100k",
    split: str = "u1",
    epochs: int = 20,
    promote: bool = True,
    data_dir: Path | None = None,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Train through the real rbm-train, as an operator would; return its --json report.

    ``extra`` are more rbm-train flags (``--seed``, ``--implicit-epochs``, ...). Torch gets
    one thread unless ``env`` says otherwise: on the 2 shared cores tests run on, two
    threads per process make training many times slower (see docs/training.md).
    """
    args = train_args(
        registry,
        *extra,
        dataset=dataset,
        split=split,
        epochs=epochs,
        promote=promote,
        data_dir=data_dir,
    )
    report = json.loads(
        run_cli("rbm-train", *args, env={"OMP_NUM_THREADS": "1", **(env or {})}).stdout
    )
    assert isinstance(report, dict), report
    return report
