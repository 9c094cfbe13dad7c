"""Helpers for tests that drive a real server: calls, client load, an own Redis, metrics."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from rbmrec.v1 import recommender_pb2 as pb

if TYPE_CHECKING:  # conftest imports this module for its fixtures
    from tests.server.conftest import RunningServer


def recommend(stub: object, user: int, n: int = 10) -> pb.RecommendResponse:
    """One Recommend call."""
    return stub.Recommend(pb.RecommendRequest(user_id=user, n=n), timeout=30)  # type: ignore[attr-defined]


def update(server: RunningServer, user: int, movie: int, rating: float) -> pb.RatingAck:
    """Stream one rating update and return its acknowledgement."""
    acks = list(
        server.stub.UpdateRatings(
            iter([pb.RatingUpdate(user_id=user, movie_id=movie, rating=rating)]), timeout=10
        )
    )
    assert len(acks) == 1
    return acks[0]


def try_update(server: RunningServer, user: int, movie: int, rating: float) -> bool:
    """Whether one update was acknowledged (False on any RPC error)."""
    try:
        return update(server, user, movie, rating).accepted
    except grpc.RpcError:
        return False


class Load:
    """Clients calling Recommend in a loop until stopped; records versions and failures."""

    def __init__(self, server: RunningServer, threads: int = 4) -> None:
        self.server = server
        self.stop = threading.Event()
        self.versions: list[list[str]] = [[] for _ in range(threads)]
        self.failures: list[str] = []
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]

    def _run(self, i: int) -> None:
        user = 1 + i
        while not self.stop.is_set():
            try:
                self.versions[i].append(recommend(self.server.stub, user).model_version)
            except grpc.RpcError as exc:
                self.failures.append(f"{exc.code()}: {exc.details()}")
            user = user % 900 + 1

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)


def wait_for(predicate: Callable[[], object], timeout_s: float = 30) -> None:
    """Poll ``predicate`` until it is true; fail the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OwnRedis:
    """A redis-server of the test's own on a free loopback port; only it is ever stopped.

    Append-only with ``appendfsync always`` by default: an XADD that Redis confirmed is
    on disk, so even SIGKILL loses no acknowledged rating (the deployment's setting too).
    """

    def __init__(self, tmp: Path, fsync: str = "always") -> None:
        self.port, self.dir, self.fsync = free_port(), tmp, fsync
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                self.fsync,
                "--dir",
                str(self.dir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(self._answers, 10)

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        """Shut it down (SIGTERM)."""
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None

    def kill(self) -> None:
        """Kill it with SIGKILL: no shutdown, no final flush."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None


def metric(url: str, name: str, **labels: str) -> float:
    """One sample of the server's /metrics (0 when absent)."""
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        key, _, value = line.rpartition(" ")
        if key == (f"{name}{{{want}}}" if labels else name):
            return float(value)
    return 0.0
