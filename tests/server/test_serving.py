"""The serving engine over a real server: batching, backends, hot reload, Redis, metrics."""

from __future__ import annotations

import concurrent.futures as cf
import json
import shutil
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import redis

from rbm.checkpoint import load_checkpoint, save_checkpoint
from rbm.onnx_export import ONNX_FILE
from rbmrec.v1 import recommender_pb2 as pb
from registry.records import VersionMeta
from registry.store import FileRegistry
from tests.conftest import TrainedModel
from tests.server.conftest import RunningServer, start_server
from tests.server.support import (
    Load,
    OwnRedis,
    metric,
    recommend,
    try_update,
    update,
    wait_for,
)

USERS = list(range(1, 120))


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
    with (
        start_server(trained.registry, "--cache", "memory", "--max-batch-size", "64") as batched,
        start_server(trained.registry, "--cache", "memory", "--max-batch-size", "1") as single,
    ):
        sequential = _answers(single, 1)
        concurrent = _answers(batched, 32)  # batch sizes > 1: see the metrics test
    for user in USERS:
        _same(sequential[user], concurrent[user], atol=1e-5)


def test_onnx_backend_gives_the_same_answers(trained: TrainedModel) -> None:
    with (
        start_server(trained.registry, "--cache", "memory", "--backend", "onnx") as onnx_server,
        start_server(trained.registry, "--cache", "memory") as torch_server,
    ):
        info = onnx_server.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=5)
        assert info.backend == "onnx"
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


def _copy_registry(trained: TrainedModel, tmp_path: Path) -> FileRegistry:
    root = tmp_path / "registry"
    shutil.copytree(trained.registry, root)
    return FileRegistry(root)


def _register_copy(registry: FileRegistry, corrupt: str | None = None) -> int:
    """Register version 1's model again; `corrupt` breaks it in a way checksums cannot see."""
    first = registry.get_version("rbm", 1)
    ckpt = load_checkpoint(first.path)

    def write(d: Path) -> None:
        save_checkpoint(ckpt, d)
        shutil.copy(first.path / ONNX_FILE, d / ONNX_FILE)
        if corrupt == "shapes":  # a consistent manifest over a model with wrong shapes
            meta = json.loads((d / "model.json").read_text())
            meta["config"]["n_hidden"] += 1
            (d / "model.json").write_text(json.dumps(meta))
        elif corrupt == "truncated":
            data = (d / "model.safetensors").read_bytes()
            (d / "model.safetensors").write_bytes(data[: len(data) // 2])

    meta = VersionMeta(metrics=first.meta.metrics, params=first.meta.params, parent_version=1)
    return registry.register("rbm", write, meta).version


def test_promotion_under_load_switches_once_with_no_failed_request(
    trained: TrainedModel, tmp_path: Path
) -> None:
    registry = _copy_registry(trained, tmp_path)
    with start_server(registry.root, "--cache", "memory") as running, Load(running) as load:
        wait_for(lambda: all(len(v) > 5 for v in load.versions))
        registry.set_alias("rbm", "production", _register_copy(registry), reason="test")
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
    registry = _copy_registry(trained, tmp_path)
    with start_server(registry.root, "--cache", "memory") as running, Load(running) as load:
        wait_for(lambda: all(len(v) > 5 for v in load.versions))
        broken = _register_copy(registry, corrupt)
        registry.set_alias("rbm", "production", broken, reason="test a broken version")

        def refused() -> bool:
            info = running.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=5)
            return info.refused_version == str(broken)

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
            return bool(client.exists("rbmrec:rbm:h:1:4:0"))

        wait_for(cached_in_redis, 15)  # the server uses Redis again, without a restart
        assert metric(running.metrics_url, "rbmrec_cache_backend", backend="redis") == 1.0
    log = client.xrange("rbmrec:ratings")
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
