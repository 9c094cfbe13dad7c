"""The serving engine over a real server: batching, backends, hot reload, Redis, metrics."""

from __future__ import annotations

import concurrent.futures as cf
import math
import time
from pathlib import Path
from typing import cast

import grpc
import numpy as np
import pytest
import redis
import torch

from rbmrec.v1 import recommender_pb2 as pb
from server.backends import onnx_providers
from tests.harness.calls import Load, recommend, try_update, update
from tests.harness.cli import TrainedModel
from tests.harness.metrics import histogram, metric
from tests.harness.redis import OwnRedis, wait_for
from tests.harness.registry import copy_registry, register_copy
from tests.harness.server import RunningServer, start_server

USERS = list(range(1, 120))
BATCHING = ("--max-batch-size", "64", "--max-batch-wait-us", "10000")


def _answers(server: RunningServer, concurrency: int) -> dict[int, pb.RecommendResponse]:
    with cf.ThreadPoolExecutor(concurrency) as pool:
        replies = list(pool.map(lambda u: recommend(server.stub, u), USERS))
    return dict(zip(USERS, replies, strict=True))


def _same(a: pb.RecommendResponse, b: pb.RecommendResponse, atol: float) -> None:
    assert [m.movie_id for m in a.movies] == [m.movie_id for m in b.movies]
    np.testing.assert_allclose([m.score for m in a.movies], [m.score for m in b.movies], atol=atol)
    np.testing.assert_allclose(
        [m.predicted_rating for m in a.movies], [m.predicted_rating for m in b.movies], atol=atol
    )


def test_concurrent_clients_get_the_answers_of_one_at_a_time(trained: TrainedModel) -> None:
    common = ("--cache", "memory", "--metrics-port", "0")
    with (
        # A batch waits up to 10 ms for more requests: batches form however fast the machine.
        start_server(trained.registry, *common, *BATCHING) as batched,
        start_server(trained.registry, *common, "--max-batch-size", "1") as single,
    ):
        sequential = _answers(single, 1)
        concurrent = _answers(batched, 32)
        # Cumulative counts of model passes by requests per pass: {1.0: passes of one, ...}.
        alone = histogram(single.metrics_url, "rbmrec_batch_size")
        together = histogram(batched.metrics_url, "rbmrec_batch_size")
        computed = metric(batched.metrics_url, "rbmrec_batch_size_sum")
    for user in USERS:
        _same(sequential[user], concurrent[user], atol=1e-5)
    # One at a time, every pass holds one request: what a batcher that never batches shows.
    assert alone[1.0] == alone[math.inf] == len(USERS)
    # 32 at once: the requests were computed in passes of more than one, each exactly once.
    assert computed == len(USERS)
    passes, single_passes = together[math.inf], together[1.0]
    batched_requests = computed - single_passes  # requests that shared their pass
    assert passes < len(USERS) and single_passes < passes, together
    assert batched_requests >= len(USERS) / 2, f"most requests should share a pass: {together}"
    assert together[8.0] < passes, f"some pass should hold more than 8 requests: {together}"


def test_onnx_backend_gives_the_same_answers(trained: TrainedModel) -> None:
    with (
        start_server(trained.registry, "--cache", "memory", "--backend", "onnx") as onnx_server,
        start_server(trained.registry, "--cache", "memory") as torch_server,
    ):
        info = onnx_server.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=5)
        assert info.backend == "onnx"
        # The device names where the pass really runs: this install's onnxruntime is the
        # CPU build, whatever --device says.
        assert info.device == "cpu (onnxruntime CPUExecutionProvider)"
        for user in (1, 2, 300, 10_000_000):
            _same(
                recommend(onnx_server.stub, user, 50),
                recommend(torch_server.stub, user, 50),
                atol=1e-4,
            )
        req = pb.PredictRatingsRequest(user_id=7, movie_ids=[1, 50, 1682])
        np.testing.assert_allclose(
            onnx_server.stub.PredictRatings(req, timeout=5).ratings,
            torch_server.stub.PredictRatings(req, timeout=5).ratings,
            atol=1e-4,
        )


