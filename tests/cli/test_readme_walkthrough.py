"""The README's walkthrough, run for real on a fresh clone, so that the README cannot drift.

test_readme_commands.py checks each synopsis line against ``--help``; this runs the one
block a newcomer pastes (marked by WALKTHROUGH_MARKER) as they would: ``bash -euo
pipefail`` in the root of a clone of the checkout, after ``make install`` (the clone's
``.venv`` is this venv), with the shared MovieLens copy, the real Redis under a prefix of
the test's own and a free port. Then it checks what the walkthrough promises to show.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from tests.harness.cli import BIN, REDIS_URL, ROOT, movielens_dir
from tests.harness.redis import delete_keys, free_port

README = ROOT / "README.md"
WALKTHROUGH_MARKER = "<!-- walkthrough: tests/cli/test_readme_walkthrough.py"
TIMEOUT_S = 600
# Variables the tools read on their own: from the caller's shell they would steer the block
# somewhere else than the values it sets (it passes --registry and --target itself).
STEERING = ("RBMREC_REGISTRY", "RBMREC_TARGET", "RBMREC_ADDRESS", "VIRTUAL_ENV")


def walkthrough_block(text: str) -> str:
    """The ```sh block right after the walkthrough marker in ``text``; fails if absent."""
    lines = text.splitlines()
    marked = [i for i, line in enumerate(lines) if line.strip().startswith(WALKTHROUGH_MARKER)]
    if len(marked) != 1:
        raise AssertionError(
            f"README.md must hold one line starting {WALKTHROUGH_MARKER!r} right before the "
            f"walkthrough's ```sh block; found {len(marked)}"
        )
    start = marked[0] + 1
    if start >= len(lines) or lines[start].strip() != "```sh":
        raise AssertionError("the walkthrough marker must be followed at once by a ```sh line")
    for end in range(start + 1, len(lines)):
        if lines[end].strip() == "```":
            block = "\n".join(lines[start + 1 : end]) + "\n"
            if not block.strip():
                raise AssertionError("the walkthrough's ```sh block is empty")
            return block
    raise AssertionError("the walkthrough's ```sh block is never closed")


def fresh_clone(into: Path) -> Path:
    """The checkout's files as a fresh clone of it would hold them, plus its venv.

    Copies what ``git ls-files`` lists (committed, staged or not yet added, never ignored),
    so uncommitted edits are tested too and nothing built or downloaded comes along; the
    venv is linked, as ``make install`` would have made it (the project's own tools).
    """
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout.decode()
    clone = into / "clone"
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():  # --cached also lists files deleted in the working tree
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, clone / name)
    (clone / ".venv").symlink_to(BIN.parent, target_is_directory=True)
    return clone


@dataclass(frozen=True)
class Run:
    """The walkthrough's exit status, output and the folder it worked in."""

    code: int
    out: str
    err: str
    work: Path | None  # the block's $WORK (mktemp -d under our $TMPDIR), if it got that far

    def log(self) -> str:
        """Everything to show when it failed: its output and the server's log."""
        server = ""
        if self.work is not None and (self.work / "serve.log").is_file():
            server = (self.work / "serve.log").read_text(errors="replace")
        return f"--- stdout\n{self.out}\n--- stderr\n{self.err}\n--- serve.log\n{server}"


