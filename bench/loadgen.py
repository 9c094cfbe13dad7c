"""Closed-loop gRPC load: N concurrent callers, each sending its next request when the last returns.

Run as its own process (``python bench/loadgen.py --target HOST:PORT ...``) so the load
generator never shares a GIL with the server; prints one JSON object with the counts and
latency percentiles.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import grpc
import numpy as np

from rbmrec.v1 import recommender_pb2 as pb
from rbmrec.v1 import recommender_pb2_grpc as pb_grpc


async def _caller(
    stub: pb_grpc.RecommenderStub,
    users: list[int],
    n: int,
    end: float,
    latencies: list[float],
    errors: list[str],
    offset: int,
) -> None:
    i = offset
    while time.monotonic() < end:
        user = users[i % len(users)]
        i += 1
        start = time.perf_counter()
        try:
            await stub.Recommend(pb.RecommendRequest(user_id=user, n=n), timeout=10)
            latencies.append(time.perf_counter() - start)
        except grpc.aio.AioRpcError as exc:
            errors.append(exc.code().name)


async def run(
    target: str,
    concurrency: int,
    duration_s: float,
    warmup_s: float,
    n: int,
    users: list[int],
    channels: int,
) -> dict[str, float]:
    """Drive ``target`` and return throughput, latency percentiles and errors."""
    # One channel per group of callers, each with its own connection: channels to one
    # target otherwise share a single TCP connection.
    opts = [("grpc.use_local_subchannel_pool", 1)]
    chans = [grpc.aio.insecure_channel(target, options=opts) for _ in range(channels)]
    stubs = [pb_grpc.RecommenderStub(c) for c in chans]

    async def drive(seconds: float) -> tuple[list[float], list[str], float]:
        latencies: list[float] = []
        errors: list[str] = []
        began = time.monotonic()
        await asyncio.gather(
            *(
                _caller(stubs[c % channels], users, n, began + seconds, latencies, errors, c * 7919)
                for c in range(concurrency)
            )
        )
        return latencies, errors, time.monotonic() - began

    try:
        await drive(warmup_s)
        latencies, errors, elapsed = await drive(duration_s)
    finally:
        for c in chans:
            await c.close()
    lat = np.asarray(latencies) * 1000
    return {
        "requests": float(len(latencies)),
        "errors": float(len(errors)),
        "rps": len(latencies) / elapsed,
        "p50_ms": float(np.percentile(lat, 50)) if lat.size else float("nan"),
        "p95_ms": float(np.percentile(lat, 95)) if lat.size else float("nan"),
        "p99_ms": float(np.percentile(lat, 99)) if lat.size else float("nan"),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--target", required=True)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("-n", type=int, default=10)
    p.add_argument("--users", default="1-943", help="range of user ids, LO-HI")
    p.add_argument("--channels", type=int, default=4)
    a = p.parse_args()
    lo, hi = (int(x) for x in a.users.split("-"))
    users = list(range(lo, hi + 1))
    result = asyncio.run(
        run(
            a.target,
            a.concurrency,
            a.duration,
            a.warmup,
            a.n,
            users,
            min(a.channels, a.concurrency),
        )
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
