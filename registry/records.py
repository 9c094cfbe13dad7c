"""Frozen records the registry reads and writes, with their JSON forms."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from registry.errors import ErrorCode, RegistryError

__all__ = ["AliasChange", "VerifyReport", "VersionInfo", "VersionMeta"]

_ENTRY_ID = re.compile(r"\d+-\d+")  # a Redis Stream entry id, MILLISECONDS-SEQUENCE


def _invalid(message: str) -> RegistryError:
    return RegistryError(message, ErrorCode.INVALID_ARGUMENT)


@dataclass(frozen=True)
class VersionMeta:
    """What a trainer records about a version; stored as the version's meta.json."""

    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)  # hyper-parameters, JSON values only
    data_fingerprint: str = ""
    created_at: str = ""  # ISO-8601 UTC; filled in by FileRegistry.register when empty
    library_versions: dict[str, str] = field(default_factory=dict)
    parent_version: int | None = None  # the version this one was fine-tuned from, if any
    description: str = ""
    created_by: str = ""  # filled in by FileRegistry.register when empty
    # The last rating-log entry id the version was trained on (None: trained without the
    # log): a server serving it applies only the entries after it, and the log may be
    # trimmed up to the oldest such point among the versions an alias points to.
    rating_log_until: str | None = None

    def __post_init__(self) -> None:
        metrics: dict[str, float] = {}
        for key, value in self.metrics.items():
            # bool is an int subclass, and JSON cannot hold NaN or infinity.
            if not isinstance(key, str) or isinstance(value, bool):
                raise _invalid(f"metric {key!r} must map a string to a number")
            if not isinstance(value, int | float) or not math.isfinite(value):
                raise _invalid(f"metric {key!r} must be a finite number, got {value!r}")
            metrics[key] = float(value)
        object.__setattr__(self, "metrics", metrics)
        for key, lib_version in self.library_versions.items():
            if not isinstance(key, str) or not isinstance(lib_version, str):
                raise _invalid(f"library version {key!r} must map a string to a string")
        if any(not isinstance(key, str) for key in self.params):
            raise _invalid("hyper-parameter names must be strings")
        parent = self.parent_version
        if parent is not None and (isinstance(parent, bool) or not isinstance(parent, int)):
            raise _invalid(f"parent_version must be an int or None, got {parent!r}")
        if parent is not None and parent < 1:
            raise _invalid(f"parent_version must be >= 1, got {parent}")
        for name in ("data_fingerprint", "created_at", "description", "created_by"):
            if not isinstance(getattr(self, name), str):
                raise _invalid(f"{name} must be a string")
        until = self.rating_log_until
        if until is not None and not _ENTRY_ID.fullmatch(str(until)):
            raise _invalid(f"rating_log_until must be a stream entry id like 1-0, got {until!r}")

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON form written to meta.json."""
        return {
            "metrics": dict(self.metrics),
            "params": dict(self.params),
            "data_fingerprint": self.data_fingerprint,
            "created_at": self.created_at,
            "created_by": self.created_by,
            "library_versions": dict(self.library_versions),
            "parent_version": self.parent_version,
            "description": self.description,
            "rating_log_until": self.rating_log_until,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VersionMeta:
        """Build from the JSON form; unknown keys are ignored so newer files still load."""
        return cls(
            metrics=dict(data.get("metrics") or {}),
            params=dict(data.get("params") or {}),
            data_fingerprint=data.get("data_fingerprint", ""),
            created_at=data.get("created_at", ""),
            library_versions=dict(data.get("library_versions") or {}),
            parent_version=data.get("parent_version"),
            description=data.get("description", ""),
            created_by=data.get("created_by", ""),
            rating_log_until=data.get("rating_log_until"),
        )


@dataclass(frozen=True)
class VersionInfo:
    """A published version: where it lives, its metadata, aliases and recorded checksums."""

    model: str
    version: int
    path: Path  # absolute path of the version directory
    meta: VersionMeta
    aliases: tuple[str, ...] = ()
    files: dict[str, str] = field(default_factory=dict)  # relative name -> sha256 hex

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON form printed by `rbm-registry show --json`."""
        return {
            "model": self.model,
            "version": self.version,
            "aliases": list(self.aliases),
            "path": str(self.path),
            **self.meta.to_dict(),
            "files": dict(self.files),
        }


@dataclass(frozen=True)
class AliasChange:
    """One move of an alias, as appended to history.jsonl."""

    model: str
    alias: str
    from_version: int | None  # None: the alias did not exist before
    to_version: int | None  # None: the alias was deleted
    time: str  # ISO-8601 UTC
    user: str
    reason: str = ""
    action: str = "set"  # set | delete | rollback | promote | force-promote

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON form (one history.jsonl line)."""
        return {
            "time": self.time,
            "user": self.user,
            "model": self.model,
            "alias": self.alias,
            "from": self.from_version,
            "to": self.to_version,
            "reason": self.reason,
            "action": self.action,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AliasChange:
        """Build from one history.jsonl line; raises KeyError/TypeError on a malformed one."""
        from_version, to_version = data["from"], data["to"]
        for value in (from_version, to_version):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise TypeError(f"version must be an int or null, got {value!r}")
        return cls(
            model=str(data["model"]),
            alias=str(data["alias"]),
            from_version=from_version,
            to_version=to_version,
            time=str(data["time"]),
            user=str(data.get("user", "")),
            reason=str(data.get("reason", "")),
            action=str(data.get("action", "set")),
        )


@dataclass(frozen=True)
class VerifyReport:
    """The result of checking a version's files against its manifest."""

    model: str
    version: int
    missing: tuple[str, ...] = ()  # in the manifest, not on disk
    extra: tuple[str, ...] = ()  # on disk, not in the manifest
    mismatched: tuple[str, ...] = ()  # checksum differs from the manifest
    error: str = ""  # the manifest itself is missing or unreadable

    @property
    def ok(self) -> bool:
        """True when every file is present, unchanged and accounted for."""
        return not (self.missing or self.extra or self.mismatched or self.error)

    def summary(self) -> str:
        """Return a one-line description of what is wrong, or "ok"."""
        if self.ok:
            return "ok"
        parts = [self.error] if self.error else []
        for label, names in (
            ("checksum mismatch", self.mismatched),
            ("missing", self.missing),
            ("unexpected", self.extra),
        ):
            if names:
                parts.append(f"{label}: {', '.join(names)}")
        return "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON form printed by `rbm-registry verify --json`."""
        return {
            "model": self.model,
            "version": self.version,
            "ok": self.ok,
            "missing": list(self.missing),
            "extra": list(self.extra),
            "mismatched": list(self.mismatched),
            "error": self.error,
        }
