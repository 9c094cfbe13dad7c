"""GPU check: the gpu tests, then the real server and trainer on one device, in one run.

Steps, each timed:

1. ``pytest -m gpu tests/gpu`` (they skip themselves without CUDA);
2. small real models from ``rbm-train`` (ml-100k u1, ml-latest-small holdout), each served
   by a real ``rbm-serve`` with its hidden states in Redis under a prefix of its own, and
   driven by ``bench/loadgen.py`` from another process: every user cached (``hit``), two
   UpdateRatings streams during the load (``stream``), ``rbm-registry promote`` of a
   second version in the middle of a run (``promote``), and a server whose in-process
   cache holds one user (``miss``);
3. the same on a synthetic model of ml-25m's shape (59,047 movies, 10 rating levels, the
   three RBMs at ``TrainConfig``'s default sizes, random parameters), and that server with
   batching off (``unbatched``, ``--max-batch-size 1``);
4. one CD epoch of each RBM (user-based, implicit, item-based) on the synthetic ratings,
   with the trainer's statistics and update code and ``model_configs``' settings.

Prints one table and writes ``gpu_check.json`` into ``--out``; exits 1 if a test failed,
any request failed, or a path served nothing. ``--quick`` makes every step small (a
5,000-movie synthetic set, ~2 s per load run) so that the script itself can be checked
on a CPU: ``bench/gpu_check.sh --device cpu --quick``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.request import urlopen

import numpy as np
import redis
import torch

from rbm.checkpoint import Checkpoint, ItemModel, load_checkpoint, save_checkpoint, smoke_test
from rbm.implicit import implicit_config
from rbm.model import RBMConfig, RBMParams
from registry.gate import promote
from registry.records import VersionMeta
from registry.store import FileRegistry
from trainer.indexing import IndexedRatings
from trainer.loop import LocalStats, LoopConfig, momentum_step
from trainer.train import TrainConfig, model_configs, softmax_stats
from trainer.train_implicit import implicit_stats
from trainer.train_item import transpose

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
DATA = Path(os.environ.get("RBMREC_DATA", ROOT.parent / "shared" / "movielens"))
MODEL = "rbm"
LEVELS = tuple(x / 2 for x in range(1, 11))  # 0.5 .. 5.0, ml-25m's half-star scale
# ml-25m's share of each level, 0.5 .. 5.0 (rounded)
LEVEL_SHARES = (0.016, 0.031, 0.016, 0.066, 0.050, 0.196, 0.126, 0.266, 0.085, 0.148)
REAL = {"ml-100k": ("u1", 943), "ml-latest-small": ("holdout", 610)}  # split, users


@dataclass(frozen=True)
class Scale:
    """How big and how long each step is."""

    movies: int  # of the synthetic set
    users: int
    ratings: int
    served_users: int  # synthetic users the load cycles through
    concurrency: int
    warmup_s: float
    duration_s: float  # of each measured load run
    train_epochs: tuple[int, int, int]  # rbm-train --epochs, --implicit-epochs, --item-epochs
    epoch_budget_s: float  # an RBM's epoch is scaled from the minibatches done by then


FULL = Scale(59_047, 162_541, 25_000_095, 5_000, 64, 1.0, 4.0, (5, 3, 5), 30.0)
QUICK = Scale(5_000, 1_000, 50_000, 500, 16, 0.5, 1.5, (2, 1, 1), 10.0)


@dataclass(frozen=True)
class Row:
    """One load run against one server."""

    model: str
    variant: str
    concurrency: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int  # failed Recommend calls, failed priming calls and failed update streams
    note: str
    load: dict[str, object]  # loadgen's JSON
    hit_rate: float | None  # of the server's hidden-state cache during the run


@dataclass(frozen=True)
class EpochTime:
    """One CD epoch of one RBM."""

    rbm: str
    cases: int  # users, or movies for the item-based RBM
    batches: int
    measured_batches: int  # fewer than batches: the epoch is scaled from them
    seconds: float


@dataclass
class Report:
    """Everything the run measured, and what went wrong."""

    rows: list[Row] = field(default_factory=list)
    epochs: list[EpochTime] = field(default_factory=list)
    tests: dict[str, float] = field(default_factory=dict)
    models: dict[str, dict[str, int]] = field(default_factory=dict)
    steps_s: dict[str, float] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        """Time a step under ``name``."""
        print(f"gpu_check: {name} ...", file=sys.stderr, flush=True)
        began = time.perf_counter()
        try:
            yield
        finally:
            self.steps_s[name] = round(time.perf_counter() - began, 2)


@dataclass(frozen=True)
class Server:
    """A running rbm-serve: where it answers and where its /metrics are."""

    proc: subprocess.Popen[bytes]
    target: str
    metrics: str
    log: Path  # its stdout and stderr


@dataclass(frozen=True)
class Setup:
    """What every step of one run shares."""

    device: str
    scale: Scale
    redis_url: str
    prefix: str  # of every Redis key this run writes
    tmp: Path
    report: Report


def device_info(device: str) -> dict[str, object]:
    """The device's name and the torch/CUDA versions this run used."""
    if device == "cuda":
        name = torch.cuda.get_device_name(0)
    else:
        name = platform.processor() or _cpu_model() or platform.machine()
    return {
        "device": device,
        "name": name,
        "torch": torch.__version__,
        "cuda": torch.version.cuda if device == "cuda" else None,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return ""


def run_gpu_tests(tmp: Path, report: Report) -> None:
    """pytest -m gpu tests/gpu; the counts go into the report."""
    junit = tmp / "junit.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests/gpu", f"--junitxml={junit}"]
    proc = subprocess.run(cmd, cwd=ROOT, stdout=sys.stderr, check=False)
    suite = ET.parse(junit).getroot()
    suite = suite if suite.tag == "testsuite" else suite[0]
    report.tests = {k: float(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    if proc.returncode != 0:
        report.problems.append(f"pytest -m gpu tests/gpu exited {proc.returncode}")


def train_real(name: str, registry: Path, device: str, scale: Scale) -> dict[str, int]:
    """rbm-train a small model into ``registry`` (version 1, production), add version 2.

    Returns the model's shape.
    """
    split, _ = REAL[name]
    epochs, implicit, item = scale.train_epochs
    cmd = [str(BIN / "rbm-train"), "--dataset", name, "--data-dir", str(DATA), "--split", split]
    cmd += ["--epochs", str(epochs), "--implicit-epochs", str(implicit)]
    cmd += ["--item-epochs", str(item), "--device", device, "--registry", str(registry)]
    subprocess.run([*cmd, "--promote", "--json", "--quiet"], check=True, stdout=subprocess.DEVNULL)
    store = FileRegistry(registry)
    first = store.get_version(MODEL, 1)
    ckpt = load_checkpoint(first.path)
    ckpt.params.hidden_bias += 1e-3  # a version of its own (own checksum) to swap to
    meta = VersionMeta(metrics=first.meta.metrics, params=first.meta.params, parent_version=1)
    store.register(MODEL, lambda d: save_checkpoint(ckpt, d), meta)
    return _shape(ckpt)


def _shape(ckpt: Checkpoint) -> dict[str, int]:
    return {
        "movies": ckpt.config.n_movies,
        "users": int(ckpt.user_ids.numel()),
        "ratings": int(ckpt.user_movies.numel()),
        "levels": ckpt.config.n_levels,
    }


def synthetic_ratings(users: int, movies: int, ratings: int, seed: int = 0) -> IndexedRatings:
    """A user-major CSR with ml-25m's long tails: Zipf-like popularity, log-normal activity."""
    if ratings > users * movies // 2:
        raise ValueError("a synthetic set needs at most half of all (user, movie) pairs")
    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, movies + 1) ** 0.9
    activity = rng.lognormal(0.0, 1.0, users)
    keys = np.empty(0, dtype=np.int64)
    while len(keys) < ratings:  # popular pairs repeat: draw until enough distinct ones remain
        draw = int((ratings - len(keys)) * 1.3) + 16
        u = rng.choice(users, size=draw, p=activity / activity.sum())
        m = rng.choice(movies, size=draw, p=popularity / popularity.sum())
        keys = np.sort(np.concatenate([keys, u.astype(np.int64) * movies + m]))
        keys = keys[np.concatenate([[True], keys[1:] != keys[:-1]])]  # np.unique is far slower
    keep = np.ones(len(keys), dtype=bool)
    keep[rng.choice(len(keys), size=len(keys) - ratings, replace=False)] = False
    keys = keys[keep]
    counts = np.bincount(keys // movies, minlength=users)
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    levels = rng.choice(len(LEVELS), size=ratings, p=np.asarray(LEVEL_SHARES) / sum(LEVEL_SHARES))
    return IndexedRatings(np.arange(users), indptr, keys % movies, levels.astype(np.int64))


def synthetic_checkpoint(data: IndexedRatings, n_movies: int, seed: int) -> Checkpoint:
    """A model of the trainer's shapes (``TrainConfig`` defaults) with random parameters."""
    cfg, gen = TrainConfig(), torch.Generator().manual_seed(seed)
    n_users, k = len(data.user_ids), len(LEVELS)

    def params(config: RBMConfig) -> RBMParams:
        return RBMParams.init(config, gen, 0.1 * torch.randn(config.n_visible, generator=gen))

    config = RBMConfig(n_movies, k, cfg.n_hidden)
    # The trainer averages several implicit RBMs, stored side by side as one (combine_implicit).
    width = cfg.n_hidden_implicit * cfg.implicit_models
    implicit = implicit_config(n_movies, width) if cfg.n_hidden_implicit else None
    item = None
    if cfg.n_hidden_item:
        movie_hidden = torch.rand(n_movies, cfg.n_hidden_item, generator=gen)  # (M, F2)
        item = ItemModel(params(RBMConfig(n_users, k, cfg.n_hidden_item)), movie_hidden, 0.5)
    popularity = np.bincount(data.movies, minlength=n_movies).astype(np.float32)
    return Checkpoint(
        config=config,
        params=params(config),
        levels=LEVELS,
        movie_ids=torch.arange(1, n_movies + 1),
        titles=[f"synthetic movie {m}" for m in range(1, n_movies + 1)],
        user_ids=torch.arange(1, n_users + 1),
        user_indptr=torch.from_numpy(data.indptr),
        user_movies=torch.from_numpy(data.movies),
        user_levels=torch.from_numpy(data.levels),
        popularity=torch.from_numpy(popularity),
        dataset="synthetic ml-25m shape",
        ranking="liked_and_rated",
        implicit=None if implicit is None else params(implicit),
        item=item,
        implicit_models=cfg.implicit_models if implicit is not None else 1,
    )


def register_synthetic(registry: Path, data: IndexedRatings, n_movies: int) -> None:
    """Two synthetic versions (other random parameters); version 1 in production."""
    store = FileRegistry(registry)
    meta = VersionMeta(description="gpu_check: random parameters of the trainer's shapes")
    for seed in (1, 2):
        ckpt = synthetic_checkpoint(data, n_movies, seed)

        def write(directory: Path, ckpt: Checkpoint = ckpt) -> None:
            save_checkpoint(ckpt, directory)

        version = store.register(MODEL, write, meta).version
        if version == 1:
            promote(store, MODEL, 1, reason="gpu_check", smoke_test=smoke_test)


@contextlib.contextmanager
def serve(setup: Setup, registry: Path, *flags: str) -> Iterator[Server]:
    """A real rbm-serve on a free port; stopped with SIGTERM, which must end it cleanly."""
    address = setup.tmp / f"address-{uuid.uuid4().hex[:8]}.json"
    log = open(address.with_suffix(".log"), "wb")  # noqa: SIM115 (closed below)
    cmd = [str(BIN / "rbm-serve"), "--port", "0", "--registry", str(registry)]
    cmd += ["--device", setup.device, "--poll-interval", "0.2", "--metrics-port", "0"]
    cmd += ["--log-level", "WARNING", "--address-file", str(address), *flags]
    proc = subprocess.Popen(cmd, stderr=log, stdout=log)
    try:
        deadline = time.monotonic() + 300  # a CUDA server can take a while to start
        while not address.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"rbm-serve did not start:\n{_tail(log.name)}")
            time.sleep(0.05)
        bound = json.loads(address.read_text(encoding="utf-8"))
        yield Server(proc, bound["address"], bound["metrics"], Path(log.name))
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        log.close()
        if code != 0:
            setup.report.problems.append(
                f"rbm-serve {' '.join(flags)} exited {code}: {_tail(log.name)}"
            )


def _tail(path: str | Path, lines: int = 20) -> str:
    return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])