def run_walkthrough(block: str, clone: Path, tmp: Path, prefix: str) -> Run:
    """Run ``block`` with ``bash -euo pipefail`` in ``clone``; kill all it started on timeout."""
    script = tmp / "walkthrough.sh"
    script.write_text(block, encoding="utf-8")
    tmpdir = tmp / "tmp"
    tmpdir.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in STEERING}
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        RBMREC_DATA=str(movielens_dir()),
        REDIS_URL=REDIS_URL,
        RBMREC_REDIS_PREFIX=prefix,
        RBMREC_PORT=str(free_port()),
        TMPDIR=str(tmpdir),
        OMP_NUM_THREADS="1",  # on two shared cores more threads make training much slower
    )
    # A session of its own: the server it starts in the background shares its process
    # group, so one killpg stops everything even if the block's trap never ran.
    proc = subprocess.Popen(
        ["bash", "-euo", "pipefail", str(script)],
        cwd=clone,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        err += f"\n(killed after {TIMEOUT_S} s)"
    finally:
        # Anything left behind (normally nothing: the block's trap stopped the server).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    works = sorted(tmpdir.glob("*/registry"))
    return Run(proc.returncode, out, err, works[0].parent if works else None)


@pytest.fixture
def walkthrough_prefix(redis_prefix: str) -> Iterator[str]:
    """A Redis key prefix for the walkthrough alone; its keys are removed after the test."""
    prefix = f"{redis_prefix}-walkthrough"
    yield prefix
    delete_keys(REDIS_URL, prefix)


# -- the walkthrough, run ---------------------------------------------------------------------
def test_the_readme_walkthrough_runs_on_a_fresh_clone(
    tmp_path: Path, walkthrough_prefix: str
) -> None:
    block = walkthrough_block(README.read_text(encoding="utf-8"))
    ran = run_walkthrough(block, fresh_clone(tmp_path), tmp_path, walkthrough_prefix)
    assert ran.code == 0, f"the README's walkthrough failed ({ran.code}):\n{ran.log()}"
    out = ran.out

    assert "registered rbm version 1, promoted to production" in out
    assert re.search(r"^1\s+ok\s+ok$", out, re.MULTILINE), "verify: checksums and smoke test"
    onnx = re.search(r"^wrote rbm version 1 as ONNX to (\S+)$", out, re.MULTILINE)
    assert onnx and Path(onnx.group(1)).stat().st_size > 0, out

    # Five titled recommendations from version 1, a rating accepted into the log.
    top = out.split("user 1 (model version 1):\n", 1)[1].splitlines()[:5]
    assert [line.split(".")[0].strip() for line in top] == ["1", "2", "3", "4", "5"], top
    assert all(re.search(r" predicted \d\.\d\d  \(movie \d+, score ", line) for line in top), top
    assert "\naccepted\n" in out
    stream = redis.Redis.from_url(REDIS_URL)
    assert stream.xlen(f"{walkthrough_prefix}:ratings") == 1, "the rating in PREFIX:ratings"
    stream.close()

    info = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert len(info) == 1, out
    assert info[0]["model_version"] == "1" and info[0]["alias"] == "production", info

    # Version 2 promoted and served (the server followed the alias), then rolled back.
    assert "registered rbm version 2\nrbm: production 1 -> 2 (promote)\n" in out
    assert "\nmodel_version: 2\n" in out, "the server never switched to version 2"
    assert "rbm: production 2 -> 1 (rollback)" in out
    moves = re.findall(r"^\S+\s+\S+\s+production\s+.*?(promote|rollback)\b", out, re.MULTILINE)
    assert moves == ["promote", "promote", "rollback"], out


# -- what the block may rely on, and the extraction -------------------------------------------
SHELL_SPECIAL = {"!", "?", "$", "#", "@", "*", "_", "0"}


def test_the_walkthrough_reads_only_variables_it_sets_or_defaults() -> None:
    block = walkthrough_block(README.read_text(encoding="utf-8"))
    code = "\n".join(line.split(" #")[0] for line in block.splitlines())  # comments may say $X
    assigned = set(re.findall(r"^([A-Za-z_]\w*)=", code, re.MULTILINE))
    assigned |= set(re.findall(r"\bfor (\w+) in\b", code))
    defaulted = set(re.findall(r"\$\{(\w+):-", code))
    read = set(re.findall(r"\$\{?(\w+|[!?$#@*])", code)) - SHELL_SPECIAL
    assert read - assigned - defaulted == set(), "set these at the top, with a default"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("# rbmrec\n```sh\nrbm-train\n```\n", "must hold one line starting"),
        (f"{WALKTHROUGH_MARKER} -->\n\n```sh\nls\n```\n", "followed at once by a ```sh line"),
        (f"{WALKTHROUGH_MARKER} -->\n```sh\nls\n", "never closed"),
        (f"{WALKTHROUGH_MARKER} -->\n```sh\n\n```\n", "is empty"),
    ],
    ids=["no-marker", "no-block-after-it", "unclosed", "empty"],
)
def test_a_missing_walkthrough_fails_clearly(text: str, says: str) -> None:
    with pytest.raises(AssertionError, match=re.escape(says)):
        walkthrough_block(text)


def test_the_extraction_takes_the_marked_block_only() -> None:
    text = (
        f"```sh\nmake demo\n```\n{WALKTHROUGH_MARKER} -->\n```sh\nA=1\necho $A\n```\n```sh\nno\n```"
    )
    assert walkthrough_block(text) == "A=1\necho $A\n"
