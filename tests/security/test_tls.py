"""TLS and mutual TLS on the gRPC port, with real certificates and a real rbm-serve."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from rbmrec.v1 import recommender_pb2 as pb
from rbmrec.v1 import recommender_pb2_grpc as pb_grpc
from tests.harness.cli import TrainedModel, run_cli
from tests.harness.server import RunningServer, start_server
from tests.security.conftest import Certs


def _recommend(target: str, credentials: grpc.ChannelCredentials | None) -> pb.RecommendResponse:
    channel = (
        grpc.secure_channel(target, credentials) if credentials else grpc.insecure_channel(target)
    )
    with channel:
        return pb_grpc.RecommenderStub(channel).Recommend(
            pb.RecommendRequest(user_id=1, n=5), timeout=10
        )


def _credentials(
    ca: Path, cert: Path | None = None, key: Path | None = None
) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        ca.read_bytes(),
        key.read_bytes() if key else None,
        cert.read_bytes() if cert else None,
    )


def _refused(target: str, credentials: grpc.ChannelCredentials | None) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        _recommend(target, credentials)
    return info.value.code()  # type: ignore[attr-defined, no-any-return]


@pytest.fixture(scope="module")
def tls_server(trained: TrainedModel, certs: Certs) -> Iterator[RunningServer]:
    """TLS without client certificates; start_server waits on stdout, so TLS is no obstacle."""
    tls = ["--tls-cert", str(certs.server_cert), "--tls-key", str(certs.server_key)]
    with start_server(trained.registry, "--cache", "memory", *tls) as running:
        yield running


@pytest.fixture(scope="module")
def mtls_server(trained: TrainedModel, certs: Certs) -> Iterator[RunningServer]:
    """Mutual TLS: a client certificate signed by certs.client_ca is required."""
    tls = ["--tls-cert", str(certs.server_cert), "--tls-key", str(certs.server_key)]
    tls += ["--tls-client-ca", str(certs.client_ca)]
    with start_server(trained.registry, "--cache", "memory", *tls) as running:
        yield running


def test_tls_client_that_trusts_the_ca_is_served(tls_server: RunningServer, certs: Certs) -> None:
    reply = _recommend(tls_server.target, _credentials(certs.ca))
    assert len(reply.movies) == 5


def test_tls_refuses_a_plaintext_client(tls_server: RunningServer) -> None:
    assert _refused(tls_server.target, None) == grpc.StatusCode.UNAVAILABLE


def test_tls_client_that_trusts_another_ca_refuses_the_server(
    tls_server: RunningServer, certs: Certs
) -> None:
    assert (
        _refused(tls_server.target, _credentials(certs.stranger_ca)) == grpc.StatusCode.UNAVAILABLE
    )


def test_rbm_client_speaks_tls(tls_server: RunningServer, certs: Certs) -> None:
    args = ["--target", tls_server.target, "--json", "--tls-ca", str(certs.ca)]
    proc = run_cli("rbm-client", *args, "recommend", "--user", "1", "-n", "3")
    assert len(json.loads(proc.stdout)["movies"]) == 3
    plain = run_cli("rbm-client", "--target", tls_server.target, "info", check=False)
    assert plain.returncode == 1 and "UNAVAILABLE" in plain.stderr


def test_mtls_refuses_a_client_without_a_certificate(
    mtls_server: RunningServer, certs: Certs
) -> None:
    assert _refused(mtls_server.target, _credentials(certs.ca)) == grpc.StatusCode.UNAVAILABLE


def test_mtls_refuses_a_certificate_from_another_ca(
    mtls_server: RunningServer, certs: Certs
) -> None:
    stranger = _credentials(certs.ca, certs.stranger_cert, certs.stranger_key)
    assert _refused(mtls_server.target, stranger) == grpc.StatusCode.UNAVAILABLE


def test_mtls_serves_a_client_certificate_the_client_ca_signed(
    mtls_server: RunningServer, certs: Certs
) -> None:
    reply = _recommend(
        mtls_server.target, _credentials(certs.ca, certs.client_cert, certs.client_key)
    )
    assert len(reply.movies) == 5


def test_rbm_client_presents_its_certificate(mtls_server: RunningServer, certs: Certs) -> None:
    args = ["--target", mtls_server.target, "--json", "--tls-ca", str(certs.ca)]
    mine = ["--tls-cert", str(certs.client_cert), "--tls-key", str(certs.client_key)]
    proc = run_cli("rbm-client", *args, *mine, "info")
    assert json.loads(proc.stdout)["model_version"] == "1"
    without = run_cli("rbm-client", *args, "info", check=False)
    assert without.returncode == 1 and "UNAVAILABLE" in without.stderr
