"""Holds the engine being served and follows the registry alias it serves.

When the alias moves, the new version is verified (checksums), loaded and warmed off the
event loop, then swapped in with one assignment. A version that fails is refused and the
old one keeps serving; the refusal is logged and kept for health details and metrics.

A refusal is retried when its cause can pass: a transient one (the disk, a timeout, the
rating log unreachable) on a later poll after an exponential backoff, a permanent one
(corrupt files, wrong shapes) once the version's files change (repaired in place) or the
alias moves. A load slower than ``load_timeout_s`` is abandoned, and counts as transient.

Until a first version loads, the holder says what it waits for and where it looked (the
registry folder, the model, the alias, and why nothing is there) in a WARNING at the first
poll and again every ``warn_every_s`` seconds, so a server with nothing to serve is never
silent about it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from rbm.checkpoint import TENSORS_FILE
from registry.errors import ErrorCode, RegistryError
from registry.store import ENV_VAR, VERSIONS_DIR, FileRegistry
from server.engine import Engine
from server.errors import NotReady, Unavailable

__all__ = [
    "LOAD_TIMEOUT_S",
    "WAIT_WARNING_S",
    "Backoff",
    "ModelHolder",
    "ReloadStatus",
    "files_fingerprint",
    "is_transient",
]

log = logging.getLogger(__name__)

WAIT_WARNING_S = 30.0  # while nothing is served, the reason is logged again this often
LOAD_TIMEOUT_S = 600.0  # a load and replay slower than this is abandoned (ml-25m takes ~1 min)

# Registry codes whose cause may pass by itself: the disk refused, or a version being written.
_TRANSIENT_CODES = (ErrorCode.IO_ERROR, ErrorCode.NOT_FOUND)
Fingerprint = tuple[tuple[str, int, int, int], ...]  # (name, size, mtime_ns, inode) per file


@dataclass(frozen=True)
class Backoff:
    """Seconds to wait before retrying a transient failure: first_s, doubling, up to cap_s."""

    first_s: float = 1.0
    cap_s: float = 60.0

    def __post_init__(self) -> None:
        if not (0 < self.first_s <= self.cap_s and math.isfinite(self.cap_s)):
            raise ValueError(f"backoff needs 0 < first <= cap, got {self.first_s}, {self.cap_s}")

    def delay(self, attempts: int) -> float:
        """The wait after the ``attempts``-th failure in a row (1, 2, ...)."""
        return float(min(self.cap_s, self.first_s * 2.0 ** min(attempts - 1, 62)))


def is_transient(exc: BaseException) -> bool:
    """Whether a load failure may pass if retried (I/O, a timeout, the rating log away)."""
    if isinstance(exc, RegistryError):
        return exc.code in _TRANSIENT_CODES
    return isinstance(exc, OSError | TimeoutError | Unavailable)


def files_fingerprint(directory: Path) -> Fingerprint:
    """What changes when a version's files are rewritten in place: their sizes, times, inodes."""
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
        stats = [(e.name, e.stat()) for e in entries if e.is_file()]
    except OSError:
        return ()
    return tuple((name, st.st_size, st.st_mtime_ns, st.st_ino) for name, st in stats)


@dataclass(frozen=True)
class _Refusal:
    """A refused version and when it may be tried again."""

    version: str
    transient: bool
    attempts: int  # failures in a row of this version
    retry_at: float  # transient: the clock time of the next try
    files: Fingerprint  # permanent: retried once the files differ from these


@dataclass
class ReloadStatus:
    """What the holder has done, for health details and metrics."""

    reloads: int = 0
    failures: int = 0
    refused_version: str = ""
    last_error: str = ""


