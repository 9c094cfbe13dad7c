"""Capacity calculator: serving memory, Redis memory, throughput and replicas, derived.

For ml-25m and for 10x and 100x of it, two ways: everything grows (users, movies and
ratings) or only users and ratings (the catalogue stays at 59,047 movies). Every figure is
computed from the inputs printed with it: the model's shapes (TrainConfig, the checkpoint
layout of rbm/checkpoint.py and the serving copies of rbm/scoring.py), figures measured on
the development machine (listed in MEASURED) and the serving benchmark run in
bench/results/serve-2026-11-27.json. docs/scaling.md explains each step.

    python bench/capacity.py [--out bench/results/capacity.json]
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from trainer.train import TrainConfig

ROOT = Path(__file__).resolve().parent.parent
F32, I64 = 4, 8
BATCH = 64  # rbm-serve --max-batch-size, the default and the benchmark's
UTILISATION = 0.7  # the HorizontalPodAutoscaler's CPU target

# Measured on the development machine (2 cores, Redis 7.0.15), 2026-11-28; see docs/scaling.md.
MEASURED = {
    "base_rss_bytes": 287e6,  # rbm-serve with an ml-100k model (its tensors ~10 MB), ps RSS
    "python_bytes_per_user": 132,  # Engine.user_row dict + user_bounds list, tracemalloc
    "python_bytes_per_movie": 237,  # movie_index, movie_ids, titles, tracemalloc
    "redis_bytes_per_cached_user": 1440,  # SET 1,200 B value EX ttl, used_memory delta / key
    "redis_bytes_per_stream_entry": 36,  # XADD user/movie/rating/ts, MEMORY USAGE / entries
    "overlay_bytes_per_streamed_rating": 91,  # UserOverlay dicts in every replica, tracemalloc
}
# Spec-sheet figures for the GPU estimate (H100 SXM), used at half their peak.
GPU = {"fp32_flops": 67e12, "hbm_bytes_per_s": 3.35e12, "efficiency": 0.5, "memory_bytes": 80e9}
# The benchmark's catalogues: (rating levels K, movies M).
BENCH_SHAPES = {"ml-100k": (5, 1682), "ml-latest-small": (10, 9742)}


@dataclass(frozen=True)
class Shape:
    """A data set and model size."""

    name: str
    users: int
    movies: int
    ratings: int
    levels: int = 10  # half stars 0.5..5
    train_fraction: float = 0.8  # --split holdout keeps 80% of each user's ratings to train on
    hidden: int = TrainConfig.n_hidden
    hidden_implicit: int = TrainConfig.n_hidden_implicit * TrainConfig.implicit_models
    hidden_item: int = TrainConfig.n_hidden_item

    @property
    def train_ratings(self) -> int:
        """Ratings the checkpoint keeps per user (the training part)."""
        return round(self.ratings * self.train_fraction)

    @property
    def hidden_width(self) -> int:
        """Floats of one user's cached hidden pre-activation."""
        return self.hidden + self.hidden_implicit

    @property
    def macs_per_user(self) -> int:
        """Multiply-adds of one user's scoring pass: K*M*F (softmax RBM) + M*F' (implicit)."""
        return self.levels * self.movies * self.hidden + self.movies * self.hidden_implicit


def checkpoint_tensors(s: Shape) -> dict[str, int]:
    """Bytes of each tensor rbm/checkpoint.py saves for this shape."""
    km, ku = s.levels * s.movies, s.levels * s.users
    return {
        "weights": km * s.hidden * F32,
        "visible_bias": km * F32,
        "hidden_bias": s.hidden * F32,
        "movie_ids": s.movies * I64,
        "user_ids": s.users * I64,
        "user_indptr": (s.users + 1) * I64,
        "user_movies": s.train_ratings * I64,
        "user_levels": s.train_ratings * I64,
        "popularity": s.movies * F32,
        "implicit_weights": s.movies * s.hidden_implicit * F32,
        "implicit_visible_bias": s.movies * F32,
        "implicit_hidden_bias": s.hidden_implicit * F32,
        "item_weights": ku * s.hidden_item * F32,
        "item_visible_bias": ku * F32,
        "item_hidden_bias": s.hidden_item * F32,
        "item_movie_hidden": s.movies * s.hidden_item * F32,
    }


