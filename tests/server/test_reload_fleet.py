"""Fleet-safe reload: jittered polls, refusals retried when their cause passes, two replicas."""

from __future__ import annotations

import asyncio
import itertools
import random
import re
import time
from datetime import datetime
from itertools import islice
from pathlib import Path

import pytest
import torch

from rbm.checkpoint import TENSORS_FILE
from rbmrec.v1 import recommender_pb2 as pb
from registry.errors import ErrorCode, RegistryError
from registry.store import FileRegistry
from server.engine import Engine
from server.errors import Unavailable
from server.main import poll_delays, swap_rng
from server.model_holder import Backoff, ModelHolder, is_transient
from tests.harness.calls import Load
from tests.harness.cli import TrainedModel
from tests.harness.redis import wait_for
from tests.harness.registry import copy_registry, register_copy
from tests.harness.server import RunningServer, start_server

# ---- units: backoff, classification, poll delays -----------------------------------------


def test_backoff_doubles_from_one_second_up_to_the_cap() -> None:
    backoff = Backoff()
    assert [backoff.delay(a) for a in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert backoff.delay(10_000) == 60
    with pytest.raises(ValueError):
        Backoff(first_s=0)


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (OSError("disk"), True),
        (PermissionError("denied"), True),
        (TimeoutError("slow"), True),
        (Unavailable("rating log down"), True),
        (RegistryError("EACCES", ErrorCode.IO_ERROR), True),
        (RegistryError("checksum mismatch", ErrorCode.CORRUPT), False),
        (ValueError("wrong shapes"), False),
        (RuntimeError("bad checkpoint format"), False),
    ],
)
def test_load_failures_are_classified(exc: Exception, transient: bool) -> None:
    assert is_transient(exc) is transient


def test_poll_delays_are_jittered_seeded_and_bounded() -> None:
    delays = list(islice(poll_delays(2.0, 0.5, random.Random(7)), 200))
    assert delays == list(islice(poll_delays(2.0, 0.5, random.Random(7)), 200))
    assert 0 <= delays[0] <= 3.0, "the first wait may be anything up to a long interval"
    assert all(1.0 <= d <= 3.0 for d in delays[1:])
    assert len(set(delays)) == len(delays)
    assert list(islice(poll_delays(2.0, 0.0), 3)) == [2.0, 2.0, 2.0]


