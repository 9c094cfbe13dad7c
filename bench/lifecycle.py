"""The rating log's lifecycle: restart time, replica RSS and Redis memory against log length.

For each log length L, a private redis-server holds a stream of L synthetic ratings
(users 1..943, movies 1..1682, levels 1..5) and a real ``rbm-serve`` is started against it
``--repeats`` times, serving version 1 (trained by ``rbm-train`` without the log):

- ``before``: version 1 has absorbed none of the log, so each start replays all L entries;
- compaction: a version that absorbed every entry is registered and promoted, and the real
  ``rbm-ratings trim`` archives the entries into the registry and XTRIMs them;
- ``after``: the same starts again, now serving that version over the trimmed stream.

Per start: seconds from process start to health SERVING (the address file is written just
after it), seconds until the overlay holds every logged rating (driven by one Recommend at
a time, as traffic drives a replica's catch-up when the start-up replay fell short), RSS
(/proc) once complete, and the server's replay and overlay gauges from /metrics. Per
phase: Redis ``used_memory`` and the stream's XLEN. Ratios to the empty log's restart
matter; absolute seconds depend on the machine and whatever else runs on it.

The compacted version is a registered copy of version 1's weights with
``rating_log_until`` = the last entry id, as ``tests/server/test_rating_lifecycle.py``
does: what the server replays and holds depends on that point, not on the weights, and a
real ``rbm-train --ratings-log`` over 1M synthetic ratings would take most of the run.

    python bench/lifecycle.py [--lengths 0,10000,100000,1000000] [--repeats 3] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ratinglog.format import stream_key
from rbmrec.v1 import recommender_pb2 as pb
from rbmrec.v1 import recommender_pb2_grpc as pb_grpc
from registry.records import VersionMeta
from registry.store import FileRegistry

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
DATA = Path(os.environ.get("RBMREC_DATA", ROOT.parent / "shared" / "movielens"))
MODEL, ALIAS, PREFIX = "rbm", "production", "rbmrec"
EMPTY_PREFIX = "rbmrec-empty"  # the paired reference's stream: never written, so empty
USERS, MOVIES, LEVELS = 943, 1682, 5  # ml-100k: every synthetic rating is one the model knows
FULL_LENGTHS = (0, 10_000, 100_000, 1_000_000)
QUICK_LENGTHS = (0, 10_000, 50_000)
MEDIANS = (
    *("restart_s", "complete_s", "rss_mb", "peak_rss_mb", "replay_seconds"),
    *("replay_entries", "overlay_ratings", "overlay_users", "log_timeouts"),
)
LIMIT = 1.2  # acceptance: within 20% of the empty log's
COMPACTION = {
    "method": "copy",
    "what": "version 1's weights registered again with rating_log_until = the last entry id "
    "(tests/harness/registry.py register_copy's way), promoted, then rbm-ratings trim",
    "why": "restart, overlay and memory depend on the version's rating_log_until, not on its "
    "weights; a real rbm-train --ratings-log over 1M synthetic ratings is a long retrain on "
    "2 cores and would measure the trainer, not the server",
}


@dataclass(frozen=True)
class Start:
    """One measured start of rbm-serve."""

    restart_s: float  # process start -> health SERVING (address file written)
    complete_s: float  # process start -> the overlay holds every logged rating
    complete: bool  # False: --catch-up-timeout ran out first
    rss_serving_mb: float
    rss_mb: float  # once complete: what the replica holds while it serves
    peak_rss_mb: float  # VmHWM
    replay_seconds: float  # the server's own start-up replay gauge
    replay_entries: int
    overlay_ratings: int
    overlay_users: int
    recommends: int  # Recommend calls it took to finish the catch-up (0: none needed)
    slowest_recommend_s: float
    log_timeouts: int  # "Timeout reading" warnings the server logged


@dataclass
class Phase:
    """The starts of one log length in one state (before or after compaction)."""

    length: int
    phase: str  # "before" or "after"
    served_version: int
    expected_overlay: int  # distinct (user, movie) pairs after the served version's point
    stream_length: int  # XLEN
    redis_used_mb: float  # INFO memory used_memory, no server running, cache flushed
    stream_mb: float  # MEMORY USAGE of the stream key
    starts: list[Start] = field(default_factory=list)
    references: list[Start] = field(default_factory=list)  # the empty log's, one per start
    trim: dict[str, Any] | None = None  # rbm-ratings trim --json, on "after" phases
    trim_s: float | None = None

    def median(self, name: str) -> float:
        """Median of one Start field over the repeats."""
        return float(statistics.median(float(getattr(s, name)) for s in self.starts))

    def reference(self, name: str) -> float:
        """Median of one field over the paired empty-log starts."""
        return float(statistics.median(float(getattr(r, name)) for r in self.references))

    def ratio(self, name: str) -> float:
        """Median over the repeats of one field against the empty-log start just before it."""
        pairs = zip(self.starts, self.references, strict=True)
        return float(statistics.median(getattr(s, name) / getattr(r, name) for s, r in pairs))


class PrivateRedis:
    """A redis-server of the bench's own on a free loopback port.

    No RDB snapshots and no append-only file: the bench measures memory and replay, not
    durability, and AOF with fsync would slow the 1M-entry fill and share the disk.
    ``used_memory`` does not depend on persistence.
    """

    def __init__(self, directory: Path) -> None:
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.cache_url = f"redis://127.0.0.1:{self.port}/1"  # hidden states: flushed apart
        self.proc = subprocess.Popen(
            [
                *("redis-server", "--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no", "--dir", str(directory)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.client = redis.Redis.from_url(self.url, socket_timeout=60)
        deadline = time.monotonic() + 10
        while True:
            try:
                self.client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise
                time.sleep(0.05)

    def used_mb(self) -> tuple[float, float]:
        """``used_memory`` and the stream's MEMORY USAGE in MB, hidden-state cache emptied."""
        redis.Redis.from_url(self.cache_url).flushdb()
        used = int(self.client.info("memory")["used_memory"])
        stream = self.client.memory_usage(stream_key(PREFIX), samples=0) or 0
        return used / 1e6, int(stream) / 1e6  # 10^6 bytes, as Redis's own "M"

    def stop(self) -> None:
        """SIGTERM; it saves nothing."""
        self.client.close()
        self.proc.terminate()
        self.proc.wait(30)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _train(registry: Path) -> None:
    """Version 1, in production: an ml-100k model trained without the log, few epochs."""
    subprocess.run(
        [
            *(str(BIN / "rbm-train"), "--dataset", "ml-100k", "--data-dir", str(DATA)),
            *("--split", "u1", "--epochs", "3", "--implicit-epochs", "2", "--item-epochs", "2"),
            *("--promote", "--quiet", "--json", "--registry", str(registry), "--device", "cpu"),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        # One torch thread: two per process on 2 shared cores make training far slower.
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def fill(client: redis.Redis, length: int, seed: int) -> tuple[str | None, int]:
    """XADD ``length`` synthetic ratings; return the last entry id and the distinct pairs."""
    rng = np.random.default_rng(seed)
    users = rng.integers(1, USERS + 1, length)
    movies = rng.integers(1, MOVIES + 1, length)
    levels = rng.integers(1, LEVELS + 1, length)
    rating = {level: repr(float(level)) for level in range(1, LEVELS + 1)}
    key, last = stream_key(PREFIX), None
    u, m, v = users.tolist(), movies.tolist(), levels.tolist()
    for begin in range(0, length, 10_000):
        # One pipelined round trip per 10k entries, fields as encode_fields writes them.
        pipe = client.pipeline(transaction=False)
        for i in range(begin, min(length, begin + 10_000)):
            ts = 1_700_000_000 + i
            pipe.execute_command(  # type: ignore[no-untyped-call]
                "XADD", key, "*", "user", u[i], "movie", m[i], "rating", rating[v[i]], "ts", ts
            )
        last = pipe.execute()[-1].decode()
    distinct = len(np.unique(users.astype(np.int64) * (MOVIES + 1) + movies))
    return last, distinct


def register_absorbing(registry: FileRegistry, until: str | None) -> int:
    """Register version 1's files again as a version that absorbed the log up to ``until``."""
    first = registry.get_version(MODEL, 1)

    def write(staging: Path) -> None:
        for path in first.path.iterdir():
            if path.name not in ("MANIFEST.json", "meta.json"):  # the registry seals these
                shutil.copy(path, staging / path.name)

    meta = VersionMeta(
        metrics=first.meta.metrics,
        params=first.meta.params,
        parent_version=1,
        rating_log_until=until,
        description="bench/lifecycle.py: version 1 claiming to have absorbed the log",
    )
    return registry.register(MODEL, write, meta).version


def _trim(url: str, registry: Path) -> tuple[dict[str, Any], float]:
    began = time.monotonic()
    out = subprocess.run(
        [
            *(str(BIN / "rbm-ratings"), "trim", "--redis-url", url, "--prefix", PREFIX),
            *("--registry", str(registry), "--json"),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result, time.monotonic() - began


def _rss_mb(pid: int, field_name: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field_name}:"):
            return int(line.split()[1]) / 1024  # /proc's kB are KiB: this is MiB
    raise RuntimeError(f"no {field_name} for pid {pid}")


def _scrape(url: str) -> dict[str, float]:
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("rbmrec_"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


@contextmanager
def _server(
    registry: Path, db: PrivateRedis, prefix: str, tmp: Path
) -> Iterator[tuple[Any, float, Path]]:
    """Start rbm-serve; yield (the address file's content, seconds to it, its stderr)."""
    address_file, log_file = tmp / "address.json", tmp / "stderr.log"
    address_file.unlink(missing_ok=True)
    cmd = [str(BIN / "rbm-serve"), "--port", "0", "--registry", str(registry)]
    cmd += ["--redis-url", db.url, "--cache-redis-url", db.cache_url, "--redis-prefix", prefix]
    cmd += ["--metrics-port", "0", "--address-file", str(address_file), "--device", "cpu"]
    with open(log_file, "w") as err:
        began = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
        try:
            # The server writes the file (atomically) right after it reports SERVING.
            while not address_file.exists():
                if proc.poll() is not None:
                    raise RuntimeError(f"rbm-serve exited {proc.returncode}: {log_file}")
                if time.monotonic() - began > 900:
                    raise RuntimeError("rbm-serve did not serve within 900 s")
                time.sleep(0.01)
            restart = time.monotonic() - began
            yield json.loads(address_file.read_text()), restart, log_file
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def measure(
    registry: Path, db: PrivateRedis, prefix: str, expected: int, timeout_s: float, tmp: Path
) -> Start:
    """Start the server once; time SERVING and the complete overlay; read RSS and /metrics."""
    redis.Redis.from_url(db.cache_url).flushdb()  # every start computes its hidden states
    began = time.monotonic()
    with _server(registry, db, prefix, tmp) as (address, restart, log_file):
        pid, url = int(address["pid"]), str(address["metrics"])
        rss_serving = _rss_mb(pid)
        with grpc.insecure_channel(address["address"]) as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=30
            )
            if health.status != health_pb2.HealthCheckResponse.SERVING:
                raise RuntimeError(f"address file written but health says {health.status}")
            stub = pb_grpc.RecommenderStub(channel)
            metrics, calls, slowest = _scrape(url), 0, 0.0
            # Each batch catches the overlay up from the stream: traffic finishes a replay
            # that stopped short at start-up (a Redis timeout), as it would in production.
            while metrics["rbmrec_overlay_ratings"] != expected:
                if time.monotonic() - began > timeout_s:
                    break
                sent = time.monotonic()
                stub.Recommend(pb.RecommendRequest(user_id=1 + calls % USERS, n=10), timeout=120)
                slowest = max(slowest, time.monotonic() - sent)
                calls += 1
                metrics = _scrape(url)
        complete = metrics["rbmrec_overlay_ratings"] == expected
        done = time.monotonic() - began
        rss, peak = _rss_mb(pid), _rss_mb(pid, "VmHWM")
    log = log_file.read_text(errors="replace")
    return Start(
        restart_s=restart,
        complete_s=done if complete else float("nan"),
        complete=complete,
        rss_serving_mb=rss_serving,
        rss_mb=rss,
        peak_rss_mb=peak,
        replay_seconds=metrics["rbmrec_replay_seconds"],
        replay_entries=int(metrics["rbmrec_replay_entries"]),
        overlay_ratings=int(metrics["rbmrec_overlay_ratings"]),
        overlay_users=int(metrics["rbmrec_overlay_users"]),
        recommends=calls,
        slowest_recommend_s=slowest,
        log_timeouts=log.count("Timeout reading"),
    )


def _phase(
    length: int,
    name: str,
    registry: FileRegistry,
    db: PrivateRedis,
    expected: int,
    a: argparse.Namespace,
    tmp: Path,
) -> Phase:
    """Measure ``registry``'s production version ``--repeats`` times, each after a reference.

    The reference is the same model over an empty log (version 1 of the base registry, a
    prefix nothing writes to), started just before: the other jobs on the machine move
    start-up times by tens of percent within minutes, so ratios come from pairs.
    """
    used, stream = db.used_mb()
    version = registry.get_alias(MODEL, ALIAS)
    assert version is not None  # the registry copy has production from the start
    xlen = int(db.client.xlen(stream_key(PREFIX)))
    phase = Phase(length, name, version, expected, xlen, used, stream)
    for i in range(a.repeats):
        base = tmp / "base"
        ref = measure(base, db, EMPTY_PREFIX, 0, a.catch_up_timeout, tmp)
        start = measure(registry.root, db, PREFIX, expected, a.catch_up_timeout, tmp)
        phase.references.append(ref)
        phase.starts.append(start)
        print(
            f"  L={length} {name} #{i + 1}: SERVING {start.restart_s:.2f}s (empty log "
            f"{ref.restart_s:.2f}s), complete "
            f"{start.complete_s:.2f}s, replayed {start.replay_entries} at start-up, "
            f"overlay {start.overlay_ratings}/{expected}, {start.recommends} Recommends "
            f"(slowest {start.slowest_recommend_s:.2f}s), {start.log_timeouts} Redis timeouts, "
            f"RSS {start.rss_mb:.0f} MB",
            file=sys.stderr,
            flush=True,
        )
    return phase


def run_length(length: int, db: PrivateRedis, a: argparse.Namespace, tmp: Path) -> list[Phase]:
    """Fill the log to ``length``; measure before, compact and trim, measure after."""
    root = tmp / f"registry-{length}"
    shutil.copytree(tmp / "base", root)  # version 1 in production, no archive
    registry = FileRegistry(root)
    db.client.flushall()
    began = time.monotonic()
    last, distinct = fill(db.client, length, seed=length)
    print(
        f"L={length}: filled in {time.monotonic() - began:.1f}s, {distinct} distinct pairs",
        file=sys.stderr,
        flush=True,
    )
    before = _phase(length, "before", registry, db, distinct, a, tmp)
    version = register_absorbing(registry, last)
    registry.set_alias(MODEL, ALIAS, version, reason="bench/lifecycle.py: absorbed the log")
    trimmed, trim_s = _trim(db.url, root)
    after = _phase(length, "after", registry, db, 0, a, tmp)
    after.trim, after.trim_s = trimmed, trim_s
    return [before, after]


def _empty_reference(phases: list[Phase]) -> dict[str, float]:
    """The empty log's medians over all the reference starts."""
    starts = [s for p in phases for s in p.references]
    return {
        name: float(statistics.median(float(getattr(s, name)) for s in starts))
        for name in ("restart_s", "rss_mb", "overlay_ratings")
    }


def acceptance(phases: list[Phase], empty: dict[str, float]) -> dict[str, Any]:
    """After compaction at the largest length: restart and overlay within 20% of empty's."""
    largest = max(p.length for p in phases)
    after = next(p for p in phases if p.length == largest and p.phase == "after")
    restart = after.ratio("restart_s")
    overlay = after.median("overlay_ratings")
    rss = after.ratio("rss_mb")
    restart_ok = restart <= LIMIT
    overlay_ok = overlay <= LIMIT * empty["overlay_ratings"]  # the empty log's is 0
    return {
        "length": largest,
        "restart_ratio": restart,
        "restart_ok": restart_ok,
        "overlay_ratings": overlay,
        "empty_overlay_ratings": empty["overlay_ratings"],
        "complete": all(s.complete for s in after.starts),
        "overlay_ok": overlay_ok,
        "rss_ratio": rss,  # reported, not part of the verdict
        "limit": LIMIT,
        "verdict": "PASS" if restart_ok and overlay_ok else "FAIL",
    }


def table(phases: list[Phase]) -> str:
    """One line per length and phase: medians over the repeats, ratios to the paired empty."""
    head = (
        f"{'length':>9} {'phase':<6} {'restart s':>9} {'empty s':>7} {'÷ empty':>7} "
        f"{'complete s':>10} {'RSS MB':>7} {'÷ empty':>7} {'overlay':>8} {'replayed':>8} "
        f"{'timeouts':>8} {'Redis MB':>8} {'XLEN':>9}"
    )
    lines = [head]
    for p in phases:
        lines.append(
            f"{p.length:>9} {p.phase:<6} {p.median('restart_s'):>9.2f} "
            f"{p.reference('restart_s'):>7.2f} {p.ratio('restart_s'):>7.2f} "
            f"{p.median('complete_s'):>10.2f} "
            f"{p.median('rss_mb'):>7.0f} {p.ratio('rss_mb'):>7.2f} "
            f"{p.median('overlay_ratings'):>8.0f} {p.median('replay_entries'):>8.0f} "
            f"{p.median('log_timeouts'):>8.0f} {p.redis_used_mb:>8.1f} {p.stream_length:>9}"
        )
    return "\n".join(lines)


def write_json(out: Path, fields: dict[str, Any]) -> None:
    """Write the results with when and how the bench ran (serve.py's write_result's form)."""
    when = datetime.now(UTC).isoformat(timespec="seconds")
    command = " ".join(["python", "bench/lifecycle.py", *sys.argv[1:]])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"when": when, "command": command, **fields}, indent=1) + "\n")
    print(f"wrote {out}", file=sys.stderr)


def _parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--lengths",
        default=",".join(str(n) for n in FULL_LENGTHS),
        help="comma-separated log lengths (entries)",
    )
    p.add_argument("--repeats", type=int, default=None, help="starts per measurement, median (3)")
    p.add_argument(
        "--quick", action="store_true", help="smoke run: lengths 0,10000,50000, 1 start each"
    )
    p.add_argument(
        "--catch-up-timeout",
        type=float,
        default=300.0,
        help="seconds a start may take to hold every logged rating",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=ROOT / "bench" / "results" / "lifecycle.json",
        help="JSON results",
    )
    a = p.parse_args(argv)
    if a.quick:
        a.lengths = ",".join(str(n) for n in QUICK_LENGTHS)
    a.repeats = a.repeats or (1 if a.quick else 3)
    return a