def test_promotion_under_load_switches_once_with_no_failed_request(
    trained: TrainedModel, tmp_path: Path
) -> None:
    registry = copy_registry(trained, tmp_path)
    with start_server(registry.root, "--cache", "memory") as running, Load(running) as load:
        wait_for(lambda: all(len(v) > 5 for v in load.versions))
        registry.set_alias("rbm", "production", register_copy(registry), reason="test")
        wait_for(lambda: all(v and v[-1] == "2" for v in load.versions))
        time.sleep(0.3)
    assert load.failures == []
    for seen in load.versions:
        assert seen[0] == "1" and seen[-1] == "2"
        switch = seen.index("2")
        assert set(seen[:switch]) == {"1"} and set(seen[switch:]) == {"2"}, "switched once"


@pytest.mark.parametrize("corrupt", ["shapes", "truncated"])
def test_a_broken_version_is_refused_and_the_old_one_keeps_serving(
    trained: TrainedModel, tmp_path: Path, corrupt: str
) -> None:
    registry = copy_registry(trained, tmp_path)
    with start_server(registry.root, "--cache", "memory") as running, Load(running) as load:
        wait_for(lambda: all(len(v) > 5 for v in load.versions))
        broken = register_copy(registry, corrupt)
        registry.set_alias("rbm", "production", broken, reason="test a broken version")

        def refused() -> bool:
            info = running.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=5)
            return bool(info.refused_version == str(broken))

        wait_for(refused)
        time.sleep(0.3)
        info = running.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=5)
    assert load.failures == []
    assert info.model_version == "1" and info.last_reload_error
    assert all(set(v) == {"1"} for v in load.versions)
    assert "refused" in running.log


def test_without_redis_recommend_answers_and_updates_are_unavailable_until_it_returns(
    trained: TrainedModel, own_redis: OwnRedis
) -> None:
    with start_server(
        trained.registry, "--redis-url", own_redis.url, "--metrics-port", "0"
    ) as running:
        assert update(running, 3, 50, 5.0).accepted
        own_redis.stop()
        for user in (1, 2, 3):
            assert len(recommend(running.stub, user).movies) == 10
        movie = recommend(running.stub, 3).movies[0].movie_id  # unrated, by definition
        with pytest.raises(grpc.RpcError) as err:
            update(running, 3, movie, 5.0)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert movie in {m.movie_id for m in recommend(running.stub, 3).movies}, (
            "an update that was refused must not be applied"
        )
        own_redis.start()  # append-only: the acknowledged update survived the restart
        wait_for(lambda: try_update(running, 3, movie, 4.0), 15)
        assert movie not in {m.movie_id for m in recommend(running.stub, 3, 1000).movies}
        client = redis.Redis.from_url(own_redis.url)

        def cached_in_redis() -> bool:
            recommend(running.stub, 4)
            # user 4's hidden state, whatever identifies the model version in the key
            return any(client.scan_iter("rbmrec:rbm:h:*:4:base"))

        wait_for(cached_in_redis, 15)  # the server uses Redis again, without a restart
        assert metric(running.metrics_url, "rbmrec_cache_backend", backend="redis") == 1.0
    log = cast(list[tuple[bytes, dict[bytes, bytes]]], client.xrange("rbmrec:ratings"))
    assert [(int(f[b"movie"]), float(f[b"rating"])) for _, f in log] == [(50, 5.0), (movie, 4.0)]


def test_metrics_count_requests_and_batches(trained: TrainedModel) -> None:
    with start_server(trained.registry, "--cache", "memory", "--metrics-port", "0") as running:
        _answers(running, 16)
        with pytest.raises(grpc.RpcError):
            running.stub.Recommend(pb.RecommendRequest(user_id=1, n=0), timeout=5)
        url = running.metrics_url
        ok = metric(url, "rbmrec_rpc_requests_total", code="OK", method="Recommend")
        bad = metric(url, "rbmrec_rpc_requests_total", code="INVALID_ARGUMENT", method="Recommend")
        passes = metric(url, "rbmrec_batch_size_count")
        computed = metric(url, "rbmrec_batch_size_sum")
        assert (ok, bad) == (len(USERS), 1)
        assert computed == len(USERS), "every valid request is computed in exactly one pass"
        assert 1 <= passes <= len(USERS)
        assert metric(url, "rbmrec_model_version_info", version="1") == 1.0


def test_onnx_on_cuda_is_refused_in_one_line_without_a_cuda_provider() -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime can run on CUDA")
    with pytest.raises(ValueError, match=r"^--backend onnx cannot run on cuda: .*onnxruntime-gpu"):
        onnx_providers(torch.device("cuda"))
