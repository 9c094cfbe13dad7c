"""Several real processes writing one registry at once, and writers killed mid-publish."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from registry import FileRegistry, VersionMeta

WORKER = str(Path(__file__).with_name("registry_worker.py"))


def _spawn(root: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, WORKER, str(root), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _write_one_file(directory: Path) -> None:
    (directory / "w").write_bytes(b"w")


def _run_all(procs: list[subprocess.Popen[str]]) -> list[str]:
    """Wait for every process (even if one failed), then check them; return their stdouts."""
    results = [(proc, *proc.communicate(timeout=60)) for proc in procs]
    for proc, _, err in results:
        assert proc.returncode == 0, err
    return [out for _, out, _ in results]


def test_concurrent_registers_get_distinct_consecutive_numbers(
    reg: FileRegistry, root: Path
) -> None:
    results = _run_all([_spawn(root, "register", "3", f"p{n}") for n in range(6)])
    outputs = [[int(line) for line in out.split()] for out in results]

    numbers = sorted(n for out in outputs for n in out)
    assert numbers == list(range(1, 19))
    assert all(out == sorted(out) for out in outputs)  # each process saw its numbers rise
    infos = reg.list_versions("rbm")
    assert [info.version for info in infos] == list(range(1, 19))
    written = {(info.meta.params["tag"], info.meta.params["i"]) for info in infos}
    assert written == {(f"p{n}", i) for n in range(6) for i in range(3)}
    for info in infos:
        assert reg.verify("rbm", info.version).ok
        tag, i = info.meta.params["tag"], info.meta.params["i"]
        assert (info.path / "weights.bin").read_bytes() == f"{tag}:{i};".encode() * 2000
    assert (root / "rbm" / "next_version").read_text().strip() == "19"


def test_concurrent_alias_moves_form_one_consistent_history(reg: FileRegistry, root: Path) -> None:
    for _ in range(3):
        reg.register("rbm", _write_one_file, VersionMeta())
    _run_all([_spawn(root, "alias", "6", f"p{n}") for n in range(4)])

    history = reg.history("rbm")
    assert history
    # Serialized writers: every move starts where the previous one ended.
    previous = None
    for change in history:
        assert change.from_version == previous
        assert change.from_version != change.to_version
        previous = change.to_version
    assert reg.get_alias("rbm", "staging") == previous


def test_killed_publish_leaves_no_version_and_gc_cleans_it(reg: FileRegistry, root: Path) -> None:
    staging = root / "rbm" / ".staging"
    proc = _spawn(root, "hang")
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "WRITING"
        # Mid-write: readers see nothing, and gc leaves the live writer alone.
        assert reg.list_versions("rbm") == []
        assert reg.gc("rbm", keep=1) == []
        assert len([p for p in staging.iterdir() if p.is_dir()]) == 1
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=10)
    assert proc.returncode == -signal.SIGKILL

    assert reg.list_versions("rbm") == []
    assert not any((root / "rbm" / "versions").iterdir())
    info = reg.register("rbm", _write_one_file, VersionMeta())
    assert info.version == 1
    assert reg.verify("rbm", 1).ok

    reg.gc("rbm", keep=1)
    assert [p for p in staging.iterdir() if p.is_dir()] == []
