"""Model quality: the RBM against its baselines on ml-100k u1..u5 (and ml-latest-small).

Runs ``rbm-train --json --no-register`` for each split, in one run, and writes a table of
mean ± std per metric, model and baselines, to ``bench/results/quality.{md,json}``.

    .venv/bin/python bench/quality.py [--splits u1,u2,u3,u4,u5] [--epochs 40] [--small]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
DATA = Path(os.environ.get("RBMREC_DATA", ROOT.parent / "shared" / "movielens"))
METRICS = ("rmse", "mae", "precision@10", "recall@10", "ndcg@10", "hr@10")
TARGETS = {"rmse": ("<=", 0.925), "ndcg@10": (">=", 0.33)}


def _run(dataset: str, split: str, epochs: int) -> dict[str, object]:
    out = subprocess.run(
        [
            str(BIN / "rbm-train"),
            "--dataset",
            dataset,
            "--data-dir",
            str(DATA),
            "--split",
            split,
            "--epochs",
            str(epochs),
            "--json",
            "--quiet",
            "--no-register",
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, object] = json.loads(out.stdout)
    return result


def _table(runs: list[dict[str, object]]) -> tuple[list[str], dict[str, dict[str, list[float]]]]:
    models: dict[str, dict[str, list[float]]] = {}
    for run in runs:
        baselines = run["baselines"]
        assert isinstance(baselines, dict)
        for name, metrics in [("rbm", run), *baselines.items()]:
            for key in METRICS:
                if key in metrics:
                    models.setdefault(name, {}).setdefault(key, []).append(float(metrics[key]))
    lines = ["| model | " + " | ".join(METRICS) + " |", "|---" * (len(METRICS) + 1) + "|"]
    for name, values in models.items():
        cells = [
            f"{np.mean(values[k]):.4f} ± {np.std(values[k]):.4f}" if k in values else "–"
            for k in METRICS
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines, models


def main() -> None:
    """Train and evaluate on every split; print and write the table."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--splits", default="u1,u2,u3,u4,u5")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--small", action="store_true", help="also ml-latest-small, holdout split")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    a = p.parse_args()
    runs = []
    for split in a.splits.split(","):
        print(f"ml-100k {split} ...", file=sys.stderr, flush=True)
        runs.append(_run("ml-100k", split, a.epochs))
    lines, models = _table(runs)
    command = " ".join(["python", "bench/quality.py", *sys.argv[1:]])
    report = [
        f"# Model quality, ml-100k {a.splits} (mean ± std over splits)",
        "",
        f"`{command}`, {datetime.now(UTC).date()}",
        "",
        *lines,
        "",
    ]
    rbm = models["rbm"]
    for key, (op, bound) in TARGETS.items():
        mean = float(np.mean(rbm[key]))
        met = mean <= bound if op == "<=" else mean >= bound
        report.append(f"- target {key} {op} {bound}: {mean:.4f} ({'met' if met else 'not met'})")
    small: dict[str, object] | None = None
    if a.small:
        print("ml-latest-small holdout ...", file=sys.stderr, flush=True)
        small = _run("ml-latest-small", "holdout", a.epochs)
        small_lines, _ = _table([small])
        report += ["", "## ml-latest-small, seeded per-user holdout (one run)", "", *small_lines]
    text = "\n".join(report) + "\n"
    print(text)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "quality.md").write_text(text)
    (a.out / "quality.json").write_text(
        json.dumps({"command": command, "runs": runs, "ml_latest_small": small}, indent=1)
    )


if __name__ == "__main__":
    main()
