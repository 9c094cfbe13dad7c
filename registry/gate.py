"""The promotion gate: a version may take an alias only if it verifies and does not regress."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from registry.errors import ErrorCode, RegistryError
from registry.records import AliasChange
from registry.store import FileRegistry

__all__ = ["NDCG_KEYS", "RMSE_KEYS", "GatePolicy", "check_gate", "promote"]

logger = logging.getLogger(__name__)

# Validation metrics first; the plain names are what older trainers wrote.
RMSE_KEYS = ("val_rmse", "rmse")  # lower is better
NDCG_KEYS = ("val_ndcg@10", "ndcg@10")  # higher is better
_EPS = 1e-12  # so a regression of exactly the margin passes despite float rounding


@dataclass(frozen=True)
class GatePolicy:
    """How much worse than the current version a candidate may be, in absolute metric units."""

    max_rmse_regression: float = 0.01
    max_ndcg_regression: float = 0.01

    def __post_init__(self) -> None:
        for name in ("max_rmse_regression", "max_ndcg_regression"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise RegistryError(
                    f"{name} must be a finite number >= 0, got {value!r}",
                    ErrorCode.INVALID_ARGUMENT,
                )


def _shared_key(
    a: Mapping[str, float], b: Mapping[str, float], keys: tuple[str, ...]
) -> str | None:
    return next((key for key in keys if key in a and key in b), None)


def check_gate(
    candidate: Mapping[str, float], current: Mapping[str, float], policy: GatePolicy
) -> list[str]:
    """Return why `candidate` metrics regress against `current` ones; empty means it passes."""
    problems = []
    key = _shared_key(candidate, current, RMSE_KEYS)
    if key is not None:
        worse = candidate[key] - current[key]
        if worse > policy.max_rmse_regression + _EPS:
            problems.append(
                f"{key} {candidate[key]:.4f} is worse than {current[key]:.4f} by {worse:.4f} "
                f"(allowed {policy.max_rmse_regression})"
            )
    key = _shared_key(candidate, current, NDCG_KEYS)
    if key is not None:
        worse = current[key] - candidate[key]
        if worse > policy.max_ndcg_regression + _EPS:
            problems.append(
                f"{key} {candidate[key]:.4f} is worse than {current[key]:.4f} by {worse:.4f} "
                f"(allowed {policy.max_ndcg_regression})"
            )
    return problems


def promote(
    registry: FileRegistry,
    model: str,
    version: int,
    alias: str = "production",
    reason: str = "",
    *,
    force: bool = False,
    policy: GatePolicy | None = None,
    smoke_test: Callable[[Path], None] | None = None,
) -> AliasChange:
    """Point `alias` at `version` if it passes the gate; `force` (with a reason) skips the metrics.

    A version that fails checksum verification or the smoke test is never promoted,
    forced or not: its files are not the ones that were evaluated.
    """
    policy = policy or GatePolicy()
    if force and not reason.strip():
        raise RegistryError(
            "a forced promotion requires a reason (--reason TEXT)", ErrorCode.INVALID_ARGUMENT
        )
    candidate = registry.get_version(model, version)
    report = registry.verify(model, version)
    if not report.ok:
        raise RegistryError(
            f"refusing to promote {model} version {version}: verify failed: {report.summary()}",
            ErrorCode.FAILED_PRECONDITION,
        )
    if smoke_test is not None:
        try:
            smoke_test(candidate.path)
        except Exception as exc:  # the hook may fail in any way; all mean "do not promote"
            raise RegistryError(
                f"refusing to promote {model} version {version}: smoke test failed: {exc}",
                ErrorCode.FAILED_PRECONDITION,
            ) from exc
    current = registry.get_alias(model, alias)
    problems: list[str] = []
    if current is not None and current != version:
        incumbent = registry.get_version(model, current)
        problems = check_gate(candidate.meta.metrics, incumbent.meta.metrics, policy)
    if problems and not force:
        raise RegistryError(
            f"refusing to promote {model} version {version} to {alias!r} over version {current}: "
            f"{'; '.join(problems)} (use --force with --reason to override)",
            ErrorCode.FAILED_PRECONDITION,
        )
    if problems:
        logger.warning("forced promotion of %s version %d: %s", model, version, problems)
    action = "force-promote" if problems else "promote"
    # expected=current: if someone moved the alias since we compared, the gate is stale.
    return registry.set_alias(model, alias, version, reason, action=action, expected=current)
