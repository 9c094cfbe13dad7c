"""Redis with a password and over TLS, and no Redis secret in anything rbm-serve writes."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import redis

from ratinglog import redact_url
from tests.harness.cli import TrainedModel
from tests.harness.redis import free_port
from tests.harness.server import RunningServer, start_server
from tests.security.conftest import Certs, own_redis, rate_once

DEBUG = ("--log-level", "DEBUG")  # all the server can write: wherever a secret could leak


@pytest.fixture
def secret() -> str:
    """A Redis password no other test uses."""
    return f"pw-{uuid.uuid4().hex}"


@pytest.fixture
def password_redis(tmp_path: Path, secret: str) -> Iterator[tuple[int, redis.Redis]]:
    """A redis-server of the test's own that requires ``secret``."""
    port = free_port()
    client = redis.Redis(host="127.0.0.1", port=port, password=secret)
    args = ["--bind", "127.0.0.1", "--port", str(port), "--requirepass", secret]
    with own_redis(tmp_path, client, *args):
        yield port, client


@pytest.fixture
def tls_redis(tmp_path: Path, certs: Certs, secret: str) -> Iterator[tuple[int, redis.Redis]]:
    """A redis-server that speaks only TLS (no client certificates) and requires ``secret``."""
    port = free_port()
    client = redis.Redis(
        host="127.0.0.1", port=port, password=secret, ssl=True, ssl_ca_certs=str(certs.ca)
    )
    args = ["--bind", "127.0.0.1", "--port", "0", "--tls-port", str(port)]
    args += ["--tls-cert-file", str(certs.server_cert), "--tls-key-file", str(certs.server_key)]
    args += ["--tls-ca-cert-file", str(certs.ca), "--tls-auth-clients", "no"]
    with own_redis(tmp_path, client, *args, "--requirepass", secret):
        yield port, client


def _rate_through(served: RunningServer) -> bool:
    with grpc.insecure_channel(served.target) as channel:
        return rate_once(channel).accepted


def _assert_no_secret(served: RunningServer, secret: str) -> None:
    # DEBUG logging is on, so the config line (which names the URL) is in the output.
    assert "'redis_url': '" in served.output, "the start-up config line must be logged"
    assert secret not in served.output


@pytest.mark.parametrize("form", ["userinfo", "query"])
def test_a_password_redis_is_used_and_its_password_never_printed(
    trained: TrainedModel, password_redis: tuple[int, redis.Redis], secret: str, form: str
) -> None:
    port, client = password_redis
    url = {
        "userinfo": f"redis://:{secret}@127.0.0.1:{port}/0",
        "query": f"redis://127.0.0.1:{port}/0?password={secret}",
    }[form]
    with start_server(trained.registry, "--redis-url", url, *DEBUG) as served:
        assert _rate_through(served)  # UpdateRatings refuses without Redis: this needs it
    assert f"cache: redis at {redact_url(url)}" in served.stdout
    assert int(client.xlen("rbmrec:ratings")) == 1
    _assert_no_secret(served, secret)


def test_a_wrong_password_falls_back_to_memory_without_printing_it(
    trained: TrainedModel, password_redis: tuple[int, redis.Redis]
) -> None:
    port, _ = password_redis
    wrong = f"wrong-{uuid.uuid4().hex}"
    url = f"redis://:{wrong}@127.0.0.1:{port}/0"
    with start_server(trained.registry, "--redis-url", url, *DEBUG) as served:
        pass
    assert "cache: memory (no Redis answered at redis://:***@" in served.stdout
    _assert_no_secret(served, wrong)


def test_a_tls_redis_is_used_through_a_rediss_url(
    trained: TrainedModel, tls_redis: tuple[int, redis.Redis], certs: Certs, secret: str
) -> None:
    port, client = tls_redis
    # redis-py passes ?ssl_ca_certs=PATH on to its TLS context: no extra flag is needed.
    url = f"rediss://:{secret}@127.0.0.1:{port}/0?ssl_ca_certs={certs.ca}"
    with start_server(trained.registry, "--redis-url", url, *DEBUG) as served:
        assert _rate_through(served)
    assert f"cache: redis at rediss://:***@127.0.0.1:{port}/0?ssl_ca_certs=" in served.stdout
    assert int(client.xlen("rbmrec:ratings")) == 1
    _assert_no_secret(served, secret)


def test_a_tls_redis_whose_ca_is_not_trusted_is_not_used(
    trained: TrainedModel, tls_redis: tuple[int, redis.Redis], secret: str
) -> None:
    port, client = tls_redis
    url = f"rediss://:{secret}@127.0.0.1:{port}/0"  # the system roots do not know the test CA
    with start_server(trained.registry, "--redis-url", url, *DEBUG) as served:
        pass
    assert "cache: memory (no Redis answered at rediss://:***@" in served.stdout
    assert int(client.xlen("rbmrec:ratings")) == 0
    _assert_no_secret(served, secret)
