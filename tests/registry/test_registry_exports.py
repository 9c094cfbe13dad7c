"""The registry's public surface is pinned, and importing it never pulls in torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import registry
from registry import ErrorCode, RegistryError
from registry.cli import EXIT_CODES
from registry.hooks import default_hooks

PUBLIC = {
    "DEFAULT_MODEL",
    "ENV_VAR",
    "AliasChange",
    "ErrorCode",
    "FileRegistry",
    "GatePolicy",
    "RegistryError",
    "VerifyReport",
    "VersionInfo",
    "VersionMeta",
    "check_alias",
    "check_gate",
    "check_model_name",
    "promote",
    "resolve_root",
}


def test_public_names() -> None:
    assert set(registry.__all__) == PUBLIC
    for name in PUBLIC:
        assert getattr(registry, name) is not None


def test_every_error_code_has_a_distinct_exit_code() -> None:
    assert set(EXIT_CODES) == set(ErrorCode)
    assert len(set(EXIT_CODES.values())) == len(ErrorCode)
    assert not {0, 1, 2} & set(EXIT_CODES.values())


def test_import_does_not_load_torch_or_the_model() -> None:
    code = "import sys, registry, registry.cli; print(sorted({'torch', 'rbm'} & set(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]"


def test_missing_model_hooks_fail_cleanly(monkeypatch: pytest.MonkeyPatch) -> None:
    # A None entry in sys.modules makes the lazy import fail, as on a host without rbm.
    monkeypatch.setitem(sys.modules, "rbm.onnx_export", None)
    with pytest.raises(RegistryError, match="unavailable") as exc:
        default_hooks().export_onnx(Path("v"), Path("out.onnx"))
    assert exc.value.code is ErrorCode.FAILED_PRECONDITION
