"""Certificates made in the test (trustme), Redis servers of the tests' own, and rbm-serve
with its whole output kept, so that tests can look for secrets in it."""

from __future__ import annotations

import contextlib
import subprocess
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
