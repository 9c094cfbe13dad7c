"""``rbm-train``: train on MovieLens, evaluate, register a version and optionally promote it.

Exit codes: 0 success, 2 bad usage, 3 data unavailable (the data set, or Redis for
``--ratings-log``), 4 training failed, 5 registry error (also when the version was
registered but the promotion gate refused it: the report is printed all the same).

Progress goes to stderr, one bar per phase (user RBM, implicit RBM, item RBM, evaluation)
and a line for each phase that stops early; stdout carries only the report.

Launched by torchrun (``torchrun --nproc-per-node N -m trainer ...``), every rank trains;
rank 0 alone evaluates, registers, promotes and prints, and the others exit 0 after training.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
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
from rbm.model import RATING_INFERENCES
from rbm.onnx_export import ONNX_FILE, export_checkpoint
from registry.cli import HelpFormatter
from registry.errors import RegistryError
from registry.gate import promote
from registry.names import check_model_name
from registry.records import VersionMeta
from registry.store import FileRegistry, resolve_root
from trainer.catalogue import (
    CatalogueAddition,
    ExtraMovies,
    MoviesFileError,
    add_movies,
    read_movies,
)
from trainer.data import (
    DATASETS,
    ML100K_SPLITS,
    DataUnavailable,
    load_dataset,
    resolve_data_dir,
)
from trainer.distributed import Communicator, RankZeroFailed, from_environment
from trainer.loop import EpochProgress
from trainer.pipeline import (
    MAX_BLEND_RANKING_MOVIES,
    TrainOutcome,
    evaluate_models,
    fit_models,
)
from trainer.rating_log import RatingLog, RatingLogUnavailable, read_rating_log
from trainer.train import EpochReport, TrainConfig, model_configs
from trainer.train_implicit import implicit_phase

__all__ = ["main"]

log = logging.getLogger("rbm-train")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rbm-train",
        description="Train the softmax RBM on MovieLens, evaluate it against baselines "
        "(global mean, biases, popularity, item-kNN, EASE), register it as a new version and "
        "optionally promote it.",
        epilog="Exit codes: 0 success, 2 bad usage, 3 data unavailable, 4 training failed, "
        "5 registry error, also when --promote was refused (the version stays registered "
        "and the report is printed).",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--dataset", choices=DATASETS, default="ml-100k", help="MovieLens data set")
    p.add_argument(
        "--data-dir", help="folder holding the data set (default: $RBMREC_DATA, else ./data)"
    )
    p.add_argument("--split", default="u1", help="u1..u5, ua, ub (ml-100k) or holdout")
    p.add_argument(
        "--epochs",
        type=int,
        default=TrainConfig.epochs,
        metavar="N",
        help="most epochs of the user-based RBM (each RBM stops early when validation stalls)",
    )
    p.add_argument(
        "--hidden", type=int, default=TrainConfig.n_hidden, metavar="N", help="hidden units"
    )
    p.add_argument(
        "--implicit-epochs",
        type=int,
        default=TrainConfig.implicit_epochs,
        metavar="N",
        help="most epochs of the implicit-feedback RBM",
    )
    p.add_argument(
        "--item-epochs",
        type=int,
        default=TrainConfig.item_epochs,
        metavar="N",
        help="most epochs of the item-based RBM",
    )
    blend = p.add_mutually_exclusive_group()
    blend.add_argument(
        "--blend-ranking",
        action="store_true",
        help="let the item-based RBM's blend enter the ranking (slower serving pass); "
        f"default: chosen on validation for catalogues up to {MAX_BLEND_RANKING_MOVIES:,} movies",
    )
    blend.add_argument(
        "--no-blend-ranking",
        dest="blend_ranking",
        action="store_false",
        help="keep the item-based RBM's blend out of the ranking",
    )
    p.set_defaults(blend_ranking=None)  # chosen on validation
    p.add_argument(
        "--rating-inference",
        choices=RATING_INFERENCES,
        default=TrainConfig.rating_inference,
        help="how predicted ratings are computed, in validation and when served: the "
        "mean-field level distribution, or with its second-order term (default; closer to "
        "the exact one, lower validation RMSE)",
    )
    p.add_argument(
        "--no-refit",
        action="store_true",
        help="serve the user- and item-based RBMs as early stopping left them, without "
        "training them again on the whole training part (about half their time)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=TrainConfig.seed,
        metavar="N",
        help="seed of the split, the initial weights and the sampling, in 0..2**63-1",
    )
    p.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="auto: cuda when available, else cpu",
    )
    p.add_argument("--registry", help="registry root (default: $RBMREC_REGISTRY, else ./registry)")
    p.add_argument("--model", default="rbm", help="model name in the registry")
    p.add_argument(
        "--promote",
        action="store_true",
        help="point the production alias at it, through the promotion gate",
    )
    p.add_argument("--no-register", action="store_true", help="train and evaluate only")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.add_argument(
        "--quiet", action="store_true", help="no progress bars or early-stop lines on stderr"
    )
    p.add_argument(
        "--ratings-log",
        metavar="REDIS_URL",
        help="also train on the ratings users streamed to the server, read from this Redis",
    )
    p.add_argument(
        "--ratings-log-prefix",
        default="rbmrec",
        metavar="PREFIX",
        help="the server's --redis-prefix: the log is the stream PREFIX:ratings",
    )
    p.add_argument(
        "--movies",
        metavar="FILE",
        type=Path,
        help="UTF-8 CSV with the header movie_id,title: movies to add to the data set's "
        "catalogue, e.g. ones the rating log rates that the data set does not list (an id "
        "the data set lists keeps the data set's title, and is counted)",
    )
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
    args: argparse.Namespace,
    outcome: TrainOutcome,
    cfg: TrainConfig,
    fingerprint: str,
    world_size: int,
    added: CatalogueAddition | None,
) -> tuple[dict[str, Any], RegistryError | None]:
    """Register the version; with --promote, also try the gate.

    Returns the report's ``registered`` part and why the promotion was refused, if it was
    (``"promoted": null`` then): the version is registered either way.
    """
    registry = FileRegistry(resolve_root(args.registry))
    params: dict[str, Any] = cfg.to_dict() | {
        "dataset": args.dataset,
        "split": args.split,
        "n_movies": outcome.checkpoint.config.n_movies,
        "n_levels": outcome.checkpoint.config.n_levels,
        "n_users": int(outcome.checkpoint.user_ids.numel()),
        "ranking": outcome.checkpoint.ranking,
        "liked_weight": outcome.checkpoint.liked_weight,
        "blend_in_ranking": outcome.checkpoint.blend_ranking,  # as chosen; blend_ranking as asked
        "world_size": world_size,
    }
    if outcome.rating_log is not None:  # never the URL: it may hold a password
        params["ratings_log"] = {
            "prefix": args.ratings_log_prefix,
            "last_id": outcome.rating_log.last_id,
            "applied": outcome.rating_log.applied,
        }
    if added is not None:  # never the file's path: a path of the machine it was trained on
        params["movies_added"] = added.added
        params["movies_already_listed"] = added.already_listed
    meta = VersionMeta(
        metrics=outcome.metrics,
        params=params,
        data_fingerprint=fingerprint,
        library_versions=_library_versions(),
        description=f"RBM on {args.dataset}/{args.split}",
        rating_log_until=None if outcome.rating_log is None else outcome.rating_log.last_id,
    )

    def write_files(directory: Path) -> None:
        save_checkpoint(outcome.checkpoint, directory)
        export_checkpoint(outcome.checkpoint, directory / ONNX_FILE)

    info = registry.register(args.model, write_files, meta)
    result: dict[str, Any] = {"model": args.model, "version": info.version, "path": str(info.path)}
    refused = None
    if args.promote:  # through the same gate as `rbm-registry promote`
        try:
            promote(
                registry,
                args.model,
                info.version,
                "production",
                reason="rbm-train --promote",
                smoke_test=smoke_test,
            )
            result["promoted"] = "production"
        except RegistryError as exc:
            result["promoted"] = None
            refused = exc
    return result, refused


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``rbm-train`` and ``python -m trainer``."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        device = _device(args.device)
    except ValueError as exc:
        print(f"rbm-train: error: {exc}", file=sys.stderr)
        return 2
    try:
        comm = from_environment(device)
    except (RuntimeError, ValueError) as exc:
        print(f"rbm-train: error: cannot join the process group: {exc}", file=sys.stderr)
        return 4
    try:
        return _run(args, comm, device)
    finally:
        comm.close()


def _run(args: argparse.Namespace, comm: Communicator, device: str) -> int:
    """Train on every rank; evaluate, register and report on rank 0."""

    def fail(code: int, message: object) -> int:
        who = "rbm-train" if comm.is_main else f"rbm-train[rank {comm.rank}]"
        one_line = " ".join(str(message).split())  # a torch or OS message may span lines
        print(f"{who}: error: {one_line}", file=sys.stderr)
        return code

    try:
        _check_args(args)
        extra = _read_movies(args)
        cfg = TrainConfig(
            n_hidden=args.hidden,
            epochs=args.epochs,
            implicit_epochs=args.implicit_epochs,
            item_epochs=args.item_epochs,
            blend_ranking=args.blend_ranking,
            refit=not args.no_refit,
            rating_inference=args.rating_inference,
            seed=args.seed,
            device=comm.local_device(device),
        )
    except ValueError as exc:
        return fail(2, exc)
    if (problem := _registry_problem(args)) is not None:
        return fail(5, problem)
    torch.manual_seed(cfg.seed)
    data_dir = resolve_data_dir(args.data_dir)
    try:
        ds = load_dataset(args.dataset, data_dir, args.split, seed=cfg.seed)
    except DataUnavailable as exc:
        return fail(3, exc)
    except (OSError, ValueError) as exc:  # the arguments were checked: a file is missing or bad
        return fail(3, f"cannot read {args.dataset} from {data_dir}: {exc}")
    added = None
    if extra is not None:
        ds, added = add_movies(ds, extra)
    try:
        log = _read_log(args, comm)
    except (RatingLogUnavailable, RankZeroFailed) as exc:
        return fail(3, exc)
    except ValueError as exc:
        return fail(2, exc)

    progress = _Progress(cfg, enabled=not (args.quiet or not comm.is_main))
    started = time.monotonic()
    try:
        fitted = fit_models(
            ds,
            cfg,
            progress.user_epoch,
            comm,
            log,
            on_progress=progress.epoch,
            on_phase=progress.phase,
        )
        if not comm.is_main:
            return 0  # rank 0 evaluates and registers what every rank trained alike
        progress.phase(_EVALUATION)
        outcome = evaluate_models(ds, cfg, fitted)
        progress.finish()
    except (FloatingPointError, RuntimeError, ValueError) as exc:
        return fail(4, f"training failed: {exc}")
    finally:
        progress.close()

    outcome.metrics["train_seconds"] = round(time.monotonic() - started, 3)
    report = _report(args, outcome, cfg, comm.world_size, added)
    refused: RegistryError | None = None
    if not args.no_register:
        fingerprint = ds.fingerprint if log is None else log.fingerprint(ds.fingerprint)
        try:
            report["registered"], refused = _register(
                args, outcome, cfg, fingerprint, comm.world_size, added
            )
        except RegistryError as exc:
            return fail(5, exc)
    if args.json:
        print(json.dumps(report), flush=True)
    else:
        _print_human(report)
        sys.stdout.flush()
    if refused is not None:  # registered all the same: say which version, and why not promoted
        version = report["registered"]["version"]
        return fail(5, f"registered version {version}, not promoted: {refused.message}")
    return 0


_RANKING = "ranking"  # fit_models' last step: choosing the ranking score on validation
_EVALUATION = "evaluation"


class _Progress:
    """Progress on stderr: one tqdm bar per phase, and a line when a phase stops early.

    fit_models announces each phase (``phase``) and reports each epoch of each RBM. The
    evaluation bar has two steps: the ranking choice on the validation slice (the end of
    fit_models) and the test split with the baselines (evaluate_models). Nothing is shown
    when disabled (--quiet, or a rank other than 0); stdout is never written.
    """

    def __init__(self, cfg: TrainConfig, *, enabled: bool) -> None:
        specs = model_configs(cfg)
        self._budgets = {s.name: s.epochs for s in (specs.user, specs.implicit, specs.item) if s}
        if specs.implicit is not None:  # the other members of an average, other rates
            rates = (None, *cfg.implicit_alt_learning_rates)
            for member in range(cfg.implicit_models):
                for rate in rates:
                    self._budgets[implicit_phase(member, rate)] = specs.implicit.epochs
        self._user = specs.user
        self._enabled = enabled
        self._bar: tqdm[Any] | None = None
        self._name: str | None = None  # of the open phase
        self._last: EpochProgress | None = None  # its last epoch
        self._best_user: tuple[int, float] = (0, math.inf)

    def phase(self, name: str) -> None:
        """End the open phase (saying whether it stopped early) and start ``name``."""
        if name == _EVALUATION and self._name == _EVALUATION:  # after the ranking step
            self._step("test split and baselines")
            return
        self.finish()
        if name == _RANKING:
            self._start(_EVALUATION, 2, "step", "ranking on validation")
        elif name == _EVALUATION:
            self._start(_EVALUATION, 1, "step", "test split and baselines")
        else:
            self._start(name, self._budgets.get(name), "epoch")

    def user_epoch(self, r: EpochReport) -> None:
        """An epoch of the user-based RBM, whose report has no best epoch: tracked here."""
        if r.val_rmse < self._best_user[1]:  # as the loop keeps it: strictly better
            self._best_user = (r.epoch, r.val_rmse)
        spec = self._user
        self.epoch(
            EpochProgress(
                spec.name,
                r.epoch,
                spec.epochs,
                r.cd_k,
                r.recon_rmse,
                spec.metric,
                r.val_rmse,
                self._best_user[0],
            )
        )

    def epoch(self, p: EpochProgress) -> None:
        """One epoch of the RBM whose phase is open."""
        self._last = p
        if self._bar is not None:
            postfix: dict[str, object] = {"k": p.cd_k, "recon_rmse": f"{p.recon_rmse:.3f}"}
            if not math.isnan(p.val):  # a refit has no validation figure
                postfix |= {p.metric: f"{p.val:.4f}", "best": p.best_epoch}
            self._bar.set_postfix(postfix, refresh=False)
            self._bar.update(1)

    def finish(self) -> None:
        """End the open phase; say so if its RBM stopped before its budget of epochs."""
        name, last = self._name, self._last
        if self._bar is not None and name == _EVALUATION:
            self._bar.set_postfix_str("done", refresh=False)
            self._bar.update((self._bar.total or 0) - self._bar.n)
        self.close()
        if self._enabled and last is not None and last.epoch < last.epochs:
            print(
                f"{name}: early stop at epoch {last.epoch} (best {last.best_epoch})",
                file=sys.stderr,
                flush=True,
            )

    def close(self) -> None:
        """Close the open bar as it stands (also after a failure), without a word."""
        if self._bar is not None:
            self._bar.close()
        self._bar, self._name, self._last = None, None, None

    def _start(self, name: str, total: int | None, unit: str, step: str = "") -> None:
        self._name = name
        if self._enabled:
            self._bar = tqdm(total=total, desc=name, unit=unit, file=sys.stderr)
            if step:
                self._bar.set_postfix_str(step)

    def _step(self, what: str) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(what, refresh=False)
            self._bar.update(1)


def _check_args(args: argparse.Namespace) -> None:
    """Raise ValueError for what would otherwise fail only after the data loaded or trained."""
    if args.dataset == "ml-100k" and args.split not in (*ML100K_SPLITS, "holdout"):
        choices = ", ".join(ML100K_SPLITS)
        raise ValueError(f"unknown split {args.split!r} for ml-100k; choose holdout or {choices}")
    if args.dataset != "ml-100k" and args.split != "holdout":
        raise ValueError(f"{args.dataset} has no canonical splits; use --split holdout")
    for flag in ("--epochs", "--hidden", "--implicit-epochs", "--item-epochs"):
        value = getattr(args, flag[2:].replace("-", "_"))
        if value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}")
    if not 0 <= args.seed < 2**63:
        raise ValueError(f"--seed must be in 0..2**63-1, got {args.seed}")
    if not args.no_register:
        try:
            check_model_name(args.model)
        except RegistryError as exc:
            raise ValueError(f"--model: {exc.message}") from exc


def _read_movies(args: argparse.Namespace) -> ExtraMovies | None:
    """The --movies file's movies; ValueError naming the flag and file if it is bad."""
    if args.movies is None:
        return None
    try:
        return read_movies(args.movies)
    except MoviesFileError as exc:
        raise ValueError(f"--movies {args.movies}: {exc}") from exc


