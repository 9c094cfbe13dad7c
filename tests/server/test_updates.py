"""Concurrent rating updates of one user keep its cached hidden state exact.

Runs the Recommender with a real engine and the real in-process cache; the rating log is
a list behind a gate, so the test decides in which order two appends complete.
"""

from __future__ import annotations

import asyncio

import torch

from registry.store import FileRegistry
from server.batcher import BatcherConfig
from server.hidden_cache import MemoryHiddenCache
from server.model_holder import ModelHolder
from server.ratings import RatingRecord, Stored
from server.recommender import Recommender, RecommendJob
from tests.harness.cli import TrainedModel


class GatedLog:
    """Stores records in memory; each append waits until the test opens its gate."""

    def __init__(self) -> None:
        self.records: list[RatingRecord] = []
        self.gates: dict[int, asyncio.Event] = {}

    async def append(self, record: RatingRecord, update_id: str = "") -> Stored:
        gate = self.gates.setdefault(record.movie_id, asyncio.Event())
        await gate.wait()
        self.records.append(record)
        return Stored(f"0-{len(self.records)}")

    async def close(self) -> None:
        pass

    async def read_after(self, last_id: str, count: int) -> list[tuple[str, RatingRecord]]:
        start = int(last_id.partition("-")[2])
        entries = list(enumerate(self.records, 1))[start : start + count]
        return [(f"0-{i}", record) for i, record in entries]


def test_interleaved_updates_of_one_user_leave_an_exact_hidden_state(
    trained: TrainedModel,
) -> None:
    async def main() -> tuple[torch.Tensor, torch.Tensor]:
        holder = ModelHolder(
            FileRegistry(trained.registry), "rbm", "production", torch.device("cpu")
        )
        await holder.refresh()
        cache, log = MemoryHiddenCache(), GatedLog()
        rec = Recommender(holder, cache, log, BatcherConfig())
        rec.batcher.start()
        engine = holder.require()
        user = 1
        # Warm the cache so that updates take the O(F) path on a cached value.
        await rec.recommend(RecommendJob(user, 5, False))
        first = asyncio.create_task(rec.update(RatingRecord(user, 1500, 5.0, 0)))
        second = asyncio.create_task(rec.update(RatingRecord(user, 1501, 2.0, 0)))
        await asyncio.sleep(0.01)
        log.gates[1501].set()  # the second append completes first
        await asyncio.sleep(0.01)
        log.gates[1500].set()
        await asyncio.gather(first, second)
        final = rec._state(engine, rec.overlay_of(engine), user)
        (cached,) = await cache.get_many([final.key])
        exact = engine.hidden_pre(final.ratings)
        assert cached is not None, "the updates should have kept the cached state"
        return cached, exact

    served, exact = asyncio.run(main())
    torch.testing.assert_close(served, exact, atol=1e-4, rtol=0)
