"""One launcher for a real rbm-serve process on a free loopback port."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc

from rbmrec.v1 import recommender_pb2_grpc as pb_grpc
from tests.harness.cli import BIN, REDIS_URL


@dataclass
class RunningServer:
    """A server process and a channel to it."""

    process: subprocess.Popen[str]
    target: str
    channel: grpc.Channel
    stub: pb_grpc.RecommenderStub
    metrics_url: str = ""  # set when the server was started with --metrics-port
    log: str = ""  # the server's stderr, filled in when it has stopped


@contextlib.contextmanager
def start_server(registry: Path, *extra: str, timeout_s: float = 60) -> Iterator[RunningServer]:
    """Start ``rbm-serve --port 0`` and wait for the line that names its port."""
    # A file, not a pipe, so that a chatty server never blocks; closed in the finally below.
    log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            str(BIN / "rbm-serve"),
            "--port",
            "0",
            "--registry",
            str(registry),
            "--redis-url",
            REDIS_URL,
            "--poll-interval",
            "0.2",
            "--log-level",
            "WARNING",
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        env=dict(os.environ),
    )
    target, metrics_url = None, ""
    deadline = time.monotonic() + timeout_s
    assert proc.stdout is not None
    while target is None and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        match = re.search(r"^serving .* on (\S+:\d+)$", line.strip())
        if match:
            target = match.group(1)
        metrics = re.search(r"^metrics on (\S+)$", line.strip())
        if metrics:
            metrics_url = metrics.group(1)
    if target is None:
        proc.kill()
        proc.communicate()
        log.seek(0)
        message = log.read()
        log.close()
        raise AssertionError(f"rbm-serve did not start: {message}")
    channel = grpc.insecure_channel(target)
    running = RunningServer(proc, target, channel, pb_grpc.RecommenderStub(channel), metrics_url)
    try:
        yield running
    finally:
        channel.close()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise
        finally:
            log.seek(0)
            running.log = log.read()
            log.close()
