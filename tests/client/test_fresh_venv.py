"""The acceptance test: ``pip install ./client`` alone in a fresh venv, then every method.

The venv gets a copy of client/ and proto/ as a fresh clone holds them (no generated stubs,
so the build hook makes them), installed with pip's own configuration (the local index).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.client.conftest import TOKEN
from tests.harness.cli import ROOT
from tests.harness.server import RunningServer

HEAVY = ("torch", "numpy", "redis", "onnx", "onnxruntime", "rbmrec", "server")
ALLOWED = {"rbmrec-client", "grpcio", "protobuf", "typing-extensions", "pip", "setuptools"}


def _clone(into: Path) -> Path:
    """client/ and proto/ without anything generated or built."""
    generated = shutil.ignore_patterns(
        "recommender_pb2.py*", ".gen-*", "build", "*.egg-info", "__pycache__"
    )
    shutil.copytree(ROOT / "client", into / "client", ignore=generated)
    shutil.copytree(ROOT / "proto", into / "proto")
    assert not list((into / "client").rglob("recommender_pb2*"))
    return into / "client"


def _run(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    # Nothing of this checkout's environment: no PYTHONPATH, no VIRTUAL_ENV.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    proc = subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=600, cwd=cwd, env=env
    )
    assert proc.returncode == 0, f"{args} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def test_the_client_installs_alone_and_calls_every_method(
    served: RunningServer, tmp_path: Path
) -> None:
    client_dir = _clone(tmp_path / "clone")
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    _run(python, "-m", "pip", "install", "-q", "--no-input", client_dir, cwd=tmp_path)

    listed = _run(python, "-m", "pip", "list", "--format", "json", cwd=tmp_path).stdout
    installed = {d["name"].lower().replace("_", "-") for d in json.loads(listed)}
    assert "rbmrec-client" in installed and installed <= ALLOWED, installed

    probe = "import importlib.util, sys; print(importlib.util.find_spec(sys.argv[1]) is None)"
    for module in HEAVY:
        absent = _run(python, "-c", probe, module, cwd=tmp_path).stdout.strip()
        assert absent == "True", f"{module} is importable in the client's venv"
    torch = subprocess.run(
        [str(python), "-c", "import torch"], capture_output=True, text=True, cwd=tmp_path
    )
    assert torch.returncode != 0 and "No module named 'torch'" in torch.stderr

    script = Path(__file__).with_name("every_method.py")
    report = json.loads(_run(python, script, served.target, TOKEN, cwd=tmp_path).stdout)
    failed = {method: why for method, why in report.items() if why != "ok"}
    assert not failed, failed
    assert len(report) == 13  # six methods, sync and async, and one error
