"""rbm-ratings: the rating log's lifecycle (length, trim, export) and the online evaluation.

The stream is PREFIX:ratings at --redis-url (default $REDIS_URL); its archive lives in the
registry (--registry, else $RBMREC_REGISTRY, else ./registry) under _ratings/PREFIX/. Every
command takes --json, and the global options before or after its name.

Exit codes:
    0  success (also a trim with nothing to trim: the reason is printed; `online --canary`:
       the canary is not worse)
    1  operational failure: Redis unreachable, registry or model missing, corrupt archive,
       a file that cannot be written
    2  usage error (bad command line, no or a bad Redis URL)
    3  `online --canary`: the canary's hit rate is significantly worse
    4  `online --canary`: undecided, too few settled recommendations yet

`trim` archives the entries every aliased version absorbed (up to the oldest
rating_log_until among them), then removes them from the stream; killed at any point,
a rerun completes it. `export` writes every rating ever logged, archive and stream, as CSV.
`online` counts, per version, the movies it recommended that users rated within a window
after (the impression stream PREFIX:impressions joined with the log); with --canary it
compares the canary with --against over the same period, the verdict as one line on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import redis
from tqdm import tqdm

from ratinglog.archive import ArchiveCorrupt, RatingArchive
from ratinglog.format import stream_key
from ratinglog.impressions import impressions_key
from ratinglog.online import (
    Skipped,
    Verdict,
    VersionFigures,
    compare_versions,
    read_outcomes,
    redis_now_ms,
)
from ratinglog.retention import (
    SEGMENT_ROWS,
    absorbed_until,
    read_full_log,
    stream_status,
    trim,
)
from ratinglog.urls import redact_url
from registry.cli import HelpFormatter
from registry.errors import RegistryError
from registry.names import DEFAULT_MODEL
from registry.store import FileRegistry, resolve_root

__all__ = ["main", "run"]

PROG = "rbm-ratings"
_DOC = __doc__ or ""  # None under python -OO
_EXPORT_HEADER = ("user_id", "movie_id", "rating", "timestamp")
_VERDICT_CODES = {"not worse": 0, "worse": 3, "undecided": 4}
_TABLE = ("version", "users", "recommended", "rated_after", "liked_after", "hit_rate", "like_rate")


class _TopFormatter(argparse.RawDescriptionHelpFormatter, HelpFormatter):
    """The top-level --help: the module docstring's epilog keeps its layout."""


@dataclass(frozen=True)
class _Context:
    """What every command works on, built once from the command line."""

    client: redis.Redis
    key: str
    prefix: str
    url: str  # redacted: for messages only
    registry: FileRegistry
    archive: RatingArchive
    model: str
    progress: bool


@dataclass(frozen=True)
class _Output:
    data: Any  # printed as JSON with --json
    text: str
    code: int = 0
    note: str | None = None  # one line for stderr (the verdict of `online --canary`)


class _Failure(Exception):
    """An expected failure: one line on stderr and exit 1."""


def _parser() -> argparse.ArgumentParser:
    # Global options live in a parent parser added to every (sub)parser with SUPPRESS
    # defaults, so they work before or after the command without overwriting each other.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--redis-url",
        metavar="URL",
        default=argparse.SUPPRESS,
        help="the Redis the server logs to (default: $REDIS_URL)",
    )
    common.add_argument(
        "--prefix",
        default=argparse.SUPPRESS,
        help="the server's --redis-prefix: the log is the stream PREFIX:ratings (default: rbmrec)",
    )
    common.add_argument(
        "--registry",
        metavar="PATH",
        default=argparse.SUPPRESS,
        help="registry root (default: $RBMREC_REGISTRY, else ./registry)",
    )
    common.add_argument(
        "--model",
        default=argparse.SUPPRESS,
        help=f"model whose aliased versions say what was absorbed, and whose versions "
        f"online's --canary and --against name (default: {DEFAULT_MODEL})",
    )
    common.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print machine-readable JSON on stdout",
    )
    parser = argparse.ArgumentParser(
        prog=PROG,
        parents=[common],
        description=_DOC.split("\n", 1)[0],
        epilog=_DOC.split("\n\n", 2)[-1],
        formatter_class=_TopFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, text: str, handler: Callable[..., _Output]) -> argparse.ArgumentParser:
        cmd = sub.add_parser(
            name, help=text, description=text, parents=[common], formatter_class=HelpFormatter
        )
        cmd.set_defaults(handler=handler)
        return cmd

    add("status", "the stream's length and ends, what is absorbed and what is archived", _status)
    cmd = add("trim", "archive the entries every aliased version absorbed, then drop them", _trim)
    cmd.add_argument(
        "--segment-rows",
        type=_positive,
        default=SEGMENT_ROWS,
        metavar="N",
        help="entries per archive segment at most",
    )
    cmd = add("export", "write every rating ever logged, archive and stream, as CSV", _export)
    cmd.add_argument(
        "--out",
        required=True,
        metavar="FILE",
        help="CSV file to write (user_id,movie_id,rating,timestamp), replaced if it exists",
    )
    _add_online(add("online", "per version: how many recommended movies users then rated", _online))
    return parser


