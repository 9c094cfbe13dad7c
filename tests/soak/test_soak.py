"""Soak: minutes of mixed Recommend and UpdateRatings at concurrency 128 (``make soak``).

Not part of ``make test``. Prints a table, writes ``bench/results/soak.json`` (or
$SOAK_REPORT) and fails on any error or on resident memory growing 10% or more.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import pytest

from rbmrec.v1 import recommender_pb2 as pb
from rbmrec.v1 import recommender_pb2_grpc as pb_grpc
from tests.harness.cli import ROOT, TrainedModel
from tests.harness.metrics import metric
from tests.harness.server import start_server

pytestmark = [pytest.mark.soak]

DURATION_S = float(os.environ.get("SOAK_SECONDS", "600"))
CONCURRENCY = int(os.environ.get("SOAK_CONCURRENCY", "128"))
UPDATE_SHARE = 0.1  # one call in ten streams a rating
MAX_RSS_GROWTH = 0.10


@dataclass
class Tally:
    """What the callers saw."""

    latencies: dict[str, list[float]] = field(
        default_factory=lambda: {"Recommend": [], "UpdateRatings": []}
    )
    errors: dict[str, int] = field(default_factory=dict)


async def _caller(stub: pb_grpc.RecommenderStub, end: float, seed: int, tally: Tally) -> None:
    rng = random.Random(seed)
    while time.monotonic() < end:
        user = rng.randint(1, 943)
        start = time.perf_counter()
        try:
            if rng.random() < UPDATE_SHARE:
                movie, rating = rng.randint(1, 1682), float(rng.randint(1, 5))
                update = pb.RatingUpdate(user_id=user, movie_id=movie, rating=rating)
                acks = [a async for a in stub.UpdateRatings(iter([update]), timeout=10)]
                assert len(acks) == 1 and acks[0].accepted, acks
                method = "UpdateRatings"
            else:
                await stub.Recommend(pb.RecommendRequest(user_id=user, n=10), timeout=10)
                method = "Recommend"
            tally.latencies[method].append(time.perf_counter() - start)
        except grpc.aio.AioRpcError as exc:
            tally.errors[exc.code().name] = tally.errors.get(exc.code().name, 0) + 1


async def _load(target: str, seconds: float, tally: Tally) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.RecommenderStub(channel)
        end = time.monotonic() + seconds
        await asyncio.gather(*(_caller(stub, end, i, tally) for i in range(CONCURRENCY)))


def _summary(tally: Tally, seconds: float, rss: tuple[float, float]) -> dict[str, object]:
    rows = {}
    for method, lat in tally.latencies.items():
        ms = np.array(lat) * 1000 if lat else np.zeros(1)
        rows[method] = {
            "requests": len(lat),
            "requests_per_s": round(len(lat) / seconds, 1),
            "p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2),
        }
    return {
        "duration_s": seconds,
        "concurrency": CONCURRENCY,
        "methods": rows,
        "errors": tally.errors,
        "rss_start_mb": round(rss[0] / 2**20, 1),
        "rss_end_mb": round(rss[1] / 2**20, 1),
        "rss_growth": round(rss[1] / rss[0] - 1, 4),
    }


@pytest.mark.timeout(DURATION_S * 2 + 900)  # the suite's 300 s is for ordinary tests
def test_soak(trained: TrainedModel, redis_prefix: str) -> None:
    extra = ("--redis-prefix", redis_prefix, "--metrics-port", "0")
    warmup = min(30.0, DURATION_S / 10)
    with start_server(trained.registry, *extra) as server:
        asyncio.run(_load(server.target, warmup, Tally()))
        rss_start = metric(server.metrics_url, "process_resident_memory_bytes")
        tally = Tally()
        asyncio.run(_load(server.target, DURATION_S, tally))
        rss_end = metric(server.metrics_url, "process_resident_memory_bytes")
    report = _summary(tally, DURATION_S, (rss_start, rss_end))
    out = Path(os.environ.get("SOAK_REPORT", ROOT / "bench" / "results" / "soak.json"))
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nsoak: {DURATION_S:.0f} s at concurrency {CONCURRENCY} -> {out}")
    print(f"{'method':<14}{'requests':>10}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}")
    for method, row in report["methods"].items():
        print(
            f"{method:<14}{row['requests']:>10}{row['requests_per_s']:>9}"
            f"{row['p50_ms']:>9}{row['p99_ms']:>9}"
        )
    print(f"errors {tally.errors or 0}; resident memory {_rss_line(report)}")
    assert tally.errors == {}, f"errors during the soak: {tally.errors}"
    assert all(lat for lat in tally.latencies.values()), "both RPCs must have run"
    assert rss_end < rss_start * (1 + MAX_RSS_GROWTH), f"resident memory grew: {report}"


def _rss_line(report: dict[str, object]) -> str:
    growth = float(report["rss_growth"])
    return f"{report['rss_start_mb']} -> {report['rss_end_mb']} MB ({growth:+.1%})"
