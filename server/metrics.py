"""Prometheus metrics of one server, in a registry of its own (no global state)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
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


@dataclass
class RpcTimer:
    """Set ``code`` before the block ends if the RPC did not succeed."""

    code: str = "OK"


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

    def watch(self, state: Callable[[], ServerState]) -> None:
        """Export the live state that other parts keep (cache, reloads, queue, version)."""
        self.registry.register(_StateCollector(state))

    @contextlib.contextmanager
    def rpc(self, method: str) -> Iterator[RpcTimer]:
        """Count and time one RPC; the status comes from the timer (``INTERNAL`` on a raise)."""
        timer, start = RpcTimer(), time.perf_counter()
        try:
            yield timer
        except BaseException:
            if timer.code == "OK":
                timer.code = "INTERNAL"
            raise
        finally:
            self.latency.labels(method).observe(time.perf_counter() - start)
            self.requests.labels(method, timer.code).inc()

    def serve_http(self, port: int, host: str) -> int:
        """Expose /metrics on ``host:port`` (0 picks a free port); return the port."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return int(server.server_port)
