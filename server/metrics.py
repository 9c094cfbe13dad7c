"""Prometheus metrics of one server, in a registry of its own (no global state)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["Metrics", "RpcTimer", "ServerState"]

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


@dataclass(frozen=True)
class ServerState:
    """A snapshot of the counters kept by the cache, the model holder and the batcher."""

    cache_hits: int
    cache_misses: int
    cache_errors: int
    cache_backend: str
    reloads: int
    reload_failures: int
    queue_depth: int
    model_version: str
    overlay_users: int = 0  # users with ratings streamed after the served version's point
    overlay_ratings: int = 0
    log_length: int = -1  # entries in the rating log's stream (-1: not read yet)
    log_lag: int = 0  # entries after this replica's position, at the last look (capped)
    replay_seconds: float = 0.0  # building the served version's overlay took this long
    replay_entries: int = 0
    canary_version: str = ""  # "" while no canary is served
    canary_percent: float = 0.0
    impressions_written: int = 0
    impressions_dropped: int = 0


class _StateCollector(Collector):
    def __init__(self, state: Callable[[], ServerState]) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        s = self.state()
        cache = CounterMetricFamily(
            "rbmrec_hidden_cache", "hidden-state lookups", labels=["result"]
        )
        for result, value in (
            ("hit", s.cache_hits),
            ("miss", s.cache_misses),
            ("error", s.cache_errors),
        ):
            cache.add_metric([result], value)
        yield cache
        backend = GaugeMetricFamily(
            "rbmrec_cache_backend", "1 for the store in use", labels=["backend"]
        )
        backend.add_metric([s.cache_backend], 1)
        yield backend
        yield CounterMetricFamily("rbmrec_model_reloads", "versions swapped in", value=s.reloads)
        yield CounterMetricFamily(
            "rbmrec_model_reload_failures", "versions refused", value=s.reload_failures
        )
        yield GaugeMetricFamily("rbmrec_queue_depth", "requests waiting", value=s.queue_depth)
        version = GaugeMetricFamily(
            "rbmrec_model_version_info", "the version being served", labels=["version"]
        )
        version.add_metric([s.model_version], 1)
        yield version
        gauges: tuple[tuple[str, str, float], ...] = (
            ("rbmrec_overlay_users", "users with ratings since the version", s.overlay_users),
            ("rbmrec_overlay_ratings", "ratings streamed since the version", s.overlay_ratings),
            ("rbmrec_rating_log_length", "entries in the rating log stream", s.log_length),
            ("rbmrec_rating_log_lag_entries", "log entries not applied yet here", s.log_lag),
            ("rbmrec_replay_seconds", "the served version's log replay", s.replay_seconds),
            ("rbmrec_replay_entries", "entries the served version replayed", s.replay_entries),
        )
        for name, doc, amount in gauges:
            yield GaugeMetricFamily(name, doc, value=amount)
        canary = GaugeMetricFamily(
            "rbmrec_canary_version_info", "the canary version being served", labels=["version"]
        )
        if s.canary_version:
            canary.add_metric([s.canary_version], 1)
        yield canary
        yield GaugeMetricFamily(
            "rbmrec_canary_percent", "share of users sent to the canary", value=s.canary_percent
        )
        impressions = CounterMetricFamily(
            "rbmrec_impressions", "Recommend answers for the online evaluation", labels=["result"]
        )
        impressions.add_metric(["written"], s.impressions_written)
        impressions.add_metric(["dropped"], s.impressions_dropped)
        yield impressions


class _LoopCollector(Collector):
    """Tasks alive on the event loop: one per in-flight RPC plus a few fixed ones."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def collect(self) -> Iterator[Metric]:
        # Scraped from the HTTP thread; all_tasks() retries if the loop changes the set.
        tasks = len(asyncio.all_tasks(self.loop))
        yield GaugeMetricFamily("rbmrec_event_loop_tasks", "tasks on the event loop", value=tasks)


class RpcTimer:
    """Times one RPC; set ``code`` before the block ends if the RPC did not succeed."""

    __slots__ = ("code", "method", "metrics", "start")

    def __init__(self, metrics: Metrics, method: str) -> None:
        self.metrics, self.method, self.code = metrics, method, "OK"
        self.start = 0.0

    def __enter__(self) -> RpcTimer:
        self.start = time.perf_counter()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        if exc_type is not None and self.code == "OK":
            self.code = "INTERNAL"
        self.metrics._record(self.method, self.code, time.perf_counter() - self.start)


@dataclass
class Metrics:
    """Every metric the server exports."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = Counter(
            "rbmrec_rpc_requests", "RPCs handled", ["method", "code"], registry=r
        )
        self.latency = Histogram(
            "rbmrec_rpc_latency_seconds",
            "RPC latency",
            ["method"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "rbmrec_batch_size", "requests per model pass", buckets=_BATCH_BUCKETS, registry=r
        )
        self.updates = Counter("rbmrec_rating_updates", "rating updates", ["result"], registry=r)
        # Per version and arm (stable or canary), so that a canary's latency and volume sit
        # beside production's; versions served by one process are few, so the labels are too.
        self.served = Counter(
            "rbmrec_served", "answers by arm and version", ["method", "arm", "version"], registry=r
        )
        self.served_latency = Histogram(
            "rbmrec_served_latency_seconds",
            "time to an answer inside the server, by arm and version",
            ["method", "arm", "version"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        ProcessCollector(registry=r)  # resident memory, CPU, open fds: what a leak shows in
        self._latency_children: dict[str, Any] = {}
        self._request_children: dict[tuple[str, str], Any] = {}
        self._served_children: dict[tuple[str, str, str], tuple[Any, Any]] = {}

    def watch(self, state: Callable[[], ServerState]) -> None:
        """Export the live state that other parts keep; call it on the server's event loop."""
        self.registry.register(_StateCollector(state))
        self.registry.register(_LoopCollector(asyncio.get_running_loop()))

    def rpc(self, method: str) -> RpcTimer:
        """Count and time one RPC: ``with metrics.rpc("Recommend") as call: ...``."""
        return RpcTimer(self, method)

    def _record(self, method: str, code: str, seconds: float) -> None:
        # labels() takes a lock and hashes its arguments: keep the children per key.
        latency = self._latency_children.get(method)
        if latency is None:
            latency = self._latency_children[method] = self.latency.labels(method)
        latency.observe(seconds)
        counter = self._request_children.get((method, code))
        if counter is None:
            counter = self._request_children[(method, code)] = self.requests.labels(method, code)
        counter.inc()

    def served_one(self, method: str, arm: str, version: str, seconds: float) -> None:
        """Count and time one answer of ``version`` on ``arm``."""
        key = (method, arm, version)
        children = self._served_children.get(key)
        if children is None:
            children = (self.served.labels(*key), self.served_latency.labels(*key))
            self._served_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def serve_http(self, port: int, host: str) -> int:
        """Expose /metrics on ``host:port`` (0 picks a free port); return the port."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return int(server.server_port)
