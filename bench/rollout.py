"""Rollout benchmark: Recommend's p99 and errors through a promotion, replicas swapping together
or spread out, side by side in one run.

Two ``rbm-serve`` replicas serve version 1 of a synthetic model; a load generator in its
own process (``--drive``, no GIL shared with the servers) keeps ``--concurrency`` callers
(64) split evenly over them, each sending its next Recommend when the last returns, and
records every request: when it was sent, its latency, its status code, the model version
that answered and the replica. After ``--steady`` seconds (10) version 2 is promoted
(``FileRegistry.set_alias``); the load goes on until both replicas say (in their logs)
that they serve version 2, plus ``--hold`` seconds (3), and at least ``--after`` seconds
(30) after the promotion in every variant, so that each run is about as long. Variants,
alternating which goes first within each of ``--rounds`` rounds, with the same seeds:

- ``together``: ``--poll-jitter 0 --swap-spread-s 0``: every replica checks the alias every
  second and loads the new version as soon as it sees it (the behaviour before #17);
- ``spread``: ``--poll-jitter 0.5 --swap-spread-s S`` (``--spread``, 10 s): each replica
  waits U[0, S] after seeing the alias move before it loads. The draws are seeded
  (``--poll-seed`` = 10 x (``--seed`` + round) + replica), so a round's two waits are the
  same on every run of the bench, and may fall close together: the table shows them.

Per run: requests, errors (and their codes), p50/p99 of the OK requests over the whole
measured run; p99 from the promotion until the last replica serves version 2 (``promo``;
its length differs by variant, so also ``common``: the first W seconds after the
promotion, W the shortest promotion-to-end time of all runs, the same for every run); the
worst p99 of any 1-second bin of send times; each replica's load start relative to the
promotion (from its log) and the spread between them; the time until the whole fleet
serves version 2; RSS per replica before and after the promotion and the peak of the two
replicas' sum (sampled from /proc every 0.2 s). Ratios spread ÷ together are per round,
then the median over rounds: the machine is shared, so absolute milliseconds mean little.

The model: the largest this machine holds, MovieLens-25M's shape with random weights:
59,047 movies, 10 rating levels (0.5..5.0), ``TrainConfig.n_hidden`` hidden units (100), an
implicit RBM of 200 hidden units,
162,541 users with 60 rating draws each (55 distinct
movies on average, Zipf-like popularity), ``liked_and_rated`` ranking, no item-based RBM
(its 1.6M-unit visible layer would make the checkpoint 2.6 times as large, and its blend
touches only the returned movies of a Recommend). Version 2 is the
same model with every hidden bias moved by 0.001 (another checksum, so another identity:
every cached hidden state misses after the swap, as after a real retrain). The checkpoint is
414 MB; a replica serving it holds ~1.2 GB and ~2.3 GB while it loads the next version
beside it, and a load takes 3-10 s on the 2-core development machine: that cost, paid by
all replicas at once or one after another, is what is measured. This shape is practical:
one variant's run (two replicas starting, 3 + 10 s before the promotion, 30 s after) takes
about a minute, the whole default bench (2 rounds) about 4 minutes.
``--movies --users --hidden --implicit-hidden --ratings-per-user`` choose another shape.

    python bench/rollout.py [--rounds 2] [--spread 10] [--concurrency 64] [--out FILE.json]
    python bench/rollout.py --quick --out /tmp/rollout.json    # a tiny model, ~30 s
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
MODEL, ALIAS = "rbm", "production"
LEVELS = tuple(x / 2 for x in range(1, 11))  # 0.5 .. 5.0, ml-25m's half-star scale
VARIANTS = ("together", "spread")
RPC_TIMEOUT_S = 60.0
V2_TIMEOUT_S = 300.0  # after the promotion plus the spread: a replica that has not swapped
MIN_BIN = 10  # requests a 1-second bin needs to count for the worst-second p99


@dataclass(frozen=True)
class Shape:
    """The synthetic model's size."""

    movies: int
    users: int
    hidden: int
    implicit_hidden: int
    ratings_per_user: int


