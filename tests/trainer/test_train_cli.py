"""rbm-train through its console script, as an operator runs it."""

from __future__ import annotations

import json
from pathlib import Path

from tests.harness.cli import TrainedModel, run_cli


def test_train_reports_metrics_and_registers_a_promoted_version(trained: TrainedModel) -> None:
    report = trained.report
    for key in ("rmse", "mae", "precision@10", "recall@10", "ndcg@10", "hr@10", "val_rmse"):
        assert isinstance(report[key], float), key
    assert report["rmse"] < 1.0  # type: ignore[operator]
    baselines = report["baselines"]
    assert isinstance(baselines, dict)
    assert set(baselines) == {"global_mean", "bias", "popularity", "item_knn", "ease"}
    assert baselines["item_knn"]["ndcg@10"] > baselines["popularity"]["ndcg@10"]
    assert baselines["ease"]["ndcg@10"] > baselines["popularity"]["ndcg@10"]
    assert "baselines_skipped" not in report
    assert baselines["bias"]["rmse"] < baselines["global_mean"]["rmse"]
    assert report["rmse"] < baselines["bias"]["rmse"], "the RBM must beat the bias baseline"
    assert report["registered"] == {
        "model": "rbm",
        "version": 1,
        "path": report["registered"]["path"],  # type: ignore[index]
        "promoted": "production",
    }
    listed = json.loads(
        run_cli("rbm-registry", "--registry", str(trained.registry), "--json", "list", "rbm").stdout
    )
    assert [v["version"] for v in listed] == [1]
    assert listed[0]["aliases"] == ["production"]
    assert abs(listed[0]["metrics"]["rmse"] - report["rmse"]) < 1e-9  # type: ignore[operator]


def test_bad_arguments_exit_2_with_one_line(movielens: Path, tmp_path: Path) -> None:
    proc = run_cli(
        "rbm-train",
        "--data-dir",
        str(movielens),
        "--split",
        "u9",
        "--registry",
        str(tmp_path),
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("rbm-train: error:") and "u9" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir()), "nothing may be registered"


def test_help_works() -> None:
    out = run_cli("rbm-train", "--help").stdout
    assert "--dataset" in out and "--promote" in out
