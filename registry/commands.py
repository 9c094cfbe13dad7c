"""The handlers behind each rbm-registry subcommand: call the library, format the result.

Handlers return what to show and never print; cli.py does the printing.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from registry.errors import ErrorCode, RegistryError
from registry.gate import GatePolicy, promote
from registry.hooks import ModelHooks
from registry.records import AliasChange
from registry.store import FileRegistry


@dataclass(frozen=True)
class Output:
    """A command's result: `data` for --json, `text` for people, and an error to report after."""

    data: Any
    text: str
    error: RegistryError | None = None


Handler = Callable[[FileRegistry, argparse.Namespace, ModelHooks], Output]

__all__ = ["Handler", "Output"]  # plus the cmd_* handlers, used by cli.py only


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers], *[["" if c is None else str(c) for c in r] for r in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    )


def _num(value: object) -> str:
    """A metric for people: whole numbers as integers (20, not 20.0000), others to 4 places."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return f"{value:.4f}" if isinstance(value, float) else "" if value is None else str(value)


LIST_WIDTH = 100  # columns of `list` without --wide
# The metrics `list` shows without --wide: the gate's (validation) and the test split's.
LIST_METRICS = ("val_rmse", "val_ndcg@10", "rmse", "ndcg@10")


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(width - 3, 0)] + "..."


def _short_time(created_at: str) -> str:
    """``2026-12-04T06:08:45.017+00:00`` as ``2026-12-04 06:08`` (the registry writes UTC)."""
    return created_at[:16].replace("T", " ")


def _narrow_table(headers: list[str], rows: list[list[str]], width: int) -> str:
    """``_table`` within ``width`` columns: the last column (a description) is clipped,
    then the metric columns before it dropped from the right, and any line still too wide
    (a long alias list) cut."""
    fixed = 3  # VERSION, ALIASES, CREATED; metrics follow, the description is last
    while True:
        widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers) - 1)]
        room = width - sum(widths) - 2 * (len(headers) - 1)
        if room >= min(len(headers[-1]), 12) or len(headers) <= fixed + 1:
            break
        del headers[-2]  # the rightmost metric
        for row in rows:
            del row[-2]
    rows = [[*row[:-1], _clip(row[-1], max(room, 0))] for row in rows]
    return "\n".join(_clip(line, width) for line in _table(headers, rows).splitlines())


def _change_text(change: AliasChange) -> str:
    if change.from_version == change.to_version:
        return f"{change.model}: {change.alias} already points to {change.to_version}; unchanged"
    before = "(unset)" if change.from_version is None else change.from_version
    after = "(deleted)" if change.to_version is None else change.to_version
    return f"{change.model}: {change.alias} {before} -> {after} ({change.action})"


def cmd_list(reg: FileRegistry, args: argparse.Namespace, hooks: ModelHooks) -> Output:
    infos = reg.list_versions(args.model)
    wide = getattr(args, "wide", False)
    present = {key for info in infos for key in info.meta.metrics}
    keys = sorted(present)
    if not wide:  # the gate's and the test's figures; else what there is, as far as it fits
        keys = [k for k in LIST_METRICS if k in present] or keys
    rows = [
        [
            str(info.version),
            ",".join(info.aliases),
            info.meta.created_at if wide else _short_time(info.meta.created_at),
            *[_num(info.meta.metrics.get(k)) for k in keys],
            info.meta.description,
        ]
        for info in infos
    ]
    headers = ["VERSION", "ALIASES", "CREATED", *keys, "DESCRIPTION"]
    text = _table(headers, rows) if wide else _narrow_table(headers, rows, LIST_WIDTH)
    if not infos:
        text = f"model {args.model} has no versions"
    return Output([info.to_dict() for info in infos], text)


def cmd_show(reg: FileRegistry, args: argparse.Namespace, hooks: ModelHooks) -> Output:
    info = reg.resolve(args.model, args.ref)
    meta = info.meta
    lines = [
        f"model:        {info.model}",
        f"version:      {info.version}",
        f"aliases:      {', '.join(info.aliases) or '-'}",
        f"path:         {info.path}",
        f"created:      {meta.created_at} by {meta.created_by or '?'}",
        f"parent:       {meta.parent_version or '-'}",
        f"data:         {meta.data_fingerprint or '-'}",
        f"description:  {meta.description or '-'}",
        "libraries:    " + (", ".join(f"{k}={v}" for k, v in meta.library_versions.items()) or "-"),
        "metrics:",
        *[f"  {k:<24} {_num(v)}" for k, v in sorted(meta.metrics.items())],
        "params:",
        *[f"  {k:<24} {json.dumps(v)}" for k, v in sorted(meta.params.items())],
        "files:",
        *[f"  {k:<32} sha256:{v[:16]}" for k, v in info.files.items()],
    ]
    return Output(info.to_dict(), "\n".join(lines))


def cmd_diff(reg: FileRegistry, args: argparse.Namespace, hooks: ModelHooks) -> Output:
    a, b = reg.resolve(args.model, args.v1), reg.resolve(args.model, args.v2)
    ma, mb = a.meta.metrics, b.meta.metrics
    metrics = {
        k: {
            "v1": ma.get(k),
            "v2": mb.get(k),
            "delta": mb[k] - ma[k] if k in ma and k in mb else None,
        }
        for k in sorted(ma.keys() | mb.keys())
    }
    pa, pb = a.meta.params, b.meta.params
    params = {
        k: {"v1": pa.get(k), "v2": pb.get(k), "changed": pa.get(k) != pb.get(k)}
        for k in sorted(pa.keys() | pb.keys())
    }
    names = [f"v{a.version}", f"v{b.version}"]
    metric_rows = [[k, _num(d["v1"]), _num(d["v2"]), _num(d["delta"])] for k, d in metrics.items()]
    param_rows = [
        [k, json.dumps(d["v1"]), json.dumps(d["v2"]), "changed" if d["changed"] else ""]
        for k, d in params.items()
    ]
    text = "\n\n".join(
        [
            _table(["METRIC", *names, "DELTA"], metric_rows),
            _table(["PARAM", *names, ""], param_rows),
        ]
    )
    data = {
        "model": args.model,
        "v1": a.version,
        "v2": b.version,
        "metrics": metrics,
        "params": params,
    }
    return Output(data, text)


def cmd_promote(reg: FileRegistry, args: argparse.Namespace, hooks: ModelHooks) -> Output:
    info = reg.resolve(args.model, args.ref)
    policy = GatePolicy(args.max_rmse_regression, args.max_ndcg_regression)
    change = promote(
        reg,
        args.model,
        info.version,
        args.alias,
        args.reason,
        force=args.force,
        policy=policy,
        smoke_test=hooks.smoke_test,
    )
    return Output(change.to_dict(), _change_text(change))


def cmd_rollback(reg: FileRegistry, args: argparse.Namespace, hooks: ModelHooks) -> Output:
    change = reg.rollback(args.model, args.alias, args.reason)
    return Output(change.to_dict(), _change_text(change))


def cmd_alias_set(reg: FileRegistry, args: argparse.Namespace, hooks: ModelHooks) -> Output:
    info = reg.resolve(args.model, args.ref)
    change = reg.set_alias(args.model, args.alias, info.version, args.reason)
    return Output(change.to_dict(), _change_text(change))


def cmd_alias_delete(reg: FileRegistry, args: argparse.Namespace, hooks: ModelHooks) -> Output:
    change = reg.delete_alias(args.model, args.alias, args.reason)
    return Output(change.to_dict(), _change_text(change))


def cmd_history(reg: FileRegistry, args: argparse.Namespace, hooks: ModelHooks) -> Output:
    changes = reg.history(args.model)
    rows = [
        [c.time, c.user, c.alias, c.from_version, c.to_version, c.action, c.reason] for c in changes
    ]
    text = _table(["TIME", "USER", "ALIAS", "FROM", "TO", "ACTION", "REASON"], rows)
    return Output([c.to_dict() for c in changes], text if changes else "no alias moves recorded")


def cmd_verify(reg: FileRegistry, args: argparse.Namespace, hooks: ModelHooks) -> Output:
    results, corrupt, broken = [], [], []
    if args.ref is None:
        versions = [info.version for info in reg.list_versions(args.model)]
        corrupt += [  # an alias left pointing at nothing would break whoever follows it
            f"alias {alias!r} points to version {target}, which does not exist"
            for alias, target in reg.aliases(args.model).items()
            if target not in versions
        ]
    else:
        versions = [reg.resolve(args.model, args.ref).version]
    for version in versions:
        report = reg.verify(args.model, version)
        smoke = "skipped"
        if not report.ok:
            corrupt.append(f"version {version}: {report.summary()}")
        elif not args.checksums_only:
            try:
                hooks.smoke_test(reg.get_version(args.model, version).path)
                smoke = "ok"
            except Exception as exc:  # any failure of the hook means the version is unusable
                smoke = f"failed: {exc}"
                broken.append(f"version {version}: {exc}")
        results.append({**report.to_dict(), "smoke_test": smoke})
    rows = [[r["version"], "ok" if r["ok"] else "FAILED", r["smoke_test"]] for r in results]
    error = None
    if corrupt:
        error = RegistryError(f"verify failed: {'; '.join(corrupt)}", ErrorCode.CORRUPT)
    elif broken:
        error = RegistryError(
            f"smoke test failed: {'; '.join(broken)}", ErrorCode.FAILED_PRECONDITION
        )
    return Output(results, _table(["VERSION", "CHECKSUMS", "SMOKE TEST"], rows), error)


def cmd_gc(reg: FileRegistry, args: argparse.Namespace, hooks: ModelHooks) -> Output:
    deleted = reg.gc(args.model, args.keep)
    text = f"deleted versions: {', '.join(map(str, deleted))}" if deleted else "nothing to delete"
    return Output({"model": args.model, "deleted": deleted}, text)


def cmd_export(reg: FileRegistry, args: argparse.Namespace, hooks: ModelHooks) -> Output:
    info = reg.resolve(args.model, args.ref)
    output = Path(args.output or f"{args.model}-v{info.version}.onnx").absolute()
    if output.resolve().is_relative_to(info.path.resolve()):
        raise RegistryError(
            "--output must be outside the (immutable) version directory", ErrorCode.INVALID_ARGUMENT
        )
    # A folder is left to the exporter to fail on; a file in the way of the default name
    # (the current folder) is not overwritten by surprise. An explicit --output is.
    replacing = output.exists() and not output.is_dir()
    if replacing and args.output is None and not getattr(args, "force", False):
        raise RegistryError(
            f"{output} already exists; not overwriting it without --force "
            "(or write elsewhere with --output PATH)",
            ErrorCode.ALREADY_EXISTS,
        )
    report = reg.verify(args.model, info.version)
    if not report.ok:
        raise RegistryError(
            f"version {info.version} failed verify: {report.summary()}", ErrorCode.CORRUPT
        )
    try:
        hooks.export_onnx(info.path, output)
    except RegistryError:
        raise
    except OSError as exc:
        raise RegistryError(f"ONNX export failed: {exc}", ErrorCode.IO_ERROR) from exc
    except Exception as exc:  # the exporter may fail in any way; report it in one line
        raise RegistryError(f"ONNX export failed: {exc}", ErrorCode.FAILED_PRECONDITION) from exc
    replaced = " (replaced the file that was there)" if replacing else ""
    return Output(
        {"model": args.model, "version": info.version, "output": str(output)},
        f"wrote {args.model} version {info.version} as ONNX to {output}{replaced}",
    )
