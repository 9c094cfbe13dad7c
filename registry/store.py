"""FileRegistry: versions, aliases and history of models in a directory tree.

Layout under the root::

    <model>/versions/<n>/      immutable once published: caller files, meta.json, MANIFEST.json
    <model>/aliases/<alias>    a version number, replaced atomically
    <model>/history.jsonl      audit log of alias moves
    <model>/next_version       counter, so numbers are never reused, even after gc
    <model>/.lock              fcntl.flock that serializes writers; readers never take it
    <model>/.staging/          in-progress publishes (abandoned ones are removed by gc)
    <model>/.trash/            versions being deleted by gc
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Final, Literal

from registry import aliases as al
from registry.errors import ErrorCode, RegistryError, os_errors
from registry.fsio import atomic_write_bytes, fsync_dir
from registry.locking import Staging, clean_stale_staging, model_lock
from registry.names import check_alias, check_model_name, check_version, parse_version_ref
from registry.records import AliasChange, VerifyReport, VersionInfo, VersionMeta
from registry.versions import check_files, load_version, meta_bytes, seal

__all__ = ["ANY", "ENV_VAR", "FileRegistry", "resolve_root"]

logger = logging.getLogger(__name__)

ENV_VAR = "RBMREC_REGISTRY"
DEFAULT_ROOT = "registry"
VERSIONS_DIR = "versions"
COUNTER_FILE = "next_version"
TRASH_DIR = ".trash"
_VERSION_DIR_RE = re.compile(r"[1-9][0-9]*")


class _Any(enum.Enum):
    ANY = "any"


ANY: Final = _Any.ANY  # set_alias(expected=ANY): move the alias whatever it points to now


def resolve_root(cli_value: str | None) -> Path:
    """Pick the registry root: --registry, else $RBMREC_REGISTRY, else ./registry."""
    chosen = cli_value or os.environ.get(ENV_VAR) or DEFAULT_ROOT
    return Path(chosen).expanduser().absolute()


class FileRegistry:
    """A model registry stored as plain files; safe for concurrent processes on one host."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).absolute()

    # ---- reading: never locks, sees only published state ---------------------------

    def _model_dir(self, model: str) -> Path:
        path = self.root / check_model_name(model)
        if not path.is_dir():
            self._require_root()
            raise RegistryError(f"model {model!r} not found in {self.root}", ErrorCode.NOT_FOUND)
        return path

    def _require_root(self) -> None:
        if not self.root.is_dir():
            raise RegistryError(
                f"registry {self.root} does not exist (set --registry or ${ENV_VAR})",
                ErrorCode.NOT_FOUND,
            )

    def _numbers(self, model_dir: Path) -> list[int]:
        try:
            names = os.listdir(model_dir / VERSIONS_DIR)
        except FileNotFoundError:
            return []
        return sorted(int(name) for name in names if _VERSION_DIR_RE.fullmatch(name))

    def _load(
        self, model: str, model_dir: Path, version: int, aliases: dict[str, int]
    ) -> VersionInfo:
        names = tuple(alias for alias, target in aliases.items() if target == version)
        return load_version(model, version, model_dir / VERSIONS_DIR / str(version), names)

    def list_models(self) -> list[str]:
        """Return the names of all models, sorted."""
        with os_errors(f"reading registry {self.root}"):
            self._require_root()
            return sorted(
                entry.name
                for entry in self.root.iterdir()
                if _valid_model(entry.name) and (entry / VERSIONS_DIR).is_dir()
            )

    def list_versions(self, model: str) -> list[VersionInfo]:
        """Return every published version of a model, ascending."""
        with os_errors(f"reading model {model!r}"):
            model_dir = self._model_dir(model)
            aliases = al.read_aliases(model_dir)
            infos = []
            for version in self._numbers(model_dir):
                try:
                    infos.append(self._load(model, model_dir, version, aliases))
                except RegistryError as exc:
                    if exc.code is not ErrorCode.NOT_FOUND:  # NOT_FOUND: gc deleted it meanwhile
                        raise
            return infos

    def get_version(self, model: str, version: int) -> VersionInfo:
        """Return one version; NOT_FOUND if it does not exist."""
        check_version(version)
        with os_errors(f"reading model {model!r}"):
            model_dir = self._model_dir(model)
            return self._load(model, model_dir, version, al.read_aliases(model_dir))

    def resolve(self, model: str, ref: str) -> VersionInfo:
        """Return the version a reference names: a number ("3") or an alias ("production")."""
        target = parse_version_ref(str(ref))
        if isinstance(target, int):
            return self.get_version(model, target)
        version = self.get_alias(model, target)
        if version is None:
            raise RegistryError(f"model {model!r} has no alias {target!r}", ErrorCode.NOT_FOUND)
        return self.get_version(model, version)

    def get_alias(self, model: str, alias: str) -> int | None:
        """Return the version an alias points to, or None if the alias is not set."""
        check_alias(alias)
        with os_errors(f"reading model {model!r}"):
            return al.read_alias(self._model_dir(model), alias)

    def aliases(self, model: str) -> dict[str, int]:
        """Return all aliases of a model as {alias: version}, sorted by alias."""
        with os_errors(f"reading model {model!r}"):
            return al.read_aliases(self._model_dir(model))

    def history(self, model: str) -> list[AliasChange]:
        """Return every recorded alias move of a model, oldest first."""
        with os_errors(f"reading model {model!r}"):
            return al.read_history(self._model_dir(model))

    def verify(self, model: str, version: int) -> VerifyReport:
        """Check every file of a version against its MANIFEST.json (missing, extra, changed)."""
        check_version(version)
        with os_errors(f"verifying version {version} of {model!r}"):
            vdir = self._model_dir(model) / VERSIONS_DIR / str(version)
            if not vdir.is_dir():
                raise RegistryError(
                    f"model {model!r} has no version {version}", ErrorCode.NOT_FOUND
                )
            return check_files(model, version, vdir)

    # ---- writing: serialized by the model lock ---------------------------------------

    def register(
        self, model: str, write_files: Callable[[Path], None], meta: VersionMeta
    ) -> VersionInfo:
        """Publish a new version: write_files(staging_dir) writes files, then seal and number."""
        check_model_name(model)
        meta = dataclasses.replace(
            meta,
            created_at=meta.created_at or al.utc_now(),
            created_by=meta.created_by or al.current_user(),
        )
        meta_json = meta_bytes(model, meta)  # fail on non-JSON params before any work
        model_dir = self.root / model
        with os_errors(f"registering a version of {model!r}"):
            for sub in (VERSIONS_DIR, al.ALIASES_DIR):
                (model_dir / sub).mkdir(parents=True, exist_ok=True)
            with Staging(model_dir) as staging:
                write_files(staging.path)
                files = seal(staging.path, meta_json)
                with model_lock(model_dir):
                    version = self._next_number(model_dir)
                    # Advance the counter first: if that fails nothing is published, and
                    # if the rename then fails the number is skipped, never reused.
                    atomic_write_bytes(model_dir / COUNTER_FILE, f"{version + 1}\n".encode())
                    target = model_dir / VERSIONS_DIR / str(version)
                    os.rename(staging.path, target)
                    fsync_dir(model_dir / VERSIONS_DIR)
                    fsync_dir(staging.path.parent)
        logger.info("registered %s version %d at %s", model, version, target)
        return VersionInfo(model, version, target, meta, (), files)

    def _next_number(self, model_dir: Path) -> int:
        candidate = max(self._numbers(model_dir), default=0) + 1
        try:
            text = (model_dir / COUNTER_FILE).read_text(encoding="ascii").strip()
            candidate = max(candidate, int(text))
        except FileNotFoundError:
            pass
        except ValueError:
            logger.warning("ignoring corrupt %s in %s", COUNTER_FILE, model_dir)
        # os.rename replaces an empty directory, so never target one that exists.
        while (model_dir / VERSIONS_DIR / str(candidate)).exists():
            candidate += 1
        return candidate

    def set_alias(
        self,
        model: str,
        alias: str,
        version: int,
        reason: str = "",
        *,
        action: str = "set",
        expected: int | Literal[_Any.ANY] | None = ANY,
    ) -> AliasChange:
        """Point an alias at a version and record the move; `expected` makes it compare-and-set."""
        check_alias(alias)
        check_version(version)
        with os_errors(f"setting alias {alias!r} of {model!r}"):
            model_dir = self._model_dir(model)
            with model_lock(model_dir):
                self._require_version(model, model_dir, version)
                current = al.read_alias(model_dir, alias)
                if expected is not ANY and current != expected:
                    raise RegistryError(
                        f"alias {alias!r} moved from {expected} to {current} meanwhile; retry",
                        ErrorCode.FAILED_PRECONDITION,
                    )
                return al.move_alias(model_dir, model, alias, current, version, reason, action)

    def _require_version(self, model: str, model_dir: Path, version: int) -> None:
        if not (model_dir / VERSIONS_DIR / str(version)).is_dir():
            raise RegistryError(f"model {model!r} has no version {version}", ErrorCode.NOT_FOUND)

    def delete_alias(self, model: str, alias: str, reason: str = "") -> AliasChange:
        """Remove an alias and record the move; NOT_FOUND if it is not set."""
        check_alias(alias)
        with os_errors(f"deleting alias {alias!r} of {model!r}"):
            model_dir = self._model_dir(model)
            with model_lock(model_dir):
                current = al.read_alias(model_dir, alias)
                if current is None:
                    raise RegistryError(
                        f"model {model!r} has no alias {alias!r}", ErrorCode.NOT_FOUND
                    )
                return al.move_alias(model_dir, model, alias, current, None, reason, "delete")

    def rollback(self, model: str, alias: str = "production", reason: str = "") -> AliasChange:
        """Move an alias back to where it pointed before its last move, per the history."""
        check_alias(alias)
        with os_errors(f"rolling back alias {alias!r} of {model!r}"):
            model_dir = self._model_dir(model)
            with model_lock(model_dir):
                current = al.read_alias(model_dir, alias)
                target = al.rollback_target(al.read_history(model_dir), alias, current)
                self._require_version(model, model_dir, target)
                return al.move_alias(model_dir, model, alias, current, target, reason, "rollback")

    def gc(self, model: str, keep: int) -> list[int]:
        """Delete versions older than the newest `keep`; never an aliased or rollback target."""
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 0:
            raise RegistryError(
                f"keep must be an integer >= 0, got {keep!r}", ErrorCode.INVALID_ARGUMENT
            )
        with os_errors(f"garbage-collecting {model!r}"):
            model_dir = self._model_dir(model)
            with model_lock(model_dir):
                numbers = self._numbers(model_dir)
                # Persist the counter first so a deleted newest number is never handed out again.
                counter = self._next_number(model_dir)
                atomic_write_bytes(model_dir / COUNTER_FILE, f"{counter}\n".encode())
                aliases = al.read_aliases(model_dir)
                protected = set(numbers[len(numbers) - keep :] if keep else [])
                protected |= set(aliases.values())
                protected |= al.rollback_targets(al.read_history(model_dir), aliases)
                trash = model_dir / TRASH_DIR
                trash.mkdir(exist_ok=True)
                deleted = [version for version in numbers if version not in protected]
                for version in deleted:
                    # Rename first so readers see the version whole or not at all.
                    source = model_dir / VERSIONS_DIR / str(version)
                    os.rename(source, trash / f"{version}.{os.getpid()}")
                fsync_dir(model_dir / VERSIONS_DIR)
                for leftover in trash.iterdir():  # including those of an interrupted gc
                    shutil.rmtree(leftover)
                clean_stale_staging(model_dir)
        if deleted:
            logger.info("gc of %s deleted versions %s", model, deleted)
        return deleted


def _valid_model(name: str) -> bool:
    try:
        check_model_name(name)
    except RegistryError:
        return False
    return True