def _add_online(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument(
        "--window-h",
        type=_positive_float,
        default=24.0,
        metavar="H",
        help="a rating counts if it follows the recommendation within H hours",
    )
    cmd.add_argument(
        "--canary",
        metavar="ALIAS|VERSION",
        help="compare this version with --against over the same period: exit 3 if its hit "
        "rate is significantly worse, 4 if too few recommendations settled yet, else 0",
    )
    cmd.add_argument(
        "--against",
        default="production",
        metavar="ALIAS|VERSION",
        help="the version --canary is compared with",
    )
    cmd.add_argument(
        "--min-recommended",
        type=_positive,
        default=1000,
        metavar="N",
        help="settled recommendations each side needs before --canary decides",
    )


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text}")
    return value


def _status(ctx: _Context, args: argparse.Namespace) -> _Output:
    stream = stream_status(ctx.client, ctx.key)
    until = absorbed_until(ctx.registry, ctx.model, ctx.prefix)
    archived = ctx.archive.entries
    data = {
        "length": stream.length,
        "first_id": stream.first_id,
        "last_id": stream.last_id,
        "absorbed_until": until,
        "archived_entries": archived,
    }
    ends = f" ({stream.first_id} .. {stream.last_id})" if stream.length else ""
    absorbed = until or f"nothing: {_why_nothing(ctx)}"
    text = (
        f"stream {ctx.key}: {stream.length} entries{ends}\n"
        f"absorbed by every aliased version of {ctx.model!r} up to: {absorbed}\n"
        f"archive {ctx.archive.path}: {archived} entries"
    )
    return _Output(data, text)


def _trim(ctx: _Context, args: argparse.Namespace) -> _Output:
    until = absorbed_until(ctx.registry, ctx.model, ctx.prefix)
    with _bar(ctx, "archiving") as bar:
        result = trim(
            ctx.client, ctx.key, ctx.archive, until, segment_rows=args.segment_rows, on_archived=bar
        )
    archive = {
        "path": str(ctx.archive.path),
        "entries": ctx.archive.entries,
        "last_id": ctx.archive.last_id,
        "added": result.archived,
    }
    data = {"trimmed": result.trimmed, "length": result.length, "archive": archive}
    if until is None:
        text = f"nothing to trim: {_why_nothing(ctx)}; the stream holds {result.length} entries"
    else:
        text = (
            f"archived {result.archived} entries to {ctx.archive.path} "
            f"({archive['entries']} in all); trimmed {result.trimmed} entries up to {until} "
            f"from {ctx.key}, which holds {result.length}"
        )
    return _Output(data, text)


def _export(ctx: _Context, args: argparse.Namespace) -> _Output:
    if not ctx.registry.root.is_dir():  # else a mistyped --registry would export half the log
        raise _Failure(f"registry {ctx.registry.root} does not exist (set --registry)")
    out = Path(args.out).absolute()
    rows = 0
    with _bar(ctx, "exporting") as bar, _replacing(out) as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(_EXPORT_HEADER)
        for page in read_full_log(ctx.client, ctx.key, ctx.archive):
            for _entry_id, r in page.entries:
                writer.writerow((r.user_id, r.movie_id, repr(r.rating), r.timestamp))
            rows += len(page.entries)
            bar(len(page.entries))
    return _Output({"rows": rows, "out": str(out)}, f"wrote {rows} ratings to {out}")


def _online(ctx: _Context, args: argparse.Namespace) -> _Output:
    versions = _canary_versions(ctx, args) if args.canary else None  # registry errors first
    now = redis_now_ms(ctx.client)
    window_ms = max(1, round(args.window_h * 3_600_000))
    with _bar(ctx, "reading") as bar:
        found, skipped = read_outcomes(ctx.client, ctx.archive, window_ms, now, on_page=bar)
    _warn_skipped(ctx, skipped)
    figures = found.figures(now)
    text = _online_table(ctx, figures, args.window_h)
    data = [f.as_dict() for f in figures]
    if versions is None:
        return _Output(data, text)
    verdict, _ = compare_versions(found, *versions, now, args.min_recommended)
    line = _verdict_line(verdict, versions, args)
    return _Output(data, text, _VERDICT_CODES[verdict.outcome], line)


def _canary_versions(ctx: _Context, args: argparse.Namespace) -> tuple[str, str]:
    """The version numbers --canary and --against name, as the impressions spell them."""
    canary = ctx.registry.resolve(ctx.model, args.canary).version
    against = ctx.registry.resolve(ctx.model, args.against).version
    if canary == against:
        raise _Failure(
            f"--canary {args.canary} and --against {args.against} are both version {canary}"
        )
    return str(canary), str(against)


def _verdict_line(verdict: Verdict, versions: tuple[str, str], args: argparse.Namespace) -> str:
    canary, against = versions
    return (
        f"{PROG}: canary {args.canary} (version {canary}) against {args.against} "
        f"(version {against}): {verdict.outcome}: {verdict.reason}"
    )


