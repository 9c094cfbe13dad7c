"""The dynamic batcher with a plain async batch function (the batcher is free of torch/gRPC)."""

from __future__ import annotations

import asyncio

import pytest

from server.batcher import Batcher, BatcherConfig
from server.errors import DeadlineExceeded, ResourceExhausted


class Recorder:
    """A batch function that doubles its inputs and records each batch it was given."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.batches: list[list[int]] = []
        self.delay_s = delay_s
        self.release = asyncio.Event()
        self.release.set()

    async def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        await self.release.wait()
        await asyncio.sleep(self.delay_s)
        return [2 * x for x in items]


@pytest.mark.parametrize("kwargs", [{"max_batch_size": 0}, {"max_wait_us": -1}, {"max_queue": 0}])
def test_bad_settings_are_refused(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        BatcherConfig(**kwargs)


async def _run(config: BatcherConfig, fn: Recorder, items: list[int]) -> list[int]:
    batcher: Batcher[int, int] = Batcher(fn, config)
    batcher.start()
    try:
        return list(await asyncio.gather(*(batcher.submit(x) for x in items)))
    finally:
        await batcher.close()


def test_concurrent_items_share_batches_and_keep_their_results() -> None:
    fn = Recorder(delay_s=0.01)
    results = asyncio.run(_run(BatcherConfig(max_batch_size=8), fn, list(range(40))))
    assert results == [2 * x for x in range(40)]
    assert max(len(b) for b in fn.batches) > 1, "concurrent items should be batched"
    assert all(len(b) <= 8 for b in fn.batches)
    assert sorted(x for b in fn.batches for x in b) == list(range(40))


def test_batch_size_one_turns_batching_off() -> None:
    fn = Recorder()
    asyncio.run(_run(BatcherConfig(max_batch_size=1), fn, list(range(10))))
    assert [len(b) for b in fn.batches] == [1] * 10


def test_a_long_wait_collects_items_that_arrive_later() -> None:
    async def main() -> list[list[int]]:
        fn = Recorder()
        batcher: Batcher[int, int] = Batcher(
            fn, BatcherConfig(max_batch_size=4, max_wait_us=200_000)
        )
        batcher.start()
        first = asyncio.ensure_future(batcher.submit(1))
        await asyncio.sleep(0.02)  # well inside the 200 ms wait: must join the same batch
        second = asyncio.ensure_future(batcher.submit(2))
        await asyncio.gather(first, second)
        await batcher.close()
        return fn.batches

    assert asyncio.run(main()) == [[1, 2]]


def test_a_failure_reaches_every_caller_of_the_batch() -> None:
    async def failing(items: list[int]) -> list[int]:
        raise ValueError("model exploded")

    async def main() -> list[BaseException | int]:
        batcher: Batcher[int, int] = Batcher(failing, BatcherConfig())
        batcher.start()
        out = await asyncio.gather(*(batcher.submit(x) for x in range(5)), return_exceptions=True)
        await batcher.close()
        return out

    out = asyncio.run(main())
    assert all(isinstance(e, ValueError) and "exploded" in str(e) for e in out)


def test_a_batch_function_that_loses_items_is_an_error() -> None:
    async def lossy(items: list[int]) -> list[int]:
        return items[:-1]

    async def main() -> list[BaseException | int]:
        batcher: Batcher[int, int] = Batcher(lossy, BatcherConfig())
        batcher.start()
        out = await asyncio.gather(*(batcher.submit(x) for x in range(3)), return_exceptions=True)
        await batcher.close()
        return out

    assert all(isinstance(e, RuntimeError) for e in asyncio.run(main()))


def test_a_full_queue_answers_resource_exhausted() -> None:
    async def main() -> tuple[int, int]:
        fn = Recorder()
        fn.release.clear()  # hold the first batch so the queue fills up
        batcher: Batcher[int, int] = Batcher(fn, BatcherConfig(max_batch_size=1, max_queue=3))
        batcher.start()
        tasks = [asyncio.ensure_future(batcher.submit(0))]
        await asyncio.sleep(0.02)  # the batcher takes item 0 and blocks on it
        tasks += [asyncio.ensure_future(batcher.submit(x)) for x in range(1, 6)]
        await asyncio.sleep(0.02)
        fn.release.set()
        out = await asyncio.gather(*tasks, return_exceptions=True)
        await batcher.close()
        full = sum(isinstance(r, ResourceExhausted) for r in out)
        return full, sum(isinstance(r, int) for r in out)

    full, served = asyncio.run(main())
    assert full == 2 and served == 4  # 1 computing + 3 queued; the rest refused


def test_a_request_whose_deadline_passed_in_the_queue_is_not_computed() -> None:
    async def main() -> tuple[BaseException | int, list[list[int]]]:
        fn = Recorder()
        fn.release.clear()
        batcher: Batcher[int, int] = Batcher(fn, BatcherConfig(max_batch_size=1))
        batcher.start()
        blocker = asyncio.ensure_future(batcher.submit(1))
        await asyncio.sleep(0.01)
        late = asyncio.ensure_future(batcher.submit(2, timeout_s=0.01))
        await asyncio.sleep(0.05)
        fn.release.set()
        await blocker
        result = (await asyncio.gather(late, return_exceptions=True))[0]
        await batcher.close()
        return result, fn.batches

    result, batches = asyncio.run(main())
    assert isinstance(result, DeadlineExceeded)
    assert batches == [[1]]


def test_close_fails_queued_items_instead_of_hanging() -> None:
    async def main() -> list[BaseException | int]:
        fn = Recorder()
        fn.release.clear()
        batcher: Batcher[int, int] = Batcher(fn, BatcherConfig(max_batch_size=1))
        batcher.start()
        tasks = [asyncio.ensure_future(batcher.submit(x)) for x in range(3)]
        await asyncio.sleep(0.02)
        await batcher.close()
        return await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 2)

    out = asyncio.run(main())
    assert all(isinstance(r, ResourceExhausted) for r in out)  # in flight and queued alike
