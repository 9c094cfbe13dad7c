"""rbm-train as a first-time operator meets it: progress for every phase, a line when a phase
stops early, the report even when the gate refuses the promotion, flags named in errors, and
defaults in --help.

Two real runs with tiny budgets (about 10 s each on one thread): one shows its progress and
has its promotion refused, the other is --quiet. The implicit RBM gets a budget it never
uses: it overfits within about 15 epochs (0.15 s each) and stops early, which is the
cheapest early stop there is.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from rbm.checkpoint import load_checkpoint
from registry import FileRegistry, VersionMeta
from tests.cli.support import assert_one_line_error
from tests.harness.cli import run_cli, train_args
from trainer.cli import main

PROG = "rbm-train"
REGISTRY_ERROR = 5
IMPLICIT_BUDGET = 60  # never used up: the implicit RBM stops early well before
TINY = ["--implicit-epochs", str(IMPLICIT_BUDGET), "--item-epochs", "2"]
PHASES = ("user RBM", "implicit RBM", "item RBM", "evaluation")
EARLY_STOP = re.compile(r"^(user|implicit|item) RBM: early stop at epoch (\d+) \(best (\d+)\)$")
Refused = tuple[Path, subprocess.CompletedProcess[str]]  # the registry, the finished run


def _lines(stderr: str) -> list[str]:
    """stderr's lines, each progress bar refresh (a carriage return) a line of its own."""
    return [line.strip() for line in re.split(r"[\r\n]+", stderr) if line.strip()]


