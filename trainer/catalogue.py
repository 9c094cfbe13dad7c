"""The catalogue a version knows: the data set's movie list, plus the movies ``--movies`` names.

The data set's list (``u.item``, ``movies.dat``, ``movies.csv``) is the whole catalogue,
rated or not, so a listed movie that the training part never rated is still a movie the
rating log may rate. A movie the server was told about before any data set listed it
(its ratings are logged, not applied) joins the next retrain through a ``--movies`` CSV
``movie_id,title``; its ids then count as known when the rating log is merged.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from trainer.data import Dataset

__all__ = ["CatalogueAddition", "ExtraMovies", "MoviesFileError", "add_movies", "read_movies"]

HEADER = ("movie_id", "title")
_INT64 = 2**63  # movie ids are int64 in the API, the log and the checkpoint
_INTEGER = re.compile(r"[+-]?[0-9]+")  # int() would also take "1_000" and Unicode digits


class MoviesFileError(ValueError):
    """A ``--movies`` file that cannot be read as ``movie_id,title`` rows; says where and why."""


@dataclass(frozen=True)
class ExtraMovies:
    """The movies of a ``movie_id,title`` file, in file order."""

    ids: np.ndarray  # (N,) int64, distinct, positive
    titles: list[str]  # (N,)
    sha256: str  # of the file's bytes: part of the version's data fingerprint


@dataclass(frozen=True)
class CatalogueAddition:
    """What adding ``ExtraMovies`` to a data set's catalogue did."""

    added: int  # movies the data set's list did not name
    already_listed: int  # named by the data set too: its title kept, the file's ignored


def read_movies(path: Path) -> ExtraMovies:
    """Parse a UTF-8 CSV with the header ``movie_id,title``; raise MoviesFileError if bad."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise MoviesFileError(f"cannot read it: {exc.strerror or exc}") from exc
    try:
        text = data.decode("utf-8-sig")  # a spreadsheet's export may start with a BOM
    except UnicodeDecodeError as exc:
        raise MoviesFileError(f"not UTF-8 (byte {exc.start}: {exc.reason})") from exc
    ids: list[int] = []
    titles: list[str] = []
    first_line: dict[int, int] = {}
    reader = csv.reader(io.StringIO(text, newline=""))  # newlines inside quotes kept
    try:
        header = next(reader, None)
        if header is None or tuple(h.strip() for h in header) != HEADER:
            got = "an empty file" if header is None else repr(",".join(header))
            raise MoviesFileError(f"expected the header {','.join(HEADER)}, got {got}")
        for row in reader:
            if not row:  # a blank line
                continue
            line = reader.line_num
            movie = _movie_id(row, line)
            if movie in first_line:
                raise MoviesFileError(
                    f"line {line}: movie id {movie} is named twice (first on line "
                    f"{first_line[movie]})"
                )
            title = row[1].strip()
            if not title:
                raise MoviesFileError(f"line {line}: movie {movie} has an empty title")
            first_line[movie] = line
            ids.append(movie)
            titles.append(title)
    except csv.Error as exc:
        raise MoviesFileError(f"line {reader.line_num}: {exc}") from exc
    digest = hashlib.sha256(data).hexdigest()
    return ExtraMovies(np.asarray(ids, dtype=np.int64), titles, digest)


def _movie_id(row: list[str], line: int) -> int:
    """The row's movie id, checked: an integer in 1..2**63-1, in a row of two fields."""
    if len(row) != len(HEADER):
        raise MoviesFileError(
            f"line {line}: expected 2 fields (movie_id,title), got {len(row)}; "
            "quote a title that holds a comma"
        )
    text = row[0].strip()
    if not _INTEGER.fullmatch(text):
        raise MoviesFileError(f"line {line}: movie id {text!r} is not an integer")
    movie = int(text)
    if not 0 < movie < _INT64:
        raise MoviesFileError(f"line {line}: movie id {movie} is not in 1..2**63-1")
    return movie


def add_movies(ds: Dataset, extra: ExtraMovies) -> tuple[Dataset, CatalogueAddition]:
    """``ds`` whose catalogue also names ``extra``'s movies, still ascending by id."""
    new = ~np.isin(extra.ids, ds.movie_ids)
    ids = np.concatenate([ds.movie_ids, extra.ids[new]])
    titles = ds.titles + [t for t, is_new in zip(extra.titles, new, strict=True) if is_new]
    order = np.argsort(ids, kind="stable")
    # The file changes what the model is trained on, so it changes the data fingerprint.
    fingerprint = hashlib.sha256(f"{ds.fingerprint}|movies|{extra.sha256}".encode()).hexdigest()
    widened = replace(
        ds,
        movie_ids=ids[order],
        titles=[titles[i] for i in order],
        fingerprint=fingerprint,
    )
    return widened, CatalogueAddition(int(new.sum()), int((~new).sum()))
