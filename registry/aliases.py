"""Alias files (`<model>/aliases/<alias>`, holding a version number) and the alias history.

Callers that change anything hold the model lock; readers take no lock because an
alias file is only ever replaced atomically.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import logging
import os
from pathlib import Path

from registry.errors import ErrorCode, RegistryError
from registry.fsio import atomic_write_bytes, fsync_dir
from registry.names import ALIAS_RE
from registry.records import AliasChange

__all__ = [
    "ALIASES_DIR",
    "HISTORY_FILE",
    "append_history",
    "current_user",
    "move_alias",
    "read_alias",
    "read_aliases",
    "read_history",
    "rollback_target",
    "rollback_targets",
    "utc_now",
    "write_alias",
]

logger = logging.getLogger(__name__)

ALIASES_DIR = "aliases"
HISTORY_FILE = "history.jsonl"


def utc_now() -> str:
    """Return the current time as ISO-8601 UTC with millisecond precision."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def current_user() -> str:
    """Return the login name for audit records, or the uid when there is none."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # containers often run a uid with no passwd entry
        return str(os.getuid())


def read_alias(model_dir: Path, alias: str) -> int | None:
    """Return the version an alias points to, or None if it is not set."""
    path = model_dir / ALIASES_DIR / alias
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except UnicodeDecodeError:
        raise RegistryError(
            f"alias file {path} is corrupt: not UTF-8 text", ErrorCode.CORRUPT
        ) from None
    if not text.isdigit() or int(text) < 1:
        raise RegistryError(
            f"alias file {path} is corrupt: expected a version number, found {text[:40]!r}",
            ErrorCode.CORRUPT,
        )
    return int(text)


def read_aliases(model_dir: Path) -> dict[str, int]:
    """Return every alias of the model, sorted by name."""
    directory = model_dir / ALIASES_DIR
    try:
        names = sorted(entry.name for entry in directory.iterdir())
    except FileNotFoundError:
        return {}
    result: dict[str, int] = {}
    for name in names:
        if not ALIAS_RE.fullmatch(name):
            continue  # temp files from an in-progress or interrupted replace
        version = read_alias(model_dir, name)
        if version is not None:
            result[name] = version
    return result


def write_alias(model_dir: Path, alias: str, version: int | None) -> None:
    """Point an alias at a version atomically, or delete it when version is None."""
    directory = model_dir / ALIASES_DIR
    directory.mkdir(exist_ok=True)
    path = directory / alias
    if version is None:
        path.unlink(missing_ok=True)
        fsync_dir(directory)
    else:
        atomic_write_bytes(path, f"{version}\n".encode())


def append_history(model_dir: Path, change: AliasChange) -> None:
    """Append one record to history.jsonl and flush it to disk."""
    line = json.dumps(change.to_dict(), ensure_ascii=False, sort_keys=False) + "\n"
    # One write() on an O_APPEND descriptor, so concurrent appenders never interleave.
    fd = os.open(model_dir / HISTORY_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)


def read_history(model_dir: Path) -> list[AliasChange]:
    """Return every alias move, oldest first."""
    path = model_dir / HISTORY_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return []
    lines = raw.split(b"\n")
    changes: list[AliasChange] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            changes.append(AliasChange.from_dict(json.loads(line)))
        except (ValueError, KeyError, TypeError) as exc:
            if number == len(lines):
                # A final line without its newline is an append cut short by a crash.
                logger.warning("ignoring truncated last line of %s", path)
                continue
            raise RegistryError(
                f"{path} line {number} is corrupt: {exc}", ErrorCode.CORRUPT
            ) from exc
    return changes


def move_alias(
    model_dir: Path,
    model: str,
    alias: str,
    current: int | None,
    target: int | None,
    reason: str,
    action: str,
) -> AliasChange:
    """Point the alias at target (None: delete it) and append the history; lock held."""
    change = AliasChange(model, alias, current, target, utc_now(), current_user(), reason, action)
    if current == target:
        return change  # nothing moved, so nothing to record or roll back to
    write_alias(model_dir, alias, target)
    append_history(model_dir, change)
    logger.info("%s %s alias %s: %s -> %s (%s)", action, model, alias, current, target, reason)
    return change


def rollback_target(history: list[AliasChange], alias: str, current: int | None) -> int:
    """Return where the alias pointed before its last move; FAILED_PRECONDITION if nowhere."""
    moves = [change for change in history if change.alias == alias]
    if not moves:
        raise RegistryError(
            f"alias {alias!r} has no history to roll back", ErrorCode.FAILED_PRECONDITION
        )
    last = moves[-1]
    if last.to_version != current:
        raise RegistryError(
            f"alias {alias!r} points to {current} but its history ends at {last.to_version}; "
            "set it explicitly with `alias set`",
            ErrorCode.FAILED_PRECONDITION,
        )
    if last.from_version is None:
        raise RegistryError(
            f"alias {alias!r} did not exist before its last move; nothing to roll back to",
            ErrorCode.FAILED_PRECONDITION,
        )
    return last.from_version


def rollback_targets(history: list[AliasChange], aliases: dict[str, int]) -> set[int]:
    """Return the versions some alias would return to on rollback (gc keeps them too)."""
    last = {change.alias: change for change in history}
    return {
        change.from_version
        for alias, change in last.items()
        if change.from_version is not None and change.to_version == aliases.get(alias)
    }