def cache_counts(server: Server) -> tuple[float, float]:
    """The server's hidden-state cache hits and misses so far (its /metrics)."""
    text = urlopen(server.metrics, timeout=10).read().decode()
    counts = {"hit": 0.0, "miss": 0.0}
    for line in text.splitlines():
        for result in counts:
            if line.startswith(f'rbmrec_hidden_cache_total{{result="{result}"}} '):
                counts[result] = float(line.rsplit(" ", 1)[1])
    return counts["hit"], counts["miss"]


def measure(
    setup: Setup,
    server: Server,
    model: str,
    variant: str,
    users: int,
    *flags: str,
    prime: bool = False,
    during: Callable[[], None] | None = None,
    duration_s: float | None = None,
) -> Row:
    """One loadgen run against ``server``, with the cache hit rate during it, as a row.

    ``prime``: one request per user first, not measured (the cache then holds them all);
    ``during`` runs halfway through the measured part.
    """
    scale = setup.scale
    duration = scale.duration_s if duration_s is None else duration_s
    cmd = [sys.executable, str(ROOT / "bench" / "loadgen.py"), "--target", server.target]
    cmd += ["--concurrency", str(scale.concurrency), "--users", f"1-{users}"]
    primed = {}
    if prime:
        primed = json.loads(_loadgen([*cmd, "--prime", "--warmup", "0", "--duration", "0"]))
    before = cache_counts(server)
    cmd += ["--warmup", str(scale.warmup_s), "--duration", str(duration), *flags]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    if during is not None:
        time.sleep(scale.warmup_s + duration / 2)
        during()
    result = json.loads(_loadgen(proc))
    hits, misses = (a - b for a, b in zip(cache_counts(server), before, strict=True))
    if prime:
        result["prime_errors"] = primed["prime_errors"]
    row = _row(model, variant, scale, result, hits / (hits + misses) if hits + misses else None)
    setup.report.rows.append(row)
    if row.errors:
        setup.report.problems.append(f"{model} {variant}: the server's log:\n{_tail(server.log)}")
    return row


