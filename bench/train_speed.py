"""Training speed: sparse CD-1 (what the trainer runs) against a dense reference, in one run.

The dense reference codes every user as all K*M visible units (zeros where unrated) and
reconstructs them all, as a naive implementation would: O(users x movies x K x F) per
epoch, against O(ratings x K x F) for the sparse one. Data: ml-100k, and a synthetic set
of ml-25m's shape (162,541 users, 59,047 movies, 25M ratings, Zipf-like popularity and
log-normal user activity). On the large set both are timed over a sample of minibatches
and scaled to an epoch by the ratings (sparse) or users (dense) they cover.

    .venv/bin/python bench/train_speed.py [--large-batches 300] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from rbm.implicit import implicit_cd_statistics, implicit_config
from rbm.model import RatingsBatch, RBMConfig, RBMParams, cd_statistics
from trainer.data import load_dataset
from trainer.indexing import IndexedRatings, Indexer

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("RBMREC_DATA", ROOT.parent / "shared" / "movielens"))
BATCH = 20  # users per minibatch, as TrainConfig's default
F = 100


def dense_cd1(params: RBMParams, batch: RatingsBatch, config: RBMConfig) -> torch.Tensor:
    """The naive reference: dense visible layer, every unit reconstructed."""
    m, k = config.n_movies, config.n_levels
    v0 = torch.zeros(batch.n_rows, k * m)
    v0[batch.rows, batch.levels * m + batch.movies] = 1.0
    rated = torch.zeros(batch.n_rows, m)
    rated[batch.rows, batch.movies] = 1.0
    ph0 = torch.sigmoid(v0 @ params.weights + params.hidden_bias)  # (B, F)
    h = torch.bernoulli(ph0)
    logits = (h @ params.weights.t() + params.visible_bias).view(batch.n_rows, k, m)
    pv = torch.softmax(logits, dim=1) * rated.unsqueeze(1)  # only rated movies count
    pv = pv.reshape(batch.n_rows, k * m)
    ph1 = torch.sigmoid(pv @ params.weights + params.hidden_bias)
    return v0.t() @ ph0 - pv.t() @ ph1  # (K*M, F)


def _time(fn: object, batches: list[RatingsBatch]) -> float:
    start = time.perf_counter()
    for b in batches:
        fn(b)  # type: ignore[operator]
    return time.perf_counter() - start


def _batches(csr: IndexedRatings, rows: np.ndarray) -> list[RatingsBatch]:
    return [csr.batch(rows[i : i + BATCH]) for i in range(0, len(rows), BATCH)]


def synthetic_25m(seed: int = 0) -> tuple[IndexedRatings, int]:
    """A CSR with ml-25m's shape and long tails (duplicates removed)."""
    users, movies, nnz = 162_541, 59_047, 25_000_095
    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, movies + 1) ** 0.9
    activity = rng.lognormal(0.0, 1.0, users)
    key = np.empty(0, dtype=np.int64)
    while len(key) < nnz:  # popular pairs repeat: draw until enough distinct ones remain
        u = rng.choice(users, size=nnz, p=activity / activity.sum())
        m = rng.choice(movies, size=nnz, p=popularity / popularity.sum())
        key = np.unique(np.concatenate([key, u.astype(np.int64) * movies + m]))
    key = np.sort(rng.choice(key, size=nnz, replace=False))
    u, m = key // movies, key % movies
    indptr = np.concatenate([[0], np.cumsum(np.bincount(u, minlength=users))]).astype(np.int64)
    levels = rng.integers(0, 5, size=len(m)).astype(np.int64)
    return IndexedRatings(np.arange(users), indptr, m.astype(np.int64), levels), movies


def _run(name: str, csr: IndexedRatings, n_movies: int, sample: int | None) -> dict[str, float]:
    config = RBMConfig(n_movies, 5, F)
    params = RBMParams.init(config, torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(0)
    rows = np.random.default_rng(0).permutation(len(csr.user_ids))
    sparse_rows = rows if sample is None else rows[: sample * BATCH]
    batches = _batches(csr, sparse_rows)
    covered = sum(int(b.rows.numel()) for b in batches)
    t_sparse = _time(lambda b: cd_statistics(params, b, config, 1, gen), batches)
    sparse_epoch = t_sparse * len(csr.movies) / covered
    dense_rows = sparse_rows if sample is None else rows[: max(2, sample // 60) * BATCH]
    dense_batches = _batches(csr, dense_rows)
    t_dense = _time(lambda b: dense_cd1(params, b, config), dense_batches)
    dense_epoch = t_dense * len(csr.user_ids) / len(dense_rows)
    # The implicit-feedback RBM is dense over movies by design: time it the same way.
    implicit = RBMParams.init(implicit_config(n_movies, 200), torch.Generator().manual_seed(0))

    def implicit_step(b: RatingsBatch) -> None:
        visible = torch.zeros(b.n_rows, n_movies)
        visible[b.rows, b.movies] = 1.0
        implicit_cd_statistics(implicit, visible, gen)

    t_implicit = _time(implicit_step, dense_batches)
    implicit_epoch = t_implicit * len(csr.user_ids) / len(dense_rows)
    return {
        "dataset": name,  # type: ignore[dict-item]
        "users": float(len(csr.user_ids)),
        "movies": float(n_movies),
        "ratings": float(len(csr.movies)),
        "sparse_epoch_s": sparse_epoch,
        "dense_epoch_s": dense_epoch,
        "dense_over_sparse": dense_epoch / sparse_epoch,
        "implicit_epoch_s": implicit_epoch,
        "sparse_measured_batches": float(len(batches)),
        "dense_measured_batches": float(len(dense_batches)),
        "extrapolated": float(sample is not None),
    }


def main() -> None:
    """Time both implementations on both data sets; print a table and write JSON."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--large-batches",
        type=int,
        default=300,
        help="minibatches timed on the 25M set (scaled to an epoch)",
    )
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "train_speed.json")
    a = p.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    ds = load_dataset("ml-100k", DATA, "u1")
    small = Indexer(ds).index(ds.train)
    rows = [_run("ml-100k u1.base", small, len(ds.movie_ids), None)]
    print("building the synthetic 25M set ...", file=sys.stderr, flush=True)
    large, n_movies = synthetic_25m()
    rows.append(_run("synthetic ml-25m shape", large, n_movies, a.large_batches))
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(
        f"{'data set':<24} {'ratings':>11} {'sparse s/epoch':>15} {'dense s/epoch':>14} "
        f"{'dense/sparse':>13} {'implicit s/epoch':>17}"
    )
    for r in rows:
        mark = " (scaled from a sample)" if r["extrapolated"] else ""
        print(
            f"{r['dataset']:<24} {int(r['ratings']):>11} {r['sparse_epoch_s']:>15.2f} "
            f"{r['dense_epoch_s']:>14.1f} {r['dense_over_sparse']:>13.1f} "
            f"{r['implicit_epoch_s']:>17.1f}{mark}"
        )
    print(f"peak resident memory: {peak_gb:.2f} GB")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(
        json.dumps(
            {
                "when": datetime.now(UTC).isoformat(timespec="seconds"),
                "command": " ".join(["python", "bench/train_speed.py", *sys.argv[1:]]),
                "hidden_units": F,
                "batch_users": BATCH,
                "rows": rows,
                "peak_rss_gb": peak_gb,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
