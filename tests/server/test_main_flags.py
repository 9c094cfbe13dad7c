"""rbm-serve's options, declared once in ServerConfig: --help, the environment, --address-file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import typing
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import server.main
from server.main import ServerConfig, cli_options
from tests.harness.cli import BIN
from tests.harness.server import Address, wait_for_address

OPTIONS = {flag.flag: (f, flag) for f, flag in cli_options()}
HINTS = typing.get_type_hints(ServerConfig)


def _kind(name: str) -> type:
    """str, int or float: the type of a field, without ``| None``."""
    kinds = [t for t in typing.get_args(HINTS[name]) if t is not type(None)]
    kind: type = kinds[0] if kinds else HINTS[name]
    return kind


def test_the_declaration_keeps_every_flag_and_variable() -> None:
    # Names the manifests, the compose file and the docs use: none may disappear.
    expected = {
        "--host": "RBMREC_HOST",
        "--port": "RBMREC_PORT",
        "--registry": "RBMREC_REGISTRY",
        "--model": "RBMREC_MODEL",
        "--alias": "RBMREC_ALIAS",
        "--device": "RBMREC_DEVICE",
        "--cache": "RBMREC_CACHE",
        "--redis-url": "REDIS_URL",
        "--redis-prefix": "RBMREC_REDIS_PREFIX",
        "--torch-threads": "RBMREC_TORCH_THREADS",
        "--backend": "RBMREC_BACKEND",
        "--metrics-port": "RBMREC_METRICS_PORT",
        "--tls-cert": "RBMREC_TLS_CERT",
        "--tls-key": "RBMREC_TLS_KEY",
        "--tls-client-ca": "RBMREC_TLS_CLIENT_CA",
        "--auth-token-file": "RBMREC_AUTH_TOKEN_FILE",
        "--address-file": "RBMREC_ADDRESS_FILE",
        "--log-level": "RBMREC_LOG_LEVEL",
        "--log-format": "RBMREC_LOG_FORMAT",
    }
    declared = {name: flag.env for name, (_, flag) in OPTIONS.items()}
    assert expected.items() <= declared.items()
    batching = {"--cache-capacity", "--max-batch-size", "--max-batch-wait-us", "--max-queue"}
    assert {*batching, "--poll-interval"} <= declared.keys()  # flags that had no variable


def test_help_names_every_option_with_its_variable_and_default(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RBMREC_PORT", "1234")  # the declared default is shown, not this
    with pytest.raises(SystemExit) as exited:
        server.main.main(["--help"])
    assert exited.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines anywhere
    for name, (f, flag) in OPTIONS.items():
        shown = "none" if f.default is None else f.default
        assert f"[{name} " in text, name
        assert f"(env ${flag.env}, default {shown})" in text, name
    assert "(env $RBMREC_PORT, default 50051)" in text


@pytest.mark.parametrize("name", OPTIONS)
def test_each_variable_sets_its_option_and_the_flag_wins(name: str) -> None:
    f, flag = OPTIONS[name]
    kind = _kind(f.name)
    text = flag.choices[-1] if flag.choices else {int: "7", float: "2.5"}.get(kind, "/some/where")
    value = kind(text)
    parser = server.main._parser({flag.env: text})
    assert getattr(parser.parse_args([]), f.name) == value
    other = flag.choices[0] if flag.choices else {int: "8", float: "3.5"}.get(kind, "/else")
    assert getattr(parser.parse_args([name, other]), f.name) == kind(other)


def test_without_variables_the_defaults_are_the_config_defaults() -> None:
    args = server.main._parser({}).parse_args([])
    for f, _ in cli_options():
        assert getattr(args, f.name) == f.default, f.name


def test_an_empty_variable_counts_as_unset() -> None:
    args = server.main._parser({"RBMREC_METRICS_PORT": "", "RBMREC_PORT": ""}).parse_args([])
    assert args.metrics_port is None and args.port == 50051


@pytest.mark.parametrize(
    "name", [name for name, (f, _) in OPTIONS.items() if _kind(f.name) in (int, float)]
)
def test_a_non_number_from_the_environment_is_a_usage_error(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    f, flag = OPTIONS[name]
    with pytest.raises(SystemExit) as exited:
        server.main._parser({flag.env: "many"}).parse_args([])
    assert exited.value.code == 2
    assert f"invalid {_kind(f.name).__name__} value: 'many'" in capsys.readouterr().err


def test_a_choice_from_the_environment_is_checked() -> None:
    with pytest.raises(ValueError, match="cache must be one of redis, memory, got 'disk'"):
        ServerConfig(cache="disk")


def test_the_address_file_is_written_atomically(tmp_path: Path) -> None:
    target = tmp_path / "address.json"
    server.main.write_address_file(target, {"address": "127.0.0.1:1", "metrics": None, "pid": 1})
    assert json.loads(target.read_text()) == {"address": "127.0.0.1:1", "metrics": None, "pid": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["address.json"]  # no temporary left
    with pytest.raises(RuntimeError, match="cannot write the address file"):
        server.main.write_address_file(tmp_path / "no-dir" / "a.json", {})


# -- a real server ---------------------------------------------------------------------------
def _health(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        status: int = stub.Check(health_pb2.HealthCheckRequest(), timeout=10).status
        return status


def _stop(proc: subprocess.Popen[str]) -> tuple[str, str]:
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    return out, err


@pytest.fixture
def modelless(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Address, Path]]:
    """rbm-serve on port 0 with metrics, no model yet (it serves, NOT_SERVING); stopped after."""
    address_file = tmp_path / "run" / "address.json"
    address_file.parent.mkdir()
    flags = ["--port", "0", "--metrics-port", "0", "--cache", "memory", "--log-level", "ERROR"]
    flags += ["--registry", str(tmp_path / "registry")]
    proc = subprocess.Popen(
        [str(BIN / "rbm-serve"), *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "RBMREC_ADDRESS_FILE": str(address_file)},  # the variable works too
    )
    try:
        bound = wait_for_address(proc, address_file)
        assert bound is not None, proc.communicate()
        yield proc, bound, address_file
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_the_address_file_names_the_bound_address(
    modelless: tuple[subprocess.Popen[str], Address, Path],
) -> None:
    proc, bound, address_file = modelless
    host, port = bound.address.rsplit(":", 1)
    assert host == "127.0.0.1" and int(port) > 0 and bound.pid == proc.pid
    assert _health(bound.address) == health_pb2.HealthCheckResponse.NOT_SERVING
    assert bound.metrics is not None and bound.metrics.startswith("http://127.0.0.1:")
    with urllib.request.urlopen(bound.metrics, timeout=10) as response:
        assert response.status == 200
    out, err = _stop(proc)
    assert proc.returncode == 0, err
    assert f"on {bound.address}\n" in out  # the line humans read names the same address
    assert f"metrics on {bound.metrics}\n" in out
    assert list(address_file.parent.iterdir()) == []  # removed once no longer served


def test_serve_returns_the_address_it_bound(tmp_path: Path) -> None:
    address_file = tmp_path / "address.json"
    program = textwrap.dedent(
        f"""
        import asyncio
        from server.main import ServerConfig, serve
        config = ServerConfig(
            port=0, cache="memory", registry={str(tmp_path / "registry")!r},
            address_file={str(address_file)!r},
        )
        print("returned", asyncio.run(serve(config)), flush=True)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", program], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        bound = wait_for_address(proc, address_file)
        assert bound is not None, proc.communicate()
    finally:
        out, err = _stop(proc)
    assert proc.returncode == 0, err
    assert out.splitlines()[-1] == f"returned {bound.address}"


def test_connection_limits_reach_grpc_core_and_are_validated() -> None:
    options = dict(server.main.channel_options(ServerConfig(max_connection_age_s=120)))
    assert options["grpc.max_connection_age_ms"] == 120_000
    assert options["grpc.max_connection_age_grace_ms"] == 30_000
    assert options["grpc.keepalive_time_ms"] == 60_000 and options["grpc.so_reuseport"] == 0
    never = dict(server.main.channel_options(ServerConfig(max_connection_age_s=0)))
    assert "grpc.max_connection_age_ms" not in never  # 0: connections are never aged out
    ServerConfig(max_concurrent_rpcs=0)  # 0: no bound
    for bad in (
        {"max_concurrent_rpcs": -1},
        {"max_connection_age_s": -1.0},
        {"max_connection_age_grace_s": float("nan")},
        {"keepalive_s": 0.0},
    ):
        with pytest.raises(ValueError, match="must be"):
            ServerConfig(**bad)
