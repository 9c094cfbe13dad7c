"""Serving benchmark: the real server against a no-model echo server, side by side in one run.

Closed-loop load from a separate process (``bench/loadgen.py``) over loopback. Variants:

- ``echo``: a grpc.aio server with the same messages and no model (the Python-gRPC ceiling);
- ``batched`` / ``unbatched``: rbm-serve with ``--max-batch-size 64`` / ``1``;
- ``hit`` / ``miss``: in-process hidden-state cache that holds every user, or only one
  (every request recomputes the user's hidden state);
- ``redis``: batched, hidden states in Redis (one MGET per batch).

Each runs at every concurrency, for the ml-100k model (1,682 movies) and for an
ml-latest-small model (9,742 movies). Results are ratios between variants measured in
the same run; the absolute numbers depend on the machine and whatever else it runs.

    python bench/serve.py [--duration 5] [--concurrency 1,16,64,256] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
DATA = Path(os.environ.get("RBMREC_DATA", ROOT.parent / "shared" / "movielens"))


@dataclass(frozen=True)
class Variant:
    """One server configuration under test."""

    name: str
    model: str  # "ml-100k" or "ml-latest-small"
    args: tuple[str, ...]  # rbm-serve flags; () with name "echo" means the echo server


@dataclass(frozen=True)
class Running:
    """A started server: its process and the address it serves on."""

    proc: subprocess.Popen[str]
    target: str


def _variants(models: list[str]) -> list[Variant]:
    out = [Variant("echo", "ml-100k", ())]
    for model in models:
        out += [
            Variant("batched", model, ("--cache", "memory", "--max-batch-size", "64")),
            Variant("unbatched", model, ("--cache", "memory", "--max-batch-size", "1")),
        ]
    out += [
        Variant(
            "miss",
            "ml-100k",
            ("--cache", "memory", "--cache-capacity", "1", "--max-batch-size", "64"),
        ),
        Variant(
            "redis",
            "ml-100k",
            ("--cache", "redis", "--max-batch-size", "64", "--redis-prefix", "rbmrec-bench"),
        ),
    ]
    return out


def _train(model: str, registry: Path, device: str) -> None:
    split = "u1" if model == "ml-100k" else "holdout"
    subprocess.run(
        [
            str(BIN / "rbm-train"),
            "--dataset",
            model,
            "--data-dir",
            str(DATA),
            "--split",
            split,
            "--epochs",
            "10",
            "--promote",
            "--quiet",
            "--registry",
            str(registry),
            "--device",
            device,
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )


def _command(variant: Variant, registry: Path, device: str, checkout: Path | None) -> list[str]:
    """The server process of ``variant``, without the flag that says how it tells its address."""
    if variant.name == "echo":
        return [sys.executable, str(ROOT / "bench" / "echo_server.py")]
    program = (
        [str(BIN / "rbm-serve")] if checkout is None else [sys.executable, "-m", "server.main"]
    )
    flags = ["--port", "0", "--registry", str(registry), "--log-level", "WARNING"]
    return [*program, *flags, "--device", device, *variant.args]


@functools.cache
def _takes_address_file(checkout: Path | None) -> bool:
    """Whether the server in ``checkout`` knows --address-file (revisions before it do not)."""
    if checkout is None:
        return True
    shown = subprocess.run(
        [sys.executable, "-m", "server.main", "--help"],
        cwd=checkout,
        capture_output=True,
        text=True,
        check=True,
    )
    return "--address-file" in shown.stdout


def _wait_for_address(proc: subprocess.Popen[str], path: Path, name: str) -> str:
    """HOST:PORT from the address file the server writes once it serves."""
    deadline = time.monotonic() + 300  # a CUDA server can take minutes to start
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{name} server did not start")
        time.sleep(0.05)
    return str(json.loads(path.read_text(encoding="utf-8"))["address"])


def _serving_line(proc: subprocess.Popen[str], name: str) -> str:
    """HOST:PORT from the "serving ... on HOST:PORT" line, for revisions before --address-file."""
    assert proc.stdout is not None
    for line in proc.stdout:
        match = re.search(r"^serving .* on (\S+:\d+)$", line.strip())
        if match:
            return match.group(1)
    raise RuntimeError(f"{name} server did not start")


@contextlib.contextmanager
def _server(
    variant: Variant, registry: Path, device: str, checkout: Path | None = None
) -> Iterator[Running]:
    """Start ``variant``; yield it once it has written where it serves.

    With ``checkout``, rbm-serve runs from that source tree (``python -m server.main``).
    """
    cmd = _command(variant, registry, device, checkout)
    by_file = variant.name == "echo" or _takes_address_file(checkout)  # echo: this tree's
    with tempfile.TemporaryDirectory() as tmp:
        address_file = Path(tmp) / "address.json"
        if by_file:
            cmd += ["--address-file", str(address_file)]
        stdout = subprocess.DEVNULL if by_file else subprocess.PIPE
        proc = subprocess.Popen(
            cmd, stdout=stdout, stderr=subprocess.DEVNULL, text=True, cwd=checkout
        )
        try:
            if by_file:
                yield Running(proc, _wait_for_address(proc, address_file, variant.name))
            else:
                yield Running(proc, _serving_line(proc, variant.name))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=30)


def _load(
    target: str, concurrency: int, duration: float, users: str, warmup: float = 1.0
) -> dict[str, float]:
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "loadgen.py"),
            "--target",
            target,
            "--concurrency",
            str(concurrency),
            "--duration",
            str(duration),
            "--users",
            users,
            "--warmup",
            str(warmup),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, float] = json.loads(out.stdout)
    return result


def write_result(out: Path, script: str, fields: dict[str, object]) -> None:
    """Write a benchmark's JSON: when and how it ran, then ``fields``."""
    when = datetime.now(UTC).isoformat(timespec="seconds")
    command = " ".join(["python", script, *sys.argv[1:]])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"when": when, "command": command, **fields}, indent=1))
    print(f"wrote {out}", file=sys.stderr)


