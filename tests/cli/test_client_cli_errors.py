"""rbm-client with no server to talk to, and with values the wire cannot carry."""

from __future__ import annotations

import socket

import pytest

import server.client
from tests.cli.support import assert_one_line_error, assert_usage_error
from tests.harness.cli import run_cli

PROG = "rbm-client"
RPC_FAILED = 1


@pytest.fixture
def nobody() -> str:
    """host:port of a loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


@pytest.mark.parametrize(
    "command",
    [
        ["info"],
        ["recommend", "--user", "1"],
        ["predict", "--user", "1", "--movies", "1", "2"],
        ["rate", "--user", "1", "--movie", "1", "--rating", "5"],
    ],
    ids=" ".join,
)
def test_an_unreachable_server_exits_1_with_one_line(
    nobody: str, command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code = server.client.main(["--target", nobody, "--timeout", "5", *command])
    out = capsys.readouterr()
    assert code == RPC_FAILED
    assert out.out == ""
    assert_one_line_error(out.err, PROG, "UNAVAILABLE")


def test_the_console_script_reports_an_unreachable_server_in_one_line(nobody: str) -> None:
    proc = run_cli(PROG, "--target", nobody, "--timeout", "5", "info", check=False)
    assert proc.returncode == RPC_FAILED
    assert_one_line_error(proc.stderr, PROG, "UNAVAILABLE")


def test_an_unresolvable_host_exits_1_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code = server.client.main(["--target", "no-such-host.invalid:50051", "--timeout", "5", "info"])
    assert code == RPC_FAILED
    assert_one_line_error(capsys.readouterr().err, PROG, "UNAVAILABLE")


@pytest.mark.parametrize(
    "command",
    [["recommend"], ["recommend", "--user", "x"], ["rate", "--user", "1"], ["bogus"]],
    ids=" ".join,
)
def test_a_bad_command_line_is_a_usage_error(
    nobody: str, command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        server.client.main(["--target", nobody, *command])
    assert_usage_error(exited.value.code, capsys.readouterr().err, PROG)


@pytest.mark.parametrize(
    "command",
    [["recommend", "--user", str(2**63)], ["recommend", "--user", "1", "-n", str(2**31)]],
    ids=" ".join,
)
def test_a_value_beyond_the_wire_types_is_a_usage_error(
    nobody: str, command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        server.client.main(["--target", nobody, "--timeout", "5", *command])
    assert_usage_error(exited.value.code, capsys.readouterr().err, PROG)
