"""The bearer-token check: every rbmrec RPC and reflection need it, health does not."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from rbmrec.v1 import recommender_pb2 as pb
from rbmrec.v1 import recommender_pb2_grpc as pb_grpc
from server.auth import load_token
from tests.harness.cli import REDIS_URL, TrainedModel, run_cli
from tests.harness.server import RunningServer, start_server
from tests.security.conftest import rate_once

TOKEN = "s3cret-token-for-tests"
Metadata = tuple[tuple[str, str], ...]
RIGHT: Metadata = (("authorization", f"Bearer {TOKEN}"),)
WRONG_METADATA: dict[str, Metadata] = {
    "none": (),
    "wrong token": (("authorization", "Bearer not-the-token"),),
    "token prefix": (("authorization", f"Bearer {TOKEN[:-1]}"),),
    "no scheme": (("authorization", TOKEN),),
    "basic scheme": (("authorization", f"Basic {TOKEN}"),),
}


@pytest.fixture(scope="module")
def token_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The token in a file, with the trailing newline an editor adds."""
    path = tmp_path_factory.mktemp("token") / "token"
    path.write_text(TOKEN + "\n")
    return path


@pytest.fixture(scope="module")
def secured(trained: TrainedModel, redis_prefix: str, token_file: Path) -> Iterator[RunningServer]:
    """A server that requires the token; its Redis keys live under the session's prefix."""
    extra = ["--redis-prefix", redis_prefix, "--auth-token-file", str(token_file)]
    with start_server(trained.registry, *extra) as running:
        yield running


def _log_length(prefix: str) -> int:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        return int(client.xlen(f"{prefix}:ratings"))
    finally:
        client.close()


CALLS: dict[str, Callable[[pb_grpc.RecommenderStub, Metadata], object]] = {
    "Recommend": lambda s, m: s.Recommend(
        pb.RecommendRequest(user_id=1, n=3), timeout=10, metadata=m
    ),
    "PredictRatings": lambda s, m: s.PredictRatings(
        pb.PredictRatingsRequest(user_id=1, movie_ids=[1]), timeout=10, metadata=m
    ),
    "GetModelInfo": lambda s, m: s.GetModelInfo(pb.GetModelInfoRequest(), timeout=10, metadata=m),
}


@pytest.mark.parametrize("rpc", CALLS)
@pytest.mark.parametrize("wrong", WRONG_METADATA)
def test_unary_rpcs_without_the_right_token_are_unauthenticated(
    secured: RunningServer, rpc: str, wrong: str
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        CALLS[rpc](secured.stub, WRONG_METADATA[wrong])
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    expected = "missing bearer token" if wrong == "none" else "invalid bearer token"
    assert expected in str(info.value.details())


@pytest.mark.parametrize("rpc", CALLS)
def test_unary_rpcs_with_the_right_token_are_served(secured: RunningServer, rpc: str) -> None:
    reply = CALLS[rpc](secured.stub, RIGHT)  # raises if the call is refused
    # ... and what comes back is the model's answer, not an empty message.
    if rpc == "Recommend":
        assert isinstance(reply, pb.RecommendResponse)
        assert len(reply.movies) == 3 and all(m.movie_id > 0 and m.title for m in reply.movies)
    elif rpc == "PredictRatings":
        assert isinstance(reply, pb.PredictRatingsResponse)
        assert len(reply.ratings) == 1 and 1.0 <= reply.ratings[0] <= 5.0
    else:
        assert isinstance(reply, pb.ModelInfo)
        assert (reply.model_name, reply.num_movies) == ("rbm", 1682)
    assert reply.model_version == "1"


@pytest.mark.parametrize("wrong", ["none", "wrong token"])
def test_the_update_stream_without_the_token_is_refused_and_stores_nothing(
    secured: RunningServer, redis_prefix: str, wrong: str
) -> None:
    before = _log_length(redis_prefix)
    with pytest.raises(grpc.RpcError) as info:
        rate_once(secured.channel, WRONG_METADATA[wrong])
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert _log_length(redis_prefix) == before, "a refused stream must not reach the rating log"


def test_the_update_stream_with_the_token_is_acknowledged(
    secured: RunningServer, redis_prefix: str
) -> None:
    before = _log_length(redis_prefix)
    assert rate_once(secured.channel, RIGHT).accepted
    assert _log_length(redis_prefix) == before + 1


def test_health_needs_no_token(secured: RunningServer) -> None:
    # Kubernetes gRPC probes cannot send metadata: health must stay open.
    stub = health_pb2_grpc.HealthStub(secured.channel)
    reply = stub.Check(health_pb2.HealthCheckRequest(service="rbmrec.v1.Recommender"), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize("metadata", [(), RIGHT], ids=["no token", "token"])
def test_reflection_needs_the_token(secured: RunningServer, metadata: Metadata) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(secured.channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    if metadata:
        reply = next(iter(stub.ServerReflectionInfo(iter([request]), timeout=5, metadata=metadata)))
        names = {s.name for s in reply.list_services_response.service}
        assert "rbmrec.v1.Recommender" in names
        return
    with pytest.raises(grpc.RpcError) as info:
        list(stub.ServerReflectionInfo(iter([request]), timeout=5))
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_rbm_client_sends_the_token_from_a_file_or_its_env(
    secured: RunningServer, token_file: Path
) -> None:
    base = ["--target", secured.target, "--json"]
    by_flag = run_cli("rbm-client", *base, "--token-file", str(token_file), "info")
    assert json.loads(by_flag.stdout)["model_version"] == "1"
    by_env = run_cli("rbm-client", *base, "info", env={"RBMREC_AUTH_TOKEN_FILE": str(token_file)})
    assert json.loads(by_env.stdout)["model_version"] == "1"
    without = run_cli("rbm-client", *base, "info", check=False, env={"RBMREC_AUTH_TOKEN_FILE": ""})
    assert without.returncode == 1 and "UNAUTHENTICATED" in without.stderr
    assert TOKEN not in without.stderr


def test_the_server_reads_the_token_file_from_its_env(
    trained: TrainedModel, token_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RBMREC_AUTH_TOKEN_FILE", str(token_file))  # start_server passes os.environ
    with start_server(trained.registry, "--cache", "memory") as running:
        stub = running.stub
        with pytest.raises(grpc.RpcError) as info:
            CALLS["GetModelInfo"](stub, ())
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        CALLS["GetModelInfo"](stub, RIGHT)
    assert TOKEN not in running.log


def test_load_token_strips_the_file_and_falls_back_to_the_env(tmp_path: Path) -> None:
    path = tmp_path / "t"
    path.write_text(f"  {TOKEN}\n\n")
    assert load_token(str(path), env={"RBMREC_AUTH_TOKEN": "other"}) == TOKEN
    assert load_token(None, env={"RBMREC_AUTH_TOKEN": "from-env"}) == "from-env"
    assert load_token(None, env={}) is None


@pytest.mark.parametrize("content", ["", "\n", "two words", "caf\u00e9"])
def test_load_token_refuses_a_token_it_cannot_send(tmp_path: Path, content: str) -> None:
    path = tmp_path / "t"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError) as info:
        load_token(str(path), env={})
    if content.strip():
        assert content.strip() not in str(info.value), "the error must not echo the token"
