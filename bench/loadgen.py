"""Closed-loop gRPC load: N concurrent callers, each sending its next request when the last returns.

Run as its own process (``python bench/loadgen.py --target HOST:PORT ...``) so the load
generator never shares a GIL with the server; prints one JSON object with the counts and
latency percentiles.

Options beyond plain Recommend load, each adding keys to the JSON (none by default):

- ``--prime``: one Recommend per user before the warm-up, so that a hidden-state cache
  holds every user when the measurement starts (``prime_errors``);
- ``--update-streams S``: S UpdateRatings streams rating movies the warm-up's responses
  named, one update after another, while the measured load runs (``updates_acked``,
  ``updates_rejected``, ``update_errors``, ``updates_per_s``);
- ``--versions``: how many measured responses each model version served (``versions``);
- ``--until-version V``: with ``--versions``, the measurement goes on past ``--duration``
  (up to ``LONGEST_WAIT_S`` more) until version V has answered for a second.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from collections import Counter
from collections.abc import Awaitable
from dataclasses import dataclass, field

import grpc
import numpy as np

from rbmrec.v1 import recommender_pb2 as pb
from rbmrec.v1 import recommender_pb2_grpc as pb_grpc

LONGEST_WAIT_S = 120.0  # for --until-version: a CUDA server may take this long to swap


@dataclass
class _Seen:
    """What the callers record beyond latencies, when asked to."""

    versions: Counter[str] | None = None  # model_version -> responses
    movies: set[int] | None = None  # movie ids the responses named
    first: dict[str, float] = field(default_factory=dict)  # model_version -> first answer


@dataclass
class _Deadline:
    """When the callers stop; a watcher may move it."""

    at: float


@dataclass
class _Updates:
    """The tally of the UpdateRatings streams."""

    acked: int = 0
    rejected: int = 0
    errors: list[str] = field(default_factory=list)


async def _caller(
    stub: pb_grpc.RecommenderStub,
    users: list[int],
    n: int,
    end: _Deadline,
    latencies: list[float],
    errors: list[str],
    offset: int,
    seen: _Seen | None = None,
) -> None:
    i = offset
    while time.monotonic() < end.at:
        user = users[i % len(users)]
        i += 1
        start = time.perf_counter()
        try:
            reply = await stub.Recommend(pb.RecommendRequest(user_id=user, n=n), timeout=10)
            latencies.append(time.perf_counter() - start)
        except grpc.aio.AioRpcError as exc:
            errors.append(exc.code().name)
            continue
        if seen is not None:
            if seen.versions is not None:
                seen.versions[reply.model_version] += 1
                seen.first.setdefault(reply.model_version, time.monotonic())
            if seen.movies is not None:
                seen.movies.update(m.movie_id for m in reply.movies)


async def _streamer(
    stub: pb_grpc.RecommenderStub,
    users: list[int],
    movies: list[int],
    levels: list[float],
    end: float,
    tally: _Updates,
    seed: int,
) -> None:
    """One UpdateRatings stream: write an update, read its ack, until ``end``."""
    rng = random.Random(seed)
    call = stub.UpdateRatings(timeout=max(end - time.monotonic(), 0) + 30)
    try:
        while time.monotonic() < end:
            update = pb.RatingUpdate(
                user_id=rng.choice(users),
                movie_id=rng.choice(movies),
                rating=rng.choice(levels),
                timestamp=int(time.time()),
            )
            await call.write(update)
            ack = await call.read()
            if ack is grpc.aio.EOF:
                tally.errors.append("EOF")
                return
            if ack.accepted:
                tally.acked += 1
            else:
                tally.rejected += 1
        await call.done_writing()
        if await call.read() is not grpc.aio.EOF or await call.code() != grpc.StatusCode.OK:
            tally.errors.append("UNCLEAN_END")
    except grpc.aio.AioRpcError as exc:
        tally.errors.append(f"{exc.code().name}: {exc.details()}")


async def _prime(stub: pb_grpc.RecommenderStub, users: list[int], n: int, width: int) -> list[str]:
    """One Recommend per user, ``width`` at a time; the errors."""
    errors: list[str] = []
    for lo in range(0, len(users), width):
        replies = await asyncio.gather(
            *(
                stub.Recommend(pb.RecommendRequest(user_id=u, n=n), timeout=30)
                for u in users[lo : lo + width]
            ),
            return_exceptions=True,
        )
        for r in replies:
            if isinstance(r, grpc.aio.AioRpcError):
                errors.append(r.code().name)
            elif isinstance(r, BaseException):
                raise r
    return errors


async def _hold_until(version: str, seen: _Seen, end: _Deadline, planned: float) -> None:
    """Keep ``end`` open past ``planned`` until ``version`` has answered for a second."""
    while time.monotonic() < end.at and version not in seen.first:
        await asyncio.sleep(0.05)
    if version in seen.first:
        end.at = max(planned, seen.first[version] + 1.0)


async def run(
    target: str,
    concurrency: int,
    duration_s: float,
    warmup_s: float,
    n: int,
    users: list[int],
    channels: int,
    *,
    prime: bool = False,
    update_streams: int = 0,
    versions: bool = False,
    until_version: str | None = None,
) -> dict[str, object]:
    """Drive ``target`` and return throughput, latency percentiles and errors."""
    # One channel per group of callers, each with its own connection: channels to one
    # target otherwise share a single TCP connection.
    opts = [("grpc.use_local_subchannel_pool", 1)]
    chans = [grpc.aio.insecure_channel(target, options=opts) for _ in range(channels)]
    stubs = [pb_grpc.RecommenderStub(c) for c in chans]
    extra: dict[str, object] = {}

    async def drive(
        seconds: float, seen: _Seen | None = None, *also: Awaitable[None]
    ) -> tuple[list[float], list[str], float]:
        latencies: list[float] = []
        errors: list[str] = []
        began = time.monotonic()
        end = _Deadline(began + seconds)
        if until_version is not None and seen is not None:
            planned, end.at = end.at, end.at + LONGEST_WAIT_S
            also = (*also, _hold_until(until_version, seen, end, planned))
        callers = (
            _caller(stubs[c % channels], users, n, end, latencies, errors, c * 7919, seen)
            for c in range(concurrency)
        )
        await asyncio.gather(*callers, *also)
        return latencies, errors, time.monotonic() - began

    try:
        if prime:
            extra["prime_errors"] = float(len(await _prime(stubs[0], users, n, concurrency)))
        warm = _Seen(movies=set())
        await drive(warmup_s, warm if update_streams else None)
        measured = _Seen(versions=Counter()) if versions else None
        tally = _Updates()
        streams = []
        if update_streams:
            info = await stubs[0].GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
            movies, levels = sorted(warm.movies or {1}), list(info.rating_levels)
            end = time.monotonic() + duration_s
            streams = [
                _streamer(stubs[s % channels], users, movies, levels, end, tally, s)
                for s in range(update_streams)
            ]
        latencies, errors, elapsed = await drive(duration_s, measured, *streams)
        if update_streams:
            extra |= {
                "updates_acked": float(tally.acked),
                "updates_rejected": float(tally.rejected),
                "update_errors": float(len(tally.errors)),
                "update_error_codes": dict(Counter(tally.errors)),
                "updates_per_s": tally.acked / elapsed,
            }
        if measured is not None and measured.versions is not None:
            extra["versions"] = dict(sorted(measured.versions.items()))
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
        **extra,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--target", required=True)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("-n", type=int, default=10)
    p.add_argument("--users", default="1-943", help="range of user ids, LO-HI")
    p.add_argument("--channels", type=int, default=4)
    p.add_argument("--prime", action="store_true", help="one Recommend per user first")
    p.add_argument(
        "--update-streams", type=int, default=0, help="UpdateRatings streams during the run"
    )
    p.add_argument("--versions", action="store_true", help="count responses per model version")
    p.add_argument("--until-version", help="with --versions: run on until V has answered")
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
            prime=a.prime,
            update_streams=a.update_streams,
            versions=a.versions or a.until_version is not None,
            until_version=a.until_version,
        )
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
