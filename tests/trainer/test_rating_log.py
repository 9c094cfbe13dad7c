"""The rating log: read from the real Redis, merged into the training data, used by rbm-train."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis

from ratinglog import RatingRecord, encode_fields, stream_key
from rbm.checkpoint import load_checkpoint
from tests.harness.cli import REDIS_URL, run_cli
from trainer.data import Ratings, holdout_split, load_dataset
from trainer.rating_log import RatingLogUnavailable, merge_log, read_rating_log
from trainer.train import TrainConfig

LEVELS = (1.0, 2.0, 3.0, 4.0, 5.0)
CATALOGUE = np.arange(1, 11)  # movies 1..10


@pytest.fixture
def client() -> Iterator[redis.Redis]:
    """A client of the real Redis."""
    c = redis.Redis.from_url(REDIS_URL)
    yield c
    c.close()


def _log(client: redis.Redis, prefix: str, entries: list[tuple[int, int, float]]) -> None:
    for n, (user, movie, rating) in enumerate(entries):
        client.xadd(stream_key(prefix), encode_fields(RatingRecord(user, movie, rating, 1000 + n)))


def _ratings(*rows: tuple[int, int, float]) -> Ratings:
    users, movies, values = zip(*rows, strict=True) if rows else ((), (), ())
    return Ratings.from_lists(list(users), list(movies), list(values), [0] * len(rows))


def _as_dict(r: Ratings) -> dict[tuple[int, int], float]:
    return {
        (int(u), int(m)): float(v) for u, m, v in zip(r.users, r.movies, r.ratings, strict=True)
    }


def test_reading_pages_through_the_stream_and_counts_malformed_entries(
    client: redis.Redis, redis_prefix: str
) -> None:
    prefix = f"{redis_prefix}:pages"
    _log(client, prefix, [(1, m % 10 + 1, 4.0) for m in range(23)])
    client.xadd(stream_key(prefix), {"user": "1", "movie": "x", "rating": "4.0", "ts": "0"})
    client.xadd(stream_key(prefix), {"hello": "world"})
    last = client.xadd(stream_key(prefix), encode_fields(RatingRecord(2, 3, 5.0, 7)))
    log = read_rating_log(REDIS_URL, prefix, page_size=10)  # several pages, one partial
    assert len(log.ratings) == 24 and log.malformed == 2
    assert log.last_id == last.decode()
    assert (log.ratings.users[-1], log.ratings.movies[-1], log.ratings.ratings[-1]) == (2, 3, 5.0)
    assert log.ratings.timestamps[-1] == 7


def test_an_empty_stream_is_an_empty_log(redis_prefix: str) -> None:
    log = read_rating_log(REDIS_URL, f"{redis_prefix}:nothing")
    assert len(log.ratings) == 0 and log.malformed == 0 and log.last_id is None


def test_merge_replaces_adds_new_users_and_skips_bad_entries(
    client: redis.Redis, redis_prefix: str
) -> None:
    prefix = f"{redis_prefix}:merge"
    fit = _ratings((1, 1, 5.0), (1, 2, 3.0), (2, 1, 4.0))
    val = _ratings((1, 3, 2.0))
    test = _ratings((2, 5, 1.0))
    _log(
        client,
        prefix,
        [
            (1, 1, 2.0),  # replaces the data set's 5
            (9, 4, 3.0),  # a new user ...
            (9, 4, 5.0),  # ... who changes their mind: the later rating wins
            (9, 7, 1.0),
            (2, 1, 1.0),  # replaced by the next entry, which replaces the data set's 4
            (2, 1, 2.0),
            (1, 99, 4.0),  # a movie not in the catalogue
            (1, 6, 4.5),  # off the whole-star scale
            (1, 6, float("nan")),
            (1, 3, 5.0),  # held out for validation: training on it would leak
            (2, 5, 5.0),  # held out for testing
        ],
    )
    client.xadd(stream_key(prefix), {"user": "1"})
    merged, report = merge_log(
        fit, val, test, read_rating_log(REDIS_URL, prefix), CATALOGUE, LEVELS
    )
    assert _as_dict(merged) == {
        (1, 1): 2.0,
        (1, 2): 3.0,
        (2, 1): 2.0,
        (9, 4): 5.0,
        (9, 7): 1.0,
    }
    counts = report.to_report()
    expected = {
        "read": 12,
        "applied": 4,
        "superseded": 2,
        "skipped": 6,
        "skipped_malformed": 1,
        "skipped_unknown_movie": 1,
        "skipped_off_scale": 2,
        "skipped_held_out": 2,
        "replaced": 2,
        "new_users": 1,
    }
    assert {key: counts[key] for key in expected} == expected
    assert counts["read"] == counts["applied"] + counts["superseded"] + counts["skipped"]


def test_an_unreachable_redis_is_a_clear_error_without_the_password() -> None:
    with pytest.raises(RatingLogUnavailable) as err:
        read_rating_log("redis://:hunter2@127.0.0.1:1/0", "rbmrec")
    assert "rbmrec:ratings" in str(err.value) and "127.0.0.1:1" in str(err.value)
    assert "hunter2" not in str(err.value)


def test_rbm_train_exits_3_when_redis_is_unreachable(movielens: Path, tmp_path: Path) -> None:
    proc = run_cli(
        "rbm-train",
        "--data-dir",
        str(movielens),
        "--registry",
        str(tmp_path),
        "--ratings-log",
        "redis://127.0.0.1:1/0",
        "--quiet",
        check=False,
    )
    assert proc.returncode == 3
    line = proc.stderr.strip()
    assert line.startswith("rbm-train: error: cannot read the rating log rbmrec:ratings")
    assert len(line.splitlines()) == 1 and "127.0.0.1:1" in line
    assert not any(tmp_path.iterdir()), "nothing may be registered"


def test_rbm_train_trains_on_the_log_and_reports_it(
    movielens: Path, tmp_path: Path, client: redis.Redis, redis_prefix: str
) -> None:
    prefix = f"{redis_prefix}:train"
    ds = load_dataset("ml-100k", movielens, "u1")
    fit, val = holdout_split(ds.train, TrainConfig.val_fraction, TrainConfig.seed)
    user1_fit = fit.take(fit.users == 1)
    old = float(user1_fit.ratings[0])
    new = 1.0 if old != 1.0 else 5.0
    held = (int(val.users[0]), int(val.movies[0]))
    _log(
        client,
        prefix,
        [
            (1, int(user1_fit.movies[0]), new),
            (5000, 1, 5.0),
            (5000, 50, 4.0),
            (1, 2000, 4.0),  # ml-100k has 1682 movies
            (1, 1, 3.5),
            (*held, 1.0),
        ],
    )
    proc = run_cli(
        "rbm-train",
        "--data-dir",
        str(movielens),
        "--split",
        "u1",
        "--epochs",
        "1",
        "--implicit-epochs",
        "1",
        "--item-epochs",
        "1",
        "--registry",
        str(tmp_path),
        "--ratings-log",
        REDIS_URL,
        "--ratings-log-prefix",
        prefix,
        "--json",
        "--quiet",
        env={"OMP_NUM_THREADS": "1"},  # two threads thrash when the 2 cores are busy
    )
    report = json.loads(proc.stdout)
    assert report["rating_log"] | {"last_id": None} == {
        "read": 6,
        "applied": 3,
        "superseded": 0,
        "skipped": 3,
        "skipped_malformed": 0,
        "skipped_unknown_movie": 1,
        "skipped_off_scale": 1,
        "skipped_held_out": 1,
        "replaced": 1,
        "new_users": 1,
        "last_id": None,
    }
    ckpt = load_checkpoint(Path(report["registered"]["path"]))
    users = ckpt.user_ids.tolist()
    assert 5000 in users and len(users) == len(np.unique(ds.train.users)) + 1

    def rated(user: int) -> dict[int, float]:
        row = users.index(user)
        lo, hi = int(ckpt.user_indptr[row]), int(ckpt.user_indptr[row + 1])
        movies = ckpt.movie_ids[ckpt.user_movies[lo:hi]].tolist()
        return {
            m: ckpt.levels[int(k)] for m, k in zip(movies, ckpt.user_levels[lo:hi], strict=True)
        }

    assert rated(5000) == {1: 5.0, 50: 4.0}
    assert rated(1)[int(user1_fit.movies[0])] == new
    meta = json.loads((Path(report["registered"]["path"]) / "meta.json").read_text())
    assert meta["params"]["ratings_log"]["applied"] == 3
    assert meta["data_fingerprint"] != ds.fingerprint
