"""rbm-train on bad input: one line, the documented exit code, no traceback, nothing trained.

Exit codes: 2 bad usage, 3 data unavailable, 4 training failed, 5 registry error. Every case
here must fail before training starts; the cases run ``trainer.cli.main`` in-process (each
real start imports torch, seconds on a loaded machine) and one runs the console script.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from tests.cli.support import assert_one_line_error, assert_usage_error
from tests.harness.cli import run_cli
from trainer.cli import main

PROG = "rbm-train"
USAGE, NO_DATA, REGISTRY = 2, 3, 5
# Should a case regress into training, one short epoch each keeps it from running for minutes.
SHORT = ["--epochs", "1", "--implicit-epochs", "1", "--item-epochs", "1", "--quiet"]
# A proxy that refuses: a missing data set cannot be downloaded, whether or not a network exists.
NO_DOWNLOAD = {"https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"}

Train = Callable[..., tuple[int | str | None, str]]  # (exit code, stderr)


@pytest.fixture
def train(
    movielens: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> Train:
    """Run rbm-train in-process on the real data; return (exit code, stderr)."""
    for name, value in NO_DOWNLOAD.items():
        monkeypatch.setenv(name, value)

    def invoke(*argv: str, data_dir: Path = movielens) -> tuple[int | str | None, str]:
        capsys.readouterr()
        base = ["--data-dir", str(data_dir), "--registry", str(tmp_path / "registry")]
        try:
            code: int | str | None = main([*base, *SHORT, *argv])
        except SystemExit as exc:  # argparse
            code = exc.code
        return code, capsys.readouterr().err

    return invoke


@pytest.mark.parametrize(
    "argv",
    [
        ["--dataset", "nope"],
        ["--epochs", "abc"],
        ["--hidden", "1.5"],
        ["--device", "tpu"],
        ["--bogus"],
    ],
    ids=" ".join,
)
def test_a_bad_command_line_is_a_usage_error(train: Train, argv: list[str]) -> None:
    code, err = train(*argv)
    assert_usage_error(code, err, PROG)


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--epochs", "-1"], "--epochs must be >= 1, got -1"),
        (["--epochs", "0"], "epochs must be >= 1"),
        (["--hidden", "0"], "--hidden must be >= 1, got 0"),
        (["--implicit-epochs", "0"], "--implicit-epochs must be >= 1"),
        (["--item-epochs", "-3"], "--item-epochs must be >= 1, got -3"),
        (["--split", "u9"], "u9"),
        (["--split", ""], "unknown split"),
        (["--dataset", "ml-latest-small", "--split", "u1"], "use --split holdout"),
        (["--seed", "-1"], "--seed"),
        (["--seed", str(2**64)], "--seed"),
        (["--model", "../escape"], "invalid model name"),
        (["--model", ""], "invalid model name"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else "",
)
def test_a_bad_value_exits_2_with_one_line(train: Train, argv: list[str], says: str) -> None:
    code, err = train(*argv)
    assert code == USAGE, err
    assert_one_line_error(err, PROG, says)


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (None, "cannot read it: No such file or directory"),
        (b"", "expected the header movie_id,title, got an empty file"),
        (b"id,title\n5000,A\n", "expected the header movie_id,title, got 'id,title'"),
        (b"movie_id,title\nabc,A\n", "line 2: movie id 'abc' is not an integer"),
        (b"movie_id,title\n1.5,A\n", "line 2: movie id '1.5' is not an integer"),
        (b"movie_id,title\n0,A\n", "line 2: movie id 0 is not in 1..2**63-1"),
        (b"movie_id,title\n-4,A\n", "line 2: movie id -4 is not in 1..2**63-1"),
        (b"movie_id,title\n5000,A\n7,B\n5000,C\n", "line 4: movie id 5000 is named twice"),
        (b"movie_id,title\n5000,A, The\n", "line 2: expected 2 fields"),
        (b"movie_id,title\n5000,\n", "line 2: movie 5000 has an empty title"),
        (b"movie_id,title\n5000,Am\xe9lie\n", "not UTF-8"),
    ],
    ids=[
        "missing",
        "empty",
        "header",
        "word",
        "fraction",
        "zero",
        "negative",
        "duplicate",
        "unquoted comma",
        "no title",
        "latin-1",
    ],
)
def test_a_bad_movies_file_exits_2_with_one_line(
    train: Train, tmp_path: Path, content: bytes | None, says: str
) -> None:
    path = tmp_path / "movies.csv"
    if content is not None:
        path.write_bytes(content)
    code, err = train("--movies", str(path))
    assert code == USAGE, err
    assert_one_line_error(err, PROG, f"--movies {path}: {says}")
    assert not (tmp_path / "registry").exists(), "nothing may be registered"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_exits_2(train: Train) -> None:
    code, err = train("--device", "cuda")
    assert code == USAGE
    assert_one_line_error(err, PROG, "no CUDA device")


def test_a_missing_data_dir_exits_3_and_says_where_to_put_the_data(
    train: Train, tmp_path: Path
) -> None:
    missing = tmp_path / "no-data"
    code, err = train(data_dir=missing)
    assert code == NO_DATA
    assert_one_line_error(err, PROG, str(missing), "ml-100k")
    assert not (tmp_path / "registry").exists(), "nothing may be registered"


def _partial_copy(movielens: Path, into: Path, *files: str) -> Path:
    """A data folder holding only ``files`` of ml-100k."""
    (into / "ml-100k").mkdir(parents=True)
    for name in files:
        shutil.copy(movielens / "ml-100k" / name, into / "ml-100k" / name)
    return into


@pytest.mark.parametrize("lacking", ["u.item", "u1.base", "u1.test"])
def test_a_data_set_missing_a_file_exits_3_naming_it(
    train: Train, movielens: Path, tmp_path: Path, lacking: str
) -> None:
    files = {"u.data", "u.item", "u1.base", "u1.test"} - {lacking}
    data = _partial_copy(movielens, tmp_path / "data", *sorted(files))
    code, err = train(data_dir=data)
    assert code == NO_DATA
    assert_one_line_error(err, PROG, lacking)


def test_a_malformed_ratings_file_exits_3(train: Train, movielens: Path, tmp_path: Path) -> None:
    data = _partial_copy(movielens, tmp_path / "data", "u.data", "u.item", "u1.test")
    (data / "ml-100k" / "u1.base").write_text("1\t2\tthree\n")
    code, err = train(data_dir=data)
    assert code == NO_DATA
    assert_one_line_error(err, PROG, "cannot read ml-100k")


def test_a_registry_that_is_a_file_exits_5_before_training(train: Train, tmp_path: Path) -> None:
    registry = tmp_path / "registry"
    registry.write_text("not a folder\n")
    code, err = train("--registry", str(registry))  # the last --registry wins
    assert code == REGISTRY
    assert_one_line_error(err, PROG, "not a directory")


def test_the_console_script_exits_3_with_one_line_for_missing_data(tmp_path: Path) -> None:
    args = ["--data-dir", str(tmp_path / "none"), "--registry", str(tmp_path / "r"), *SHORT]
    proc = run_cli(PROG, *args, env=NO_DOWNLOAD, check=False)
    assert proc.returncode == NO_DATA
    assert_one_line_error(proc.stderr, PROG, "ml-100k")
