"""The promotion gate: verify, smoke test, and metric regressions against the current alias."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from registry import (
    ErrorCode,
    FileRegistry,
    GatePolicy,
    RegistryError,
    VersionInfo,
    check_gate,
    promote,
)

MakeVersion = Callable[..., VersionInfo]  # the make_version fixture, see conftest.py
Tamper = Callable[[Path, bytes], None]  # the tamper fixture
POLICY = GatePolicy()


@pytest.mark.parametrize(
    ("candidate", "current", "failing"),
    [
        ({"val_rmse": 0.90}, {"val_rmse": 0.90}, []),
        ({"val_rmse": 0.91}, {"val_rmse": 0.90}, []),  # exactly the margin passes
        ({"val_rmse": 0.92}, {"val_rmse": 0.90}, ["val_rmse"]),
        ({"val_rmse": 0.50}, {"val_rmse": 0.90}, []),  # better is always fine
        ({"val_ndcg@10": 0.29}, {"val_ndcg@10": 0.30}, []),
        ({"val_ndcg@10": 0.28}, {"val_ndcg@10": 0.30}, ["val_ndcg@10"]),
        ({"rmse": 0.99, "ndcg@10": 0.1}, {"rmse": 0.9, "ndcg@10": 0.3}, ["rmse", "ndcg@10"]),
        # val_* wins over the plain name when both sides have it.
        ({"val_rmse": 0.9, "rmse": 5.0}, {"val_rmse": 0.9, "rmse": 0.1}, []),
        # A metric missing on either side skips that check.
        ({"val_rmse": 5.0}, {"val_ndcg@10": 0.3}, []),
        ({}, {"val_rmse": 0.1, "val_ndcg@10": 0.9}, []),
    ],
)
def test_check_gate(
    candidate: dict[str, float], current: dict[str, float], failing: list[str]
) -> None:
    problems = check_gate(candidate, current, POLICY)
    assert [problem.split()[0] for problem in problems] == failing


def test_margins_are_configurable() -> None:
    assert check_gate({"val_rmse": 0.95}, {"val_rmse": 0.90}, GatePolicy(0.1, 0.01)) == []
    with pytest.raises(RegistryError) as exc:
        GatePolicy(max_rmse_regression=-1)
    assert exc.value.code is ErrorCode.INVALID_ARGUMENT


def test_first_promotion_and_improvements_pass(
    reg: FileRegistry, make_version: MakeVersion
) -> None:
    make_version(rmse=0.9, ndcg=0.3)
    make_version(rmse=0.85, ndcg=0.35)
    assert promote(reg, "rbm", 1).to_version == 1
    change = promote(reg, "rbm", 2, reason="better")
    assert (change.from_version, change.to_version, change.action) == (1, 2, "promote")


def test_regression_is_refused_unless_forced_with_a_reason(
    reg: FileRegistry, make_version: MakeVersion
) -> None:
    make_version(rmse=0.9, ndcg=0.3)
    make_version(rmse=0.95, ndcg=0.3)
    promote(reg, "rbm", 1)

    with pytest.raises(RegistryError, match="val_rmse") as exc:
        promote(reg, "rbm", 2)
    assert exc.value.code is ErrorCode.FAILED_PRECONDITION
    with pytest.raises(RegistryError, match="requires a reason") as exc:
        promote(reg, "rbm", 2, force=True, reason="  ")
    assert exc.value.code is ErrorCode.INVALID_ARGUMENT
    assert reg.get_alias("rbm", "production") == 1

    change = promote(reg, "rbm", 2, reason="hotfix for cold start", force=True)
    assert change.action == "force-promote"
    assert reg.get_alias("rbm", "production") == 2
    assert reg.history("rbm")[-1].reason == "hotfix for cold start"


def test_tampered_version_is_never_promoted(
    reg: FileRegistry, make_version: MakeVersion, tamper: Tamper
) -> None:
    info = make_version()
    tamper(info.path / "weights.bin", b"swapped")
    for force in (False, True):
        with pytest.raises(RegistryError, match="verify failed") as exc:
            promote(reg, "rbm", 1, reason="please", force=force)
        assert exc.value.code is ErrorCode.FAILED_PRECONDITION
    assert reg.get_alias("rbm", "production") is None


def test_smoke_test_failure_blocks_promotion(reg: FileRegistry, make_version: MakeVersion) -> None:
    make_version()
    seen: list[Path] = []

    def smoke(version_dir: Path) -> None:
        seen.append(version_dir)
        raise RuntimeError("output has NaN")

    with pytest.raises(RegistryError, match="output has NaN") as exc:
        promote(reg, "rbm", 1, smoke_test=smoke)
    assert exc.value.code is ErrorCode.FAILED_PRECONDITION
    assert seen == [reg.get_version("rbm", 1).path]
    assert reg.get_alias("rbm", "production") is None
