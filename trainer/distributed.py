"""Data-parallel training with torch.distributed: one process per CPU share or GPU (torchrun).

CD-k is not autograd: nothing calls ``backward()``, so DistributedDataParallel's gradient
hooks never fire. What they would do is done here by hand: every rank computes the CD
statistics (positive minus negative phase, summed over its users) of its share of the
global minibatch, one ``all_reduce`` sums them, and every rank applies the same update,
the single-process step on the whole minibatch.

The training loops take a ``Communicator``; ``LocalCommunicator`` makes every collective
the identity, so the single-process path does no extra work.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Protocol, TypeVar, cast

import numpy as np
import torch
import torch.distributed as dist

from rbm.model import CDStats

__all__ = [
    "Communicator",
    "LocalCommunicator",
    "ProcessGroupCommunicator",
    "RankZeroFailed",
    "from_environment",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

# The other ranks wait in a broadcast while rank 0 alone scores each epoch on validation;
# on a large data set that can outlast NCCL's 10-minute default.
COLLECTIVE_TIMEOUT = timedelta(hours=1)


class RankZeroFailed(RuntimeError):
    """Raised on the other ranks when a decision made on rank 0 raised there."""


class Communicator(Protocol):
    """What the training loops need from their peers."""

    rank: int
    world_size: int

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the one that evaluates, registers and reports."""

    def local_device(self, device: str) -> str:
        """The device this rank trains on: "cuda" becomes its own GPU."""

    def sampling_seed(self, seed: int) -> int:
        """Seed of this rank's Gibbs-sampling generator: ``seed`` itself on rank 0."""

    def shard(self, rows: np.ndarray) -> np.ndarray:
        """This rank's share of a global minibatch's rows."""

    def reduce_stats(self, stats: CDStats) -> CDStats:
        """The CD statistics summed over every rank's share of the minibatch."""

    def sync(self, tensors: Sequence[torch.Tensor]) -> None:
        """Overwrite ``tensors`` in place with rank 0's values."""

    def decide(self, choose: Callable[[], T]) -> T:
        """Run ``choose`` on rank 0 and give its result to every rank."""

    def close(self) -> None:
        """Leave the process group, if any."""


class LocalCommunicator:
    """A single process: every collective is the identity."""

    rank = 0
    world_size = 1

    @property
    def is_main(self) -> bool:
        """Always true."""
        return True

    def local_device(self, device: str) -> str:
        """``device`` unchanged."""
        return device

    def sampling_seed(self, seed: int) -> int:
        """``seed`` unchanged."""
        return seed

    def shard(self, rows: np.ndarray) -> np.ndarray:
        """All of ``rows``."""
        return rows

    def reduce_stats(self, stats: CDStats) -> CDStats:
        """``stats`` unchanged."""
        return stats

    def sync(self, tensors: Sequence[torch.Tensor]) -> None:
        """Nothing to do."""

    def decide(self, choose: Callable[[], T]) -> T:
        """``choose()``."""
        return choose()

    def close(self) -> None:
        """Nothing to do."""


class ProcessGroupCommunicator:
    """The default torch.distributed process group (gloo on CPU, NCCL on CUDA)."""

    def __init__(self) -> None:
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.local_rank = int(os.environ.get("LOCAL_RANK", self.rank))

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0."""
        return self.rank == 0

    def local_device(self, device: str) -> str:
        """One GPU per rank, by local rank; CPU stays CPU."""
        return f"cuda:{self.local_rank}" if device == "cuda" else device

    def sampling_seed(self, seed: int) -> int:
        """Rank 0 keeps ``seed``; the others draw their own, so their samples are independent."""
        if self.rank == 0:
            return seed
        return int(np.random.SeedSequence([seed, self.rank]).generate_state(1)[0])

    def shard(self, rows: np.ndarray) -> np.ndarray:
        """A contiguous, near-equal share; empty when there are fewer rows than ranks."""
        part: np.ndarray = np.array_split(rows, self.world_size)[self.rank]
        return part

    def reduce_stats(self, stats: CDStats) -> CDStats:
        """One all_reduce over a flat buffer: each collective has a fixed latency."""
        scalars = torch.tensor(
            [stats.recon_sq_error, float(stats.n_entries)],
            dtype=stats.weights.dtype,
            device=stats.weights.device,
        )
        parts = (stats.weights, stats.visible_bias, stats.hidden_bias, scalars)
        flat = torch.cat([t.reshape(-1) for t in parts])
        dist.all_reduce(flat)  # SUM: the statistics are sums over users
        w, vb, hb, sc = torch.split(flat, [t.numel() for t in parts])
        # float32 holds the entry count exactly below 2**24 per minibatch; it only feeds the
        # reconstruction error that is reported, never the update.
        return CDStats(w.view_as(stats.weights), vb, hb, float(sc[0]), round(float(sc[1])))

    def sync(self, tensors: Sequence[torch.Tensor]) -> None:
        """Broadcast from rank 0; logs how far this rank had drifted, if at all."""
        flat = torch.cat([t.reshape(-1) for t in tensors])
        before = flat.clone()
        dist.broadcast(flat, src=0)
        drift = float((flat - before).abs().max()) if flat.numel() else 0.0
        if drift > 0:
            log.warning("rank %d had drifted by %.3g from rank 0; re-synced", self.rank, drift)
        for t, part in zip(tensors, torch.split(flat, [t.numel() for t in tensors]), strict=True):
            t.copy_(part.view_as(t))

    def decide(self, choose: Callable[[], T]) -> T:
        """Rank 0's result, or on every rank an error if ``choose`` raised on rank 0."""
        box: list[object] = [None]
        failure: Exception | None = None
        if self.rank == 0:
            try:
                box[0] = ("ok", choose())
            except Exception as exc:
                failure = exc
                box[0] = ("failed", f"{type(exc).__name__}: {exc}")
        dist.broadcast_object_list(box, src=0)
        status, value = cast(tuple[str, object], box[0])
        if failure is not None:
            raise failure
        if status == "failed":
            raise RankZeroFailed(f"rank 0 failed: {value}")
        return cast(T, value)

    def close(self) -> None:
        """Destroy the process group (NCCL warns at exit otherwise)."""
        dist.destroy_process_group()


def from_environment(device: str) -> Communicator:
    """A process group when torchrun launched several processes (WORLD_SIZE > 1), else local.

    The backend follows the device: NCCL for CUDA, gloo for CPU.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return LocalCommunicator()
    if device == "cuda":
        local = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(local)
        dist.init_process_group("nccl", timeout=COLLECTIVE_TIMEOUT, device_id=local)  # env://
    else:
        dist.init_process_group("gloo", timeout=COLLECTIVE_TIMEOUT)
    return ProcessGroupCommunicator()
