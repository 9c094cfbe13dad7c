"""Holds the engine being served and follows the registry alias it serves.

When the alias moves, the new version is verified (checksums), loaded and warmed off the
event loop, then swapped in with one assignment. A version that fails is refused and the
old one keeps serving; the refusal is logged and kept for health details and metrics.

Until a first version loads, the holder says what it waits for and where it looked (the
registry folder, the model, the alias, and why nothing is there) in a WARNING at the first
poll and again every ``warn_every_s`` seconds, so a server with nothing to serve is never
silent about it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import torch

from rbm.checkpoint import TENSORS_FILE
from registry.errors import ErrorCode, RegistryError
from registry.store import ENV_VAR, FileRegistry
from server.engine import Engine
from server.errors import NotReady

__all__ = ["WAIT_WARNING_S", "ModelHolder", "ReloadStatus"]

log = logging.getLogger(__name__)

WAIT_WARNING_S = 30.0  # while nothing is served, the reason is logged again this often


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
    ) -> None:
        if not math.isfinite(warn_every_s) or warn_every_s <= 0:
            raise ValueError(f"warning interval must be a number > 0, got {warn_every_s}")
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
            self._still_waiting(self._why_missing(None))
            return False
        current = self.engine.version if self.engine else None
        if str(target) == current:
            return False
        if str(target) == self.status.refused_version:
            self._still_waiting(self.status.last_error)
            return False
        try:
            engine = await asyncio.to_thread(self._load, target)
            if self.prepare is not None:
                await self.prepare(engine)
        except Exception as exc:  # any failure to load must leave the old version serving
            self._refuse(str(target), f"version {target} refused: {exc}")
            self._still_waiting(self.status.last_error, already_said=True)
            return False
        self.engine = engine
        self.status.reloads += 1
        self.status.refused_version = self.status.last_error = ""
        self._warned = None
        log.info(
            "serving %s version %s (%s alias) on %s", self.model, target, self.alias, engine.where
        )
        return True

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
        if not already_said:
            log.warning(
                "nothing to serve yet: waiting for %s: %s (this repeats every %gs until a "
                "version loads)",
                self.waiting_for,
                reason,
                self.warn_every_s,
            )

    def _refuse(self, version: str, message: str) -> None:
        self.status.failures += 1
        self.status.refused_version = version
        self.status.last_error = message
        serving = self.engine.version if self.engine else "none"
        log.error("%s; still serving version %s", message, serving)

    def _note(self, message: str) -> None:
        # Polling repeats the same problem every second: log it once, not every poll. While
        # nothing is served, _still_waiting repeats it on its own clock instead.
        if message != self.status.last_error:
            self.status.last_error = message
            if self.engine is not None:
                log.warning(message)
