"""Durable file primitives: atomic replace, fsync of files and directories, hashing."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["atomic_write_bytes", "fsync_dir", "fsync_file", "sha256_file", "walk_files"]

_CHUNK = 1 << 20


def fsync_dir(path: Path) -> None:
    """Flush a directory's entries (creations, renames) to disk."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    """Flush a file's data to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_file(path: Path) -> str:
    """Return the hex SHA-256 of a file, read in chunks so large weights fit in memory."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_write_bytes(
    path: Path, data: bytes, before_rename: Callable[[], None] | None = None
) -> None:
    """Replace `path` with `data` so readers see the old or the new content, never a mix.

    ``before_rename`` runs once the temp file is on disk (tests kill the writer there).
    """
    # The temp name starts with "." so directory listings that validate names skip it.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if before_rename is not None:
            before_rename()
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def walk_files(root: Path) -> tuple[dict[str, Path], list[str]]:
    """Map relative POSIX names to regular files under `root`; also list anything else found.

    Symlinks and special files are reported, not followed, so a version can never
    point outside its directory.
    """
    files: dict[str, Path] = {}
    odd: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        base = Path(dirpath)
        for name in list(dirnames):
            if (base / name).is_symlink():
                odd.append((base / name).relative_to(root).as_posix())
                dirnames.remove(name)  # os.walk does not descend into symlinked dirs anyway
        for name in filenames:
            path = base / name
            rel = path.relative_to(root).as_posix()
            if path.is_symlink() or not path.is_file():
                odd.append(rel)
            else:
                files[rel] = path
    return dict(sorted(files.items())), sorted(odd)
