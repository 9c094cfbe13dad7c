"""rbm-registry as a first-time operator meets it: a `list` that fits 100 columns with whole
numbers as integers, export-onnx that does not overwrite by surprise and says where it wrote,
defaults and the gc/rollback rules in --help.

Most cases run ``registry.cli.run`` in-process on stand-in versions (no torch); one lists the
session's really trained model through the console script.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from registry import FileRegistry, VersionMeta
from registry.cli import ModelHooks, run
from tests.cli.support import Cli, assert_one_line_error, registry_cli
from tests.harness.cli import TrainedModel, run_cli

PROG = "rbm-registry"
WIDTH = 100
ALREADY_EXISTS = 8
WHOLE_AS_FLOAT = re.compile(r"(?<![\d.])\d+\.0000(?!\d)")  # 20.0000, 456.0000
# What rbm-train records, whole numbers included (best_epoch, ranking_users, ...).
METRICS = {
    "rmse": 0.9312345,
    "mae": 0.7312345,
    "precision@10": 0.3312345,
    "recall@10": 0.2012345,
    "ndcg@10": 0.3912345,
    "hr@10": 0.8912345,
    "ranking_users": 456.0,
    "val_rmse": 0.9212345,
    "val_rmse_user_rbm": 0.9412345,
    "val_ndcg@10": 0.1312345,
    "best_epoch": 20.0,
    "train_seconds": 31.0,
}


def _export(version_dir: Path, output: Path) -> None:
    output.write_bytes(b"onnx:" + (version_dir / "weights.bin").read_bytes())


HOOKS = ModelHooks(smoke_test=lambda version_dir: None, export_onnx=_export)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """Three versions with rbm-train's metrics; 3 is production, staging and canary."""
    reg = FileRegistry(tmp_path / "registry")
    for version in (1, 2, 3):
        meta = VersionMeta(
            metrics=METRICS | {"best_epoch": float(10 * version)},
            params={"n_hidden": 100},
            description=f"RBM on ml-100k/u{version}, a description longer than any table wants",
        )
        reg.register("rbm", lambda d: (d / "weights.bin").write_bytes(b"w"), meta)
    for alias in ("production", "staging", "canary"):
        reg.set_alias("rbm", alias, 3)
    return reg.root


@pytest.fixture
def cli(root: Path, capsys: pytest.CaptureFixture[str]) -> Cli:
    """Run rbm-registry in-process against ``root``."""
    return registry_cli(root, HOOKS, capsys)


def _assert_fits(text: str) -> None:
    lines = text.splitlines()
    assert lines, "nothing listed"
    too_wide = [line for line in lines if len(line) > WIDTH]
    assert not too_wide, f"{len(too_wide[0])} columns: {too_wide[0]!r}"
    assert not WHOLE_AS_FLOAT.search(text), text


# -- list ------------------------------------------------------------------------------------
def test_list_fits_100_columns_with_the_gate_and_test_metrics(cli: Cli) -> None:
    ran = cli("list")
    assert ran.code == 0, ran.err
    _assert_fits(ran.out)
    header, *rows = ran.out.splitlines()
    assert header.split()[:3] == ["VERSION", "ALIASES", "CREATED"]
    for metric in ("val_rmse", "val_ndcg@10"):  # what the promotion gate compares
        assert metric in header.split()
    assert [row.split()[0] for row in rows] == ["1", "2", "3"]
    assert "0.9212" in rows[0], "figures keep 4 decimals"
    assert "production" in rows[2]


def test_list_wide_shows_every_metric_with_whole_numbers_as_integers(cli: Cli) -> None:
    ran = cli("list", "--wide")
    assert ran.code == 0, ran.err
    header, *rows = ran.out.splitlines()
    assert set(METRICS) <= set(header.split())
    best = header.index("best_epoch")  # the column starts where its header does
    assert [row[best:].split()[0] for row in rows] == ["10", "20", "30"]
    assert not WHOLE_AS_FLOAT.search(ran.out), ran.out
    assert "456" in rows[0] and "31" in rows[0]


def test_show_prints_whole_numbers_as_integers(cli: Cli) -> None:
    ran = cli("show", "rbm", "2")
    assert ran.code == 0, ran.err
    assert re.search(r"^\s+best_epoch\s+20$", ran.out, re.M), ran.out
    assert re.search(r"^\s+ranking_users\s+456$", ran.out, re.M), ran.out
    assert not WHOLE_AS_FLOAT.search(ran.out), ran.out


