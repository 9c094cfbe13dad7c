"""The registry's disk full or read-only while a version is being registered.

Real faults: the registry lives on a small tmpfs that fills up (ENOSPC), or is remounted
read-only (EROFS). Mounting needs root, which CI on these machines has.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from registry.errors import RegistryError
from registry.records import VersionMeta
from registry.store import FileRegistry
from registry.versions import MANIFEST_FILE, META_FILE
from tests.harness.cli import TrainedModel
from tests.harness.registry import copy_registry

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


@contextlib.contextmanager
def _tmpfs(where: Path, size: int) -> Iterator[Path]:
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


def _register_again(registry: FileRegistry) -> int:
    """Publish version 1's files again as a new version (what rbm-train's register does)."""
    first = registry.get_version("rbm", 1)

    def write(staging: Path) -> None:
        for f in first.path.iterdir():
            if f.is_file() and f.name not in (META_FILE, MANIFEST_FILE):
                shutil.copy(f, staging / f.name)

    return registry.register("rbm", write, VersionMeta(metrics=first.meta.metrics)).version


def _assert_unchanged(registry: FileRegistry) -> None:
    assert [v.version for v in registry.list_versions("rbm")] == [1], "no partial version"
    assert registry.resolve("rbm", "production").version == 1, "the alias is unchanged"
    staging = registry.root / "rbm" / ".staging"
    assert not [p for p in staging.iterdir() if p.is_dir()], "no staging dir left behind"
    assert registry.verify("rbm", 1).ok, "version 1 is intact"


def test_disk_full_while_registering(trained: TrainedModel, tmp_path: Path) -> None:
    room = _size(trained.registry) + 256 * 1024  # version 1 fits, a second copy does not
    with _tmpfs(tmp_path / "disk", room) as disk:
        registry = copy_registry(trained, disk)
        with pytest.raises(RegistryError) as err:
            _register_again(registry)
        assert "No space left on device" in str(err.value)
        _assert_unchanged(registry)


def test_read_only_disk_while_registering(trained: TrainedModel, tmp_path: Path) -> None:
    with _tmpfs(tmp_path / "disk", 4 * _size(trained.registry) + (1 << 20)) as disk:
        registry = copy_registry(trained, disk)
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        with pytest.raises(RegistryError) as err:
            _register_again(registry)
        assert "Read-only file system" in str(err.value)
        _assert_unchanged(registry)
        subprocess.run(["mount", "-o", "remount,rw", str(disk)], check=True)
        assert _register_again(registry) == 2, "once writable again, registering works"