def _loadgen(cmd: list[str] | subprocess.Popen[str]) -> str:
    """The JSON line of a loadgen run (started here from ``cmd``, or already running)."""
    proc = (
        subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) if isinstance(cmd, list) else cmd
    )
    out, _ = proc.communicate(timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"loadgen exited {proc.returncode}")
    return out


def _row(
    model: str, variant: str, scale: Scale, result: dict[str, object], hit: float | None
) -> Row:
    def f(key: str) -> float:
        return float(result.get(key, 0.0))  # type: ignore[arg-type]

    errors = int(f("errors") + f("prime_errors") + f("update_errors"))
    notes = [] if hit is None else [f"cache hits {hit:.0%}"]
    if "updates_acked" in result:
        notes.append(f"{f('updates_per_s'):.0f} updates/s, {int(f('updates_rejected'))} refused")
    if "versions" in result:
        served = result["versions"]
        assert isinstance(served, dict)
        notes.append("served " + ", ".join(f"v{v}: {n}" for v, n in served.items()))
    return Row(
        model=model,
        variant=variant,
        concurrency=scale.concurrency,
        rps=f("rps"),
        p50_ms=f("p50_ms"),
        p99_ms=f("p99_ms"),
        errors=errors,
        note="; ".join(notes),
        load=result,
        hit_rate=hit,
    )


