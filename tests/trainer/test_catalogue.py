"""The catalogue: the data set's movie list plus ``--movies``; logged ratings of a new movie
join the retrain that names it, and ratings of movies no catalogue names stay skipped."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from ratinglog import RatingRecord, encode_fields, stream_key
from rbm.checkpoint import Checkpoint, load_checkpoint
from tests.harness.cli import REDIS_URL, train_model
from trainer.catalogue import ExtraMovies, add_movies, read_movies
from trainer.data import Ratings, holdout_split, load_dataset
from trainer.rating_log import RatingLog, merge_log
from trainer.train import TrainConfig

NEW, UNNAMED = 5000, 6000  # ml-100k lists movies 1..1682
TITLE = "A New Movie (2026)"
NEW_USER = 9001
# Users 1-3 of ml-100k and a new user rate the new movie; two entries rate a movie no one names.
LOG = [
    (1, NEW, 5.0),
    (2, NEW, 4.0),
    (3, NEW, 5.0),
    (NEW_USER, NEW, 4.0),
    (NEW_USER, 1, 5.0),
    (1, UNNAMED, 3.0),
    (2, UNNAMED, 4.0),
]
# Quick: the tests check the catalogue, not the model's quality.
QUICK = ["--implicit-epochs", "2", "--item-epochs", "2", "--hidden", "20"]


@pytest.fixture
def client() -> Iterator[redis.Redis]:
    """A client of the real Redis."""
    c = redis.Redis.from_url(REDIS_URL)
    yield c
    c.close()


def _log(client: redis.Redis, prefix: str, entries: list[tuple[int, int, float]]) -> None:
    for n, (user, movie, rating) in enumerate(entries):
        client.xadd(stream_key(prefix), encode_fields(RatingRecord(user, movie, rating, 1000 + n)))


def _as_log(entries: list[tuple[int, int, float]]) -> RatingLog:
    users, movies, values = (list(col) for col in zip(*entries, strict=True))
    stamps = list(range(len(entries)))
    return RatingLog("test:ratings", Ratings.from_lists(users, movies, values, stamps), 0, "1-0")


def _movies_file(path: Path, *rows: str) -> Path:
    path.write_text("\n".join(["movie_id,title", *rows]) + "\n", encoding="utf-8")
    return path


def _retrain(registry: Path, prefix: str, *extra: str) -> dict[str, Any]:
    log_flags = ["--ratings-log", REDIS_URL, "--ratings-log-prefix", prefix]
    return train_model(registry, *QUICK, *log_flags, *extra, epochs=2, promote=False)


def _title(ckpt: Checkpoint, movie: int) -> str:
    return ckpt.titles[ckpt.movie_index[movie]]


def test_the_file_may_quote_titles_with_commas_and_start_with_a_bom(tmp_path: Path) -> None:
    path = tmp_path / "movies.csv"
    text = 'movie_id,title\n 5000 ,"Amélie, Again (2026)"\n\n5001,"Two\nLines"\n'
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    movies = read_movies(path)
    assert movies.ids.tolist() == [5000, 5001]
    assert movies.titles == ["Amélie, Again (2026)", "Two\nLines"]


def test_a_header_only_file_names_no_movie(tmp_path: Path) -> None:
    movies = read_movies(_movies_file(tmp_path / "movies.csv"))
    assert movies.ids.tolist() == [] and movies.titles == []


def test_adding_keeps_the_data_sets_titles_and_the_ids_ascending(
    movielens: Path, tmp_path: Path
) -> None:
    ds = load_dataset("ml-100k", movielens, "u1")
    extra = read_movies(_movies_file(tmp_path / "m.csv", "5000,New", "1,Not Toy Story", "1700,B"))
    widened, added = add_movies(ds, extra)
    assert (added.added, added.already_listed) == (2, 1)
    assert len(widened.movie_ids) == len(widened.titles) == 1684
    assert np.all(np.diff(widened.movie_ids) > 0)
    titles = dict(zip(widened.movie_ids.tolist(), widened.titles, strict=True))
    assert titles[1] == ds.titles[0] == "Toy Story (1995)"
    assert (titles[1700], titles[5000], titles[1682]) == ("B", "New", ds.titles[-1])
    assert widened.fingerprint != ds.fingerprint
    assert widened.train is ds.train and widened.test is ds.test


def test_a_listed_movie_nobody_rated_takes_the_logs_ratings(movielens: Path) -> None:
    # The catalogue is the data set's movie list, not the movies its ratings name.
    ds = load_dataset("ml-latest-small", movielens, "holdout")
    rated = np.union1d(ds.train.movies, ds.test.movies)
    unrated = int(np.setdiff1d(ds.movie_ids, rated)[0])
    fit, val = holdout_split(ds.train, TrainConfig.val_fraction, TrainConfig.seed)
    merged, report = merge_log(
        fit, val, ds.test, _as_log([(1, unrated, 4.5)]), ds.movie_ids, ds.levels
    )
    assert (report.applied, report.skipped_unknown_movie) == (1, 0)
    assert unrated in merged.movies.tolist()


def test_merging_applies_a_movie_the_file_adds_and_skips_one_no_catalogue_names(
    movielens: Path,
) -> None:
    ds = load_dataset("ml-100k", movielens, "u1")
    fit, val = holdout_split(ds.train, TrainConfig.val_fraction, TrainConfig.seed)
    log = _as_log(LOG)
    _, before = merge_log(fit, val, ds.test, log, ds.movie_ids, ds.levels)
    assert (before.applied, before.skipped_unknown_movie) == (1, 6)
    extra = ExtraMovies(np.asarray([NEW], dtype=np.int64), [TITLE], "0" * 64)
    widened, _ = add_movies(ds, extra)
    merged, after = merge_log(fit, val, ds.test, log, widened.movie_ids, widened.levels)
    assert (after.applied, after.skipped_unknown_movie, after.new_users) == (5, 2, 1)
    assert sorted(merged.users[merged.movies == NEW].tolist()) == [1, 2, 3, NEW_USER]


def test_a_retrain_with_movies_knows_the_new_movie(
    tmp_path: Path, client: redis.Redis, redis_prefix: str
) -> None:
    prefix = f"{redis_prefix}:catalogue-with"
    _log(client, prefix, LOG)
    movies = _movies_file(tmp_path / "movies.csv", f"{NEW},{TITLE}", '50,"Star Wars, again"')
    report = _retrain(tmp_path / "registry", prefix, "--movies", str(movies))
    assert report["movies"] == {"added": 1, "already_listed": 1, "catalogue": 1683}
    merged = report["rating_log"]
    assert (merged["read"], merged["applied"], merged["new_users"]) == (7, 5, 1)
    assert merged["skipped_unknown_movie"] == 2 == merged["skipped"]
    path = Path(report["registered"]["path"])
    ckpt = load_checkpoint(path)
    assert ckpt.config.n_movies == 1683 == len(ckpt.movie_ids)
    assert _title(ckpt, NEW) == TITLE
    assert _title(ckpt, 50) == "Star Wars (1977)"  # the data set's title wins
    assert UNNAMED not in ckpt.movie_index
    new = ckpt.movie_index[NEW]
    assert int((ckpt.user_movies == new).sum()) == 4  # the four users' ratings are its own
    assert float(ckpt.popularity[new]) > 0
    params = json.loads((path / "meta.json").read_text())["params"]
    assert (params["movies_added"], params["movies_already_listed"]) == (1, 1)
    assert params["n_movies"] == 1683
    assert client.xlen(stream_key(prefix)) == len(LOG), "the trainer never trims the log"


def test_a_retrain_without_movies_skips_the_new_movie_too(
    tmp_path: Path, client: redis.Redis, redis_prefix: str
) -> None:
    prefix = f"{redis_prefix}:catalogue-without"
    _log(client, prefix, LOG)
    report = _retrain(tmp_path / "registry", prefix)
    assert "movies" not in report
    merged = report["rating_log"]
    assert (merged["applied"], merged["skipped_unknown_movie"]) == (1, 6)
    path = Path(report["registered"]["path"])
    ckpt = load_checkpoint(path)
    assert ckpt.config.n_movies == 1682 and NEW not in ckpt.movie_index
    assert "movies_added" not in json.loads((path / "meta.json").read_text())["params"]