def test_list_json_is_unchanged(cli: Cli, root: Path) -> None:
    expected = [info.to_dict() for info in FileRegistry(root).list_versions("rbm")]
    for argv in (["list", "--json"], ["list", "--json", "--wide"]):
        ran = cli(*argv)
        assert ran.code == 0, ran.err
        assert json.loads(ran.out) == json.loads(json.dumps(expected))


def test_list_of_a_really_trained_model_fits_100_columns(trained: TrainedModel) -> None:
    proc = run_cli(PROG, "--registry", str(trained.registry), "list")
    _assert_fits(proc.stdout)
    assert "production" in proc.stdout


# -- export-onnx -----------------------------------------------------------------------------
def test_export_without_output_refuses_to_overwrite_unless_forced(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    target = work / "rbm-v3.onnx"

    ran = cli("export-onnx", "rbm", "production")
    assert ran.code == 0, ran.err
    assert target.read_bytes() == b"onnx:w"
    assert str(target) in ran.out, "it says where it wrote"

    target.write_bytes(b"someone's file")
    ran = cli("export-onnx", "rbm", "3")
    assert ran.code == ALREADY_EXISTS, ran
    assert_one_line_error(ran.err, PROG, str(target), "--force")
    assert ran.out == ""
    assert target.read_bytes() == b"someone's file", "an existing file is never overwritten"

    ran = cli("export-onnx", "rbm", "3", "--force", "--json")
    assert ran.code == 0, ran.err
    assert json.loads(ran.out) == {"model": "rbm", "version": 3, "output": str(target)}
    assert target.read_bytes() == b"onnx:w"


def test_export_to_an_explicit_output_says_where_it_wrote(cli: Cli, tmp_path: Path) -> None:
    out = tmp_path / "exported.onnx"
    ran = cli("export-onnx", "rbm", "2", "--output", str(out))
    assert ran.code == 0, ran.err
    assert ran.out.strip().endswith(str(out)), ran.out
    assert "version 2" in ran.out
    ran = cli("export-onnx", "rbm", "2", "--output", str(out))  # an explicit path: replaced
    assert ran.code == 0, ran.err
    assert "replaced" in ran.out


# -- --help ----------------------------------------------------------------------------------
def _help(capsys: pytest.CaptureFixture[str], *command: str) -> str:
    capsys.readouterr()
    assert run([*command, "--help"]) == 0
    return " ".join(capsys.readouterr().out.split())


def test_help_shows_defaults_and_new_flags(capsys: pytest.CaptureFixture[str]) -> None:
    promote = _help(capsys, "promote")
    assert "(default: production)" in promote
    assert promote.count("(default: 0.01)") == 2
    assert "(default: rbm)" in _help(capsys, "list")
    assert "--wide" in _help(capsys, "list")
    export = _help(capsys, "export-onnx")
    assert "--force" in export and "(default: ./MODEL-vN.onnx)" in export
    assert "(default: " not in _help(capsys, "verify").split("--checksums-only")[-1]


def test_help_documents_gc_keeping_rollback_targets_and_rollback_swapping_back(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert "rollback target" in _help(capsys, "gc")
    assert "second rollback swaps back" in _help(capsys, "rollback")
    top = _help(capsys)
    assert "second `rollback` swaps back" in top and "roll back to" in top


def test_gc_and_rollback_do_what_the_help_says(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reg = FileRegistry(tmp_path / "own")
    for _ in range(3):
        reg.register("rbm", lambda d: (d / "weights.bin").write_bytes(b"w"), VersionMeta())
    for version in (1, 2, 3):
        reg.set_alias("rbm", "staging", version)  # staging 2 -> 3: rollback returns to 2
    argv = ["--registry", str(reg.root)]
    assert run([*argv, "gc", "rbm", "--keep", "0"], HOOKS) == 0
    assert [v.version for v in reg.list_versions("rbm")] == [2, 3]  # 2: a rollback target
    assert run([*argv, "rollback", "rbm", "--alias", "staging"], HOOKS) == 0
    assert reg.get_alias("rbm", "staging") == 2
    assert run([*argv, "rollback", "rbm", "--alias", "staging"], HOOKS) == 0
    assert reg.get_alias("rbm", "staging") == 3, "a second rollback swaps back"
    capsys.readouterr()