def bench_model(
    setup: Setup, model: str, registry: Path, users: int, synthetic: bool = False
) -> None:
    """hit, stream and promote on a Redis-cached server; miss (and unbatched) on others."""
    tag = f"{setup.prefix}-{model.replace(' ', '-')}"
    in_redis = ("--cache", "redis", "--redis-url", setup.redis_url, "--redis-prefix")
    batched = ("--max-batch-size", "64")
    with serve(setup, registry, *in_redis, tag, *batched) as server:
        measure(setup, server, model, "hit", users, prime=True)
        measure(setup, server, model, "stream", users, "--update-streams", "2")

        def promote_v2() -> None:
            cmd = [str(BIN / "rbm-registry"), "--registry", str(registry), "promote", MODEL, "2"]
            cmd += ["--reason", "gpu_check: promotion under load"]
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)

        row = measure(
            setup,
            server,
            model,
            "promote",
            users,
            *("--versions", "--until-version", "2"),
            during=promote_v2,
            duration_s=2 * setup.scale.duration_s,
        )
        if not dict(row.load.get("versions", {})).get("2"):  # type: ignore[call-overload]
            setup.report.problems.append(f"{model}: version 2 never answered after the promotion")
    with serve(setup, registry, "--cache", "memory", "--cache-capacity", "1", *batched) as server:
        measure(setup, server, model, "miss", users)
    if synthetic:
        with serve(
            setup, registry, *in_redis, f"{tag}-unbatched", "--max-batch-size", "1"
        ) as server:
            measure(setup, server, model, "unbatched", users, prime=True)


