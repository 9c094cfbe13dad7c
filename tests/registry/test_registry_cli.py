"""rbm-registry end to end: JSON shapes, exit codes, the gate, hooks, --help everywhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from registry import FileRegistry, VersionInfo, VersionMeta
from registry.cli import run

MakeVersion = Callable[..., VersionInfo]  # the make_version fixture, see conftest.py
Tamper = Callable[[Path, bytes], None]  # the tamper fixture
Cli = Callable[..., tuple[int, str, str]]  # the cli fixture, see conftest.py

SUBCOMMANDS = [
    [],
    ["list"],
    ["show"],
    ["diff"],
    ["promote"],
    ["rollback"],
    ["alias"],
    ["alias", "set"],
    ["alias", "delete"],
    ["history"],
    ["verify"],
    ["gc"],
    ["export-onnx"],
]


def _one_line_error(err: str) -> str:
    assert err.startswith("rbm-registry: error: ")
    assert err.count("\n") == 1
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize("command", SUBCOMMANDS, ids=lambda c: " ".join(c) or "top")
def test_help_everywhere(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert run([*command, "--help"]) == 0
    assert "usage: rbm-registry" in capsys.readouterr().out


def test_list_json_shape(cli: Cli, reg: FileRegistry, make_version: MakeVersion) -> None:
    make_version(rmse=0.9)
    make_version(rmse=0.8)
    reg.set_alias("rbm", "production", 2)

    code, out, _ = cli("list", "--json")
    assert code == 0
    rows = json.loads(out)
    assert [row["version"] for row in rows] == [1, 2]
    assert rows[1]["aliases"] == ["production"]
    assert rows[0]["aliases"] == []
    assert rows[1]["metrics"] == {"val_rmse": 0.8, "val_ndcg@10": 0.3}
    assert all(isinstance(row["created_at"], str) and row["created_at"] for row in rows)

    code, out, _ = cli("list")  # MODEL defaults to rbm; human table
    assert code == 0
    assert out.splitlines()[0].split()[:3] == ["VERSION", "ALIASES", "CREATED"]
    assert "production" in out


def test_show_json_shape(cli: Cli, reg: FileRegistry, make_version: MakeVersion) -> None:
    info = make_version()
    reg.set_alias("rbm", "production", 1)
    for ref in ("1", "production"):
        code, out, _ = cli("show", "rbm", ref, "--json")
        assert code == 0
        data = json.loads(out)
        assert data["version"] == 1
        assert data["aliases"] == ["production"]
        assert Path(data["path"]).is_absolute()
        assert Path(data["path"]) == info.path
        assert data["metrics"]["val_rmse"] == 0.9
        assert data["params"] == {"hidden": 64, "lr": 0.01}
        assert set(data["files"]) == {"weights.bin", "config.json", "meta.json"}


def test_global_options_before_or_after_the_subcommand(
    root: Path, make_version: MakeVersion, capsys: pytest.CaptureFixture[str]
) -> None:
    make_version()
    for argv in (
        ["--registry", str(root), "--json", "list"],
        ["list", "--registry", str(root), "--json"],
        ["--json", "list", "rbm", "--registry", str(root)],
        ["--registry", str(root), "alias", "set", "--json", "rbm", "production", "1"],
    ):
        assert run(argv) == 0
        json.loads(capsys.readouterr().out)


def test_registry_from_env_and_flag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("a", "b"):
        FileRegistry(tmp_path / name).register(name, lambda d: None, VersionMeta())
    monkeypatch.setenv("RBMREC_REGISTRY", str(tmp_path / "a"))
    assert run(["list", "a", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 1
    assert run(["list", "b", "--json", "--registry", str(tmp_path / "b")]) == 0  # flag wins
    assert len(json.loads(capsys.readouterr().out)) == 1
    assert run(["list", "b"]) == 3  # not in the env registry
    _one_line_error(capsys.readouterr().err)


def test_console_script_in_a_subprocess(root: Path, make_version: MakeVersion) -> None:
    make_version()
    env = {**os.environ, "RBMREC_REGISTRY": str(root)}
    done = subprocess.run(
        [sys.executable, "-m", "registry", "show", "rbm", "1", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["version"] == 1
    missing = subprocess.run(
        [sys.executable, "-m", "registry", "--registry", str(root / "nope"), "list"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert missing.returncode == 3
    assert "does not exist" in _one_line_error(missing.stderr)


@pytest.mark.parametrize(
    "argv",
    [
        ["list", "../x"],
        ["show", "a/b", "1"],
        ["show", "rbm", "../x"],
        ["history", ".."],
        ["gc", "..", "--keep", "1"],
        ["alias", "set", "rbm", "Prod", "1"],
        ["alias", "set", "rbm", "1abc", "1"],
        ["alias", "set", "rbm", "a" * 33, "1"],
        ["promote", "rbm", "1", "--alias", "../production"],
        ["rollback", "rbm", "--alias", "Prod"],
    ],
)
def test_bad_names_exit_4(
    cli: Cli, make_version: MakeVersion, root: Path, tmp_path: Path, argv: list[str]
) -> None:
    make_version()
    code, _, err = cli(*argv)
    assert code == 4
    assert "invalid" in _one_line_error(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reg"]
    assert list((root / "rbm" / "aliases").iterdir()) == []


def test_promotion_gate_via_cli(cli: Cli, reg: FileRegistry, make_version: MakeVersion) -> None:
    make_version(rmse=0.90, ndcg=0.30)
    make_version(rmse=0.95, ndcg=0.30)
    assert cli("promote", "rbm", "1")[0] == 0

    code, _, err = cli("promote", "rbm", "2")
    assert code == 5
    assert "val_rmse" in _one_line_error(err)
    code, _, err = cli("promote", "rbm", "2", "--force")
    assert code == 4
    assert "reason" in _one_line_error(err)
    assert reg.get_alias("rbm", "production") == 1

    assert cli("promote", "rbm", "2", "--max-rmse-regression", "0.1", "--alias", "canary")[0] == 0
    code, out, _ = cli("promote", "rbm", "2", "--force", "--reason", "cold-start fix", "--json")
    assert code == 0
    change = json.loads(out)
    assert change == {**change, "from": 1, "to": 2, "action": "force-promote"}
    assert change["reason"] == "cold-start fix"
    assert reg.get_alias("rbm", "production") == 2


def test_tampered_file_fails_verify_and_promote(
    cli: Cli, reg: FileRegistry, make_version: MakeVersion, tamper: Tamper
) -> None:
    make_version()
    info = make_version()
    tamper(info.path / "weights.bin", b"good weights, trust me")

    code, out, err = cli("verify", "rbm", "--json")
    assert code == 6
    assert "weights.bin" in _one_line_error(err)
    results = {row["version"]: row for row in json.loads(out)}
    assert results[1]["ok"] and results[1]["smoke_test"] == "ok"
    assert not results[2]["ok"]
    assert results[2]["mismatched"] == ["weights.bin"]
    assert cli("verify", "rbm", "1")[0] == 0

    for extra in ([], ["--force", "--reason", "yolo"]):
        code, _, err = cli("promote", "rbm", "2", *extra)
        assert code == 5
        assert "checksum mismatch" in _one_line_error(err)
    assert reg.get_alias("rbm", "production") is None


def test_failing_smoke_test_fails_verify(cli: Cli, make_version: MakeVersion) -> None:
    make_version(payload=b"BAD weights")
    code, out, err = cli("verify", "rbm", "1")
    assert code == 5
    assert "prediction is NaN" in _one_line_error(err)
    assert "failed" in out
    assert cli("verify", "rbm", "1", "--checksums-only")[0] == 0
    assert cli("promote", "rbm", "1")[0] == 5


def test_rollback_and_history_via_cli(cli: Cli, make_version: MakeVersion) -> None:
    for _ in range(2):
        make_version()
    assert cli("alias", "set", "rbm", "production", "1", "--reason", "launch")[0] == 0
    assert cli("promote", "rbm", "2", "--reason", "weekly retrain")[0] == 0
    code, out, _ = cli("rollback", "rbm", "--reason", "p99 latency", "--json")
    assert code == 0
    assert json.loads(out)["to"] == 1

    code, out, _ = cli("history", "rbm", "--json")
    assert code == 0
    moves = [(c["from"], c["to"], c["action"], c["reason"]) for c in json.loads(out)]
    assert moves == [
        (None, 1, "set", "launch"),
        (1, 2, "promote", "weekly retrain"),
        (2, 1, "rollback", "p99 latency"),
    ]
    code, out, _ = cli("history", "rbm")
    assert "p99 latency" in out

    assert cli("alias", "delete", "rbm", "production", "--reason", "sunset")[0] == 0
    code, _, err = cli("alias", "delete", "rbm", "production")
    assert code == 3
    _one_line_error(err)
    code, _, err = cli("rollback", "rbm", "--alias", "canary")
    assert code == 5
    _one_line_error(err)


def test_gc_via_cli_keeps_aliased_and_never_reuses_numbers(
    cli: Cli, reg: FileRegistry, make_version: MakeVersion
) -> None:
    for _ in range(3):
        make_version()
    reg.set_alias("rbm", "production", 1)
    code, out, _ = cli("gc", "rbm", "--keep", "1", "--json")
    assert code == 0
    assert json.loads(out) == {"model": "rbm", "deleted": [2]}
    assert [info.version for info in reg.list_versions("rbm")] == [1, 3]
    assert make_version().version == 4
    assert cli("gc", "rbm")[0] == 2  # --keep is required


def test_diff_shows_metrics_and_params(
    cli: Cli, reg: FileRegistry, make_version: MakeVersion
) -> None:
    make_version(rmse=0.9, ndcg=0.3)
    make_version(rmse=0.8, ndcg=None, epochs=5)
    code, out, _ = cli("diff", "rbm", "1", "2", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["metrics"]["val_rmse"]["delta"] == pytest.approx(-0.1)
    assert data["metrics"]["val_ndcg@10"] == {"v1": 0.3, "v2": None, "delta": None}
    assert data["metrics"]["epochs"]["v2"] == 5.0
    assert data["params"]["hidden"] == {"v1": 64, "v2": 64, "changed": False}
    code, out, _ = cli("diff", "rbm", "1", "2")
    assert "val_rmse" in out and "-0.1000" in out


def test_export_onnx_calls_the_hook(
    cli: Cli, make_version: MakeVersion, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    info = make_version()
    out_file = tmp_path / "model.onnx"
    assert cli("export-onnx", "rbm", "1", "--output", str(out_file))[0] == 0
    assert out_file.read_bytes() == b"onnx:good weights"
    monkeypatch.chdir(tmp_path)
    code, out, _ = cli("export-onnx", "rbm", "1", "--json")
    assert code == 0
    assert json.loads(out)["output"] == str(tmp_path / "rbm-v1.onnx")
    assert (tmp_path / "rbm-v1.onnx").exists()

    code, _, err = cli("export-onnx", "rbm", "1", "--output", str(info.path / "x.onnx"))
    assert code == 4
    _one_line_error(err)
    make_version(payload=b"BAD")
    code, _, err = cli("export-onnx", "rbm", "2", "--output", str(out_file))
    assert code == 5
    assert "unsupported operator" in _one_line_error(err)


def test_missing_and_corrupt_registry_give_clear_errors(
    cli: Cli, make_version: MakeVersion, root: Path, tamper: Tamper
) -> None:
    code, _, err = cli("list")
    assert code == 3
    assert "does not exist" in _one_line_error(err)
    info = make_version()
    code, _, err = cli("show", "rbm", "7")
    assert code == 3
    _one_line_error(err)
    tamper(info.path / "meta.json", b"[]")
    code, _, err = cli("list")
    assert code == 6
    _one_line_error(err)
    (root / "rbm" / "history.jsonl").write_text("garbage\n{}\n")
    code, _, err = cli("history", "rbm")
    assert code == 6
    _one_line_error(err)
