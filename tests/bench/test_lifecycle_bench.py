"""bench/lifecycle.py, cheaply: its command line (the bench itself takes minutes and is not run)."""

from __future__ import annotations

import subprocess
import sys

from tests.harness.cli import ROOT

SCRIPT = ROOT / "bench" / "lifecycle.py"
FLAGS = ("--lengths", "--repeats", "--quick", "--catch-up-timeout", "--out")


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60, cwd=ROOT
    )


def test_help_names_every_flag() -> None:
    shown = _run("--help")
    assert shown.returncode == 0, shown.stderr
    assert all(flag in shown.stdout for flag in FLAGS)
    assert "rating_log_until" in shown.stdout  # it says how the compacted version is made


def test_a_bad_flag_is_a_usage_error() -> None:
    refused = _run("--bogus")
    assert refused.returncode == 2
    assert "usage" in refused.stderr
