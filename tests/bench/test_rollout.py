"""bench/rollout.py --quick: a real run on a tiny model (two replicas, a promotion, ~30 s).

It checks what the benchmark reports, not how fast anything was: the JSON holds both
variants with requests, the figures the README's table shows, each replica's swap to
version 2 found in its log, and the variants' rbm-serve flags.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from typing import Any

import pytest

from tests.harness.cli import ROOT

SCRIPT = ROOT / "bench" / "rollout.py"
RUN_KEYS = (
    *("requests", "errors", "error_codes", "p50_ms", "p99_ms", "steady_p99_ms"),
    *("promo_p99_ms", "common_p99_ms", "worst_second_p99_ms", "load_at", "serving_at"),
    *("load_spread_s", "fleet_v2_s", "rss_before_mb", "rss_after_mb", "fleet_rss_peak_mb"),
)


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The JSON of one ``--quick`` run (and its printed table under "stdout")."""
    out = tmp_path_factory.mktemp("rollout") / "rollout.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    loaded: dict[str, Any] = json.loads(out.read_text())
    return loaded | {"stdout": done.stdout}


def test_both_variants_ran_through_a_promotion(result: dict[str, Any]) -> None:
    runs = result["runs"]
    assert sorted(r["variant"] for r in runs) == ["spread", "together"]
    for run in runs:
        assert all(key in run for key in RUN_KEYS), sorted(set(RUN_KEYS) - set(run))
        assert run["requests"] > 0 and run["errors"] == 0, run["error_codes"]
        assert run["per_replica_requests"][0] > 0 and run["per_replica_requests"][1] > 0
        # Both replicas logged the load and the swap, after the promotion, and answered v2.
        assert len(run["load_at"]) == 2 and all(t is not None and t >= 0 for t in run["load_at"])
        assert all(s >= t for s, t in zip(run["serving_at"], run["load_at"], strict=True))
        assert run["fleet_v2_s"] == max(run["serving_at"])
        assert run["responses_by_version"].get("2", 0) > 0
        assert run["responses_by_version"].get("1", 0) > 0
        assert math.isfinite(run["p99_ms"]) and run["p99_ms"] >= run["p50_ms"] > 0
        assert len(run["rss_before_mb"]) == 2 and min(run["rss_before_mb"]) > 0
    assert result["problems"] == []


def test_variants_use_the_rollout_flags(result: dict[str, Any]) -> None:
    flags = {r["variant"]: r["flags"] for r in result["runs"]}
    assert flags["together"] == ["--poll-jitter", "0", "--swap-spread-s", "0"]
    assert flags["spread"][:2] == ["--poll-jitter", "0.5"]
    assert float(flags["spread"][3]) > 0


def test_summary_and_table(result: dict[str, Any]) -> None:
    ratios = result["summary"]["ratio_spread_over_together"]
    for key in ("p99_ms", "promo_p99_ms", "common_p99_ms", "worst_second_p99_ms"):
        assert ratios[key] is not None and ratios[key] > 0, key
    assert set(result["summary"]["median"]) == {"together", "spread"}
    assert result["model"]["checkpoint_mb"] > 0
    assert result["command"].startswith("python bench/rollout.py --quick")
    assert "together" in result["stdout"] and "spread ÷ together" in result["stdout"]


def test_a_bad_flag_is_a_usage_error() -> None:
    refused = subprocess.run(
        [sys.executable, str(SCRIPT), "--rounds", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert refused.returncode == 2 and "usage" in refused.stderr
