"""Holds the engine being served and follows the registry alias it serves.

When the alias moves, the new version is verified (checksums), loaded and warmed off the
event loop, then swapped in with one assignment. A version that fails is refused and the
old one keeps serving; the refusal is logged and kept for health details and metrics.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import torch

from rbm.checkpoint import TENSORS_FILE
from registry.errors import ErrorCode, RegistryError
from registry.store import FileRegistry
from server.engine import Engine
from server.errors import NotReady

__all__ = ["ModelHolder", "ReloadStatus"]

log = logging.getLogger(__name__)


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
    ) -> None:
        self.registry = registry
        self.model = model
        self.alias = alias
        self.device = device
        self.backend = backend
        self.engine: Engine | None = None
        self.status = ReloadStatus()

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
        return Engine.load(info.path, str(version), self.device, self.backend, identity)

    async def refresh(self) -> bool:
        """Load the alias's version if it changed; return True if a new engine was swapped in."""
        try:
            target = self.registry.get_alias(self.model, self.alias)
        except RegistryError as exc:  # e.g. no model registered yet: keep polling quietly
            self._note(f"cannot read alias {self.alias!r} of {self.model!r}: {exc}")
            return False
        current = self.engine.version if self.engine else None
        if target is None or str(target) == current or str(target) == self.status.refused_version:
            return False
        try:
            engine = await asyncio.to_thread(self._load, target)
        except Exception as exc:  # any failure to load must leave the old version serving
            self._refuse(str(target), f"version {target} refused: {exc}")
            return False
        self.engine = engine
        self.status.reloads += 1
        self.status.refused_version = self.status.last_error = ""
        log.info(
            "serving %s version %s (%s alias) on %s", self.model, target, self.alias, self.device
        )
        return True

    def _refuse(self, version: str, message: str) -> None:
        self.status.failures += 1
        self.status.refused_version = version
        self.status.last_error = message
        serving = self.engine.version if self.engine else "none"
        log.error("%s; still serving version %s", message, serving)

    def _note(self, message: str) -> None:
        # Polling repeats the same problem every second: log it once, not every poll.
        if message != self.status.last_error:
            self.status.last_error = message
            log.warning(message)
