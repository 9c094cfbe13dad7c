"""bench/gpu_check.sh and bench/gpu_check.py, cheaply: their flags and the synthetic model.

The full check takes minutes (``bench/gpu_check.sh --device cpu --quick`` on a CPU), so
it is not run here; these pin its command line and the pieces it builds models from.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from rbm.checkpoint import save_checkpoint, smoke_test
from tests.harness.cli import ROOT
from trainer.train import TrainConfig

SCRIPT = ROOT / "bench" / "gpu_check.sh"
FLAGS = ("--device", "--quick", "--out")


@pytest.fixture(scope="module")
def gpu_check() -> ModuleType:
    """bench/gpu_check.py as a module (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=ROOT)


def test_shell_help_names_every_flag() -> None:
    shown = _run(str(SCRIPT), "--help")
    assert shown.returncode == 0, shown.stderr
    assert all(flag in shown.stdout for flag in FLAGS)
    assert "cuda|cpu" in shown.stdout


@pytest.mark.parametrize("args", [("--device", "tpu"), ("--bogus",), ("--out",)])
def test_shell_refuses_bad_arguments(args: tuple[str, ...]) -> None:
    refused = _run(str(SCRIPT), *args)
    assert refused.returncode == 2
    assert "usage" in refused.stderr or "--device must be" in refused.stderr


def test_python_help_names_every_flag() -> None:
    shown = _run(sys.executable, "bench/gpu_check.py", "--help")
    assert shown.returncode == 0, shown.stderr
    assert all(flag in shown.stdout for flag in FLAGS)


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA this would run the check")
def test_python_refuses_cuda_without_a_device(tmp_path: Path) -> None:
    refused = _run(sys.executable, "bench/gpu_check.py", "--device", "cuda", "--out", str(tmp_path))
    assert refused.returncode == 2 and "no CUDA device" in refused.stderr
    assert not (tmp_path / "gpu_check.json").exists()


def test_synthetic_model_has_the_trainer_shapes_and_serves(
    gpu_check: ModuleType, tmp_path: Path
) -> None:
    data = gpu_check.synthetic_ratings(users=40, movies=60, ratings=500)
    assert len(data.movies) == 500 and int(data.indptr[-1]) == 500
    assert np.all(np.diff(data.indptr) >= 0) and int(data.levels.max()) < 10
    ckpt = gpu_check.synthetic_checkpoint(data, 60, seed=1)
    cfg = TrainConfig()
    assert (ckpt.config.n_movies, ckpt.config.n_levels, ckpt.config.n_hidden) == (
        60,
        10,
        cfg.n_hidden,
    )
    assert ckpt.levels == tuple(x / 2 for x in range(1, 11))
    implicit_width = cfg.n_hidden_implicit * cfg.implicit_models
    assert ckpt.implicit is not None and ckpt.implicit.hidden_bias.numel() == implicit_width
    assert ckpt.implicit_models == cfg.implicit_models
    assert ckpt.item is not None and tuple(ckpt.item.movie_hidden.shape) == (60, cfg.n_hidden_item)
    save_checkpoint(ckpt, tmp_path / "model")
    smoke_test(tmp_path / "model")


def test_one_epoch_of_each_rbm(gpu_check: ModuleType) -> None:
    data = gpu_check.synthetic_ratings(users=45, movies=60, ratings=600)
    epochs = gpu_check.time_epochs(data, 60, "cpu", budget_s=30.0)
    assert [e.rbm for e in epochs] == ["user RBM", "implicit RBM", "item RBM"]
    assert [e.batches for e in epochs] == [3, 3, 3]  # 20 cases a minibatch
    assert all(e.measured_batches == e.batches and e.seconds > 0 for e in epochs)