def _train(*args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(PROG, *args, env={"OMP_NUM_THREADS": "1"}, check=False)


def _unbeatable_production(root: Path) -> FileRegistry:
    """A registry whose production version (1) has figures no 2-epoch model comes near."""
    registry = FileRegistry(root)
    meta = VersionMeta(metrics={"val_rmse": 0.5, "val_ndcg@10": 0.9, "rmse": 0.5})
    registry.register("rbm", lambda d: (d / "stand-in.bin").write_bytes(b"x"), meta)
    registry.set_alias("rbm", "production", 1)
    return registry


@pytest.fixture(scope="module")
def refused(tmp_path_factory: pytest.TempPathFactory) -> Refused:
    """A run with progress shown, registered as version 2 and refused by the gate."""
    root = tmp_path_factory.mktemp("first-hour") / "registry"
    _unbeatable_production(root)
    args = [a for a in train_args(root, *TINY, epochs=2, promote=True) if a != "--quiet"]
    return root, _train(*args)


def test_the_refused_promotion_still_prints_the_report_and_exits_5(
    refused: Refused,
) -> None:
    root, proc = refused
    assert proc.returncode == REGISTRY_ERROR, proc.stderr
    report = json.loads(proc.stdout)  # the whole report, as when promoted
    assert {"rmse", "ndcg@10", "baselines", "dataset", "split"} <= report.keys()
    registered = report["registered"]
    assert registered["version"] == 2 and registered["model"] == "rbm"
    assert "promoted" in registered and registered["promoted"] is None
    assert Path(registered["path"]).is_dir()
    last = _lines(proc.stderr)[-1]
    assert last.startswith(f"{PROG}: error: registered version 2, not promoted: "), last
    assert "val_" in last, "the error says why the gate refused"
    registry = FileRegistry(root)
    assert [v.version for v in registry.list_versions("rbm")] == [1, 2]
    assert registry.get_alias("rbm", "production") == 1


def test_every_phase_has_its_own_progress_bar_on_stderr(refused: Refused) -> None:
    _, proc = refused
    lines = _lines(proc.stderr)
    for phase in PHASES:
        assert any(line.startswith(f"{phase}:") and "%|" in line for line in lines), phase
    # The bars end where their phase did, in order; nothing of them reaches stdout.
    assert any(line.startswith("user RBM: 100%") and "2/2" in line for line in lines)
    assert any(line.startswith("item RBM: 100%") and "2/2" in line for line in lines)
    assert any(line.startswith("evaluation: 100%") and "2/2" in line for line in lines)
    firsts = [next(i for i, line in enumerate(lines) if line.startswith(p)) for p in PHASES]
    assert firsts == sorted(firsts), "phases start in order: user, implicit, item, evaluation"
    assert "%|" not in proc.stdout and "early stop" not in proc.stdout
    # The refits run after the ranking choice, for the epochs early stopping kept.
    for model in ("user RBM", "item RBM"):
        trained = [line for line in lines if line.startswith(f"{model}:") and "best=" in line]
        best = re.findall(r"best=(\d+)", trained[-1])[-1]
        refit = [line for line in lines if line.startswith(f"{model} refit:")]
        assert refit and f"{best}epoch" in refit[-1].replace(" ", ""), (best, refit)
        assert lines.index(refit[0]) > firsts[-1], "after the ranking choice"


def test_a_phase_that_stops_early_says_so_in_one_line(refused: Refused) -> None:
    _, proc = refused
    stops = [m for line in _lines(proc.stderr) if (m := EARLY_STOP.match(line))]
    assert [m.group(1) for m in stops] == ["implicit"], proc.stderr[-2000:]
    epoch, best = int(stops[0].group(2)), int(stops[0].group(3))
    assert best < epoch < IMPLICIT_BUDGET
    bar = [
        line for line in _lines(proc.stderr) if line.startswith("implicit RBM:") and "%|" in line
    ]
    assert f"{epoch}/{IMPLICIT_BUDGET}" in bar[-1], "the bar stops at the early-stop epoch"
    assert f"best={best}" in bar[-1]


def test_quiet_shows_no_progress_and_no_early_stop() -> None:
    # Every phase runs (the refits too), each for one epoch: --quiet must silence them all.
    budgets = ("--implicit-epochs", "1", "--item-epochs", "1")
    proc = _train(*train_args(None, *budgets, epochs=1))  # --quiet --json --no-register
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert "registered" not in json.loads(proc.stdout)


def test_no_refit_forced_blend_ranking_and_mean_field_are_what_gets_registered(
    tmp_path: Path,
) -> None:
    root = tmp_path / "registry"
    budgets = ["--implicit-epochs", "1", "--item-epochs", "1", "--no-refit"]
    forced = ("--blend-ranking", "--rating-inference", "mean_field")
    args = [a for a in train_args(root, *budgets, *forced, epochs=1) if a != "--quiet"]
    proc = _train(*args)
    assert proc.returncode == 0, proc.stderr
    assert "refit" not in proc.stderr  # no refit phase ran
    (version,) = FileRegistry(root).list_versions("rbm")
    assert version.meta.params["refit"] is False
    # --blend-ranking forces the blend into the ranking: asked and served alike.
    assert version.meta.params["blend_ranking"] is True
    assert version.meta.params["blend_in_ranking"] is True
    assert load_checkpoint(version.path).blend_ranking is True
    # --rating-inference mean_field: the first rounds' rating prediction, recorded and served.
    assert version.meta.params["rating_inference"] == "mean_field"
    assert load_checkpoint(version.path).rating_inference == "mean_field"


@pytest.mark.parametrize("flag", ["--hidden", "--epochs", "--implicit-epochs", "--item-epochs"])
@pytest.mark.parametrize("value", ["-5", "0"])
def test_a_bad_number_names_its_flag(
    flag: str, value: str, movielens: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--data-dir", str(movielens), "--registry", str(tmp_path / "r"), flag, value]
    assert main(argv) == 2
    assert_one_line_error(capsys.readouterr().err, PROG, f"{flag} must be >= 1, got {value}")
    assert not (tmp_path / "r").exists()


def test_help_shows_the_defaults() -> None:
    out = run_cli(PROG, "--help").stdout
    flat = " ".join(out.split("options:", 1)[1].split())  # the options, not the usage
    for flag, default in [
        ("--epochs N", "40"),
        ("--hidden N", "100"),
        ("--implicit-epochs N", "30"),
        ("--item-epochs N", "60"),
        ("--seed N", "0"),
        ("--split SPLIT", "u1"),
        ("--model MODEL", "rbm"),
    ]:
        after = flat.split(flag, 1)[1].split(" --", 1)[0]
        assert f"(default: {default})" in after, (flag, after)
    for flag in ("--quiet", "--no-register", "--blend-ranking", "--json", "--promote"):
        assert flag in out