def _warn_skipped(ctx: _Context, skipped: Skipped) -> None:
    if skipped.impressions or skipped.ratings:
        logging.getLogger(__name__).warning(
            "skipped malformed entries: %d of %s, %d of %s",
            skipped.impressions,
            impressions_key(ctx.prefix),
            skipped.ratings,
            ctx.key,
        )


def _online_table(ctx: _Context, figures: list[VersionFigures], window_h: float) -> str:
    if not figures:
        return (
            f"no impressions in {impressions_key(ctx.prefix)} (servers record them unless "
            "--online-max-entries 0)"
        )
    rows: list[tuple[str, ...]] = [_TABLE]
    for f in figures:
        d = f.as_dict()
        rows.append(tuple(f"{d[k]:.4f}" if isinstance(d[k], float) else str(d[k]) for k in _TABLE))
    widths = [max(len(row[i]) for row in rows) for i in range(len(_TABLE))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    pending = sum(f.pending for f in figures)
    lines.append(
        f"window {window_h:g} h; recommendations whose window is still open ({pending}) "
        "are not counted yet"
    )
    return "\n".join(lines)


def _why_nothing(ctx: _Context) -> str:
    """Why no entry counts as absorbed by every aliased version, in words."""
    aliases = ctx.registry.aliases(ctx.model)
    if not aliases:
        return f"model {ctx.model!r} has no alias"
    for alias, version in aliases.items():
        meta = ctx.registry.get_version(ctx.model, version).meta
        if meta.rating_log_until is None:
            return f"version {version} ({alias}) was trained without the rating log"
    return f"an aliased version was trained on another prefix's log than {ctx.key}"


@contextlib.contextmanager
def _bar(ctx: _Context, what: str) -> Iterator[Callable[[int], None]]:
    """A progress bar on stderr, in text mode on a terminal only; yields its update."""
    with tqdm(
        desc=what, unit=" entries", file=sys.stderr, disable=None if ctx.progress else True
    ) as bar:

        def update(n: int) -> None:
            bar.update(n)

        yield update


@contextlib.contextmanager
def _replacing(path: Path) -> Iterator[Any]:
    """A text file that replaces ``path`` only once written whole."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _context(args: argparse.Namespace) -> _Context:
    """Build the client, registry and archive; ValueError for a bad URL or prefix."""
    url = getattr(args, "redis_url", None) or os.environ.get("REDIS_URL")
    if not url:
        raise ValueError("no Redis URL: pass --redis-url or set $REDIS_URL")
    prefix = getattr(args, "prefix", "rbmrec")
    client = redis.Redis.from_url(url, socket_connect_timeout=5.0, socket_timeout=30.0)
    root = resolve_root(getattr(args, "registry", None))
    return _Context(
        client=client,
        key=stream_key(prefix),
        prefix=prefix,
        url=redact_url(url),
        registry=FileRegistry(root),
        archive=RatingArchive(root, prefix),
        model=getattr(args, "model", DEFAULT_MODEL),
        progress=not args.json,
    )


def run(argv: Sequence[str] | None = None) -> int:
    """Run one command and return its exit code; errors go to stderr as one line."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # --help (0) and usage errors (2)
        return exc.code if isinstance(exc.code, int) else 2
    args.json = getattr(args, "json", False)
    try:
        ctx = _context(args)
    except ValueError as exc:  # redis-py's word on a URL it cannot use
        return _fail(2, exc)
    handler = cast(Callable[[_Context, argparse.Namespace], _Output], args.handler)
    try:
        output = handler(ctx, args)
    except redis.RedisError as exc:
        return _fail(1, f"{_redis_failed(ctx, args)} at {ctx.url}: {exc}")
    except RegistryError as exc:
        return _fail(1, exc.message)
    except (ArchiveCorrupt, _Failure, RuntimeError) as exc:
        return _fail(1, exc)
    except OSError as exc:
        return _fail(1, f"{exc.strerror or exc}: {exc.filename or ctx.archive.path}")
    finally:
        ctx.client.close()
    print(json.dumps(output.data, indent=2) if args.json else output.text)
    if output.note is not None:
        print(output.note, file=sys.stderr)
    return output.code


def _redis_failed(ctx: _Context, args: argparse.Namespace) -> str:
    if args.command == "online":
        return (
            f"cannot read the rating log {ctx.key} or the impressions {impressions_key(ctx.prefix)}"
        )
    return f"cannot read or trim the rating log {ctx.key}"


def _fail(code: int, message: object) -> int:
    # One line, no traceback: these are expected failures with a message meant for people.
    print(f"{PROG}: error: {' '.join(str(message).split())}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    """Console entry point of rbm-ratings."""
    logging.basicConfig(level=logging.WARNING, format=f"{PROG}: %(levelname)s: %(message)s")
    return run(argv)


if __name__ == "__main__":
    sys.exit(main())