def scorer_copies(s: Shape) -> int:
    """Bytes rbm/scoring.py's Scorer adds: its own contiguous Wᵀ, per-user item weights, ..."""
    km, ku = s.levels * s.movies, s.levels * s.users
    copied = km * s.hidden + km + s.movies + s.levels  # Wᵀ, visible bias, log P(rated), levels
    copied += ku * s.hidden_item + ku + s.movies * s.hidden_item  # item weights, bias, hiddenᵀ
    copied += s.movies + s.users  # the rating blend's log counts of movies and users
    return copied * F32


def gpu_device_memory(s: Shape) -> float:
    """Bytes on the GPU with --device cuda (the checkpoint and its CSR stay in host memory)."""
    km = s.levels * s.movies
    params = (km * s.hidden + km + s.hidden) * F32  # Engine.params
    implicit = (s.movies * s.hidden_implicit + s.movies + s.hidden_implicit) * F32
    engine = params + implicit + s.movies * F32 + scorer_copies(s)  # + popularity
    activations = (3 * BATCH * km + 6 * BATCH * s.movies) * F32
    return float(2 * engine + activations)  # during a reload both versions are on the device


def serving_memory(s: Shape) -> dict[str, float]:
    """Bytes one rbm-serve replica holds (torch backend, CPU), steady and during a reload."""
    km = s.levels * s.movies
    checkpoint = sum(checkpoint_tensors(s).values())
    # rbm/scoring.py's Scorer keeps its own contiguous copies: Wᵀ, the per-user item weights,
    # their biases and the movies' item-hidden states transposed.
    scorer = scorer_copies(s)
    # ...and the engine then lets go of the checkpoint's item RBM weights (server/engine.py,
    # Engine._released): the scorer's per-user layout is the one copy kept.
    tensors = checkpoint_tensors(s)
    released = sum(tensors[k] for k in ("item_weights", "item_visible_bias", "item_hidden_bias"))
    python = (
        s.users * MEASURED["python_bytes_per_user"] + s.movies * MEASURED["python_bytes_per_movie"]
    )
    # One batch's pass: logits, probabilities and probabilities x levels (B, K*M), then about
    # six (B, M) tensors (expected, liked, log P(rated) and its temporaries, score).
    activations = (3 * BATCH * km + 6 * BATCH * s.movies) * F32
    engine = checkpoint - released + scorer + python
    steady = MEASURED["base_rss_bytes"] + engine + activations
    return {
        "checkpoint": checkpoint,
        "scorer_copies": scorer,
        "released_after_build": released,
        "python_maps": python,
        "activations_batch64": activations,
        "base_process": MEASURED["base_rss_bytes"],
        "steady": steady,
        "during_reload": steady + engine,  # the new version loads beside the old one
    }


def redis_memory(s: Shape) -> dict[str, float]:
    """Redis bytes: the cache per million users, and per million streamed ratings."""
    return {
        "value_bytes": s.hidden_width * F32,
        "per_million_users": 1e6 * MEASURED["redis_bytes_per_cached_user"],
        "all_users": s.users * MEASURED["redis_bytes_per_cached_user"],
        "per_million_streamed_ratings": 1e6 * MEASURED["redis_bytes_per_stream_entry"],
    }


def throughput_fit(serve_json: Path) -> dict[str, float]:
    """Per-request seconds = a + b * MACs, through the batched c=64 rows of serve.json."""
    rows = json.loads(serve_json.read_text(encoding="utf-8"))["rows"]
    points = []
    for model, (levels, movies) in BENCH_SHAPES.items():
        (row,) = [
            r
            for r in rows
            if r["variant"] == "batched" and r["model"] == model and r["concurrency"] == 64
        ]
        macs = Shape(model, users=1, movies=movies, ratings=1, levels=levels).macs_per_user
        points.append((macs, 1.0 / row["rps"], row["rps"]))
    (w1, t1, r1), (w2, t2, r2) = points
    b = (t2 - t1) / (w2 - w1)
    echo = [r for r in rows if r["variant"] == "echo" and r["concurrency"] == 64]
    return {
        "a_s": t1 - b * w1,
        "b_s_per_mac": b,
        "ml100k_rps": r1,
        "ml100k_macs": w1,
        "small_rps": r2,
        "small_macs": w2,
        "echo_rps": echo[0]["rps"] if echo else math.nan,
    }


def cpu_rps(s: Shape, fit: dict[str, float]) -> float:
    """Requests per second of one CPU replica (the linear fit, extrapolated)."""
    return 1.0 / (fit["a_s"] + fit["b_s_per_mac"] * s.macs_per_user)


