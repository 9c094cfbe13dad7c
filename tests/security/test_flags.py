"""Bad security settings stop rbm-serve and rbm-client with one line, before anything binds."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

import server.client
import server.main
from tests.harness.cli import run_cli
from tests.security.conftest import Certs

# Each case: (flags from the certificate files, extra environment, what the error must say).
Case = Callable[[Certs, Path], tuple[list[str], dict[str, str], str]]

SERVE_CASES: dict[str, Case] = {
    "cert without key": lambda c, t: (
        ["--tls-cert", str(c.server_cert)],
        {},
        "--tls-cert/--tls-key must be given together",
    ),
    "key without cert": lambda c, t: (
        ["--tls-key", str(c.server_key)],
        {},
        "--tls-cert/--tls-key must be given together",
    ),
    "cert without key, by env": lambda c, t: (
        [],
        {"RBMREC_TLS_CERT": str(c.server_cert)},
        "--tls-cert/--tls-key must be given together",
    ),
    "client CA without TLS": lambda c, t: (
        ["--tls-client-ca", str(c.client_ca)],
        {},
        "--tls-client-ca needs --tls-cert and --tls-key",
    ),
    "missing cert file": lambda c, t: (
        ["--tls-cert", str(t / "nope.pem"), "--tls-key", str(c.server_key)],
        {},
        "cannot read the TLS certificate",
    ),
    "key is a directory": lambda c, t: (
        ["--tls-cert", str(c.server_cert), "--tls-key", str(t)],
        {},
        "cannot read the TLS key",
    ),
    "key of another certificate": lambda c, t: (
        ["--tls-cert", str(c.server_cert), "--tls-key", str(c.client_key)],
        {},
        "key values mismatch",
    ),
    "client CA file holds a key": lambda c, t: (
        [
            *("--tls-cert", str(c.server_cert), "--tls-key", str(c.server_key)),
            *("--tls-client-ca", str(c.server_key)),
        ],
        {},
        "holds no PEM certificate",
    ),
    "missing token file": lambda c, t: (
        ["--auth-token-file", str(t / "nope")],
        {},
        "cannot read the auth token file",
    ),
    "missing token file, by env": lambda c, t: (
        [],
        {"RBMREC_AUTH_TOKEN_FILE": str(t / "nope")},
        "cannot read the auth token file",
    ),
}


def _assert_one_line_error(stderr: str, prog: str, expected: str) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"{prog}: error: ") and expected in lines[0], lines[0]
    assert "Traceback" not in stderr and "PRIVATE KEY" not in stderr


@pytest.fixture
def quiet_logging(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep main() from replacing pytest's log handlers when it is called in-process."""
    monkeypatch.setattr(server.main, "configure_logging", lambda level, fmt: None)


@pytest.mark.usefixtures("quiet_logging")
@pytest.mark.parametrize("case", SERVE_CASES)
def test_rbm_serve_refuses_bad_security_settings(
    certs: Certs,
    tmp_path: Path,
    case: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # In-process, for speed: main() is the entry point; one test below runs the real binary.
    flags, env, expected = SERVE_CASES[case](certs, tmp_path)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(server.main, "serve", pytest.fail)  # it must return before serving
    # A registry that does not exist: the error must come before the server looks for a model.
    base = ["--port", "0", "--registry", str(tmp_path / "no-registry"), "--cache", "memory"]
    assert server.main.main([*base, *flags]) == 2
    out = capsys.readouterr()
    assert out.out == ""
    _assert_one_line_error(out.err, "rbm-serve", expected)


def test_the_rbm_serve_binary_exits_2_with_one_line(certs: Certs, tmp_path: Path) -> None:
    flags = ["--tls-cert", str(certs.server_cert), "--tls-key", str(certs.client_key)]
    proc = run_cli("rbm-serve", "--registry", str(tmp_path), *flags, check=False)
    assert proc.returncode == 2 and "serving" not in proc.stdout
    _assert_one_line_error(proc.stderr, "rbm-serve", "key values mismatch")


@pytest.mark.usefixtures("quiet_logging")
def test_an_unusable_token_is_refused_without_echoing_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token = tmp_path / "token"
    token.write_text("secret with spaces\n")
    assert server.main.main(["--registry", str(tmp_path), "--auth-token-file", str(token)]) == 2
    err = capsys.readouterr().err
    _assert_one_line_error(err, "rbm-serve", "visible ASCII")
    assert "secret" not in err


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--tls-cert", "{cert}"], "--tls-cert/--tls-key must be given together"),
        (["--tls-ca", "{missing}"], "cannot read the CA file"),
        (["--token-file", "{missing}"], "cannot read the auth token file"),
    ],
)
def test_rbm_client_refuses_bad_security_settings(
    certs: Certs,
    tmp_path: Path,
    flags: list[str],
    expected: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    paths = {"cert": str(certs.client_cert), "missing": str(tmp_path / "nope")}
    args = [f.format(**paths) for f in flags]
    assert server.client.main([*args, "info"]) == 2
    _assert_one_line_error(capsys.readouterr().err, "rbm-client", expected)
