"""rbm-registry on bad input and broken registries: one line, the right exit code, no traceback.

Most cases run ``registry.cli.run`` in-process (the console script is ``main`` = logging set-up
plus ``run``), a few run the real console script. The registry holds two versions of small
stand-in files and model hooks that check them, so nothing here needs torch or a trained model.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from registry import FileRegistry, VersionMeta
from registry.cli import EXIT_CODES, ModelHooks
from tests.cli.support import Cli, assert_one_line_error, assert_usage_error, registry_cli
from tests.harness.cli import run_cli

PROG = "rbm-registry"
NOT_FOUND, INVALID, REFUSED, CORRUPT, IO_ERROR = 3, 4, 5, 6, 7
MODEL_FILE = "model.safetensors"


def _write_model(directory: Path) -> None:
    (directory / MODEL_FILE).write_bytes(b"weights")


def _smoke_test(version_dir: Path) -> None:
    if (version_dir / MODEL_FILE).read_bytes() != b"weights":
        raise ValueError("the model does not load")


def _export_onnx(version_dir: Path, output: Path) -> None:
    output.write_bytes(b"onnx:" + (version_dir / MODEL_FILE).read_bytes())


HOOKS = ModelHooks(smoke_test=_smoke_test, export_onnx=_export_onnx)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Versions 1 and 2 of rbm; production moved 1 -> 2, so it can roll back."""
    reg = FileRegistry(tmp_path_factory.mktemp("pristine") / "registry")
    for rmse in (0.95, 0.94):
        meta = VersionMeta(metrics={"val_rmse": rmse, "val_ndcg@10": 0.3}, params={"hidden": 8})
        reg.register("rbm", _write_model, meta)
    reg.set_alias("rbm", "production", 1)
    reg.set_alias("rbm", "production", 2)
    return reg.root


@pytest.fixture
def root(pristine: Path, tmp_path: Path) -> Path:
    """A copy of the pristine registry for one test to change or break."""
    return Path(shutil.copytree(pristine, tmp_path / "registry"))


@pytest.fixture
def cli(root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Cli:
    """Run rbm-registry in-process against ``root``; ``{out}`` in an argument is a free path."""
    return registry_cli(root, HOOKS, capsys, tmp_path / "out.onnx")


# -- bad command lines, names, versions and paths -------------------------------------------
@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["bogus"],
        ["show", "rbm"],
        ["alias", "set", "rbm", "staging"],
        ["gc", "rbm"],
        ["gc", "rbm", "--keep", "x"],
        ["promote", "rbm", "1", "--max-rmse-regression", "abc"],
    ],
    ids=" ".join,
)
def test_a_bad_command_line_is_a_usage_error(cli: Cli, argv: list[str]) -> None:
    ran = cli(*argv)
    assert_usage_error(ran.code, ran.err, PROG)
    assert ran.out == ""