def time_epoch(
    name: str, spec: LoopConfig, params: RBMParams, stats: LocalStats, n_cases: int, budget_s: float
) -> EpochTime:
    """One epoch of CD minibatches and momentum steps as ``trainer.loop`` runs them, timed."""
    device = torch.device(spec.device)
    params = params.to(device)
    velocity = [
        torch.zeros_like(t) for t in (params.weights, params.visible_bias, params.hidden_bias)
    ]
    gen = torch.Generator(device=device).manual_seed(spec.model_seed)
    order = np.random.default_rng(spec.model_seed).permutation(n_cases)
    starts = range(0, n_cases, spec.cases_per_batch)
    k, momentum = spec.cd_k(0), spec.momentum_at(0)
    _sync(device)
    began, done = time.perf_counter(), 0
    for lo in starts:
        rows = order[lo : lo + spec.cases_per_batch]
        step = stats(params, rows, k, gen)
        momentum_step(
            params, velocity, step, len(rows), spec.learning_rate, momentum, spec.weight_decay
        )
        done += 1
        if time.perf_counter() - began > budget_s:
            break
    _sync(device)
    elapsed = time.perf_counter() - began
    return EpochTime(name, n_cases, len(starts), done, elapsed * len(starts) / done)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_epochs(
    data: IndexedRatings, n_movies: int, device: str, budget_s: float
) -> list[EpochTime]:
    """One epoch of each RBM on ``data``, at ``model_configs(TrainConfig())``'s settings."""
    configs = model_configs(TrainConfig(device=device))
    gen = torch.Generator().manual_seed(0)
    n_users, k = len(data.user_ids), len(LEVELS)
    user = RBMConfig(n_movies, k, configs.user.n_hidden)
    out = [
        time_epoch(
            "user RBM",
            configs.user,
            RBMParams.init(user, gen),
            softmax_stats(data, user),
            n_users,
            budget_s,
        )
    ]
    if configs.implicit is not None:
        shape = implicit_config(n_movies, configs.implicit.n_hidden)
        out.append(
            time_epoch(
                "implicit RBM",
                configs.implicit,
                RBMParams.init(shape, gen),
                implicit_stats(data, n_movies),
                n_users,
                budget_s,
            )
        )
    if configs.item is not None:
        item = RBMConfig(n_users, k, configs.item.n_hidden)
        movies = transpose(data, n_movies)
        out.append(
            time_epoch(
                "item RBM",
                configs.item,
                RBMParams.init(item, gen),
                softmax_stats(movies, item),
                n_movies,
                budget_s,
            )
        )
    return out


