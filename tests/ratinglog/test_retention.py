"""Retention of the rating log: what every aliased version absorbed, trim, and reading it all."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from ratinglog import (
    RatingArchive,
    absorbed_until,
    next_id,
    read_full_log,
    stream_key,
    trim,
)
from registry.store import FileRegistry
from tests.harness.cli import REDIS_URL
from tests.ratinglog.support import log_ratings, register_version
from trainer.rating_log import read_rating_log


@pytest.fixture
def client() -> Iterator[redis.Redis]:
    """A client of the real Redis."""
    c = redis.Redis.from_url(REDIS_URL)
    yield c
    c.close()


@pytest.fixture
def key(redis_prefix: str) -> str:
    """A stream of this test's own."""
    return stream_key(f"{redis_prefix}:{uuid.uuid4().hex[:8]}")


@pytest.mark.parametrize(
    ("entry_id", "after"),
    [("5-3", "5-4"), ("0-0", "0-1"), ("1700000000000-0", "1700000000000-1"), ("7", "7-1")],
)
def test_next_id_is_the_smallest_id_after(entry_id: str, after: str) -> None:
    assert next_id(entry_id) == after


def test_next_id_carries_into_the_milliseconds() -> None:
    assert next_id(f"5-{2**64 - 1}") == "6-0"


def test_absorbed_until_is_the_oldest_point_among_aliased_versions(tmp_path: Path) -> None:
    registry = FileRegistry(tmp_path)
    old = register_version(registry, "100-5")
    assert absorbed_until(registry, "rbm") is None, "no alias yet"
    registry.set_alias("rbm", "production", old)
    assert absorbed_until(registry, "rbm") == "100-5"
    new = register_version(registry, "100-12")  # numerically after 100-5, though "100-12" < "100-5"
    registry.set_alias("rbm", "staging", new)
    assert absorbed_until(registry, "rbm") == "100-5"
    registry.set_alias("rbm", "production", new)
    assert absorbed_until(registry, "rbm") == "100-12", "an unaliased version no longer counts"
    without = register_version(registry, None)
    registry.set_alias("rbm", "canary", without)
    assert absorbed_until(registry, "rbm") is None, "a version that absorbed nothing"


def test_a_version_trained_on_another_prefixs_log_absorbed_none_of_this_one(
    tmp_path: Path,
) -> None:
    registry = FileRegistry(tmp_path)
    registry.set_alias(
        "rbm", "production", register_version(registry, "9-0", ratings_log={"prefix": "a"})
    )
    assert absorbed_until(registry, "rbm", "a") == "9-0"
    assert absorbed_until(registry, "rbm", "b") is None
    assert absorbed_until(registry, "rbm") == "9-0"


def test_trim_archives_then_drops_exactly_the_absorbed_entries(
    client: redis.Redis, key: str, tmp_path: Path
) -> None:
    logged = log_ratings(client, key, 25)
    client.xadd(key, {"not": "a rating"})
    logged += log_ratings(client, key, 5, first_user=100)
    archive = RatingArchive(tmp_path, key)
    until = logged[19][0]
    seen: list[int] = []
    result = trim(client, key, archive, until, page_size=7, segment_rows=8, on_archived=seen.append)
    assert (result.until, result.archived, result.trimmed) == (until, 20, 20)
    assert result.length == client.xlen(key) == 11
    assert [e for page in archive.pages() for e in page] == logged[:20]
    assert [s.rows for s in archive.segments()] == [8, 8, 4] and sum(seen) == 20
    first = client.xrange(key, count=1)[0][0].decode()
    assert first == logged[20][0], "the entry right after the point stays"
    # Again: nothing new to archive or trim. Then further, past the foreign entry.
    again = trim(client, key, archive, until)
    assert (again.archived, again.trimmed, again.length) == (0, 0, 11)
    further = trim(client, key, archive, logged[26][0])
    assert (further.archived, further.trimmed, further.length) == (7, 8, 3)  # and the foreign one
    assert [e for page in archive.pages() for e in page] == logged[:27]
    assert trim(client, key, archive, None) == type(result)(None, 0, 0, 3)


def test_read_full_log_reads_the_archive_then_the_stream(
    client: redis.Redis, key: str, tmp_path: Path
) -> None:
    logged = log_ratings(client, key, 30)
    archive = RatingArchive(tmp_path, key)
    trim(client, key, archive, logged[11][0], segment_rows=5)
    got = [e for page in read_full_log(client, key, archive, page_size=4) for e in page.entries]
    assert got == logged


class TrimmingClient:
    """A Redis client whose n-th XRANGE finds the log trimmed by someone else just before."""

    def __init__(self, client: redis.Redis, archive: RatingArchive, until: str, at: int) -> None:
        self.client, self.archive, self.until, self.at = client, archive, until, at
        self.calls = 0

    def xrange(self, key: str, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.calls == self.at:
            trim(self.client, key, self.archive, self.until, segment_rows=3)
        return self.client.xrange(key, *args, **kwargs)


@pytest.mark.parametrize("at", [1, 2, 3])
def test_read_full_log_loses_nothing_to_a_trim_running_meanwhile(
    client: redis.Redis, key: str, tmp_path: Path, at: int
) -> None:
    logged = log_ratings(client, key, 40)
    archive = RatingArchive(tmp_path, key)
    trim(client, key, archive, logged[4][0])
    racing = TrimmingClient(client, archive, logged[30][0], at)
    pages = read_full_log(racing, key, archive, page_size=6)  # type: ignore[arg-type]
    got = [e for page in pages for e in page.entries]
    assert got == logged
    assert archive.last_id == logged[30][0]


def test_the_trainer_reads_the_archive_too(client: redis.Redis, key: str, tmp_path: Path) -> None:
    logged = log_ratings(client, key, 12)
    prefix = key.removesuffix(":ratings")
    trim(client, key, RatingArchive(tmp_path, prefix), logged[7][0], segment_rows=3)
    assert client.xlen(key) == 4
    full = read_rating_log(REDIS_URL, prefix, page_size=5, registry_root=tmp_path)
    assert full.ratings.users.tolist() == [record.user_id for _, record in logged]
    assert full.last_id == logged[-1][0]
    live = read_rating_log(REDIS_URL, prefix, page_size=5)  # as before: the stream alone
    assert live.ratings.users.tolist() == [record.user_id for _, record in logged[8:]]
    trim(client, key, RatingArchive(tmp_path, prefix), logged[-1][0])
    assert client.xlen(key) == 0
    only_archived = read_rating_log(REDIS_URL, prefix, registry_root=tmp_path)
    assert len(only_archived.ratings) == 12 and only_archived.last_id == logged[-1][0]
