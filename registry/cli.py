"""rbm-registry: list, inspect, promote, roll back, verify and clean up model versions.

The root is --registry PATH, else $RBMREC_REGISTRY, else ./registry. Every command
takes --json (machine-readable stdout) and --registry before or after its name.

Exit codes:
    0  success
    2  usage error (bad command line)
    3  not found: registry root, model, version or alias
    4  invalid argument: bad model name, alias, version, or --force without --reason
    5  failed precondition: promotion gate refused, smoke test failed, nothing to roll back
    6  corrupt: checksum mismatch or unreadable registry files
    7  I/O error: disk full, read-only file system, permission denied
    8  already exists (export-onnx: the output file, without --force)

Rollback and gc: `rollback` moves an alias back to where it pointed before its last
move, and is itself a move, so a second `rollback` swaps back to the newer version.
`gc` never deletes an aliased version, nor one an alias would roll back to.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import textwrap
from collections.abc import Sequence
from typing import Any, cast

from registry import commands as c
from registry.errors import ErrorCode, RegistryError
from registry.hooks import ModelHooks, default_hooks
from registry.names import DEFAULT_MODEL
from registry.store import FileRegistry, resolve_root

__all__ = ["EXIT_CODES", "HelpFormatter", "ModelHooks", "default_hooks", "main", "run"]

PROG = "rbm-registry"
_DOC = __doc__ or ""  # None under python -OO
EXIT_CODES: dict[ErrorCode, int] = {
    ErrorCode.NOT_FOUND: 3,
    ErrorCode.INVALID_ARGUMENT: 4,
    ErrorCode.FAILED_PRECONDITION: 5,
    ErrorCode.CORRUPT: 6,
    ErrorCode.IO_ERROR: 7,
    ErrorCode.ALREADY_EXISTS: 8,
}


class HelpFormatter(argparse.HelpFormatter):
    """--help that shows each option's default, as "(default: X)", where it has one.

    Like argparse.ArgumentDefaultsHelpFormatter, less the noise of flags (False) and unset
    or empty options; lines never break inside a hyphenated word (--max-rmse-regression).
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        shown = action.option_strings or action.nargs in ("?", "*")
        if (
            "%(default)" in text
            or "(default: " in text
            or not shown
            or default in (None, "", argparse.SUPPRESS)
            or isinstance(default, bool)
        ):
            return action.help
        return f"{text} (default: %(default)s)" if text else "(default: %(default)s)"

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return textwrap.fill(
            " ".join(text.split()),
            width,
            initial_indent=indent,
            subsequent_indent=indent,
            break_on_hyphens=False,
        )


class _TopFormatter(argparse.RawDescriptionHelpFormatter, HelpFormatter):
    """The top-level --help: the module docstring's epilog keeps its layout."""


