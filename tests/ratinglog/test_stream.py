"""Reading the rating log from the real Redis: ranges, paging, and both readers agreeing."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import pytest
import redis
import redis.asyncio as aioredis

from ratinglog import RatingRecord, encode_fields, read_after, read_all, stream_key
from server.ratings import RedisRatingLog, UserOverlay
from tests.harness.cli import REDIS_URL
from trainer.rating_log import read_rating_log


@pytest.fixture
def client() -> Iterator[redis.Redis]:
    """A client of the real Redis."""
    c = redis.Redis.from_url(REDIS_URL)
    yield c
    c.close()


def _rating(client: redis.Redis, prefix: str, user: int) -> str:
    record = RatingRecord(user, 1, 4.0, 1000 + user)
    return str(client.xadd(stream_key(prefix), encode_fields(record)).decode())


def _foreign(client: redis.Redis, prefix: str) -> str:
    return str(client.xadd(stream_key(prefix), {"hello": "world"}).decode())


def test_read_after_starts_after_the_id_it_is_given(client: redis.Redis, redis_prefix: str) -> None:
    prefix = f"{redis_prefix}:after"
    ids = [_rating(client, prefix, user) for user in range(5)]
    page = read_after(client, stream_key(prefix), ids[1], 2)
    assert [entry_id for entry_id, _ in page.entries] == ids[2:4]
    assert read_after(client, stream_key(prefix), None, 1).entries[0][0] == ids[0]
    assert read_after(client, stream_key(prefix), ids[-1], 10).last_id is None


def test_read_all_pages_through_malformed_entries(client: redis.Redis, redis_prefix: str) -> None:
    prefix = f"{redis_prefix}:all"
    for user in range(7):
        _rating(client, prefix, user)
        _foreign(client, prefix)
    pages = list(read_all(client, stream_key(prefix), 4))
    assert [page.size for page in pages] == [4, 4, 4, 2]
    assert sum(len(page.entries) for page in pages) == 7
    assert sum(len(page.malformed) for page in pages) == 7


def test_server_and_trainer_skip_the_same_entries_for_the_same_reason(
    client: redis.Redis, redis_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    prefix = f"{redis_prefix}:both"
    _rating(client, prefix, 1)
    bad = _foreign(client, prefix)
    _rating(client, prefix, 2)
    odd = client.xadd(stream_key(prefix), {"user": "3", "movie": "x", "rating": "4", "ts": "0"})

    async def serve() -> tuple[UserOverlay, RedisRatingLog]:
        aclient = aioredis.Redis.from_url(REDIS_URL)
        overlay, log = UserOverlay(), RedisRatingLog(aclient, prefix)
        for _ in range(3):  # a malformed tail is read again each time: reported once
            await overlay.catch_up(log)
        await aclient.aclose()
        return overlay, log

    with caplog.at_level(logging.WARNING):
        overlay, served = asyncio.run(serve())
        trained = read_rating_log(REDIS_URL, prefix)
    assert sorted(overlay.ratings) == sorted(trained.ratings.users.tolist()) == [1, 2]
    assert served.malformed == trained.malformed == 2
    server_lines = [r.getMessage() for r in caplog.records if r.name == "server.ratings"]
    assert server_lines == [
        f"skipping malformed rating log entry {bad}: field 'user' is missing",
        f"skipping malformed rating log entry {odd.decode()}: "
        "field 'movie' is not an integer: b'x'",
    ]
    (trainer_line,) = [r.getMessage() for r in caplog.records if r.name == "trainer.rating_log"]
    assert trainer_line.startswith(f"skipping 2 malformed rating log entries of {prefix}:ratings")
    assert f"(first {bad}: field 'user' is missing)" in trainer_line
