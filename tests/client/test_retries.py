"""Retries through the gRPC service config: reads on UNAVAILABLE, never UpdateRatings.

A fake Recommender in this process fails on purpose and counts the attempts it sees.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from rbmrec_client import (
    RETRIED_METHODS,
    AsyncRecommenderClient,
    InvalidArgumentError,
    Rating,
    RecommenderClient,
    UnavailableError,
)

from rbmrec.v1 import recommender_pb2 as pb


@dataclass
class Flaky:
    """A Recommender that fails its first ``failures`` calls of each RPC with ``code``."""

    failures: int
    code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE
    calls: dict[str, int] = field(default_factory=dict)
    metadata: list[tuple[tuple[str, Any], ...]] = field(default_factory=list)

    def _attempt(self, name: str, context: grpc.ServicerContext) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1
        self.metadata.append(tuple(context.invocation_metadata()))
        if self.calls[name] <= self.failures:
            context.abort(self.code, f"{name} fails on purpose")

    def recommend(self, request: pb.RecommendRequest, context: Any) -> pb.RecommendResponse:
        self._attempt("Recommend", context)
        return pb.RecommendResponse(model_version="7")

    def info(self, request: pb.GetModelInfoRequest, context: Any) -> pb.ModelInfo:
        self._attempt("GetModelInfo", context)
        return pb.ModelInfo(model_version="7")

    def update(self, requests: Iterator[pb.RatingUpdate], context: Any) -> Iterator[pb.RatingAck]:
        self._attempt("UpdateRatings", context)
        for _ in requests:
            yield pb.RatingAck(accepted=True)


def _serve(flaky: Flaky) -> tuple[grpc.Server, str]:
    handlers = {
        "Recommend": grpc.unary_unary_rpc_method_handler(
            flaky.recommend,
            request_deserializer=pb.RecommendRequest.FromString,
            response_serializer=pb.RecommendResponse.SerializeToString,
        ),
        "GetModelInfo": grpc.unary_unary_rpc_method_handler(
            flaky.info,
            request_deserializer=pb.GetModelInfoRequest.FromString,
            response_serializer=pb.ModelInfo.SerializeToString,
        ),
        "UpdateRatings": grpc.stream_stream_rpc_method_handler(
            flaky.update,
            request_deserializer=pb.RatingUpdate.FromString,
            response_serializer=pb.RatingAck.SerializeToString,
        ),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("rbmrec.v1.Recommender", handlers),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, f"127.0.0.1:{port}"


@pytest.fixture
def flaky() -> Flaky:
    return Flaky(failures=2)


@pytest.fixture
def target(flaky: Flaky) -> Iterator[str]:
    server, address = _serve(flaky)
    yield address
    server.stop(None)


def test_a_read_is_retried_on_unavailable(flaky: Flaky, target: str) -> None:
    with RecommenderClient(target, timeout_s=10) as client:
        assert client.recommend(1, 5).model_version == "7"
        assert client.info().model_version == "7"
    assert flaky.calls == {"Recommend": 3, "GetModelInfo": 3}


def test_the_async_client_retries_too(flaky: Flaky, target: str) -> None:
    async def main() -> str:
        async with AsyncRecommenderClient(target, timeout_s=10) as client:
            return (await client.recommend(1, 5)).model_version

    assert asyncio.run(main()) == "7"
    assert flaky.calls == {"Recommend": 3}


def test_retries_give_up_after_four_attempts(target: str, flaky: Flaky) -> None:
    flaky.failures = 10
    with RecommenderClient(target, timeout_s=10) as client, pytest.raises(UnavailableError):
        client.recommend(1, 5)
    assert flaky.calls == {"Recommend": 4}


def test_rating_updates_are_never_retried(flaky: Flaky, target: str) -> None:
    flaky.failures = 1
    with RecommenderClient(target, timeout_s=10) as client:
        with pytest.raises(UnavailableError, match="fails on purpose"):
            client.rate([Rating(1, 50, 5.0)])
        assert flaky.calls == {"UpdateRatings": 1}
        assert [a.accepted for a in client.rate([Rating(1, 50, 5.0)] * 2)] == [True, True]
    assert flaky.calls == {"UpdateRatings": 2}


def test_other_errors_are_not_retried(flaky: Flaky, target: str) -> None:
    flaky.code = grpc.StatusCode.INVALID_ARGUMENT
    with RecommenderClient(target) as client, pytest.raises(InvalidArgumentError):
        client.recommend(1, 5)
    assert flaky.calls == {"Recommend": 1}


def test_every_call_carries_the_bearer_token(flaky: Flaky, target: str) -> None:
    flaky.failures = 0
    with RecommenderClient(target, token="tok-3n") as client:
        client.info()
        client.rate([Rating(1, 50, 5.0)])
    for metadata in flaky.metadata:
        assert ("authorization", "Bearer tok-3n") in metadata, metadata


def test_the_service_config_retries_the_reads_only() -> None:
    client = RecommenderClient("127.0.0.1:1")
    options = dict(client.config.channel_options)
    client.close()
    assert options["grpc.enable_retries"] == 1
    (method_config,) = json.loads(options["grpc.service_config"])["methodConfig"]
    named = {(n["service"], n["method"]) for n in method_config["name"]}
    reads = {"Recommend", "RecommendMany", "SimilarMovies", "PredictRatings", "GetModelInfo"}
    assert (
        named
        == {("rbmrec.v1.Recommender", m) for m in reads}
        == set(("rbmrec.v1.Recommender", m) for m in RETRIED_METHODS)
    )
    assert method_config["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]
    # every RPC but UpdateRatings is a read
    service = pb.DESCRIPTOR.services_by_name["Recommender"]
    assert set(service.methods_by_name) - reads == {"UpdateRatings"}
