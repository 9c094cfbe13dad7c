"""Advisory locks (fcntl.flock) that serialize writers of one model, and staging dirs.

Readers never lock: everything they read is published by an atomic rename.
flock is released by the kernel when a process dies, so a killed writer never
leaves the model locked, and a staging dir whose lock can be taken is abandoned.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = ["Staging", "clean_stale_staging", "model_lock"]

logger = logging.getLogger(__name__)

LOCK_FILE = ".lock"
STAGING_DIR = ".staging"

# A lock file with no staging dir is normally removed by its writer; one left by a
# crash is only removed once it is old, so a writer that just created it is not raced.
_ORPHAN_LOCK_AGE_S = 60.0


@contextlib.contextmanager
def model_lock(model_dir: Path) -> Iterator[None]:
    """Hold the model's exclusive writer lock for the duration of the block."""
    fd = os.open(model_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the flock


class Staging:
    """A private directory under `<model>/.staging/` for one in-progress publish.

    The writer holds a flock on the sibling `<name>.lock` until the directory has
    been renamed away, which lets gc tell live staging dirs from abandoned ones.
    """

    def __init__(self, model_dir: Path) -> None:
        area = model_dir / STAGING_DIR
        area.mkdir(exist_ok=True)
        fd, lock_path = tempfile.mkstemp(dir=area, prefix=f"{os.getpid()}-", suffix=".lock")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self.path = Path(lock_path).with_suffix("")
            self.path.mkdir()
        except BaseException:
            os.close(fd)
            Path(lock_path).unlink(missing_ok=True)
            raise
        self._fd = fd
        self._lock_path = Path(lock_path)

    def close(self) -> None:
        """Remove whatever is left of the staging dir and release its lock."""
        if self._fd < 0:
            return
        try:
            shutil.rmtree(self.path, ignore_errors=True)
            self._lock_path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> Staging:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _abandoned(lock_path: Path) -> bool:
    """True if no live process holds the staging lock (the caller holds the model lock)."""
    try:
        fd = os.open(lock_path, os.O_RDWR)
    except FileNotFoundError:
        # Writers create the lock before the dir and drop it only after renaming the
        # dir away under the model lock, so a dir without a lock file is left over.
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


def clean_stale_staging(model_dir: Path) -> list[str]:
    """Delete staging dirs left by dead writers; call with the model lock held."""
    area = model_dir / STAGING_DIR
    if not area.is_dir():
        return []
    removed: list[str] = []
    for entry in sorted(area.iterdir()):
        if entry.suffix == ".lock":
            try:
                age = time.time() - entry.stat().st_mtime
            except FileNotFoundError:  # its writer finished meanwhile
                continue
            orphan = not entry.with_suffix("").exists()
            if orphan and age > _ORPHAN_LOCK_AGE_S and _abandoned(entry):
                entry.unlink(missing_ok=True)
            continue
        lock_path = entry.with_name(entry.name + ".lock")
        if _abandoned(lock_path):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            lock_path.unlink(missing_ok=True)
            removed.append(entry.name)
            logger.info("removed abandoned staging dir %s", entry)
    return removed