def main() -> None:
    """Measure every length before and after compaction; print a table and write JSON."""
    a = _parse()
    lengths = sorted({int(n) for n in a.lengths.split(",")})
    began, load_before = time.monotonic(), os.getloadavg()
    phases: list[Phase] = []
    with tempfile.TemporaryDirectory(prefix="rbm-lifecycle-") as name:
        tmp = Path(name)
        print("training an ml-100k model (version 1, without the log) ...", file=sys.stderr)
        _train(tmp / "base")
        db = PrivateRedis(tmp)
        try:
            redis_version = str(db.client.info("server")["redis_version"])
            # One start thrown away: the first after training pays for a cold page cache.
            measure(tmp / "base", db, EMPTY_PREFIX, 0, a.catch_up_timeout, tmp)
            for length in lengths:
                phases += run_length(length, db, a, tmp)
        finally:
            db.stop()
    empty = _empty_reference(phases)
    verdict = acceptance(phases, empty)
    elapsed = time.monotonic() - began
    print(table(phases))
    nan = float("nan")
    print(
        f"\nacceptance (after compaction at {verdict.get('length')} entries, limit "
        f"{LIMIT:.1f}x the empty log's): restart {verdict.get('restart_ratio', nan):.2f}x, "
        f"overlay {verdict.get('overlay_ratings', nan):.0f} ratings against "
        f"{verdict.get('empty_overlay_ratings', nan):.0f}; "
        f"RSS {verdict.get('rss_ratio', nan):.2f}x (not judged): {verdict['verdict']}"
    )
    print(f"compaction: {COMPACTION['method']}: {COMPACTION['what']}")
    print(f"run time {elapsed:.0f}s")
    write_json(
        a.out,
        {
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "platform": platform.platform(),
                "redis": redis_version,
                "loadavg_before": load_before,
                "loadavg_after": os.getloadavg(),
            },
            "run_seconds": elapsed,
            "repeats": a.repeats,
            "redis_persistence": "none (--save '' --appendonly no)",
            "compaction": COMPACTION,
            "empty_reference": empty,
            "acceptance": verdict,
            "phases": [
                {
                    **{k: v for k, v in asdict(p).items() if k not in ("starts", "references")},
                    "median": {name: p.median(name) for name in MEDIANS},
                    "ratio_to_empty": {n: p.ratio(n) for n in ("restart_s", "rss_mb")},
                    "starts": [asdict(s) for s in p.starts],
                    "empty_log_references": [asdict(s) for s in p.references],
                }
                for p in phases
            ],
        },
    )


if __name__ == "__main__":
    main()
