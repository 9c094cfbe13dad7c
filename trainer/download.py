"""Find a MovieLens data set on disk, or fetch it from GroupLens and check its checksum.

The project never ships MovieLens files (GroupLens terms): it reads a local folder, and
where that folder lacks the data set and a network exists, downloads the official archive.
"""

from __future__ import annotations

import hashlib
import io
import logging
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DataUnavailable", "ensure_dataset"]

log = logging.getLogger(__name__)
BASE_URL = "https://files.grouplens.org/datasets/movielens/"


class DataUnavailable(RuntimeError):
    """The data set is neither on disk nor downloadable."""


@dataclass(frozen=True)
class _Source:
    marker: str  # the ratings file whose presence means "the data set is here"
    sha256: str | None  # of the marker file; None where GroupLens publishes only an md5 file
    git_blob: str | None = None  # ml-1m's ratings.dat is pinned by its git blob id


_SOURCES = {
    "ml-100k": _Source(
        "u.data", "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490"
    ),
    "ml-latest-small": _Source(
        "ratings.csv", "aa289ca83157595d0df6aea1be6a4ded676ddc4385472e8313a8ed9805352646"
    ),
    "ml-1m": _Source("ratings.dat", None, "77a7c4b150f588c23bb9e1f068aa996c0b413695"),
    "ml-25m": _Source("ratings.csv", None),
}


def _find(name: str, data_dir: Path) -> Path | None:
    # Accept DIR/ml-100k/ or DIR itself when it is the data set's folder (DIR/../ml-100k).
    marker = _SOURCES[name].marker
    candidates = [data_dir / name] + ([data_dir] if data_dir.name == name else [])
    return next((c for c in candidates if (c / marker).is_file()), None)


def _check(name: str, data: bytes) -> None:
    src = _SOURCES[name]
    if src.sha256 is not None and hashlib.sha256(data).hexdigest() != src.sha256:
        raise DataUnavailable(f"downloaded {name}/{src.marker} fails its SHA-256 check")
    if src.git_blob is not None:
        blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        if blob != src.git_blob:
            raise DataUnavailable(f"downloaded {name}/{src.marker} fails its checksum")


def _download(name: str, data_dir: Path, base_url: str, timeout: float) -> Path:
    url = f"{base_url}{name}.zip"
    log.info("downloading %s", url)
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        archive = resp.read()
    if _SOURCES[name].sha256 is None and _SOURCES[name].git_blob is None:
        with urllib.request.urlopen(url + ".md5", timeout=timeout) as resp:
            expected_md5 = resp.read().decode().split()[0]
        if hashlib.md5(archive).hexdigest() != expected_md5:
            raise DataUnavailable(f"downloaded {name}.zip fails its MD5 check")
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        _check(name, zf.read(f"{name}/{_SOURCES[name].marker}"))
        data_dir.mkdir(parents=True, exist_ok=True)
        zf.extractall(data_dir)
    return data_dir / name


def ensure_dataset(
    name: str, data_dir: Path, base_url: str = BASE_URL, timeout: float = 20.0
) -> Path:
    """The folder holding ``name``'s files, downloading them into ``data_dir`` if missing."""
    if name not in _SOURCES:
        raise DataUnavailable(f"unknown dataset {name!r}")
    found = _find(name, data_dir)
    if found is not None:
        return found
    marker = _SOURCES[name].marker
    try:
        return _download(name, data_dir, base_url, timeout)
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise DataUnavailable(
            f"{name} is not in {data_dir} (looked for {data_dir / name / marker}) and could "
            f"not be downloaded from {base_url}{name}.zip ({exc}); download and unzip it into "
            f"{data_dir}, or point --data-dir / $RBMREC_DATA at a folder that holds {name}/"
        ) from exc
