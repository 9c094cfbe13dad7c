"""Certificates made in the test (trustme), Redis servers of the tests' own, and rbm-serve
with its whole output kept, so that tests can look for secrets in it."""

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
import pytest
import redis
import trustme

from rbmrec.v1 import recommender_pb2 as pb
from rbmrec.v1 import recommender_pb2_grpc as pb_grpc
from tests.harness.cli import BIN, REDIS_URL


@dataclass(frozen=True)
class Certs:
    """PEM files: a server certificate for 127.0.0.1, client certificates from two CAs."""

    ca: Path  # signed the server certificate
    server_cert: Path
    server_key: Path
    client_ca: Path  # what an mTLS server trusts for client certificates
    client_cert: Path
    client_key: Path
    stranger_ca: Path  # a CA nobody trusts
    stranger_cert: Path  # a client certificate the stranger CA signed
    stranger_key: Path


def _write(blob: trustme.Blob, path: Path) -> Path:
    blob.write_to_path(str(path))
    return path


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    """Fresh CAs and certificates for this test session."""
    d = tmp_path_factory.mktemp("certs")
    ca, client_ca, stranger_ca = trustme.CA(), trustme.CA(), trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = client_ca.issue_cert("client.rbmrec.test")
    stranger = stranger_ca.issue_cert("stranger.rbmrec.test")
    return Certs(
        ca=_write(ca.cert_pem, d / "ca.pem"),
        server_cert=_write(server.cert_chain_pems[0], d / "server.pem"),
        server_key=_write(server.private_key_pem, d / "server.key"),
        client_ca=_write(client_ca.cert_pem, d / "client-ca.pem"),
        client_cert=_write(client.cert_chain_pems[0], d / "client.pem"),
        client_key=_write(client.private_key_pem, d / "client.key"),
        stranger_ca=_write(stranger_ca.cert_pem, d / "stranger-ca.pem"),
        stranger_cert=_write(stranger.cert_chain_pems[0], d / "stranger.pem"),
        stranger_key=_write(stranger.private_key_pem, d / "stranger.key"),
    )


@contextlib.contextmanager
def own_redis(tmp_path: Path, client: redis.Redis, *args: str) -> Iterator[redis.Redis]:
    """Run ``redis-server ARGS`` (no persistence) until ``client`` answers; always stop it."""
    proc = subprocess.Popen(
        ["redis-server", *args, "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.RedisError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield client
    finally:
        client.close()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Served:
    """An rbm-serve process; ``output`` holds its stdout and stderr once it has stopped."""

    process: subprocess.Popen[bytes]
    target: str
    stdout: str = ""  # what it printed up to the serving line
    output: str = ""


@contextlib.contextmanager
def serve_capturing(registry: Path, *extra: str) -> Iterator[Served]:
    """Like tests.harness.server.start_server, but keeps every byte the server writes.

    start_server reads stdout only up to the serving line and drops it; a test looking for
    leaked secrets needs all of stdout and stderr, and the DEBUG log level.
    """
    with tempfile.TemporaryDirectory() as tmp, open(Path(tmp) / "out", "wb") as out:
        out_path = Path(out.name)
        args = ["--port", "0", "--registry", str(registry), "--redis-url", REDIS_URL]
        args += ["--poll-interval", "0.2", "--log-level", "DEBUG", *extra]
        proc = subprocess.Popen(
            [str(BIN / "rbm-serve"), *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(os.environ),
        )
        served = Served(proc, "")
        try:
            served.target, served.stdout = _wait_serving(proc, out_path)
            yield served
        finally:
            _stop(proc)
            served.output = out_path.read_text(errors="replace")


def _wait_serving(proc: subprocess.Popen[bytes], out_path: Path) -> tuple[str, str]:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        text = out_path.read_text(errors="replace")
        match = re.search(r"^serving .* on (\S+:\d+)$", text, re.MULTILINE)
        if match:
            return match.group(1), text
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise AssertionError(f"rbm-serve did not start:\n{out_path.read_text(errors='replace')}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def rate_once(channel: grpc.Channel, metadata: tuple[tuple[str, str], ...] = ()) -> pb.RatingAck:
    """Stream one valid rating (user 1, movie 50, 5 stars) and return its acknowledgement."""
    update = pb.RatingUpdate(user_id=1, movie_id=50, rating=5.0, timestamp=int(time.time()))
    acks = list(
        pb_grpc.RecommenderStub(channel).UpdateRatings(
            iter([update]), timeout=10, metadata=metadata
        )
    )
    assert len(acks) == 1
    return acks[0]
