"""``rbm-healthcheck`` against real servers, as a container's HEALTHCHECK runs it."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.harness.cli import BIN
from tests.harness.server import RunningServer


def healthcheck(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the installed console script."""
    return subprocess.run(
        [str(BIN / "rbm-healthcheck"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def one_line(text: str) -> str:
    lines = text.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {text!r}"
    return lines[0]


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port that is bound, so no one else takes it, but refuses connections."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port that accepts TCP connections and never answers a byte."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield sock.getsockname()[1]


def test_serving_server_exits_0(serving: RunningServer) -> None:
    proc = healthcheck("--address", serving.target)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""


def test_address_comes_from_the_environment(serving: RunningServer) -> None:
    proc = healthcheck(env={"RBMREC_ADDRESS": serving.target})
    assert proc.returncode == 0, proc.stderr


def test_named_service(serving: RunningServer) -> None:
    ok = healthcheck("--address", serving.target, "--service", "rbmrec.v1.Recommender")
    assert ok.returncode == 0, ok.stderr
    unknown = healthcheck("--address", serving.target, "--service", "no.such.Service")
    assert unknown.returncode == 1
    assert "NOT_FOUND" in one_line(unknown.stderr)


def test_server_without_a_model_is_not_serving(modelless: RunningServer) -> None:
    proc = healthcheck("--address", modelless.target)
    assert proc.returncode == 1
    line = one_line(proc.stderr)
    assert line.startswith("rbm-healthcheck: ") and "NOT_SERVING" in line
    assert modelless.target in line


def test_nothing_listening_exits_1(closed_port: int) -> None:
    proc = healthcheck("--address", f"127.0.0.1:{closed_port}", "--timeout", "5")
    assert proc.returncode == 1
    assert "UNAVAILABLE" in one_line(proc.stderr)
    assert proc.stdout == ""


def test_timeout_bounds_a_server_that_never_answers(silent_port: int) -> None:
    started = time.monotonic()
    proc = healthcheck("--address", f"127.0.0.1:{silent_port}", "--timeout", "0.5")
    elapsed = time.monotonic() - started
    assert proc.returncode == 1
    assert "DEADLINE_EXCEEDED" in one_line(proc.stderr)
    assert elapsed < 10, f"--timeout 0.5 took {elapsed:.1f}s"


def test_help_and_bad_usage() -> None:
    shown = healthcheck("--help")
    assert shown.returncode == 0
    for word in ("--address", "--timeout", "--service", "$RBMREC_ADDRESS", "127.0.0.1:50051"):
        assert word in shown.stdout
    assert healthcheck("--timeout", "0").returncode == 2
    assert healthcheck("--no-such-flag").returncode == 2
