"""``rbm-train``: train on MovieLens, evaluate, register a version and optionally promote it.

Exit codes: 0 success, 2 bad usage, 3 data unavailable, 4 training failed, 5 registry error.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import platform
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from rbm.checkpoint import save_checkpoint, smoke_test
from rbm.onnx_export import ONNX_FILE, export_checkpoint
from registry.errors import RegistryError
from registry.gate import promote
from registry.records import VersionMeta
from registry.store import FileRegistry, resolve_root
from trainer.data import DATASETS, DataUnavailable, load_dataset, resolve_data_dir
from trainer.pipeline import TrainOutcome, fit_and_evaluate
from trainer.train import EpochReport, TrainConfig

__all__ = ["main"]

log = logging.getLogger("rbm-train")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rbm-train",
        description="Train the softmax RBM on MovieLens, evaluate it against baselines, "
        "register it as a new version and optionally promote it.",
    )
    p.add_argument("--dataset", choices=DATASETS, default="ml-100k")
    p.add_argument(
        "--data-dir", help="folder holding the data set (else $RBMREC_DATA, else ./data)"
    )
    p.add_argument("--split", default="u1", help="u1..u5, ua, ub (ml-100k) or holdout")
    p.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    p.add_argument("--hidden", type=int, default=TrainConfig.n_hidden, help="hidden units")
    p.add_argument("--seed", type=int, default=TrainConfig.seed)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--registry", help="registry root (else $RBMREC_REGISTRY, else ./registry)")
    p.add_argument("--model", default="rbm", help="model name in the registry")
    p.add_argument("--promote", action="store_true", help="point the production alias at it")
    p.add_argument("--no-register", action="store_true", help="train and evaluate only")
    p.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _device(choice: str) -> str:
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but no CUDA device is available")
    return choice


def _library_versions() -> dict[str, str]:
    versions = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
    }
    with contextlib.suppress(metadata.PackageNotFoundError):
        versions["rbmrec"] = metadata.version("rbmrec")
    return versions


def _register(
    args: argparse.Namespace, outcome: TrainOutcome, cfg: TrainConfig, fingerprint: str
) -> dict[str, Any]:
    registry = FileRegistry(resolve_root(args.registry))
    params: dict[str, Any] = cfg.to_dict() | {
        "dataset": args.dataset,
        "split": args.split,
        "n_movies": outcome.checkpoint.config.n_movies,
        "n_levels": outcome.checkpoint.config.n_levels,
        "n_users": int(outcome.checkpoint.user_ids.numel()),
        "ranking": outcome.checkpoint.ranking,
    }
    meta = VersionMeta(
        metrics=outcome.metrics,
        params=params,
        data_fingerprint=fingerprint,
        library_versions=_library_versions(),
        description=f"RBM on {args.dataset}/{args.split}",
    )

    def write_files(directory: Path) -> None:
        save_checkpoint(outcome.checkpoint, directory)
        export_checkpoint(outcome.checkpoint, directory / ONNX_FILE)

    info = registry.register(args.model, write_files, meta)
    result: dict[str, Any] = {"model": args.model, "version": info.version, "path": str(info.path)}
    if args.promote:  # through the same gate as `rbm-registry promote`
        promote(
            registry,
            args.model,
            info.version,
            "production",
            reason="rbm-train --promote",
            smoke_test=smoke_test,
        )
        result["promoted"] = "production"
    return result


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``rbm-train``."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = TrainConfig(
            n_hidden=args.hidden, epochs=args.epochs, seed=args.seed, device=_device(args.device)
        )
    except ValueError as exc:
        print(f"rbm-train: error: {exc}", file=sys.stderr)
        return 2
    torch.manual_seed(cfg.seed)
    try:
        ds = load_dataset(args.dataset, resolve_data_dir(args.data_dir), args.split, seed=cfg.seed)
    except DataUnavailable as exc:
        print(f"rbm-train: error: {exc}", file=sys.stderr)
        return 3
    except ValueError as exc:
        print(f"rbm-train: error: {exc}", file=sys.stderr)
        return 2

    bar = tqdm(total=cfg.epochs, desc="training", unit="epoch", disable=args.quiet, file=sys.stderr)

    def on_epoch(r: EpochReport) -> None:
        bar.update(1)
        bar.set_postfix(k=r.cd_k, recon_rmse=f"{r.recon_rmse:.3f}", val_rmse=f"{r.val_rmse:.4f}")

    started = time.monotonic()
    try:
        outcome = fit_and_evaluate(ds, cfg, on_epoch)
    except (FloatingPointError, RuntimeError, ValueError) as exc:
        print(f"rbm-train: error: training failed: {exc}", file=sys.stderr)
        return 4
    finally:
        bar.close()

    outcome.metrics["train_seconds"] = round(time.monotonic() - started, 3)
    report: dict[str, Any] = dict(outcome.metrics)
    report["baselines"] = outcome.baselines
    report |= {"dataset": args.dataset, "split": args.split, "device": cfg.device}
    if not args.no_register:
        try:
            report["registered"] = _register(args, outcome, cfg, ds.fingerprint)
        except RegistryError as exc:
            print(f"rbm-train: error: {exc}", file=sys.stderr)
            return 5
    if args.json:
        print(json.dumps(report))
    else:
        _print_human(report)
    return 0


def _print_human(report: dict[str, Any]) -> None:
    keys = ("rmse", "mae", "precision@10", "recall@10", "ndcg@10", "hr@10")
    print(f"{'model':<12}" + "".join(f"{k:>14}" for k in keys))
    rows = [("rbm", report), *report["baselines"].items()]
    for name, metrics in rows:
        cells = "".join(f"{metrics[k]:>14.4f}" if k in metrics else f"{'-':>14}" for k in keys)
        print(f"{name:<12}{cells}")
    if "registered" in report:
        reg = report["registered"]
        promoted = f", promoted to {reg['promoted']}" if "promoted" in reg else ""
        print(f"registered {reg['model']} version {reg['version']}{promoted}")


if __name__ == "__main__":
    sys.exit(main())
