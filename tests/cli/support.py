"""What every CLI error must look like: one line on stderr, never a traceback."""

from __future__ import annotations

__all__ = ["assert_one_line_error", "assert_usage_error"]


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