def summary(report: Report) -> dict[str, float]:
    """Ratios between variants, epoch seconds and the error total."""

    def rps(model: str, variant: str) -> float:
        return next((r.rps for r in report.rows if (r.model, r.variant) == (model, variant)), 0.0)

    out: dict[str, float] = {}
    for model in dict.fromkeys(r.model for r in report.rows):
        tag = model.replace(" ", "_").replace("-", "_")
        if rps(model, "miss"):
            out[f"hit_over_miss_{tag}"] = rps(model, "hit") / rps(model, "miss")
        if rps(model, "unbatched"):
            out[f"batched_over_unbatched_{tag}"] = rps(model, "hit") / rps(model, "unbatched")
    for e in report.epochs:
        out[f"epoch_s_{e.rbm.replace(' ', '_')}"] = e.seconds
    out["total_errors"] = float(sum(r.errors for r in report.rows))
    return out


def check(report: Report) -> None:
    """Add to the problems every failed request, empty path and refused update."""
    for r in report.rows:
        name = f"{r.model} {r.variant}"
        if r.errors:
            codes = r.load.get("update_error_codes") or ""
            report.problems.append(f"{name}: {r.errors} errors {codes}".rstrip())
        if not r.rps > 0:
            report.problems.append(f"{name}: no request answered")
        if r.variant in ("hit", "unbatched") and (r.hit_rate or 0.0) < 0.9:
            report.problems.append(f"{name}: cache hit rate {r.hit_rate}, not a hit path")
        if r.variant == "stream" and not float(r.load.get("updates_acked", 0)):  # type: ignore[arg-type]
            report.problems.append(f"{name}: no update was acknowledged")
        if float(r.load.get("updates_rejected", 0)):  # type: ignore[arg-type]
            report.problems.append(f"{name}: {r.load['updates_rejected']:.0f} updates refused")
    if report.tests.get("failures") or report.tests.get("errors"):
        report.problems.append(f"gpu tests: {report.tests}")


def print_table(report: Report, info: dict[str, object], figures: dict[str, float]) -> None:
    """The run's one table, then the summary figures and any problems."""
    print(f"device: {info['name']} ({info['device']}), torch {info['torch']}, CUDA {info['cuda']}")
    t = report.tests
    print(
        f"gpu tests: {t.get('tests', 0):.0f} run, {t.get('failures', 0):.0f} failed, "
        f"{t.get('errors', 0):.0f} errors, {t.get('skipped', 0):.0f} skipped\n"
    )
    print(
        f"{'model':<23} {'variant':<10} {'conc':>4} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'errors':>6}  note"
    )
    for r in report.rows:
        print(
            f"{r.model:<23} {r.variant:<10} {r.concurrency:>4} {r.rps:>8.0f} {r.p50_ms:>8.2f} "
            f"{r.p99_ms:>8.2f} {r.errors:>6}  {r.note}"
        )
    for e in report.epochs:
        scaled = "" if e.measured_batches == e.batches else f", from {e.measured_batches} batches"
        print(
            f"{'synthetic ml-25m shape':<23} {'epoch':<10} {'':>4} {'':>8} {'':>8} {'':>8} "
            f"{'':>6}  {e.rbm}: {e.seconds:.1f} s ({e.cases} cases, {e.batches} batches{scaled})"
        )
    print()
    for key, value in figures.items():
        print(f"{key:<45} {value:.3f}")
    steps = ", ".join(f"{k} {v:.0f}" for k, v in report.steps_s.items())
    print(f"seconds per step: {steps}")
    for problem in report.problems:
        print(f"PROBLEM: {problem}")


