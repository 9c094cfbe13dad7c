"""The serving pass keeps every tensor on the model's device, checked without a GPU.

The model is served on PyTorch's ``meta`` device under ``DeviceGuard`` (see
tests/harness/device_guard.py) through the real ``Recommender``: real Redis for the cache
and the rating log, batches that mix cache hits and misses, Recommend and PredictRatings,
users without ratings, filters, streamed updates of cached users, and SimilarMovies. Any
operation that mixes devices, and any copy between host and device made anywhere but
``DeviceLink``, fails it; so does a pass that copies its results back more than once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis.asyncio as aioredis

from registry.store import FileRegistry
from server.batcher import BatcherConfig
from server.engine import Engine
from server.errors import ServiceError
from server.hidden_cache import HiddenCache, MemoryHiddenCache, RedisHiddenCache
from server.model_holder import ModelHolder
from server.ratings import RatingRecord, RedisRatingLog
from server.recommender import Predicted, PredictJob, Recommender, RecommendJob, Served, Similar
from tests.harness.cli import REDIS_URL, TrainedModel
from tests.harness.device_guard import META, DeviceGuard

LINK = {"DeviceLink._stage", "DeviceLink.receive"}  # the only functions that may copy
COLD_USER = 10**6  # not in the training data: no ratings, popularity order


class CountedPasses:
    """Wraps ``Engine.run`` to count, per pass, the copies the guard saw during it."""

    def __init__(self, engine: Engine, guard: DeviceGuard) -> None:
        self.per_pass: list[tuple[int, int]] = []  # (to device, to host)
        run = engine.run

        def counted(*args: object) -> object:
            before = len(guard.copies)
            try:
                return run(*args)  # type: ignore[arg-type]
            finally:
                made = guard.copies[before:]
                to_host = sum(c.direction == "to host" for c in made)
                self.per_pass.append((len(made) - to_host, to_host))

        engine.run = counted  # type: ignore[method-assign]


@pytest.fixture(params=["memory", "redis"])
def cache_kind(request: pytest.FixtureRequest) -> str:
    """Both caches: the in-process one and Redis (whose values come back as host bytes)."""
    return str(request.param)


@pytest.fixture
def guard() -> Iterator[DeviceGuard]:
    """A guard entered on this thread; threads of the test's executors enter it too."""
    with DeviceGuard() as watching:
        yield watching


async def _serve_mixed_traffic(rec: Recommender) -> list[object]:
    """Rounds of concurrent requests: misses, then hits and misses, then after updates."""

    def calls(users: range, predict: range) -> list[object]:
        jobs: list[object] = [rec.recommend(RecommendJob(u, 10, u % 5 == 0)) for u in users]
        jobs += [rec.recommend(RecommendJob(u, 5, False, (50, 100), (1, 50, 181))) for u in users]
        jobs += [rec.predict(PredictJob(u, (1, 2, 3, 50))) for u in predict]
        jobs += [rec.predict(PredictJob(u, (1, 10**8), skip_unknown=True)) for u in predict]
        return jobs

    out: list[object] = []
    cold = rec.recommend(RecommendJob(COLD_USER, 10, False))
    out += await asyncio.gather(
        *calls(range(1, 13), range(13, 17)), cold, return_exceptions=True
    )  # all misses
    out += await asyncio.gather(
        *calls(range(1, 21), range(9, 17)), return_exceptions=True
    )  # hits and misses
    await rec.update(RatingRecord(1, 1500, 5.0, 0))  # a movie user 1 had not rated
    await rec.update(RatingRecord(2, 1, 1.0, 0))  # re-rates a movie from training, maybe
    await rec.update(RatingRecord(1, 1500, 2.0, 0))  # changes a streamed rating
    out += await asyncio.gather(
        *calls(range(1, 4), range(1, 3)), return_exceptions=True
    )  # updated cached states
    out.append(await rec.similar(50, 10))
    return out


def test_serving_pass_never_mixes_devices(
    trained: TrainedModel, redis_prefix: str, cache_kind: str, guard: DeviceGuard
) -> None:
    prefix = f"{redis_prefix}:device-{cache_kind}"

    async def main() -> tuple[list[object], HiddenCache, CountedPasses]:
        # Loading (asyncio.to_thread) and the model thread both run under the guard.
        loader = ThreadPoolExecutor(2, initializer=guard.__enter__)
        asyncio.get_running_loop().set_default_executor(loader)
        client = aioredis.Redis.from_url(REDIS_URL)
        holder = ModelHolder(FileRegistry(trained.registry), "rbm", "production", META)
        assert await holder.refresh(), holder.status.last_error
        passes = CountedPasses(holder.require(), guard)
        cache: HiddenCache = (
            MemoryHiddenCache()
            if cache_kind == "memory"
            else RedisHiddenCache(client, prefix=prefix)
        )
        rec = Recommender(
            holder,
            cache,
            RedisRatingLog(client, prefix),
            BatcherConfig(max_batch_size=64),
            worker=ThreadPoolExecutor(1, initializer=guard.__enter__),
        )
        rec.batcher.start()
        guard.copies.clear()  # loading moves the model there once; requests are checked
        try:
            results = await _serve_mixed_traffic(rec)
        finally:
            await rec.close()
            await client.aclose()
        return results, cache, passes

    results, cache, passes = asyncio.run(main())

    errors = [r for r in results if isinstance(r, ServiceError | BaseException)]
    assert not errors, f"requests failed on the meta device: {errors[:3]}"
    assert all(isinstance(r, Served | Predicted | Similar) for r in results)
    assert cache.stats.hits > 0 and cache.stats.misses > 0, "both paths must be exercised"
    assert not guard.mixed, "operations mixed devices:\n" + "\n".join(guard.mixed[:10])
    stray = guard.copies_outside(LINK)
    assert not stray, "copies made outside DeviceLink:\n" + "\n".join(map(str, stray[:10]))
    assert passes.per_pass, "no pass ran"
    for to_device, to_host in passes.per_pass:
        assert to_host == 1, f"a pass copied its results back {to_host} times"
        assert to_device <= 2, f"a pass made {to_device} copies to the device (ints, hits)"
