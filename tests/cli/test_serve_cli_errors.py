"""rbm-serve on bad flags and settings: exit non-zero with one line on stderr, no traceback.

Settings ServerConfig checks are run in-process with ``serve`` replaced (it must not be
reached); what only fails while starting runs the real console script.
"""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import server.main
from tests.cli.support import assert_one_line_error, assert_usage_error
from tests.harness.cli import BIN
from tests.harness.server import wait_for_address

PROG = "rbm-serve"


@pytest.fixture
def offline(tmp_path: Path) -> list[str]:
    """Flags for a server on a free port that needs no Redis; its registry does not exist."""
    return ["--cache", "memory", "--registry", str(tmp_path / "no-registry"), "--port", "0"]


@pytest.fixture
def never_serves(monkeypatch: pytest.MonkeyPatch) -> None:
    """main() must refuse before serving, and must not reconfigure this process's logging."""
    monkeypatch.setattr(server.main, "serve", _must_not_serve)
    monkeypatch.setattr(server.main, "configure_logging", lambda level, fmt: None)


def _must_not_serve(*args: object) -> None:
    raise AssertionError("main() went on to serve")


@pytest.mark.usefixtures("never_serves")
@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--max-batch-size", "0"], "max_batch_size must be >= 1, got 0"),
        (["--max-batch-size", "-1"], "max_batch_size must be >= 1, got -1"),
        (["--port", "-1"], "port must be in 0..65535, got -1"),
        (["--port", "65536"], "port must be in 0..65535, got 65536"),
        (["--max-queue", "0"], "max_queue"),
        (["--max-batch-wait-us", "-1"], "max_wait_us"),
        (["--cache-capacity", "0"], "cache capacity"),
        (["--poll-interval", "0"], "poll interval"),
        (["--metrics-port", "70000"], "metrics port"),
        (["--torch-threads", "0"], "torch threads must be >= 1, got 0"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else "",
)
def test_a_bad_setting_exits_2_with_one_line(
    offline: list[str], flags: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert server.main.main([*offline, *flags]) == 2
    out = capsys.readouterr()
    assert out.out == ""
    assert_one_line_error(out.err, PROG, says)


@pytest.mark.usefixtures("never_serves")
@pytest.mark.parametrize(
    "flags",
    [["--port", "abc"], ["--max-batch-size", "1.5"], ["--backend", "tpu"], ["--bogus"]],
    ids=" ".join,
)
def test_a_bad_command_line_is_a_usage_error(
    offline: list[str], flags: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        server.main.main([*offline, *flags])
    assert_usage_error(exited.value.code, capsys.readouterr().err, PROG)


@pytest.mark.usefixtures("never_serves")
@pytest.mark.parametrize("variable", ["RBMREC_PORT", "RBMREC_METRICS_PORT", "RBMREC_TORCH_THREADS"])
def test_a_non_integer_environment_setting_is_a_usage_error(
    offline: list[str],
    variable: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(variable, "many")
    with pytest.raises(SystemExit) as exited:
        server.main.main(offline[:-2])  # no --port: the variable is the only setting
    err = capsys.readouterr().err
    assert_usage_error(exited.value.code, err, PROG)
    assert "invalid int value: 'many'" in err


@pytest.mark.usefixtures("never_serves")
def test_a_nan_poll_interval_exits_2(offline: list[str]) -> None:
    assert server.main.main([*offline, "--poll-interval", "nan"]) == 2


# -- the real console script ----------------------------------------------------------------
@dataclass(frozen=True)
class Outcome:
    """How an rbm-serve process ended: by itself, or stopped once it wrote its address."""

    code: int
    served: bool
    out: str
    err: str


def _serve(*flags: str, timeout_s: float = 60) -> Outcome:
    """Start rbm-serve; wait until it exits or writes its address file (then stop it)."""
    with (
        tempfile.TemporaryDirectory() as tmp,
        tempfile.TemporaryFile("w+") as out,
        tempfile.TemporaryFile("w+") as err,
    ):
        address_file = Path(tmp) / "address.json"
        # ERROR: a warning on stderr is not an error line, and would break the one-line checks.
        args = ["--log-level", "ERROR", "--address-file", str(address_file)]
        with subprocess.Popen(
            [str(BIN / PROG), *args, *flags],
            stdout=out,
            stderr=err,
            text=True,
            env=dict(os.environ),
        ) as proc:
            try:
                served = wait_for_address(proc, address_file, timeout_s) is not None
            finally:  # neither exits nor serves: a hang, reported by the TimeoutError
                if proc.poll() is None:
                    proc.terminate()
        out.seek(0)
        err.seek(0)
        return Outcome(proc.returncode, served, out.read(), err.read())


def test_the_console_script_exits_2_for_a_zero_batch_size(offline: list[str]) -> None:
    ran = _serve(*offline, "--max-batch-size", "0")
    assert ran.code == 2 and not ran.served
    assert_one_line_error(ran.err, PROG, "max_batch_size")


@pytest.fixture
def listening() -> Iterator[socket.socket]:
    """A plain TCP listener on a free loopback port, as another program would hold it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock


@pytest.fixture(scope="module")
def port_taken(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outcome]:
    """rbm-serve started on a port a plain TCP listener holds (once for the tests below)."""
    registry = tmp_path_factory.mktemp("port-taken") / "no-registry"
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = str(holder.getsockname()[1])
        yield _serve("--cache", "memory", "--registry", str(registry), "--port", port)


def test_a_taken_port_exits_1_without_a_traceback(port_taken: Outcome) -> None:
    assert port_taken.code == 1 and not port_taken.served
    assert "Traceback" not in port_taken.err
    last = port_taken.err.strip().splitlines()[-1]
    assert last.startswith(f"{PROG}: error: ") and "bind" in last, port_taken.err


def test_a_taken_port_is_reported_in_one_line(port_taken: Outcome) -> None:
    # Ours only (gRPC's core used to log its own "add_port.cc] Failed to add port" first),
    # naming the address and why.
    line = assert_one_line_error(port_taken.err, PROG, "bind", "address already in use")
    assert "127.0.0.1:" in line, line


def test_a_port_another_server_holds_is_refused(offline: list[str]) -> None:
    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", 0))
        other.listen()
        ran = _serve(*offline, "--port", str(other.getsockname()[1]))
    assert not ran.served and ran.code != 0


def test_a_taken_metrics_port_exits_with_one_line(
    offline: list[str], listening: socket.socket
) -> None:
    ran = _serve(*offline, "--metrics-port", str(listening.getsockname()[1]))
    assert ran.code != 0
    assert_one_line_error(ran.err, PROG, "metrics")


def test_an_unwritable_address_file_exits_1_with_one_line(
    offline: list[str], tmp_path: Path
) -> None:
    ran = _serve(*offline, "--address-file", str(tmp_path / "no-dir" / "address.json"))
    assert ran.code == 1 and not ran.served
    assert_one_line_error(ran.err, PROG, "cannot write the address file")


def test_a_malformed_redis_url_exits_2_with_one_line(tmp_path: Path) -> None:
    ran = _serve("--port", "0", "--registry", str(tmp_path), "--redis-url", "not-a-url")
    assert ran.code == 2
    assert_one_line_error(ran.err, PROG, "not-a-url")


def test_an_unknown_log_level_is_a_usage_error(offline: list[str]) -> None:
    ran = _serve(*offline, "--log-level", "LOUD")
    assert_usage_error(ran.code, ran.err, PROG)
    assert "LOUD" in ran.err.strip().splitlines()[-1]


# A missing registry or an alias not set yet is not an error: the server starts NOT_SERVING
# and loads the model once a trainer promotes one (a pod may start before its trainer).
# A name the registry can never hold is one:
@pytest.mark.parametrize("flags", [["--alias", "Bad Alias"], ["--model", "../up"]], ids=" ".join)
def test_an_impossible_model_or_alias_name_exits_2(flags: list[str], tmp_path: Path) -> None:
    ran = _serve("--port", "0", "--cache", "memory", "--registry", str(tmp_path), *flags)
    assert ran.code == 2 and not ran.served
    assert_one_line_error(ran.err, PROG, flags[1])


def _write_weights(directory: Path) -> None:
    (directory / "weights").write_bytes(b"stand-in")
