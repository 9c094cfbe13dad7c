"""A dynamic batcher: concurrent callers' items become one call of a batch function.

Free of gRPC, torch and Redis. One batch runs at a time; while it runs, the next one
collects in the bounded queue, so batches grow with the load on their own (with zero
wait, about half the concurrency per batch, see shared/FINDINGS.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from server.errors import DeadlineExceeded, ResourceExhausted

__all__ = ["Batcher", "BatcherConfig"]

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class BatcherConfig:
    """Batching limits. ``max_batch_size=1`` turns batching off."""

    max_batch_size: int = 64
    max_wait_us: int = 0  # how long a non-full batch waits for more items
    max_queue: int = 2048  # items waiting; beyond this submit() raises ResourceExhausted

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        if self.max_wait_us < 0:
            raise ValueError(f"max_wait_us must be >= 0, got {self.max_wait_us}")
        if self.max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {self.max_queue}")


@dataclass
class _Pending(Generic[T, R]):
    item: T
    future: asyncio.Future[R]
    deadline: float | None  # time.monotonic() value


class Batcher(Generic[T, R]):
    """Collects items into batches for ``handler``, which returns one result per item, in order."""

    def __init__(
        self, handler: Callable[[list[T]], Awaitable[list[R]]], config: BatcherConfig
    ) -> None:
        self.handler = handler
        self.config = config
        self._queue: asyncio.Queue[_Pending[T, R]] = asyncio.Queue(config.max_queue)
        self._task: asyncio.Task[None] | None = None
        self.batch_sizes: list[int] = []  # recent sizes, for metrics and tests
        self.on_batch: Callable[[int], None] | None = None

    @property
    def depth(self) -> int:
        """Items waiting in the queue."""
        return self._queue.qsize()

    def start(self) -> None:
        """Start the batching task on the running loop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="batcher")

    async def close(self) -> None:
        """Stop the task; items still queued fail with ResourceExhausted."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        queued = [self._queue.get_nowait() for _ in range(self._queue.qsize())]
        _fail(queued, ResourceExhausted("server is shutting down"))

    async def submit(self, item: T, timeout_s: float | None = None) -> R:
        """Queue ``item`` and wait for its result; raise ResourceExhausted if the queue is full."""
        if self._task is None:
            raise RuntimeError("Batcher.start() was not called")
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        future: asyncio.Future[R] = loop.create_future()
        pending = _Pending(item, future, deadline)
        try:
            self._queue.put_nowait(pending)
        except asyncio.QueueFull:
            raise ResourceExhausted(
                f"request queue is full ({self.config.max_queue} waiting)"
            ) from None
        return await pending.future

    async def _collect(self) -> list[_Pending[T, R]]:
        batch = [await self._queue.get()]
        wait_until = time.monotonic() + self.config.max_wait_us / 1e6
        while len(batch) < self.config.max_batch_size:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            remaining = wait_until - time.monotonic()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        return batch

    def _live(self, batch: list[_Pending[T, R]]) -> list[_Pending[T, R]]:
        # Cancelled callers and passed deadlines are dropped before any work is done.
        now, live = time.monotonic(), []
        for p in batch:
            if p.future.done():
                continue
            if p.deadline is not None and now >= p.deadline:
                p.future.set_exception(DeadlineExceeded("deadline passed in the request queue"))
                continue
            live.append(p)
        return live

    async def _run(self) -> None:
        while True:
            live = self._live(await self._collect())
            if live:
                await self._dispatch(live)

    async def _dispatch(self, live: list[_Pending[T, R]]) -> None:
        self.batch_sizes = [*self.batch_sizes[-999:], len(live)]
        if self.on_batch is not None:
            self.on_batch(len(live))
        try:
            results = await self.handler([p.item for p in live])
            if len(results) != len(live):
                raise RuntimeError(
                    f"batch handler returned {len(results)} results for {len(live)} items"
                )
        except asyncio.CancelledError:
            _fail(live, ResourceExhausted("server is shutting down"))  # nobody waits forever
            raise
        except Exception as exc:  # every caller of the batch gets the failure
            log.exception("batch of %d failed", len(live))
            _fail(live, exc)
            return
        for p, r in zip(live, results, strict=True):
            if not p.future.done():
                p.future.set_result(r)


def _fail(pending: list[_Pending[T, R]], exc: BaseException) -> None:
    for p in pending:
        if not p.future.done():
            p.future.set_exception(exc)
