"""MovieLens loading on the real files, and the missing-data path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from trainer.data import DataUnavailable, holdout_split, load_dataset, resolve_data_dir
from trainer.download import ensure_dataset


def test_ml100k_u1_split_and_catalogue(movielens: Path) -> None:
    ds = load_dataset("ml-100k", movielens, "u1")
    assert (len(ds.train), len(ds.test)) == (80_000, 20_000)
    assert len(ds.movie_ids) == 1682 and list(ds.movie_ids[:3]) == [1, 2, 3]
    assert ds.titles[0] == "Toy Story (1995)"
    assert any("é" in t for t in ds.titles), "u.item is latin-1: accents must survive"
    assert ds.levels == (1.0, 2.0, 3.0, 4.0, 5.0)
    assert set(np.unique(ds.train.ratings)) == {1.0, 2.0, 3.0, 4.0, 5.0}
    assert len(ds.fingerprint) == 64


def test_the_data_dir_may_be_the_data_set_folder_itself(movielens: Path) -> None:
    assert ensure_dataset("ml-100k", movielens / "ml-100k") == movielens / "ml-100k"


def test_ml_latest_small_holdout_is_seeded_and_per_user(movielens: Path) -> None:
    a = load_dataset("ml-latest-small", movielens, "holdout", seed=7)
    b = load_dataset("ml-latest-small", movielens, "holdout", seed=7)
    assert len(a.train) + len(a.test) == 100_836
    assert np.array_equal(a.test.movies, b.test.movies), "same seed, same split"
    assert len(a.levels) == 10 and a.levels[0] == 0.5
    assert set(np.unique(a.test.users)) <= set(np.unique(a.train.users))
    assert len(a.movie_ids) == 9742


def test_holdout_keeps_single_rating_users_in_training(movielens: Path) -> None:
    ds = load_dataset("ml-100k", movielens, "u1")
    one = ds.train.take(np.flatnonzero(ds.train.users == 1)[:1])
    train, test = holdout_split(one, 0.5, seed=0)
    assert (len(train), len(test)) == (1, 0)


def test_unknown_split_and_dataset_are_clear_errors(movielens: Path) -> None:
    with pytest.raises(ValueError, match="unknown split"):
        load_dataset("ml-100k", movielens, "u9")
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("ml-2b", movielens, "u1")


def test_missing_data_without_network_says_where_to_put_it(tmp_path: Path) -> None:
    # A closed loopback port stands in for "no network": nothing leaves the machine.
    with pytest.raises(DataUnavailable) as err:
        ensure_dataset("ml-100k", tmp_path, base_url="http://127.0.0.1:9/")
    message = str(err.value)
    assert str(tmp_path) in message and "--data-dir" in message and "ml-100k" in message


def test_data_dir_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RBMREC_DATA", "/from/env")
    assert resolve_data_dir("/from/flag") == Path("/from/flag")
    assert resolve_data_dir(None) == Path("/from/env")
    monkeypatch.delenv("RBMREC_DATA")
    assert resolve_data_dir(None) == Path("data")


def test_ml1m_format_with_a_small_file_made_here(tmp_path: Path) -> None:
    # ml-1m's ratings are not in the shared copy; the format is: '::'-separated, latin-1.
    folder = tmp_path / "ml-1m"
    folder.mkdir()
    (folder / "movies.dat").write_bytes(
        "1::Toy Story (1995)::Animation\n2::Amélie (2001)::Comedy\n".encode("latin-1")
    )
    rows = [f"{u}::{m}::{r}::97830{u}{m}" for u in (1, 2, 3) for m, r in ((1, 5), (2, 3))]
    (folder / "ratings.dat").write_text("\n".join(rows) + "\n", encoding="latin-1")
    ds = load_dataset("ml-1m", tmp_path, "holdout", holdout=0.5)
    assert ds.titles == ["Toy Story (1995)", "Amélie (2001)"]
    assert ds.levels == (1.0, 2.0, 3.0, 4.0, 5.0)
    assert (len(ds.train), len(ds.test)) == (3, 3)  # one of each user's two ratings held out


def test_ml25m_format_with_a_small_file_made_here(tmp_path: Path) -> None:
    folder = tmp_path / "ml-25m"
    folder.mkdir()
    (folder / "movies.csv").write_text(
        'movieId,title,genres\r\n1,"Movie, The (1999)",Drama\r\n7,Other (2001),Comedy\r\n'
    )
    (folder / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\r\n1,1,4.5,1\r\n1,7,3.0,2\r\n2,7,0.5,3\r\n2,1,5.0,4\r\n"
    )
    ds = load_dataset("ml-25m", tmp_path, "holdout", holdout=0.5)
    assert ds.titles == ["Movie, The (1999)", "Other (2001)"]
    assert len(ds.levels) == 10
    assert len(ds.train) + len(ds.test) == 4
