"""A redis-server of a test's own, and the small waits that go with starting processes."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import redis


def wait_for(predicate: Callable[[], object], timeout_s: float = 30) -> None:
    """Poll ``predicate`` until it is true; fail the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def delete_keys(url: str, prefix: str) -> None:
    """Remove every key under ``prefix:`` (a test's own keys, after it)."""
    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(f"{prefix}:*"))
    if keys:
        client.delete(*keys)
    client.close()


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