def gpu_rps(s: Shape, fit: dict[str, float]) -> float:
    """Estimate for one GPU replica: the Python per-request part stays, the pass moves."""
    flops, bw = GPU["fp32_flops"] * GPU["efficiency"], GPU["hbm_bytes_per_s"] * GPU["efficiency"]
    km = s.levels * s.movies
    compute = 2 * BATCH * s.macs_per_user / flops
    weights = (km * s.hidden + s.movies * s.hidden_implicit) * F32 / bw  # read once a batch
    elementwise = 6 * BATCH * km * F32 / bw  # ~6 passes over (B, K*M): write, softmax, sums
    per_request = (compute + weights + elementwise) / BATCH
    return 1.0 / (fit["a_s"] + per_request)


def replicas(rate: float, per_replica: float) -> int:
    """Replicas for ``rate`` req/s at the HPA's utilisation, plus one spare, at least two."""
    return max(2, math.ceil(rate / (UTILISATION * per_replica)) + 1)


def shapes() -> list[Shape]:
    """ml-25m and its 10x and 100x, all growing or users only."""
    base = Shape("ml-25m", 162_541, 59_047, 25_000_095)
    out = [base]
    for k in (10, 100):
        out.append(Shape(f"{k}x all", base.users * k, base.movies * k, base.ratings * k))
        out.append(Shape(f"{k}x users", base.users * k, base.movies, base.ratings * k))
    return out


def report(serve_json: Path) -> dict[str, object]:
    """Everything, as one JSON-able object."""
    fit = throughput_fit(serve_json)
    rates = (100, 1_000, 10_000, 100_000)
    rows = []
    for s in shapes():
        cpu, gpu = cpu_rps(s, fit), gpu_rps(s, fit)
        rows.append(
            {
                "shape": asdict(s) | {"train_ratings": s.train_ratings, "macs": s.macs_per_user},
                "memory_bytes": serving_memory(s),
                "redis_bytes": redis_memory(s),
                "cpu_rps": cpu,
                "gpu_rps_estimate": gpu,
                "replicas_cpu": {str(r): replicas(r, cpu) for r in rates},
                "gpu_device_bytes": gpu_device_memory(s),
                "gpu_fits": gpu_device_memory(s) <= GPU["memory_bytes"],
                "replicas_gpu": {str(r): replicas(r, gpu) for r in rates},
            }
        )
    return {
        "command": "python bench/capacity.py",
        "inputs": {"measured": MEASURED, "gpu_spec": GPU, "batch": BATCH, "fit": fit},
        "utilisation": UTILISATION,
        "rows": rows,
    }


def _gb(x: float) -> str:
    return f"{x / 1e9:,.2f}"


def print_tables(result: dict[str, object]) -> None:
    """Markdown tables, as docs/scaling.md shows them."""
    rows: list[dict[str, object]] = result["rows"]  # type: ignore[assignment]
    print("| shape | users | movies | train ratings | checkpoint GB | steady GB | reload GB |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        s, m = r["shape"], r["memory_bytes"]
        assert isinstance(s, dict) and isinstance(m, dict)
        print(
            f"| {s['name']} | {s['users']:,} | {s['movies']:,} | {s['train_ratings']:,} "
            f"| {_gb(m['checkpoint'])} | {_gb(m['steady'])} | {_gb(m['during_reload'])} |"
        )
    print()
    print("| shape | MACs/user | CPU req/s | GPU req/s (estimate) | GPU memory GB |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        s, device = r["shape"], r["gpu_device_bytes"]
        assert isinstance(s, dict) and isinstance(device, float)
        gpu = f"{r['gpu_rps_estimate']:,.0f}" if r["gpu_fits"] else "does not fit"
        print(f"| {s['name']} | {s['macs']:,} | {r['cpu_rps']:,.1f} | {gpu} | {_gb(device)} |")
    print()
    print("| shape | device | 100 req/s | 1,000 | 10,000 | 100,000 |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        s = r["shape"]
        assert isinstance(s, dict)
        for device in ("cpu", "gpu"):
            counts = r[f"replicas_{device}"]
            assert isinstance(counts, dict)
            cells = " | ".join(f"{n:,}" for n in counts.values())
            if device == "gpu" and not r["gpu_fits"]:
                cells = " | ".join(["does not fit one GPU"] * len(counts))
            print(f"| {s['name']} | {device} | {cells} |")


def main() -> None:
    """Print the tables and write the JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--serve-json", type=Path, default=ROOT / "bench/results/serve-2026-11-27.json")
    p.add_argument("--out", type=Path, default=ROOT / "bench/results/capacity.json")
    args = p.parse_args()
    result = report(args.serve_json)
    print(json.dumps(result["inputs"], indent=1))
    print_tables(result)
    args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
