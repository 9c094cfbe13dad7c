"""Serving A/B between git revisions: the same load on each, interleaved with the echo server.

The echo server's own throughput moves by tens of percent between runs on a shared
machine, so one run per variant cannot show a 10% change. This script runs rounds of
echo, then every revision, one after the other, and reports each revision's throughput
as a ratio to the echo server of its own round, plus its p99 and its CPU time per request
(the server process's user+system time over the requests answered, from /proc: Linux only).

    python bench/serve_ab.py --base 704754c [--flags "--torch-threads 2"] [--rounds 5]
                             [--duration 5] [--concurrency 64]

``--base`` (repeatable) names revisions to compare with the working tree; each runs from a
temporary ``git worktree`` on this venv. ``--flags`` (repeatable) adds the working tree
with these extra rbm-serve flags as one more server. The model is an ml-100k one trained
once, served batched with the in-process cache, as the ``batched`` variant of
``bench/serve.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from serve import (  # bench/ is on sys.path when run
    ROOT,
    Variant,
    _load,
    _server,
    _train,
    write_result,
)

BATCHED = Variant("batched", "ml-100k", ("--cache", "memory", "--max-batch-size", "64"))
ECHO = Variant("echo", "ml-100k", ())


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


@contextlib.contextmanager
def _checkout(revision: str, into: Path) -> Iterator[Path]:
    """A worktree of ``revision`` sharing this checkout's generated gRPC stubs."""
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(into), revision],
        check=True,
    )
    try:
        (into / "rbmrec").symlink_to(ROOT / "rbmrec")  # generated, not committed
        yield into
    finally:
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(into)], check=True
        )


@dataclass(frozen=True)
class Server:
    """One server under test: a source tree (None: the working tree) and extra flags."""

    checkout: Path | None
    flags: tuple[str, ...] = ()


def _measure(
    variant: Variant, registry: Path, checkout: Path | None, concurrency: int, duration: float
) -> dict[str, float]:
    with _server(variant, registry, "cpu", checkout) as running:
        _load(running.target, concurrency, 1.0, "1-943")  # warm-up, not counted
        before = _cpu_seconds(running.proc.pid)  # the measured run has no warm-up of its own
        result = _load(running.target, concurrency, duration, "1-943", warmup=0.0)
        spent = _cpu_seconds(running.proc.pid) - before
    result["server_cpu_us_per_request"] = 1e6 * spent / max(result["requests"], 1.0)
    return result


def main() -> None:
    """Run the rounds, print one table row per measurement and a summary, write JSON."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--base", action="append", default=[], help="git revision to compare")
    p.add_argument("--flags", action="append", default=[], help="extra rbm-serve flags")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--duration", type=float, default=5.0, help="seconds measured per point")
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "serve_ab.json")
    a = p.parse_args()
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        registry = Path(tmp) / "registry"
        print("training an ml-100k model for the benchmark ...", file=sys.stderr)
        _train("ml-100k", registry, "cpu")
        servers = {
            rev: Server(stack.enter_context(_checkout(rev, Path(tmp) / f"tree-{i}")))
            for i, rev in enumerate(a.base)
        }
        servers["working tree"] = Server(None)
        servers |= {flags: Server(None, tuple(flags.split())) for flags in a.flags}
        header = ("round", "server", "req/s", "÷ echo", "p99 ms", "cpu µs/req")
        print("{:>5} {:<20} {:>8} {:>7} {:>8} {:>11}".format(*header))
        for round_ in range(1, a.rounds + 1):
            echo = _measure(ECHO, registry, None, a.concurrency, a.duration)
            for name, server in [("echo", Server(None)), *servers.items()]:
                variant = Variant("batched", "ml-100k", (*BATCHED.args, *server.flags))
                r = (
                    echo
                    if name == "echo"
                    else _measure(variant, registry, server.checkout, a.concurrency, a.duration)
                )
                ratio = r["rps"] / echo["rps"]
                rows.append({"round": round_, "server": name, "over_echo": ratio, **r})
                print(
                    f"{round_:>5} {name:<20} {r['rps']:>8.0f} {ratio:>7.3f} {r['p99_ms']:>8.1f} "
                    f"{r['server_cpu_us_per_request']:>11.0f}",
                    flush=True,
                )
    summary = {}
    for name in servers:
        mine = [r for r in rows if r["server"] == name]
        summary[name] = {
            key: statistics.mean(float(r[key]) for r in mine)  # type: ignore[arg-type]
            for key in ("over_echo", "rps", "p99_ms", "server_cpu_us_per_request", "errors")
        }
    print()
    for name, s in summary.items():
        print(
            f"{name:<20} mean ÷ echo {s['over_echo']:.3f}  p99 {s['p99_ms']:.1f} ms  "
            f"cpu {s['server_cpu_us_per_request']:.0f} µs/request  errors {s['errors']:.0f}"
        )
    write_result(
        a.out, "bench/serve_ab.py", {"cpus": os.cpu_count(), "rows": rows, "summary": summary}
    )


if __name__ == "__main__":
    main()
