"""The on-disk format of one version directory: meta.json, MANIFEST.json and their checks."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from registry.errors import ErrorCode, RegistryError
from registry.fsio import fsync_dir, fsync_file, sha256_file, walk_files
from registry.records import VerifyReport, VersionInfo, VersionMeta

__all__ = ["MANIFEST_FILE", "META_FILE", "check_files", "load_version", "meta_bytes", "seal"]

META_FILE = "meta.json"
MANIFEST_FILE = "MANIFEST.json"
FORMAT = 1  # bumped if the layout of a version directory ever changes
_READ_ONLY = 0o444


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_bytes())
    except ValueError as exc:
        raise RegistryError(f"{what}: {path} is not valid JSON: {exc}", ErrorCode.CORRUPT) from exc
    if not isinstance(data, dict):
        raise RegistryError(f"{what}: {path} is not a JSON object", ErrorCode.CORRUPT)
    return data


def _dump(data: dict[str, Any]) -> bytes:
    return (json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode()


def meta_bytes(model: str, meta: VersionMeta) -> bytes:
    """Return the meta.json content; INVALID_ARGUMENT if params are not plain JSON."""
    try:
        return _dump({"format": FORMAT, "model": model, **meta.to_dict()})
    except (TypeError, ValueError) as exc:
        raise RegistryError(
            f"metadata is not JSON-serializable: {exc}", ErrorCode.INVALID_ARGUMENT
        ) from exc


def _write_synced(path: Path, data: bytes) -> None:
    with path.open("xb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def seal(staging: Path, meta_json: bytes) -> dict[str, str]:
    """Checksum and fsync the caller's files, then write meta.json and MANIFEST.json."""
    files, odd = walk_files(staging)
    if odd:
        raise RegistryError(
            f"write_files may only create regular files, found: {', '.join(odd)}",
            ErrorCode.INVALID_ARGUMENT,
        )
    reserved = sorted({META_FILE, MANIFEST_FILE} & files.keys())
    if reserved:
        raise RegistryError(
            f"write_files created {', '.join(reserved)}, which the registry writes itself",
            ErrorCode.ALREADY_EXISTS,
        )
    digests: dict[str, str] = {}
    for name, path in files.items():
        digests[name] = sha256_file(path)
        fsync_file(path)
    _write_synced(staging / META_FILE, meta_json)
    digests[META_FILE] = sha256_file(staging / META_FILE)
    digests = dict(sorted(digests.items()))
    _write_synced(
        staging / MANIFEST_FILE, _dump({"format": FORMAT, "algorithm": "sha256", "files": digests})
    )
    for name in digests:
        # Read-only as a guard against accidental edits; verify catches deliberate ones.
        (staging / name).chmod(_READ_ONLY)
    (staging / MANIFEST_FILE).chmod(_READ_ONLY)
    for dirpath, _, _ in os.walk(staging, topdown=False):
        fsync_dir(Path(dirpath))
    return digests


def load_version(model: str, version: int, vdir: Path, aliases: tuple[str, ...]) -> VersionInfo:
    """Read a version's meta.json and MANIFEST.json; NOT_FOUND if gone, CORRUPT if unreadable."""
    label = f"version {version} of model {model!r}"
    try:
        raw_meta = _read_json(vdir / META_FILE, label)
        manifest = _read_json(vdir / MANIFEST_FILE, label)
    except FileNotFoundError as exc:
        if not vdir.is_dir():
            raise RegistryError(
                f"model {model!r} has no version {version}", ErrorCode.NOT_FOUND
            ) from exc
        raise RegistryError(
            f"{label} is corrupt: {exc.filename} is missing", ErrorCode.CORRUPT
        ) from exc
    try:
        meta = VersionMeta.from_dict(raw_meta)
        files = {str(name): str(digest) for name, digest in dict(manifest["files"]).items()}
    except (RegistryError, KeyError, TypeError, ValueError) as exc:
        raise RegistryError(f"{label} has corrupt metadata: {exc}", ErrorCode.CORRUPT) from exc
    return VersionInfo(model, version, vdir, meta, aliases, files)


def check_files(model: str, version: int, vdir: Path) -> VerifyReport:
    """Compare the files in a version directory with its MANIFEST.json."""
    try:
        recorded = dict(_read_json(vdir / MANIFEST_FILE, "manifest")["files"])
    except FileNotFoundError:
        return VerifyReport(model, version, error=f"{MANIFEST_FILE} is missing")
    except (RegistryError, KeyError, TypeError, ValueError) as exc:
        return VerifyReport(model, version, error=f"{MANIFEST_FILE} is unreadable: {exc}")
    on_disk, odd = walk_files(vdir)
    on_disk.pop(MANIFEST_FILE, None)
    # Only names found on disk are hashed, so a tampered manifest cannot make us read
    # outside the version directory.
    mismatched = [
        name
        for name, path in on_disk.items()
        if name in recorded and sha256_file(path) != recorded[name]
    ]
    return VerifyReport(
        model,
        version,
        missing=tuple(sorted(set(recorded) - set(on_disk))),
        extra=tuple(sorted({*(on_disk.keys() - recorded.keys()), *odd})),
        mismatched=tuple(mismatched),
    )