@dataclass(frozen=True)
class Timing:
    """How long each phase of a run lasts, in seconds."""

    warmup: float  # load before the measured part: the cache fills, the first batches pass
    steady: float  # measured load before the promotion
    hold: float  # after the last replica serves version 2
    spread: float  # --swap-spread-s of the spread variant
    after: float  # the load runs at least this long after the promotion, in every variant


FULL = Shape(59_047, 162_541, 100, 200, 60)
QUICK = Shape(1_000, 2_000, 20, 40, 20)
FULL_TIMING = Timing(warmup=3.0, steady=10.0, hold=3.0, spread=10.0, after=30.0)
QUICK_TIMING = Timing(warmup=1.0, steady=2.0, hold=1.0, spread=2.0, after=6.0)
AFTER_MARGIN = {True: 4.0, False: 20.0}  # --quick or not: --after's default beyond --spread


# ---------------------------------------------------------------- the synthetic model


def build_registry(root: Path, shape: Shape, seed: int = 0) -> dict[str, Any]:
    """Register the synthetic model as versions 1 (production) and 2; return what was built."""
    # Imported here: the --drive process needs none of torch.
    import torch

    from rbm.checkpoint import Checkpoint, save_checkpoint
    from rbm.implicit import implicit_config
    from rbm.model import RBMConfig, RBMParams
    from registry.records import VersionMeta
    from registry.store import FileRegistry

    began = time.monotonic()
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    m, u, r = shape.movies, shape.users, min(shape.ratings_per_user, shape.movies)
    popularity = 1.0 / np.arange(1, m + 1) ** 0.9  # Zipf-like, as bench/gpu_check.py's
    movies = rng.choice(m, size=u * r, p=popularity / popularity.sum())
    keys = np.unique(np.repeat(np.arange(u, dtype=np.int64), r) * m + movies)  # distinct pairs
    indptr = np.concatenate([[0], np.cumsum(np.bincount(keys // m, minlength=u))])
    levels = rng.integers(0, len(LEVELS), size=keys.size)

    def params(config: RBMConfig) -> RBMParams:
        vb = 0.1 * torch.randn(config.n_visible, generator=gen)
        return RBMParams.init(config, gen, vb)

    config = RBMConfig(m, len(LEVELS), shape.hidden)
    implicit = params(implicit_config(m, shape.implicit_hidden)) if shape.implicit_hidden else None
    first = Checkpoint(
        config=config,
        params=params(config),
        levels=LEVELS,
        movie_ids=torch.arange(1, m + 1),
        titles=[f"synthetic movie {i}" for i in range(1, m + 1)],
        user_ids=torch.arange(1, u + 1),
        user_indptr=torch.from_numpy(indptr.astype(np.int64)),
        user_movies=torch.from_numpy((keys % m).astype(np.int64)),
        user_levels=torch.from_numpy(levels.astype(np.int64)),
        popularity=torch.from_numpy(np.bincount(keys % m, minlength=m).astype(np.float32)),
        dataset="synthetic ml-25m shape (bench/rollout.py)",
        ranking="liked_and_rated",
        implicit=implicit,
    )
    p = first.params
    second = dataclasses.replace(
        first, params=RBMParams(p.weights, p.visible_bias, p.hidden_bias + 0.001)
    )
    store = FileRegistry(root)
    sizes = []
    for number, ckpt in ((1, first), (2, second)):

        def write(directory: Path, ckpt: Checkpoint = ckpt) -> None:
            save_checkpoint(ckpt, directory)

        meta = VersionMeta(description=f"bench/rollout.py: random weights, version {number}")
        info = store.register(MODEL, write, meta)
        sizes.append(sum(f.stat().st_size for f in info.path.iterdir()) / 2**20)
    store.set_alias(MODEL, ALIAS, 1, reason="bench/rollout.py")
    return {
        "shape": dataclasses.asdict(shape),
        "ratings": int(keys.size),
        "checkpoint_mb": sizes[0],
        "build_s": time.monotonic() - began,
    }


# ---------------------------------------------------------------- the load generator


async def _drive(targets: list[str], concurrency: int, users: int, records: Path) -> None:
    """Closed-loop Recommend load over ``targets`` until a line (or EOF) arrives on stdin."""
    import grpc

    from rbmrec.v1 import recommender_pb2 as pb
    from rbmrec.v1 import recommender_pb2_grpc as pb_grpc

    # Two connections per replica (channels to one target otherwise share one).
    opts = [("grpc.use_local_subchannel_pool", 1)]
    chans = [grpc.aio.insecure_channel(t, options=opts) for t in targets for _ in range(2)]
    stubs = [pb_grpc.RecommenderStub(c) for c in chans]
    stop = asyncio.Event()
    rows: list[tuple[float, float, str, str, int]] = []

    async def caller(c: int) -> None:
        replica = c % len(targets)  # callers alternate between replicas: an even split
        stub = stubs[replica * 2 + (c // len(targets)) % 2]
        i = c * 7919
        while not stop.is_set():
            user = 1 + i % users
            i += 1
            sent, start = time.time(), time.perf_counter()
            try:
                request = pb.RecommendRequest(user_id=user, n=10)
                reply = await stub.Recommend(request, timeout=RPC_TIMEOUT_S)
                code, version = "OK", str(reply.model_version)
            except grpc.aio.AioRpcError as exc:
                code, version = exc.code().name, ""
            rows.append((sent, time.perf_counter() - start, code, version, replica))

    loop = asyncio.get_running_loop()
    tasks = [asyncio.create_task(caller(c)) for c in range(concurrency)]
    print("started", flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)
    stop.set()
    await asyncio.gather(*tasks)
    for chan in chans:
        await chan.close(None)
    columns = ("sent", "latency", "code", "version", "replica")
    records.write_text(json.dumps({k: [row[i] for row in rows] for i, k in enumerate(columns)}))
    print(f"done {len(rows)}", flush=True)


# ---------------------------------------------------------------- replicas and one run


@dataclass
class Replica:
    """A started rbm-serve."""

    proc: subprocess.Popen[bytes]
    target: str
    pid: int
    log: Path


@dataclass
class Run:
    """What one variant's run measured (times in seconds; ``*_at`` relative to the promotion)."""

    variant: str
    round: int
    flags: list[str]
    requests: int = 0
    errors: int = 0
    error_codes: dict[str, int] = field(default_factory=dict)
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    max_ms: float = float("nan")
    steady_p99_ms: float = float("nan")  # before the promotion: the machine's state this run
    promo_requests: int = 0
    promo_errors: int = 0
    promo_p99_ms: float = float("nan")
    common_p99_ms: float = float("nan")
    common_window_s: float = float("nan")
    common_over_steady: float = float("nan")  # common_p99_ms ÷ steady_p99_ms
    worst_second_p99_ms: float = float("nan")
    worst_second_at: float = float("nan")
    rps: float = float("nan")
    seen_at: list[float | None] = field(default_factory=list)  # the alias move logged
    load_at: list[float | None] = field(default_factory=list)  # "loading rbm version 2"
    serving_at: list[float | None] = field(default_factory=list)  # "serving rbm version 2"
    first_v2_answer_at: list[float | None] = field(default_factory=list)
    load_s: list[float | None] = field(default_factory=list)  # "loading" -> "serving"
    load_spread_s: float = float("nan")
    load_max_s: float = float("nan")  # the slower replica's load
    fleet_v2_s: float = float("nan")  # until the last replica serves version 2
    end_at: float = float("nan")  # when the load stopped
    rss_before_mb: list[float] = field(default_factory=list)
    rss_after_mb: list[float] = field(default_factory=list)
    rss_peak_mb: list[float] = field(default_factory=list)  # sampled during the run
    hwm_mb: list[float] = field(default_factory=list)  # VmHWM: the process's own peak
    fleet_rss_peak_mb: float = float("nan")  # the peak of the replicas' sum
    responses_by_version: dict[str, int] = field(default_factory=dict)
    per_replica_requests: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # the run failed: exit status 1
    notes: list[str] = field(default_factory=list)  # caveats of its figures
    records: dict[str, list[Any]] = field(default_factory=dict, repr=False)
    promoted: float = 0.0  # wall clock of the promotion
    measured_from: float = 0.0  # wall clock: the measured part's start


def _rss_mb(pid: int, name: str = "VmRSS") -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{name}:"):
                return int(line.split()[1]) / 1024  # kB (KiB) -> MiB
    except OSError:
        pass
    return float("nan")


class RssSampler:
    """Samples the replicas' VmRSS every ``period`` seconds in a thread."""

    def __init__(self, pids: list[int], period: float = 0.2) -> None:
        self.pids, self.period = pids, period
        self.samples: list[tuple[float, list[float]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.time(), [_rss_mb(p) for p in self.pids]))
            self._stop.wait(self.period)

    def stop(self) -> None:
        """Stop sampling."""
        self._stop.set()
        self._thread.join()


def _server_cmd(registry: Path, address: Path, flags: list[str], seed: int) -> list[str]:
    cmd = [str(BIN / "rbm-serve"), "--port", "0", "--registry", str(registry)]
    cmd += ["--device", "cpu", "--cache", "memory", "--max-batch-size", "64"]
    cmd += ["--log-level", "INFO", "--log-format", "json", "--address-file", str(address)]
    return [*cmd, "--poll-interval", "1", "--poll-seed", str(seed), *flags]


@contextlib.contextmanager
def replicas(registry: Path, flags: list[str], seed: int, tmp: Path) -> Iterator[list[Replica]]:
    """Two rbm-serve processes started together; SIGTERM at the end."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    started: list[tuple[subprocess.Popen[bytes], Path, Path]] = []
    try:
        for i in range(2):
            address, log = tmp / f"address-{i}.json", tmp / f"replica-{i}.log"
            address.unlink(missing_ok=True)
            with open(log, "wb") as err:
                cmd = _server_cmd(registry, address, flags, seed * 10 + i)
                proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env)
            started.append((proc, address, log))
        deadline = time.monotonic() + 600  # two loads of a large model on a shared machine
        out = []
        for proc, address, log in started:
            while not address.exists():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"rbm-serve did not start:\n{_tail(log)}")
                time.sleep(0.05)
            bound = json.loads(address.read_text(encoding="utf-8"))
            out.append(Replica(proc, str(bound["address"]), int(bound["pid"]), log))
        yield out
    finally:
        for proc, _, _ in started:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc, _, _ in started:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _tail(path: Path, lines: int = 20) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


EVENTS = {
    "seen": re.compile(rf"alias '{ALIAS}' moved to version 2: loading it in"),
    "load": re.compile(rf"loading {MODEL} version 2 \({ALIAS} alias\)"),
    "serving": re.compile(rf"serving {MODEL} version 2 \({ALIAS} alias\)"),
}


def log_events(log: Path) -> dict[str, float]:
    """Wall-clock times of the first log line of each of ``EVENTS`` in a replica's JSON log."""
    found: dict[str, float] = {}
    for line in log.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
            message, when = str(entry["message"]), str(entry["time"])
        except (ValueError, KeyError, TypeError):
            continue  # not one of the server's log lines
        for name, pattern in EVENTS.items():
            if name not in found and pattern.search(message):
                found[name] = datetime.fromisoformat(when).timestamp()
    return found


def variant_flags(variant: str, timing: Timing) -> list[str]:
    """rbm-serve's rollout flags for ``variant``."""
    if variant == "together":
        return ["--poll-jitter", "0", "--swap-spread-s", "0"]
    return ["--poll-jitter", "0.5", "--swap-spread-s", f"{timing.spread:g}"]


def run_variant(variant: str, round_: int, registry: Path, a: argparse.Namespace, tmp: Path) -> Run:
    """Start two replicas on version 1, load them, promote version 2, measure."""
    from registry.store import FileRegistry

    store = FileRegistry(registry)
    store.set_alias(MODEL, ALIAS, 1, reason="bench/rollout.py: next run")
    flags = variant_flags(variant, a.timing)
    run = Run(variant, round_, flags)
    with replicas(registry, flags, a.seed + round_, tmp) as reps:
        sampler = RssSampler([r.pid for r in reps])
        records = tmp / "records.json"
        driver = subprocess.Popen(
            [
                *(sys.executable, str(Path(__file__).resolve()), "--drive"),
                *("--targets", ",".join(r.target for r in reps), "--records", str(records)),
                *("--concurrency", str(a.concurrency), "--served-users", str(a.served_users)),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        assert driver.stdin is not None and driver.stdout is not None
        try:
            if driver.stdout.readline().strip() != "started":
                raise RuntimeError("the load generator did not start")
            time.sleep(a.timing.warmup)
            run.measured_from = time.time()
            time.sleep(a.timing.steady)
            run.rss_before_mb = [_rss_mb(r.pid) for r in reps]
            run.promoted = time.time()
            store.set_alias(MODEL, ALIAS, 2, reason="bench/rollout.py: the promotion")
            deadline = time.monotonic() + a.timing.spread + V2_TIMEOUT_S
            while not all("serving" in log_events(r.log) for r in reps):
                if time.monotonic() > deadline or any(r.proc.poll() is not None for r in reps):
                    run.problems.append("not every replica served version 2 in time")
                    break
                time.sleep(0.1)
            time.sleep(max(a.timing.hold, run.promoted + a.timing.after - time.time()))
            run.rss_after_mb = [_rss_mb(r.pid) for r in reps]
            run.hwm_mb = [_rss_mb(r.pid, "VmHWM") for r in reps]
        finally:
            end = time.time()
            driver.stdin.write("stop\n")
            driver.stdin.flush()
            out, _ = driver.communicate(timeout=120)
            sampler.stop()
        if driver.returncode != 0 or not out.startswith("done"):
            raise RuntimeError(f"the load generator failed ({driver.returncode}): {out}")
        run.records = json.loads(records.read_text())
        events = [log_events(r.log) for r in reps]
    run.end_at = end - run.promoted
    _summarise(run, events, sampler.samples)
    return run


def _p99(lat_s: np.ndarray) -> float:
    return float(np.percentile(lat_s, 99) * 1000) if lat_s.size else float("nan")


def _summarise(
    run: Run, events: list[dict[str, float]], samples: list[tuple[float, list[float]]]
) -> None:
    """Fill ``run``'s figures from its records, the replicas' logs and the RSS samples."""
    rec = run.records
    sent = np.asarray(rec.get("sent", []), dtype=float) - run.promoted
    lat = np.asarray(rec.get("latency", []), dtype=float)
    ok = np.asarray([c == "OK" for c in rec.get("code", [])], dtype=bool)
    replica = np.asarray(rec.get("replica", []), dtype=int)
    version = np.asarray(rec.get("version", []), dtype=object)
    measured = sent >= run.measured_from - run.promoted
    done = measured & ok
    run.requests = int(measured.sum())
    run.errors = int((measured & ~ok).sum())
    codes = [c for c, m in zip(rec.get("code", []), measured, strict=True) if m and c != "OK"]
    run.error_codes = dict(Counter(codes))
    if done.any():
        run.p50_ms = float(np.percentile(lat[done], 50) * 1000)
        run.p99_ms = _p99(lat[done])
        run.max_ms = float(lat[done].max() * 1000)
        span = run.end_at - (run.measured_from - run.promoted)
        run.rps = run.requests / span
        run.steady_p99_ms = _p99(lat[done & (sent < 0)])
    run.seen_at = [e["seen"] - run.promoted if "seen" in e else None for e in events]
    run.load_at = [e["load"] - run.promoted if "load" in e else None for e in events]
    run.serving_at = [e["serving"] - run.promoted if "serving" in e else None for e in events]
    run.load_s = [
        None if a is None or b is None else b - a
        for a, b in zip(run.load_at, run.serving_at, strict=True)
    ]
    loads = [t for t in run.load_at if t is not None]
    serving = [t for t in run.serving_at if t is not None]
    if len(loads) == len(events):
        run.load_spread_s = max(loads) - min(loads)
    if all(t is not None for t in run.load_s):
        run.load_max_s = max(t for t in run.load_s if t is not None)
    if len(serving) == len(events):
        run.fleet_v2_s = max(serving)
    promo = done & (sent >= 0) & (sent <= (run.fleet_v2_s if serving else run.end_at))
    run.promo_requests = int(((sent >= 0) & (sent <= run.fleet_v2_s) & measured).sum())
    run.promo_errors = int(((sent >= 0) & (sent <= run.fleet_v2_s) & measured & ~ok).sum())
    run.promo_p99_ms = _p99(lat[promo])
    finish = sent + lat
    run.first_v2_answer_at = []
    for i in range(len(events)):
        mine = (replica == i) & (version == "2")
        run.first_v2_answer_at.append(float(finish[mine].min()) if mine.any() else None)
    run.per_replica_requests = [int((measured & (replica == i)).sum()) for i in range(len(events))]
    run.responses_by_version = {str(v): int(n) for v, n in Counter(version[done].tolist()).items()}
    worst, at = float("nan"), float("nan")
    start = run.measured_from - run.promoted
    bins = np.floor(sent[done] - start).astype(int)
    for b in np.unique(bins):
        in_bin = lat[done][bins == b]
        if in_bin.size >= MIN_BIN and not (worst >= _p99(in_bin)):
            worst, at = _p99(in_bin), start + float(b)
    run.worst_second_p99_ms, run.worst_second_at = worst, at
    if samples:
        per = np.asarray([s for _, s in samples], dtype=float)
        run.rss_peak_mb = [float(x) for x in np.nanmax(per, axis=0)]
        run.fleet_rss_peak_mb = float(np.nanmax(per.sum(axis=1)))


def common_window(runs: list[Run]) -> None:
    """p99 over the first W s after the promotion, W the shortest such span of any run."""
    width = min(r.end_at for r in runs)
    for run in runs:
        rec = run.records
        sent = np.asarray(rec["sent"], dtype=float) - run.promoted
        lat = np.asarray(rec["latency"], dtype=float)
        ok = np.asarray([c == "OK" for c in rec["code"]], dtype=bool)
        run.common_window_s = width
        run.common_p99_ms = _p99(lat[ok & (sent >= 0) & (sent <= width)])
        run.common_over_steady = run.common_p99_ms / run.steady_p99_ms
        if not run.fleet_v2_s <= width:
            run.notes.append(f"the common window ({width:.1f}s) ends before the fleet swapped")


# ---------------------------------------------------------------- report


FIGURES = (
    "requests",
    "errors",
    "p50_ms",
    "p99_ms",
    "steady_p99_ms",
    "promo_p99_ms",
    "common_p99_ms",
    "common_over_steady",
    "worst_second_p99_ms",
    "load_spread_s",
    "load_max_s",
    "fleet_v2_s",
    "fleet_rss_peak_mb",
)
RATIOS = (
    "p99_ms",
    "promo_p99_ms",
    "common_p99_ms",
    "common_over_steady",
    "worst_second_p99_ms",
    "fleet_rss_peak_mb",
    "errors",
)


def _at(values: list[float | None], digits: int = 1) -> str:
    return "/".join("-" if v is None else f"{v:.{digits}f}" for v in values)


def table(runs: list[Run]) -> str:
    """One line per run: latencies in ms, times in s after the promotion, RSS in MiB."""
    head = (
        f"{'round':>5} {'variant':<9} {'req':>6} {'err':>4} {'p50':>6} {'p99':>6} "
        f"{'steady':>6} {'promo':>6} {'common':>6} {'÷steady':>7} {'worst1s':>7} "
        f"{'loads at':>11} {'load s':>9} {'fleet v2':>8} {'RSS before':>11} "
        f"{'RSS peak':>11} {'peak Σ':>6}"
    )
    lines = [head]
    for r in runs:
        lines.append(
            f"{r.round:>5} {r.variant:<9} {r.requests:>6} {r.errors:>4} {r.p50_ms:>6.0f} "
            f"{r.p99_ms:>6.0f} {r.steady_p99_ms:>6.0f} {r.promo_p99_ms:>6.0f} "
            f"{r.common_p99_ms:>6.0f} {r.common_over_steady:>7.2f} "
            f"{r.worst_second_p99_ms:>7.0f} {_at(r.load_at):>11} {_at(r.load_s):>9} "
            f"{r.fleet_v2_s:>8.1f} {_at(list(r.rss_before_mb), 0):>11} "
            f"{_at(list(r.rss_peak_mb), 0):>11} {r.fleet_rss_peak_mb:>6.0f}"
        )
    return "\n".join(lines)


def summary(runs: list[Run]) -> dict[str, Any]:
    """Medians per variant over the rounds, and the per-round ratios spread ÷ together."""
    out: dict[str, Any] = {"median": {}, "ratio_spread_over_together": {}, "errors": {}}
    for v in VARIANTS:
        mine = [r for r in runs if r.variant == v]
        out["median"][v] = {
            k: statistics.median(float(getattr(r, k)) for r in mine) for k in FIGURES
        }
        out["errors"][v] = sum(r.errors for r in mine)
    rounds = sorted({r.round for r in runs})
    for key in RATIOS:
        ratios = []
        for n in rounds:
            pair = {r.variant: float(getattr(r, key)) for r in runs if r.round == n}
            if len(pair) == 2 and pair["together"] > 0:
                ratios.append(pair["spread"] / pair["together"])
        out["ratio_spread_over_together"][key] = (
            statistics.median(ratios) if ratios else float("nan")
        )
        out["ratio_spread_over_together"][f"{key}_rounds"] = ratios
    return out


def print_summary(s: dict[str, Any]) -> None:
    """The medians and the ratios."""
    print()
    print(f"{'median over rounds':<22}" + "".join(f"{v:>12}" for v in VARIANTS))
    for key in FIGURES:
        print(f"{key:<22}" + "".join(f"{s['median'][v][key]:>12.1f}" for v in VARIANTS))
    print()
    for key in RATIOS:
        ratio = s["ratio_spread_over_together"][key]
        each = ", ".join(f"{x:.2f}" for x in s["ratio_spread_over_together"][f"{key}_rounds"])
        if not each:  # errors, when together had none
            print(f"spread ÷ together {key:<22}    n/a   (together had none)")
            continue
        print(f"spread ÷ together {key:<22} {ratio:>6.2f}   (rounds: {each})")
    print(f"errors: together {s['errors']['together']}, spread {s['errors']['spread']}")


def _finite(value: Any) -> Any:
    """``value`` with every NaN or infinity as None: strict JSON has neither."""
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def write_result(out: Path, fields: dict[str, Any]) -> None:
    """Write the JSON with when and how the bench ran (bench/serve.py's write_result's form)."""
    when = datetime.now(UTC).isoformat(timespec="seconds")
    command = " ".join(["python", "bench/rollout.py", *sys.argv[1:]])
    out.parent.mkdir(parents=True, exist_ok=True)
    body = _finite({"when": when, "command": command, **fields})
    out.write_text(json.dumps(body, indent=1, allow_nan=False) + "\n")
    print(f"wrote {out}", file=sys.stderr)


def _host() -> dict[str, Any]:
    mem = next(
        (
            int(line.split()[1]) / 2**20
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal:")
        ),
        float("nan"),
    )
    return {
        "cpus": os.cpu_count(),
        "memory_gb": mem,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg": os.getloadavg(),
    }


def _parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rounds", type=int, help="rounds of both variants (2; --quick: 1)")
    p.add_argument("--concurrency", type=int, default=64, help="callers, split over 2 replicas")
    p.add_argument("--spread", type=float, help="--swap-spread-s of the spread variant (10)")
    p.add_argument("--steady", type=float, help="measured seconds before the promotion (10)")
    p.add_argument("--hold", type=float, help="seconds of load after the fleet serves v2 (3)")
    p.add_argument(
        "--after",
        type=float,
        help="seconds of load at least after the promotion, every variant (--spread + 20)",
    )
    p.add_argument("--warmup", type=float, help="unmeasured seconds of load first (3)")
    p.add_argument("--movies", type=int, help=f"synthetic model's movies ({FULL.movies})")
    p.add_argument("--users", type=int, help=f"its users ({FULL.users})")
    p.add_argument("--hidden", type=int, help=f"its hidden units ({FULL.hidden})")
    p.add_argument(
        "--implicit-hidden", type=int, help=f"the implicit RBM's ({FULL.implicit_hidden}; 0: none)"
    )
    p.add_argument(
        "--ratings-per-user", type=int, help=f"ratings of each user ({FULL.ratings_per_user})"
    )
    p.add_argument("--served-users", type=int, help="users the load cycles through (5000)")
    p.add_argument("--seed", type=int, default=0, help="of the model and the replicas' polls")
    p.add_argument("--quick", action="store_true", help="smoke run: a tiny model, short phases")
    p.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results" / "rollout.json", help="JSON"
    )
    # The load generator's own mode: the benchmark starts it as a child process.
    p.add_argument("--drive", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--targets", help=argparse.SUPPRESS)
    p.add_argument("--records", type=Path, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    base, timing = (QUICK, QUICK_TIMING) if a.quick else (FULL, FULL_TIMING)
    a.shape = Shape(
        a.movies or base.movies,
        a.users or base.users,
        a.hidden or base.hidden,
        base.implicit_hidden if a.implicit_hidden is None else a.implicit_hidden,
        a.ratings_per_user or base.ratings_per_user,
    )
    a.timing = Timing(
        timing.warmup if a.warmup is None else a.warmup,
        timing.steady if a.steady is None else a.steady,
        timing.hold if a.hold is None else a.hold,
        spread := timing.spread if a.spread is None else a.spread,
        max(timing.after, spread + AFTER_MARGIN[a.quick]) if a.after is None else a.after,
    )
    a.served_users = min(a.served_users or (500 if a.quick else 5_000), a.shape.users)
    if a.rounds is None:
        a.rounds = 1 if a.quick else 2
    if a.rounds < 1 or a.concurrency < 2:
        p.error("--rounds must be >= 1 and --concurrency >= 2")
    return a


def main() -> int:
    """Build the model, run every variant each round, print the table, write the JSON."""
    a = _parse()
    if a.drive:
        asyncio.run(_drive(a.targets.split(","), a.concurrency, a.served_users, a.records))
        return 0
    began, host = time.monotonic(), _host()
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="rbm-rollout-") as name:
        tmp = Path(name)
        print(f"building a synthetic model {a.shape} ...", file=sys.stderr, flush=True)
        model = build_registry(tmp / "registry", a.shape, a.seed)
        print(
            f"checkpoint {model['checkpoint_mb']:.0f} MB, {model['ratings']} ratings, built in "
            f"{model['build_s']:.0f}s",
            file=sys.stderr,
            flush=True,
        )
        for n in range(1, a.rounds + 1):
            order = VARIANTS if n % 2 else VARIANTS[::-1]  # alternate who goes first
            for variant in order:
                run = run_variant(variant, n, tmp / "registry", a, tmp)
                runs.append(run)
                print(
                    f"round {n} {variant}: {run.requests} requests, {run.errors} errors, p99 "
                    f"{run.p99_ms:.0f} ms, through the promotion {run.promo_p99_ms:.0f} ms, "
                    f"loads at {_at(run.load_at)} s, fleet on v2 after {run.fleet_v2_s:.1f} s"
                    + (f"; PROBLEMS: {run.problems}" if run.problems else ""),
                    file=sys.stderr,
                    flush=True,
                )
    common_window(runs)
    result = summary(runs)
    print(f"model: {a.shape}, checkpoint {model['checkpoint_mb']:.0f} MB per version")
    print(table(runs))
    print_summary(result)
    elapsed = time.monotonic() - began
    print(f"run time {elapsed:.0f}s")
    problems = [f"round {r.round} {r.variant}: {p}" for r in runs for p in r.problems]
    notes = [f"round {r.round} {r.variant}: {n}" for r in runs for n in r.notes]
    for line in problems + notes:
        print(f"note: {line}")
    write_result(
        a.out,
        {
            "machine": host | {"loadavg_after": os.getloadavg()},
            "run_seconds": elapsed,
            "model": model,
            "timing": dataclasses.asdict(a.timing),
            "concurrency": a.concurrency,
            "served_users": a.served_users,
            "rounds": a.rounds,
            "variants": {v: variant_flags(v, a.timing) for v in VARIANTS},
            "summary": result,
            "runs": [
                {f.name: getattr(r, f.name) for f in dataclasses.fields(r) if f.name != "records"}
                for r in runs
            ],
            "problems": problems,
            "notes": notes,
        },
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