class ModelHolder:
    """The current ``Engine`` of ``model`` at ``alias``, reloaded when the alias moves."""

    def __init__(
        self,
        registry: FileRegistry,
        model: str,
        alias: str,
        device: torch.device,
        backend: str = "torch",
        warn_every_s: float = WAIT_WARNING_S,
        clock: Callable[[], float] = time.monotonic,
        load_timeout_s: float = LOAD_TIMEOUT_S,
        backoff: Backoff = Backoff(),
        warm_batch: int = 64,
        spread_s: float = 0.0,
        rng: random.Random | None = None,
        optional: bool = False,
    ) -> None:
        if not math.isfinite(warn_every_s) or warn_every_s <= 0:
            raise ValueError(f"warning interval must be a number > 0, got {warn_every_s}")
        if not math.isfinite(load_timeout_s) or load_timeout_s <= 0:
            raise ValueError(f"load timeout must be a number > 0, got {load_timeout_s}")
        if not math.isfinite(spread_s) or spread_s < 0:
            raise ValueError(f"swap spread must be a number >= 0, got {spread_s}")
        self.load_timeout_s = load_timeout_s
        # A replica that sees the alias move waits U[0, spread_s] before loading, so that a
        # fleet's loads (and their cold first requests) do not all land in the same second.
        self.spread_s = spread_s
        self._rng = rng or random.Random()
        self._due: tuple[str, float] | None = None  # (version, clock time its load may start)
        # An optional alias (a canary) may be unset: that is not worth a warning, and unsetting
        # it stops serving its version.
        self.optional = optional
        self.backoff = backoff
        self.warm_batch = warm_batch  # the server's largest batch: warmed at that shape
        self._refusal: _Refusal | None = None
        self.registry = registry
        self.model = model
        self.alias = alias
        self.device = device
        self.backend = backend
        self.engine: Engine | None = None
        self.status = ReloadStatus()
        self.warn_every_s = warn_every_s
        self._clock = clock
        self._warned: tuple[str, float] | None = None  # (reason, when) of the last warning
        # Called with a loaded engine before it is swapped in (the Recommender replays the
        # rating log after the version's point); set once the server is assembled.
        self.prepare: Callable[[Engine], Awaitable[None]] | None = None

    def require(self) -> Engine:
        """The engine to compute a request on; raise NotReady if none is loaded."""
        engine = self.engine
        if engine is None:
            raise NotReady(f"no version of {self.model!r} at alias {self.alias!r} is loaded yet")
        return engine

    def _load(self, version: int) -> Engine:
        report = self.registry.verify(self.model, version)
        if not report.ok:
            raise RegistryError(report.summary(), ErrorCode.CORRUPT)
        info = self.registry.get_version(self.model, version)
        # The weights' checksum goes into the cache keys: version numbers repeat across
        # registries (and a re-created one), the content does not.
        digest = info.files.get(TENSORS_FILE, "")[:16]
        identity = f"{version}.{digest}" if digest else str(version)
        return Engine.load(
            info.path,
            str(version),
            self.device,
            self.backend,
            identity,
            log_point=info.meta.rating_log_until,
            warm_batch=self.warm_batch,
        )

    @property
    def waiting_for(self) -> str:
        """What the holder waits for and where it looks, e.g. for the start-up line."""
        return f"{self.model}@{self.alias} in registry {self.registry.root}"

    async def refresh(self) -> bool:
        """Load the alias's version if it changed; return True if a new engine was swapped in."""
        try:
            target = self.registry.get_alias(self.model, self.alias)
        except RegistryError as exc:  # e.g. no model registered yet: keep polling
            self._note(f"cannot read alias {self.alias!r} of {self.model!r}: {exc}")
            self._still_waiting(self._why_missing(exc))
            return False
        if target is None:
            if self.optional and self.engine is not None:
                log.info("alias %r of %r is unset: no longer serving it", self.alias, self.model)
                self.engine = None
                return True
            self._still_waiting(self._why_missing(None))
            return False
        current = self.engine.version if self.engine else None
        if str(target) == current:
            self._due = None
            return False
        if not self._spread_over(str(target)):
            return False
        refusal = self._refusal if self._refusal and self._refusal.version == str(target) else None
        if refusal is not None and not self._may_retry(refusal, target):
            self._still_waiting(self.status.last_error)
            return False
        files = files_fingerprint(self._version_dir(target))  # before: a repair mid-load counts
        log.info("loading %s version %s (%s alias)", self.model, target, self.alias)
        try:
            # The thread cannot be killed: on a timeout its engine is dropped when it arrives.
            engine = await asyncio.wait_for(self._load_and_prepare(target), self.load_timeout_s)
        except Exception as exc:  # any failure to load must leave the old version serving
            if isinstance(exc, TimeoutError):
                exc = TimeoutError(f"load and replay took over {self.load_timeout_s:g}s")
            self._refuse(str(target), exc, files, refusal.attempts + 1 if refusal else 1)
            self._still_waiting(self.status.last_error, already_said=True)
            return False
        self.engine = engine
        self.status.reloads += 1
        self.status.refused_version = self.status.last_error = ""
        self._refusal = self._due = None
        self._warned = None
        log.info(
            "serving %s version %s (%s alias) on %s", self.model, target, self.alias, engine.where
        )
        return True

    def _spread_over(self, version: str) -> bool:
        """Whether ``version``'s load may start now: at once for a first version, else once
        its random share of the spread has passed since this replica first saw it."""
        if self.spread_s == 0 or self.engine is None:
            return True
        if self._due is None or self._due[0] != version:
            wait = self._rng.uniform(0, self.spread_s)
            self._due = (version, self._clock() + wait)
            log.info("alias %r moved to version %s: loading it in %.1fs", self.alias, version, wait)
        return self._clock() >= self._due[1]

    async def _load_and_prepare(self, version: int) -> Engine:
        engine = await asyncio.to_thread(self._load, version)
        if self.prepare is not None:
            await self.prepare(engine)
        return engine

    def _version_dir(self, version: int) -> Path:
        # Where FileRegistry keeps a version; only stat-ed, to notice a repair in place.
        return self.registry.root / self.model / VERSIONS_DIR / str(version)

    def _may_retry(self, refusal: _Refusal, version: int) -> bool:
        """A transient refusal once its backoff has passed; a permanent one once files change."""
        if refusal.transient:
            return self._clock() >= refusal.retry_at
        return files_fingerprint(self._version_dir(version)) != refusal.files

    def _why_missing(self, exc: RegistryError | None) -> str:
        """Why the alias names no version: ``exc`` from reading it, None if it is not set."""
        root = self.registry.root
        if not root.is_dir():
            return f"no such registry folder (set --registry or ${ENV_VAR})"
        if exc is not None and exc.code is not ErrorCode.NOT_FOUND:
            return str(exc)
        try:
            if exc is not None:
                models = self.registry.list_models()
                held = f"it holds {', '.join(models)}" if models else "it holds no model yet"
                return f"no such model {self.model!r} ({held})"
            aliases = self.registry.aliases(self.model)
        except RegistryError as again:  # changed under us, or unreadable: say so as it is
            return str(again)
        held = ", ".join(f"{name} -> {v}" for name, v in aliases.items()) or "none"
        return f"alias {self.alias!r} is not set (aliases of {self.model!r}: {held})"

    def _still_waiting(self, reason: str, already_said: bool = False) -> None:
        """While nothing is served, warn with ``reason`` now and again every warn_every_s.

        ``already_said``: the reason was just logged (a refused version's error): start the
        period without repeating it.
        """
        if self.engine is not None:
            return
        now = self._clock()
        if self._warned is not None:
            last_reason, last_time = self._warned
            if reason == last_reason and now - last_time < self.warn_every_s:
                return
        self._warned = (reason, now)
        if self.optional:
            if not already_said:
                log.info("not serving %s: %s", self.waiting_for, reason)
        elif not already_said:
            log.warning(
                "nothing to serve yet: waiting for %s: %s (this repeats every %gs until a "
                "version loads)",
                self.waiting_for,
                reason,
                self.warn_every_s,
            )

    def _refuse(self, version: str, exc: Exception, files: Fingerprint, attempts: int) -> None:
        transient = is_transient(exc)
        wait = self.backoff.delay(attempts)
        self._refusal = _Refusal(version, transient, attempts, self._clock() + wait, files)
        self.status.failures += 1
        self.status.refused_version = version
        self.status.last_error = message = f"version {version} refused: {exc}"
        serving = self.engine.version if self.engine else "none"
        retry = (
            f"retrying in {wait:g}s (attempt {attempts})"
            if transient
            else "retried once its files change or the alias moves"
        )
        log.error("%s; still serving version %s; %s", message, serving, retry)

    def _note(self, message: str) -> None:
        # Polling repeats the same problem every second: log it once, not every poll. While
        # nothing is served, _still_waiting repeats it on its own clock instead.
        if message != self.status.last_error:
            self.status.last_error = message
            if self.engine is not None:
                log.warning(message)
