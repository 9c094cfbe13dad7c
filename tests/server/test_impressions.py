"""The impression writer against a real Redis: what it writes, and the bounds it keeps."""

from __future__ import annotations

import asyncio
import time

import redis
import redis.asyncio as aioredis

from ratinglog.impressions import Impression, decode_impression, impressions_key
from server.impressions import ImpressionConfig, RedisImpressions
from tests.harness.cli import REDIS_URL

NODE = 100  # Redis's stream-node-max-entries: approximate trimming works in whole nodes


def _write(
    prefix: str, impressions: list[Impression], config: ImpressionConfig, clock: float
) -> int:
    """Record and flush ``impressions`` in rounds of 500; the writer's drop count."""

    async def go() -> int:
        client = aioredis.from_url(REDIS_URL)
        sink = RedisImpressions(client, prefix, config, clock=lambda: clock)
        for start in range(0, len(impressions), 500):
            for impression in impressions[start : start + 500]:
                sink.record(impression)
            await sink.flush()
        await client.aclose()
        return sink.dropped

    return asyncio.run(go())


def _some(count: int) -> list[Impression]:
    return [Impression(str(1 + i % 2), "stable", i, (i, i + 1, i + 2)) for i in range(count)]


def test_impressions_are_written_in_order_as_recorded(prefix: str) -> None:
    written = _some(30)
    assert _write(prefix, written, ImpressionConfig(), time.time()) == 0
    client = redis.Redis.from_url(REDIS_URL)
    read = [decode_impression(fields) for _, fields in client.xrange(impressions_key(prefix))]
    assert read == written


def test_the_stream_keeps_about_max_entries(prefix: str) -> None:
    _write(prefix, _some(5_000), ImpressionConfig(max_entries=1_000), time.time())
    length = redis.Redis.from_url(REDIS_URL).xlen(impressions_key(prefix))
    assert 1_000 <= length <= 1_000 + NODE, length


def test_entries_older_than_the_retention_go(prefix: str) -> None:
    _write(prefix, _some(1_000), ImpressionConfig(retention_s=3600), time.time())
    key = impressions_key(prefix)
    assert redis.Redis.from_url(REDIS_URL).xlen(key) == 1_000
    # Two hours later, the next flush trims everything older than one hour.
    _write(prefix, _some(1), ImpressionConfig(retention_s=3600), time.time() + 7200)
    assert redis.Redis.from_url(REDIS_URL).xlen(key) <= NODE + 1


def test_a_full_buffer_drops_and_counts_instead_of_growing(prefix: str) -> None:
    sink = RedisImpressions(aioredis.from_url(REDIS_URL), prefix, ImpressionConfig(max_buffered=10))
    for impression in _some(25):
        sink.record(impression)
    assert sink.dropped == 15


def test_a_redis_that_refuses_loses_the_batch_not_the_server(prefix: str) -> None:
    async def go() -> RedisImpressions:
        client = aioredis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
        sink = RedisImpressions(client, prefix, ImpressionConfig())
        for impression in _some(7):
            sink.record(impression)
        await sink.flush()  # must not raise
        return sink

    sink = asyncio.run(go())
    assert (sink.dropped, sink.written) == (7, 0)
