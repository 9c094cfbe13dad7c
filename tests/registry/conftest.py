"""Fixtures for the registry tests: a registry in tmp_path, a version factory, test hooks."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from registry import FileRegistry, VersionInfo, VersionMeta
from registry.cli import ModelHooks, run

WORKER = Path(__file__).with_name("registry_worker.py")

MakeVersion = Callable[..., VersionInfo]  # tests re-declare it: importing conftest is ambiguous


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "reg"


@pytest.fixture
def reg(root: Path) -> FileRegistry:
    return FileRegistry(root)


@pytest.fixture
def make_version(reg: FileRegistry) -> MakeVersion:
    """Register a version whose weights.bin holds `payload`, with the given metrics."""

    def make(
        rmse: float | None = 0.9,
        ndcg: float | None = 0.3,
        payload: bytes = b"good weights",
        model: str = "rbm",
        **extra_metrics: float,
    ) -> VersionInfo:
        metrics = dict(extra_metrics)
        if rmse is not None:
            metrics["val_rmse"] = rmse
        if ndcg is not None:
            metrics["val_ndcg@10"] = ndcg

        def write(directory: Path) -> None:
            (directory / "weights.bin").write_bytes(payload)
            (directory / "config.json").write_text('{"hidden": 64}')

        meta = VersionMeta(metrics=metrics, params={"hidden": 64, "lr": 0.01})
        return reg.register(model, write, meta)

    return make


def _smoke_test(version_dir: Path) -> None:
    # Stands in for rbm.checkpoint.smoke_test: "load" the weights and reject bad ones.
    if (version_dir / "weights.bin").read_bytes().startswith(b"BAD"):
        raise ValueError("prediction is NaN")


def _export_onnx(version_dir: Path, output: Path) -> None:
    if (version_dir / "weights.bin").read_bytes().startswith(b"BAD"):
        raise RuntimeError("unsupported operator")
    output.write_bytes(b"onnx:" + (version_dir / "weights.bin").read_bytes())


@pytest.fixture
def hooks() -> ModelHooks:
    return ModelHooks(smoke_test=_smoke_test, export_onnx=_export_onnx)


@pytest.fixture
def cli(
    root: Path, hooks: ModelHooks, capsys: pytest.CaptureFixture[str]
) -> Callable[..., tuple[int, str, str]]:
    """Run rbm-registry in-process against `root`; return (exit code, stdout, stderr)."""

    def invoke(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = run(["--registry", str(root), *argv], hooks)
        out, err = capsys.readouterr()
        return code, out, err

    return invoke


@pytest.fixture
def python() -> str:
    return sys.executable


@pytest.fixture
def tamper() -> Callable[[Path, bytes], None]:
    """Overwrite a published (read-only) file, as an attacker or a bad disk would."""

    def overwrite(path: Path, data: bytes) -> None:
        path.chmod(0o644)  # root ignores the mode, other users do not
        path.write_bytes(data)

    return overwrite