def _build_parser() -> argparse.ArgumentParser:
    # Global options live in a parent parser added to every (sub)parser with SUPPRESS
    # defaults, so they work before or after the subcommand without overwriting each other.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--registry",
        metavar="PATH",
        default=argparse.SUPPRESS,
        help="registry root (default: $RBMREC_REGISTRY, else ./registry)",
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

    def add(
        parent: Any, name: str, text: str, handler: c.Handler | None, more: str = ""
    ) -> argparse.ArgumentParser:
        cmd = cast(
            argparse.ArgumentParser,
            parent.add_parser(
                name,
                help=text,
                description=f"{text}. {more}" if more else text,
                parents=[common],
                formatter_class=HelpFormatter,
            ),
        )
        if handler is not None:
            cmd.set_defaults(handler=handler)
        return cmd

    def model(cmd: argparse.ArgumentParser, optional: bool = False) -> None:
        if optional:
            cmd.add_argument(
                "model",
                nargs="?",
                default=DEFAULT_MODEL,
                metavar="MODEL",
                help="model name",
            )
        else:
            cmd.add_argument("model", metavar="MODEL", help="model name, e.g. rbm")

    def reason(cmd: argparse.ArgumentParser) -> None:
        cmd.add_argument("--reason", default="", help="why; recorded in the history")

    cmd = add(
        sub,
        "list",
        "list the versions of a model",
        c.cmd_list,
        "The table fits 100 columns: the gate's and the test's RMSE and NDCG@10 only; "
        "--wide, `show` or --json give every metric.",
    )
    model(cmd, optional=True)
    cmd.add_argument(
        "--wide",
        action="store_true",
        help="every metric and the full creation time, however wide the table gets",
    )
    cmd = add(sub, "show", "show one version (number or alias)", c.cmd_show)
    model(cmd)
    cmd.add_argument("ref", metavar="VERSION|ALIAS")
    cmd = add(sub, "diff", "compare metrics and hyper-parameters of two versions", c.cmd_diff)
    model(cmd)
    cmd.add_argument("v1", metavar="V1", help="version number or alias")
    cmd.add_argument("v2", metavar="V2", help="version number or alias")
    cmd = add(
        sub, "promote", "point an alias at a version, through the promotion gate", c.cmd_promote
    )
    model(cmd)
    cmd.add_argument("ref", metavar="VERSION", help="version number (or an alias, e.g. staging)")
    cmd.add_argument("--alias", default="production", help="alias to move")
    reason(cmd)
    cmd.add_argument(
        "--force", action="store_true", help="promote despite metric regressions; requires --reason"
    )
    cmd.add_argument(
        "--max-rmse-regression",
        type=float,
        default=0.01,
        metavar="X",
        help="largest allowed RMSE increase over the current version",
    )
    cmd.add_argument(
        "--max-ndcg-regression",
        type=float,
        default=0.01,
        metavar="X",
        help="largest allowed NDCG@10 decrease",
    )
    cmd = add(
        sub,
        "rollback",
        "move an alias back to its previous version (a second rollback swaps back)",
        c.cmd_rollback,
        "The version is the one the alias pointed to before its last move, per the history. "
        "A rollback is itself a move, so a second rollback swaps back to the newer version; "
        "use `alias set` to go further back.",
    )
    model(cmd)
    cmd.add_argument("--alias", default="production", help="alias to roll back")
    reason(cmd)
    alias = add(sub, "alias", "set or delete an alias without the gate", None)
    alias_sub = alias.add_subparsers(dest="alias_command", required=True, metavar="ACTION")
    cmd = add(alias_sub, "set", "point ALIAS at VERSION", c.cmd_alias_set)
    model(cmd)
    cmd.add_argument("alias", metavar="ALIAS")
    cmd.add_argument("ref", metavar="VERSION")
    reason(cmd)
    cmd = add(alias_sub, "delete", "remove ALIAS", c.cmd_alias_delete)
    model(cmd)
    cmd.add_argument("alias", metavar="ALIAS")
    reason(cmd)
    cmd = add(sub, "history", "show the audit log of alias moves", c.cmd_history)
    model(cmd)
    cmd = add(sub, "verify", "check checksums, then load the model and predict", c.cmd_verify)
    model(cmd)
    cmd.add_argument("ref", nargs="?", metavar="VERSION", help="default: every version")
    cmd.add_argument("--checksums-only", action="store_true", help="skip the smoke test")
    cmd = add(
        sub,
        "gc",
        "delete old versions; aliased ones and rollback targets are always kept",
        c.cmd_gc,
        "Beyond the newest N, a version is kept if an alias points to it or if `rollback` "
        "of an alias would return to it (the version it pointed to before its last move).",
    )
    model(cmd)
    cmd.add_argument(
        "--keep",
        type=int,
        required=True,
        metavar="N",
        help="keep the newest N versions (plus every aliased one and every rollback target)",
    )
    cmd = add(
        sub,
        "export-onnx",
        "export a version to ONNX",
        c.cmd_export,
        "Without --output it writes ./MODEL-vN.onnx, and refuses (exit 8) if that file "
        "exists, unless --force. It prints where it wrote.",
    )
    model(cmd)
    cmd.add_argument("ref", metavar="VERSION", help="version number or alias")
    cmd.add_argument(
        "--output",
        metavar="PATH",
        help="file to write, replaced if it exists (default: ./MODEL-vN.onnx)",
    )
    cmd.add_argument(
        "--force",
        action="store_true",
        help="overwrite ./MODEL-vN.onnx if it exists (without --output)",
    )
    return parser


def run(argv: Sequence[str] | None = None, hooks: ModelHooks | None = None) -> int:
    """Run one command and return its exit code; errors go to stderr as one line."""
    try:
        args = _build_parser().parse_args(argv)
    except SystemExit as exc:  # --help (0) and usage errors (2)
        return exc.code if isinstance(exc.code, int) else 2
    args.json = getattr(args, "json", False)
    registry = FileRegistry(resolve_root(getattr(args, "registry", None)))
    handler = cast(c.Handler, args.handler)
    try:
        output = handler(registry, args, hooks or default_hooks())
    except RegistryError as exc:
        return _fail(exc)
    except UnicodeDecodeError as exc:  # a registry text file (an alias, ...) holds binary junk
        return _fail(
            RegistryError(
                f"a file under {registry.root} is not UTF-8 text, the registry is corrupt: {exc}",
                ErrorCode.CORRUPT,
            )
        )
    print(json.dumps(output.data, indent=2, ensure_ascii=False) if args.json else output.text)
    return 0 if output.error is None else _fail(output.error)


def _fail(error: RegistryError) -> int:
    # One line, no traceback: these are expected failures with a message meant for people.
    message = " ".join(error.message.split())  # exactly one line, whatever the cause said
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return EXIT_CODES[error.code]


def main(argv: list[str] | None = None, hooks: ModelHooks | None = None) -> int:
    """Console entry point of rbm-registry."""
    logging.basicConfig(level=logging.WARNING, format=f"{PROG}: %(levelname)s: %(message)s")
    return run(argv, hooks)
