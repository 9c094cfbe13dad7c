"""What every CLI error must look like, and rbm-registry run in-process against a test root."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from ratinglog.cli import run as run_ratings
from registry.cli import ModelHooks, run

__all__ = [
    "Cli",
    "Ran",
    "assert_one_line_error",
    "assert_usage_error",
    "ratings_in_process",
    "registry_cli",
]


@dataclass(frozen=True)
class Ran:
    """One command's exit code and output."""

    code: int
    out: str
    err: str


Cli = Callable[..., Ran]


def ratings_in_process(args: list[str], capsys: pytest.CaptureFixture[str]) -> Cli:
    """Run rbm-ratings in-process with ``args`` (Redis, prefix, registry) after the command's."""

    def invoke(*argv: str) -> Ran:
        capsys.readouterr()
        code = run_ratings([*argv, *args])
        stdout, stderr = capsys.readouterr()
        return Ran(code, stdout, stderr)

    return invoke


def registry_cli(
    root: Path, hooks: ModelHooks, capsys: pytest.CaptureFixture[str], out: Path | None = None
) -> Cli:
    """Run rbm-registry in-process against ``root``; ``{out}`` in an argument becomes ``out``."""

    def invoke(*argv: str) -> Ran:
        capsys.readouterr()
        args = [a.format(out=out) if out is not None else a for a in argv]
        code = run(["--registry", str(root), *args], hooks)
        stdout, stderr = capsys.readouterr()
        return Ran(code, stdout, stderr)

    return invoke


def assert_one_line_error(stderr: str, prog: str, *says: str) -> str:
    """``stderr`` is exactly one line ``PROG: error: ...`` that contains each of ``says``."""
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{stderr}"
    assert lines[0].startswith(f"{prog}: error: "), stderr
    assert lines[0] != f"{prog}: error: ", "the error says nothing"
    for text in says:
        assert text in lines[0], (text, lines[0])
    return lines[0]


def assert_usage_error(code: int | str | None, stderr: str, prog: str) -> None:
    """argparse's answer to a bad command line: exit 2, the usage, then one error line."""
    assert code == 2, (code, stderr)
    assert "Traceback" not in stderr, stderr
    assert stderr.startswith("usage: "), stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(prog) and ": error: " in last, stderr