class _Clock:
    """A clock the test moves."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _holder(
    registry: FileRegistry, clock: _Clock, fail: list[Exception], spread_s: float = 0.0
) -> tuple[ModelHolder, list[int]]:
    """A holder whose loads raise the exceptions in ``fail`` first; the list of load calls."""
    holder = ModelHolder(
        registry,
        "rbm",
        "production",
        torch.device("cpu"),
        clock=clock,
        spread_s=spread_s,
        rng=random.Random(3),
    )
    calls: list[int] = []
    real = holder._load

    def load(version: int) -> Engine:
        calls.append(version)
        if fail:
            raise fail.pop(0)
        return real(version)

    holder._load = load  # type: ignore[method-assign]
    return holder, calls


def test_a_transient_failure_is_retried_after_its_backoff(
    trained: TrainedModel, tmp_path: Path
) -> None:
    registry = copy_registry(trained, tmp_path)
    clock = _Clock()
    holder, calls = _holder(registry, clock, [PermissionError("denied"), OSError("again")])
    assert not asyncio.run(holder.refresh())
    assert holder.status.refused_version == "1" and "denied" in holder.status.last_error
    clock.now = 0.9
    assert not asyncio.run(holder.refresh()) and calls == [1], "not before 1 s"
    clock.now = 1.0
    assert not asyncio.run(holder.refresh()) and calls == [1, 1]
    clock.now = 1.0 + 1.9
    assert not asyncio.run(holder.refresh()) and calls == [1, 1], "then 2 s"
    clock.now = 3.0
    assert asyncio.run(holder.refresh()) and calls == [1, 1, 1]
    assert holder.engine is not None and holder.engine.version == "1"
    assert holder.status.refused_version == "" and holder.status.failures == 2


def test_a_permanent_failure_waits_for_its_files_to_change(
    trained: TrainedModel, tmp_path: Path
) -> None:
    registry = copy_registry(trained, tmp_path)
    clock = _Clock()
    holder, calls = _holder(registry, clock, [ValueError("wrong shapes")])
    assert not asyncio.run(holder.refresh())
    clock.now = 3600.0
    assert not asyncio.run(holder.refresh()) and calls == [1], "time alone does not retry it"
    weights = registry.get_version("rbm", 1).path / TENSORS_FILE
    weights.write_bytes(weights.read_bytes())  # rewritten in place: same bytes, new file times
    assert asyncio.run(holder.refresh()) and calls == [1, 1]


def test_a_move_is_loaded_after_the_replicas_share_of_the_spread(
    trained: TrainedModel, tmp_path: Path
) -> None:
    registry = copy_registry(trained, tmp_path)
    clock = _Clock()
    holder, calls = _holder(registry, clock, [], spread_s=10.0)
    assert asyncio.run(holder.refresh()) and calls == [1], "a first version loads at once"
    second = register_copy(registry)
    registry.set_alias("rbm", "production", second)
    wait = random.Random(3).uniform(0, 10.0)  # the holder's first draw
    assert not asyncio.run(holder.refresh()) and calls == [1]
    clock.now = wait - 0.01
    assert not asyncio.run(holder.refresh()) and calls == [1], "not before its share"
    clock.now = wait
    assert asyncio.run(holder.refresh()) and calls == [1, second]
    registry.set_alias("rbm", "production", 1)  # a rollback draws a new share
    assert not asyncio.run(holder.refresh()) and calls == [1, second], "it draws its own share"


# ---- real servers -----------------------------------------------------------------------


def _info(server: RunningServer) -> pb.GetModelInfoResponse:
    reply: pb.GetModelInfoResponse = server.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=5)
    return reply


def test_a_refused_then_repaired_version_is_picked_up_without_a_restart(
    trained: TrainedModel, tmp_path: Path
) -> None:
    registry = copy_registry(trained, tmp_path)
    broken = register_copy(registry)
    weights = registry.get_version("rbm", broken).path / TENSORS_FILE
    good = weights.read_bytes()
    flipped = bytearray(good)
    flipped[-1] ^= 0xFF  # the checksum sees it: CORRUPT, a permanent refusal
    weights.write_bytes(bytes(flipped))
    with start_server(registry.root, "--cache", "memory") as server, Load(server, 2) as load:
        wait_for(lambda: all(len(v) > 3 for v in load.versions))
        registry.set_alias("rbm", "production", broken, reason="test: corrupt")
        wait_for(lambda: _info(server).refused_version == str(broken))
        time.sleep(1.0)  # several polls: it stays refused, version 1 serves
        info = _info(server)
        assert info.model_version == "1" and "checksum" in info.last_reload_error
        weights.write_bytes(good)  # repaired in place
        wait_for(lambda: _info(server).model_version == str(broken), timeout_s=30)
        assert _info(server).refused_version == ""
    assert load.failures == []
    assert server.log.count("refused") == 1, "a permanent refusal is not retried until repaired"


_SPREAD_S = 6.0


def _seeds_apart(gap_s: float) -> tuple[int, int, float]:
    """Two --poll-seed values whose first swap waits differ by ``gap_s`` or more, and that gap."""
    waits = {seed: swap_rng(seed).uniform(0, _SPREAD_S) for seed in range(50)}
    for a, b in itertools.combinations(waits, 2):
        if abs(waits[a] - waits[b]) >= gap_s:
            return a, b, abs(waits[a] - waits[b])
    raise AssertionError("no two seeds apart")  # pragma: no cover - 50 draws of U[0, 6]


def _load_started(log: str, version: int) -> datetime:
    """When a server's log says it started loading ``version``."""
    match = re.search(rf"^(\S+ \S+) INFO \S+: loading rbm version {version} ", log, re.M)
    assert match is not None, f"no load of version {version} in the log:\n{log[-2000:]}"
    return datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f")


def test_two_replicas_under_load_swap_apart_without_a_failed_request(
    trained: TrainedModel, tmp_path: Path
) -> None:
    registry = copy_registry(trained, tmp_path)
    second = register_copy(registry)
    seed_a, seed_b, drawn_gap = _seeds_apart(3.0)
    common = ("--cache", "memory", "--swap-spread-s", str(_SPREAD_S), "--log-level", "INFO")
    with (
        start_server(registry.root, *common, "--poll-seed", str(seed_a)) as a,
        start_server(registry.root, *common, "--poll-seed", str(seed_b)) as b,
        Load(a, 2) as load_a,
        Load(b, 2) as load_b,
    ):
        wait_for(lambda: all(len(v) > 3 for v in load_a.versions + load_b.versions))
        registry.set_alias("rbm", "production", second, reason="test: a fleet promotion")
        wait_for(lambda: {_info(a).model_version, _info(b).model_version} == {str(second)}, 60)
        wait_for(lambda: all(v[-1] == str(second) for v in load_a.versions + load_b.versions))
    assert load_a.failures == [] and load_b.failures == [], "no request fails through the swap"
    started = sorted([_load_started(a.log, second), _load_started(b.log, second)])
    spread = (started[1] - started[0]).total_seconds()
    print(
        f"swap starts {started[0].time()} and {started[1].time()}: {spread:.2f}s apart "
        f"(seeds {seed_a}, {seed_b} drew waits {drawn_gap:.2f}s apart)"
    )
    assert spread >= 1.0, f"the two replicas started loading {spread:.2f}s apart"