def _ratio(rows: list[dict[str, object]], a: tuple[str, str], b: tuple[str, str], c: int) -> float:
    def rps(name: str, model: str) -> float:
        for r in rows:
            if (r["variant"], r["model"], r["concurrency"]) == (name, model, c):
                return float(r["rps"])  # type: ignore[arg-type]
        return float("nan")

    return rps(*a) / rps(*b)


def main() -> None:
    """Run every variant at every concurrency, print a table and write JSON."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--duration", type=float, default=5.0, help="seconds measured per point")
    p.add_argument("--concurrency", default="1,16,64,256")
    p.add_argument("--models", default="ml-100k,ml-latest-small")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where models run")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "serve.json")
    a = p.parse_args()
    levels = [int(c) for c in a.concurrency.split(",")]
    models = a.models.split(",")
    users = {"ml-100k": "1-943", "ml-latest-small": "1-610"}
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        registries = {m: Path(tmp) / m for m in models}
        for model, registry in registries.items():
            print(f"training a {model} model for the benchmark ...", file=sys.stderr)
            _train(model, registry, a.device)
        print(
            f"{'variant':<10} {'model':<16} {'conc':>5} {'req/s':>9} {'p50 ms':>8} "
            f"{'p95 ms':>8} {'p99 ms':>8} {'errors':>7}"
        )
        for variant in _variants(models):
            with _server(variant, registries[variant.model], a.device) as running:
                for c in levels:
                    r = _load(running.target, c, a.duration, users[variant.model])
                    rows.append(
                        {"variant": variant.name, "model": variant.model, "concurrency": c, **r}
                    )
                    print(
                        f"{variant.name:<10} {variant.model:<16} {c:>5} {r['rps']:>9.0f} "
                        f"{r['p50_ms']:>8.2f} {r['p95_ms']:>8.2f} {r['p99_ms']:>8.2f} "
                        f"{int(r['errors']):>7}",
                        flush=True,
                    )
    small = "ml-latest-small"
    summary = {
        "batched_over_echo_c64_ml100k": _ratio(
            rows, ("batched", "ml-100k"), ("echo", "ml-100k"), 64
        ),
        "batched_over_unbatched_c64_ml100k": _ratio(
            rows, ("batched", "ml-100k"), ("unbatched", "ml-100k"), 64
        ),
        "batched_over_unbatched_c64_ml_latest_small": _ratio(
            rows, ("batched", small), ("unbatched", small), 64
        ),
        "hit_over_miss_c64_ml100k": _ratio(rows, ("batched", "ml-100k"), ("miss", "ml-100k"), 64),
        "redis_over_memory_c64_ml100k": _ratio(
            rows, ("redis", "ml-100k"), ("batched", "ml-100k"), 64
        ),
        "p99_ms_batched_c16_ml100k": next(
            (
                float(r["p99_ms"])
                for r in rows  # type: ignore[arg-type]
                if (r["variant"], r["model"], r["concurrency"]) == ("batched", "ml-100k", 16)
            ),
            float("nan"),
        ),
        "total_errors": sum(float(r["errors"]) for r in rows),  # type: ignore[arg-type]
    }
    print()
    for key, value in summary.items():
        print(f"{key:<45} {value:.3f}")
    write_result(
        a.out,
        "bench/serve.py",
        {
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
            "duration_s": a.duration,
            "device": a.device,
            "rows": rows,
            "summary": summary,
        },
    )


if __name__ == "__main__":
    main()