def _registry_problem(args: argparse.Namespace) -> str | None:
    """Why registering would fail whatever was trained, checked before training."""
    root = resolve_root(args.registry)
    if not args.no_register and root.exists() and not root.is_dir():
        return f"registry {root} is not a directory"
    return None


def _read_log(args: argparse.Namespace, comm: Communicator) -> RatingLog | None:
    """The rating log, read once on rank 0 so every rank trains on the same entries."""
    if args.ratings_log is None:
        return None
    root = resolve_root(args.registry)  # the archive of what `rbm-ratings trim` removed
    return comm.decide(
        lambda: read_rating_log(args.ratings_log, args.ratings_log_prefix, registry_root=root)
    )


def _report(
    args: argparse.Namespace,
    outcome: TrainOutcome,
    cfg: TrainConfig,
    world_size: int,
    added: CatalogueAddition | None,
) -> dict[str, Any]:
    """The --json report, less ``registered``."""
    report: dict[str, Any] = dict(outcome.metrics)
    report["baselines"] = outcome.baselines
    if outcome.skipped_baselines:
        report["baselines_skipped"] = outcome.skipped_baselines
    report |= {
        "dataset": args.dataset,
        "split": args.split,
        "device": cfg.device,
        "world_size": world_size,
    }
    if outcome.rating_log is not None:
        report["rating_log"] = outcome.rating_log.to_report()
    if added is not None:
        report["movies"] = {
            "added": added.added,
            "already_listed": added.already_listed,
            "catalogue": outcome.checkpoint.config.n_movies,
        }
    return report


