"""Slow clients, cancelled streams and deadlines that pass in the queue leak nothing.

The server exports the tasks alive on its event loop, its queue depth and its resident
memory; after each round of abuse they must come back to where they were.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from collections.abc import Iterator

import grpc

from rbmrec.v1 import recommender_pb2 as pb
from registry.store import FileRegistry
from tests.harness.calls import recommend
from tests.harness.metrics import metric
from tests.harness.redis import wait_for
from tests.harness.server import RunningServer, start_server

ROUNDS = 4
RSS_GROWTH = 1.05  # resident memory after the last round vs after the first


def _updates(user: int, stop: threading.Event | None = None) -> Iterator[pb.RatingUpdate]:
    for movie in itertools.cycle(range(1, 60)):
        if stop is not None and stop.is_set():
            return
        yield pb.RatingUpdate(user_id=user, movie_id=movie, rating=4.0)


def _slow_reader(server: RunningServer) -> None:
    """Reads acks slowly while the stream sends fast, then hangs up."""
    call = server.stub.UpdateRatings(_updates(7), timeout=30)
    for _ in itertools.islice(call, 20):
        time.sleep(0.01)
    call.cancel()


def _cancel_mid_stream(server: RunningServer) -> None:
    """Sends a few updates, then stalls with the stream open and cancels it."""
    stop = threading.Event()
    stalled = itertools.chain(itertools.islice(_updates(8), 5), _stall(stop))
    call = server.stub.UpdateRatings(stalled, timeout=30)
    assert all(ack.accepted for ack in itertools.islice(call, 5))
    call.cancel()
    stop.set()


def _stall(stop: threading.Event) -> Iterator[pb.RatingUpdate]:
    stop.wait(10)
    yield from ()


def _deadlines_in_the_queue(server: RunningServer) -> Counter[str]:
    """Many requests whose deadline passes before the model gets to them."""
    futures = [
        server.stub.Recommend.future(pb.RecommendRequest(user_id=1 + i % 900, n=10), timeout=0.002)
        for i in range(300)
    ]
    codes: Counter[str] = Counter()
    for f in futures:
        try:
            f.result()
            codes["OK"] += 1
        except grpc.RpcError as exc:
            codes[exc.code().name] += 1
    return codes


def _settled(server: RunningServer, tasks: float) -> bool:
    url = server.metrics_url
    return (
        metric(url, "rbmrec_event_loop_tasks") <= tasks and metric(url, "rbmrec_queue_depth") == 0
    )


def test_abusive_clients_leak_no_tasks_queue_slots_or_memory(
    registry_copy: FileRegistry, redis_prefix: str
) -> None:
    extra = ("--redis-prefix", redis_prefix, "--metrics-port", "0", "--max-batch-size", "4")
    with start_server(registry_copy.root, *extra) as server:
        recommend(server.stub, 1)
        url = server.metrics_url
        tasks = metric(url, "rbmrec_event_loop_tasks")
        assert tasks > 0
        rss: list[float] = []
        expired = 0
        for _ in range(ROUNDS):
            _slow_reader(server)
            _cancel_mid_stream(server)
            expired += _deadlines_in_the_queue(server)["DEADLINE_EXCEEDED"]
            wait_for(lambda: _settled(server, tasks), 15)
            rss.append(metric(url, "process_resident_memory_bytes"))
        computed = metric(url, "rbmrec_batch_size_sum")
        assert len(recommend(server.stub, 2).movies) == 10, "still serving"
    assert expired > 0, "the test must make deadlines pass in the queue"
    assert computed < 1 + ROUNDS * 300, "expired requests are dropped before the model pass"
    assert rss[-1] <= rss[0] * RSS_GROWTH, f"resident memory grew: {rss}"