@pytest.mark.parametrize(
    ("argv", "code", "says"),
    [
        (["list", "../x"], INVALID, "invalid model name"),
        (["show", "a/b", "1"], INVALID, "invalid model name"),
        (["show", "rbm", "-1"], INVALID, "'-1'"),
        (["show", "rbm", "0"], INVALID, "invalid version 0"),
        (["show", "rbm", "9" * 30], INVALID, "invalid version reference"),
        (["promote", "rbm", "1", "--alias", "BAD ALIAS"], INVALID, "invalid alias"),
        (["alias", "set", "rbm", "Prod", "1"], INVALID, "invalid alias"),
        (["gc", "rbm", "--keep", "-1"], INVALID, "keep must be"),
        (["promote", "rbm", "1", "--max-ndcg-regression", "nan"], INVALID, "nan"),
        (["promote", "rbm", "1", "--force"], INVALID, "--reason"),
        (["show", "rbm", "99"], NOT_FOUND, "no version 99"),
        (["show", "rbm", "nope"], NOT_FOUND, "no alias 'nope'"),
        (["show", "other", "1"], NOT_FOUND, "model 'other' not found"),
        (["diff", "rbm", "1", "99"], NOT_FOUND, "no version 99"),
        (["promote", "rbm", "99"], NOT_FOUND, "no version 99"),
        (["alias", "set", "rbm", "staging", "99"], NOT_FOUND, "no version 99"),
        (["alias", "delete", "rbm", "staging"], NOT_FOUND, "no alias 'staging'"),
        (["verify", "rbm", "99"], NOT_FOUND, "no version 99"),
        (["history", "other"], NOT_FOUND, "model 'other' not found"),
        (["export-onnx", "rbm", "99"], NOT_FOUND, "no version 99"),
        (["export-onnx", "rbm", "1", "--output", "/nonexistent/dir/x.onnx"], IO_ERROR, "x.onnx"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else "",
)
def test_a_bad_argument_gets_its_exit_code_and_one_line(
    cli: Cli, argv: list[str], code: int, says: str
) -> None:
    ran = cli(*argv)
    assert ran.code == code, ran
    assert_one_line_error(ran.err, PROG, says)
    assert ran.out == ""


def test_export_into_the_version_folder_or_onto_a_folder_is_refused(
    cli: Cli, root: Path, tmp_path: Path
) -> None:
    inside = root / "rbm" / "versions" / "1" / "x.onnx"
    ran = cli("export-onnx", "rbm", "1", "--output", str(inside))
    assert ran.code == INVALID
    assert_one_line_error(ran.err, PROG, "outside")
    ran = cli("export-onnx", "rbm", "1", "--output", str(tmp_path))
    assert ran.code == IO_ERROR
    assert_one_line_error(ran.err, PROG, "ONNX export failed")


def test_rollback_of_an_alias_that_never_moved_is_refused(cli: Cli) -> None:
    ran = cli("rollback", "rbm", "--alias", "staging")
    assert ran.code == REFUSED, ran
    assert_one_line_error(ran.err, PROG, "staging")


# -- broken registries ----------------------------------------------------------------------
def _v2(root: Path) -> Path:
    return root / "rbm" / "versions" / "2"


def _overwrite(path: Path, data: bytes) -> None:
    path.chmod(0o644)  # published files are read-only
    path.write_bytes(data)


def _truncate(path: Path) -> None:
    _overwrite(path, path.read_bytes()[:20])


def _replace_root_with_a_file(root: Path) -> None:
    shutil.rmtree(root)
    root.write_text("not a registry\n")


COMMANDS = {
    "list": ["list"],
    "show alias": ["show", "rbm", "production"],
    "show v1": ["show", "rbm", "1"],
    "diff": ["diff", "rbm", "1", "2"],
    "verify": ["verify", "rbm"],
    "promote": ["promote", "rbm", "2", "--alias", "staging"],
    "rollback": ["rollback", "rbm"],
    "alias set": ["alias", "set", "rbm", "staging", "1"],
    "alias delete": ["alias", "delete", "rbm", "production"],
    "history": ["history", "rbm"],
    "gc": ["gc", "rbm", "--keep", "1"],
    "export-onnx": ["export-onnx", "rbm", "production", "--output", "{out}"],
}
ALL = set(COMMANDS)
READS_V2 = {"list", "show alias", "diff", "verify", "promote", "export-onnx"}


@dataclass(frozen=True)
class Breakage:
    """A way a registry gets broken, and the exit code of each command that must notice."""

    damage: Callable[[Path], None]
    must_fail: dict[str, int]


BREAKAGES = {
    "no registry": Breakage(shutil.rmtree, dict.fromkeys(ALL, NOT_FOUND)),
    "registry is a file": Breakage(_replace_root_with_a_file, dict.fromkeys(ALL, NOT_FOUND)),
    "truncated meta.json": Breakage(
        lambda r: _truncate(_v2(r) / "meta.json"), dict.fromkeys(READS_V2, CORRUPT)
    ),
    "garbage meta.json": Breakage(
        lambda r: _overwrite(_v2(r) / "meta.json", b"\xff\xfe\x00garbage"),
        dict.fromkeys(READS_V2, CORRUPT),
    ),
    "truncated MANIFEST.json": Breakage(
        lambda r: _truncate(_v2(r) / "MANIFEST.json"), dict.fromkeys(READS_V2, CORRUPT)
    ),
    "missing model file": Breakage(
        lambda r: (_v2(r) / MODEL_FILE).unlink(),
        {"verify": CORRUPT, "promote": REFUSED, "export-onnx": CORRUPT},
    ),
    "alias to a missing version": Breakage(
        lambda r: _overwrite(r / "rbm" / "aliases" / "production", b"7\n"),
        {"show alias": NOT_FOUND, "verify": CORRUPT, "rollback": REFUSED, "export-onnx": NOT_FOUND},
    ),
    "garbage alias": Breakage(
        lambda r: _overwrite(r / "rbm" / "aliases" / "production", b"garbage\n"),
        dict.fromkeys(ALL - {"history"}, CORRUPT),
    ),
    "binary alias": Breakage(
        lambda r: _overwrite(r / "rbm" / "aliases" / "production", b"\xff\xfe\x00"),
        dict.fromkeys(ALL - {"history"}, CORRUPT),
    ),
    "garbage history": Breakage(
        lambda r: _overwrite(r / "rbm" / "history.jsonl", b"garbage\n\xff\n"),
        {"history": CORRUPT, "rollback": CORRUPT, "gc": CORRUPT},
    ),
}


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_a_broken_registry_gives_one_line_and_its_exit_code(
    cli: Cli, root: Path, breakage: str, command: str
) -> None:
    broken = BREAKAGES[breakage]
    broken.damage(root)
    ran = cli(*COMMANDS[command])
    assert "Traceback" not in ran.err
    if command in broken.must_fail:
        assert ran.code == broken.must_fail[command], ran
        assert_one_line_error(ran.err, PROG)
    elif ran.code != 0:  # a command that does not read the broken part may still work
        assert ran.code in EXIT_CODES.values(), ran
        assert_one_line_error(ran.err, PROG)


def test_the_console_script_reports_a_broken_registry_in_one_line(root: Path) -> None:
    _overwrite(root / "rbm" / "aliases" / "production", b"\xff\xfe\x00")
    proc = run_cli(
        PROG, "--registry", str(root), "--json", "show", "rbm", "production", check=False
    )
    assert proc.returncode == CORRUPT
    assert_one_line_error(proc.stderr, PROG, "corrupt")
    assert proc.stdout == ""


def test_the_console_script_reports_a_missing_registry_in_one_line(tmp_path: Path) -> None:
    proc = run_cli(PROG, "--registry", str(tmp_path / "none"), "list", check=False)
    assert proc.returncode == NOT_FOUND
    assert_one_line_error(proc.stderr, PROG, "does not exist")


def test_the_console_script_exits_2_on_a_usage_error(tmp_path: Path) -> None:
    proc = run_cli(PROG, "--registry", str(tmp_path), "gc", "rbm", "--keep", "x", check=False)
    assert_usage_error(proc.returncode, proc.stderr, PROG)