def _print_human(report: dict[str, Any]) -> None:
    keys = ("rmse", "mae", "precision@10", "recall@10", "ndcg@10", "hr@10")
    print(f"{'model':<12}" + "".join(f"{k:>14}" for k in keys))
    rows = [("rbm", report), *report["baselines"].items()]
    for name, metrics in rows:
        cells = "".join(f"{metrics[k]:>14.4f}" if k in metrics else f"{'-':>14}" for k in keys)
        print(f"{name:<12}{cells}")
    if "lambda" in report["baselines"].get("ease", {}):
        print(f"ease lambda {report['baselines']['ease']['lambda']:g}, chosen on validation")
    for name, why in report.get("baselines_skipped", {}).items():
        print(f"{name} left out: {why}")
    if "movies" in report:
        movies = report["movies"]
        print(
            f"catalogue {movies['catalogue']} movies: {movies['added']} added by --movies, "
            f"{movies['already_listed']} already listed"
        )
    if "registered" in report:
        reg = report["registered"]
        promoted = ""
        if "promoted" in reg:  # null: the gate refused it (the error line says why)
            promoted = f", promoted to {reg['promoted']}" if reg["promoted"] else ", not promoted"
        print(f"registered {reg['model']} version {reg['version']}{promoted}")


if __name__ == "__main__":
    sys.exit(main())