def run_steps(setup: Setup) -> None:
    """Every step in turn, each timed, into ``setup.report``."""
    report, scale = setup.report, setup.scale
    with report.step("gpu tests"):
        run_gpu_tests(setup.tmp, report)
    for name, (_, users) in REAL.items():
        registry = setup.tmp / name
        with report.step(f"train {name}"):
            report.models[name] = train_real(name, registry, setup.device, scale)
        with report.step(f"serve {name}"):
            bench_model(setup, name, registry, users)
    with report.step("synthetic ratings"):
        data = synthetic_ratings(scale.users, scale.movies, scale.ratings)
    synthetic = "synthetic ml-25m shape"
    report.models[synthetic] = {
        "movies": scale.movies,
        "users": scale.users,
        "ratings": len(data.movies),
        "levels": len(LEVELS),
    }
    with report.step("synthetic models"):
        register_synthetic(setup.tmp / "synthetic", data, scale.movies)
    with report.step("serve synthetic"):
        bench_model(setup, synthetic, setup.tmp / "synthetic", scale.served_users, synthetic=True)
    with report.step("epochs"):
        report.epochs = time_epochs(data, scale.movies, setup.device, scale.epoch_budget_s)


def main() -> int:
    """Run every step, print the table and write gpu_check.json; 1 if anything failed."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="default: cuda")
    p.add_argument("--quick", action="store_true", help="every step small (for a CPU)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="folder")
    p.add_argument(
        "--redis-url",
        default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
        help="the Redis the servers use (default: $REDIS_URL, else 127.0.0.1:6379/0)",
    )
    a = p.parse_args()
    if a.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda, but torch sees no CUDA device (use --device cpu --quick)")
    scale, report = QUICK if a.quick else FULL, Report()
    info = device_info(a.device)
    client = redis.Redis.from_url(a.redis_url)
    client.ping()
    prefix = f"rbmrec-gpucheck-{uuid.uuid4().hex[:8]}"
    began = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
            run_steps(Setup(a.device, scale, a.redis_url, prefix, Path(tmp), report))
    except Exception as exc:  # still print and write what was measured, and say what broke
        traceback.print_exc()
        report.problems.append(f"the run stopped: {type(exc).__name__}: {exc}")
    finally:
        keys = list(client.scan_iter(f"{prefix}-*"))
        if keys:
            client.delete(*keys)
        client.close()
    total_s = time.perf_counter() - began
    check(report)
    figures = summary(report)
    print_table(report, info, figures)
    a.out.mkdir(parents=True, exist_ok=True)
    out = a.out / "gpu_check.json"
    result = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["bench/gpu_check.py", *sys.argv[1:]]),
        "quick": a.quick,
        **info,
        "scale": asdict(scale),
        "tests": report.tests,
        "models": report.models,
        "serving": [asdict(r) for r in report.rows],
        "epochs": [asdict(e) for e in report.epochs],
        "summary": figures,
        "steps_s": report.steps_s,
        "total_s": round(total_s, 1),
        "problems": report.problems,
        "ok": not report.problems,
    }
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out} ({total_s:.0f} s)", file=sys.stderr)
    return 0 if not report.problems else 1


if __name__ == "__main__":
    sys.exit(main())
