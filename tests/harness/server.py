"""One launcher for a real rbm-serve process on a free loopback port."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import grpc

from rbmrec.v1 import recommender_pb2_grpc as pb_grpc
from tests.harness.cli import BIN, REDIS_URL

__all__ = ["Address", "RunningServer", "start_server", "wait_for_address"]


@dataclass(frozen=True)
class Address:
    """What rbm-serve writes to ``--address-file`` once it serves."""

    address: str  # HOST:PORT
    metrics: str | None  # the /metrics URL, None without --metrics-port
    pid: int


def wait_for_address(
    proc: subprocess.Popen[Any], path: Path, timeout_s: float = 60
) -> Address | None:
    """The content of ``path`` once the server has written it; None if ``proc`` exits first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        # The server renames a complete file into place: if it exists, it parses.
        if path.exists():
            content = json.loads(path.read_text(encoding="utf-8"))
            return Address(content["address"], content["metrics"], content["pid"])
        if proc.poll() is not None:
            return None
        time.sleep(0.05)
    raise TimeoutError(f"rbm-serve wrote no {path.name} within {timeout_s:.0f}s")


@dataclass
class RunningServer:
    """A server process and a channel to it."""

    process: subprocess.Popen[str]
    target: str
    channel: grpc.Channel
    stub: pb_grpc.RecommenderStub
    metrics_url: str = ""  # set when the server was started with --metrics-port
    log: str = ""  # the server's stderr, filled in when it has stopped
    stdout: str = ""  # the server's stdout, filled in when it has stopped
    log_path: Path | None = None  # the server's stderr file, to read while it runs

    @property
    def output(self) -> str:
        """Everything the server wrote, stdout then stderr (once it has stopped)."""
        return self.stdout + self.log


def _command(
    registry: Path, address_file: Path, redis_url: str | None, extra: tuple[str, ...]
) -> list[str]:
    redis = ["--redis-url", redis_url] if redis_url is not None else []
    return [
        str(BIN / "rbm-serve"),
        *("--port", "0", "--registry", str(registry), *redis),
        *("--poll-interval", "0.2", "--swap-spread-s", "0", "--log-level", "WARNING"),
        *("--address-file", str(address_file)),
        *extra,  # last: a flag given again here wins
    ]


def _stop(proc: subprocess.Popen[str]) -> None:
    """SIGTERM, as a container runtime stops it; kill only if that hangs (then raise)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


@contextlib.contextmanager
def start_server(
    registry: Path,
    *extra: str,
    timeout_s: float = 60,
    redis_url: str | None = REDIS_URL,
    env: Mapping[str, str] | None = None,
) -> Iterator[RunningServer]:
    """Start ``rbm-serve --port 0`` and wait for the address file it writes once serving.

    ``redis_url`` None passes no --redis-url (the environment's or the default applies);
    ``env`` is added to this process's environment.
    """
    # Files, not pipes, so that a chatty server never blocks; read back once it stops.
    with (
        tempfile.TemporaryDirectory(prefix="rbm-serve-") as tmp,
        open(Path(tmp) / "stdout", "w+") as out,
        open(Path(tmp) / "stderr", "w+") as err,
    ):
        address_file = Path(tmp) / "address.json"
        proc = subprocess.Popen(
            _command(registry, address_file, redis_url, extra),
            stdout=out,
            stderr=err,
            text=True,
            env={**os.environ, **(env or {})},
        )
        try:
            bound = wait_for_address(proc, address_file, timeout_s)
        except TimeoutError:
            bound = None
        if bound is None:
            proc.kill()
            proc.wait()
            raise AssertionError(f"rbm-serve did not start (exit {proc.returncode}):\n{_read(err)}")
        channel = grpc.insecure_channel(bound.address)
        stub = pb_grpc.RecommenderStub(channel)
        running = RunningServer(
            proc, bound.address, channel, stub, bound.metrics or "", log_path=Path(err.name)
        )
        try:
            yield running
        finally:
            channel.close()
            try:
                _stop(proc)
            finally:
                running.log, running.stdout = _read(err), _read(out)


def _read(file: TextIO) -> str:
    file.seek(0)
    return file.read()
