"""The serving engine over a real server: batching, backends, hot reload, Redis, metrics."""

from __future__ import annotations

import concurrent.futures as cf
import json
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
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

USERS = list(range(1, 120))


def _recommend(stub: object, user: int, n: int = 10) -> pb.RecommendResponse:
    return stub.Recommend(pb.RecommendRequest(user_id=user, n=n), timeout=30)  # type: ignore[attr-defined]


def _answers(server: RunningServer, concurrency: int) -> dict[int, pb.RecommendResponse]:
    with cf.ThreadPoolExecutor(concurrency) as pool:
        replies = list(pool.map(lambda u: _recommend(server.stub, u), USERS))
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
                _recommend(onnx_server.stub, user, 50),
                _recommend(torch_server.stub, user, 50),
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


class Load:
    """Clients calling Recommend in a loop until stopped; records versions and failures."""

    def __init__(self, server: RunningServer, threads: int = 4) -> None:
        self.server = server
        self.stop = threading.Event()
        self.versions: list[list[str]] = [[] for _ in range(threads)]
        self.failures: list[str] = []
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]

    def _run(self, i: int) -> None:
        user = 1 + i
        while not self.stop.is_set():
            try:
                self.versions[i].append(_recommend(self.server.stub, user).model_version)
            except grpc.RpcError as exc:
                self.failures.append(f"{exc.code()}: {exc.details()}")
            user = user % 900 + 1

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)


def _wait_for(predicate: object, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_promotion_under_load_switches_once_with_no_failed_request(
    trained: TrainedModel, tmp_path: Path
) -> None:
    registry = _copy_registry(trained, tmp_path)
    with start_server(registry.root, "--cache", "memory") as running, Load(running) as load:
        _wait_for(lambda: all(len(v) > 5 for v in load.versions))
        registry.set_alias("rbm", "production", _register_copy(registry), reason="test")
        _wait_for(lambda: all(v and v[-1] == "2" for v in load.versions))
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
        _wait_for(lambda: all(len(v) > 5 for v in load.versions))
        broken = _register_copy(registry, corrupt)
        registry.set_alias("rbm", "production", broken, reason="test a broken version")

        def refused() -> bool:
            info = running.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=5)
            return info.refused_version == str(broken)

        _wait_for(refused)
        time.sleep(0.3)
        info = running.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=5)
    assert load.failures == []
    assert info.model_version == "1" and info.last_reload_error
    assert all(set(v) == {"1"} for v in load.versions)
    assert "refused" in running.log


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OwnRedis:
    """A redis-server of the test's own on a free loopback port; only it is ever stopped."""

    def __init__(self, tmp: Path) -> None:
        self.port, self.dir = _free_port(), tmp
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--dir",
                str(self.dir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_for(self._answers, 10)

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    redis_server = OwnRedis(tmp_path)
    redis_server.start()
    yield redis_server
    redis_server.stop()


def _update(server: RunningServer, user: int, movie: int, rating: float) -> pb.RatingAck:
    acks = list(
        server.stub.UpdateRatings(
            iter([pb.RatingUpdate(user_id=user, movie_id=movie, rating=rating)]), timeout=10
        )
    )
    assert len(acks) == 1
    return acks[0]


def _metric(url: str, name: str, **labels: str) -> float:
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        key, _, value = line.rpartition(" ")
        if key == (f"{name}{{{want}}}" if labels else name):
            return float(value)
    return 0.0


def test_without_redis_recommend_answers_and_updates_are_unavailable_until_it_returns(
    trained: TrainedModel, own_redis: OwnRedis
) -> None:
    with start_server(
        trained.registry, "--redis-url", own_redis.url, "--metrics-port", "0"
    ) as running:
        assert _update(running, 3, 50, 5.0).accepted
        own_redis.stop()
        for user in (1, 2, 3):
            assert len(_recommend(running.stub, user).movies) == 10
        movie = _recommend(running.stub, 3).movies[0].movie_id  # unrated, by definition
        with pytest.raises(grpc.RpcError) as err:
            _update(running, 3, movie, 5.0)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert movie in {m.movie_id for m in _recommend(running.stub, 3).movies}, (
            "an update that was refused must not be applied"
        )
        own_redis.start()  # append-only: the acknowledged update survived the restart
        _wait_for(lambda: _try_update(running, 3, movie, 4.0), 15)
        assert movie not in {m.movie_id for m in _recommend(running.stub, 3, 1000).movies}
        client = redis.Redis.from_url(own_redis.url)

        def cached_in_redis() -> bool:
            _recommend(running.stub, 4)
            return bool(client.exists("rbmrec:rbm:h:1:4:0"))

        _wait_for(cached_in_redis, 15)  # the server uses Redis again, without a restart
        assert _metric(running.metrics_url, "rbmrec_cache_backend", backend="redis") == 1.0
    log = client.xrange("rbmrec:ratings")
    assert [(int(f[b"movie"]), float(f[b"rating"])) for _, f in log] == [(50, 5.0), (movie, 4.0)]


def _try_update(server: RunningServer, user: int, movie: int, rating: float) -> bool:
    try:
        return _update(server, user, movie, rating).accepted
    except grpc.RpcError:
        return False


def test_metrics_count_requests_and_batches(trained: TrainedModel) -> None:
    with start_server(trained.registry, "--cache", "memory", "--metrics-port", "0") as running:
        _answers(running, 16)
        with pytest.raises(grpc.RpcError):
            running.stub.Recommend(pb.RecommendRequest(user_id=1, n=0), timeout=5)
        url = running.metrics_url
        ok = _metric(url, "rbmrec_rpc_requests_total", code="OK", method="Recommend")
        bad = _metric(url, "rbmrec_rpc_requests_total", code="INVALID_ARGUMENT", method="Recommend")
        passes = _metric(url, "rbmrec_batch_size_count")
        computed = _metric(url, "rbmrec_batch_size_sum")
        assert (ok, bad) == (len(USERS), 1)
        assert computed == len(USERS), "every valid request is computed in exactly one pass"
        assert 1 <= passes <= len(USERS)
        assert _metric(url, "rbmrec_model_version_info", version="1") == 1.0
