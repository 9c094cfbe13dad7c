"""rbm-ratings against the real Redis and a registry in tmp: status, trim, export, kills, errors."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from ratinglog import Entry, RatingArchive, RatingRecord, encode_fields, stream_key
from ratinglog.archive import KILL_ENV
from registry.store import FileRegistry
from tests.cli.support import (
    Cli,
    assert_one_line_error,
    assert_usage_error,
    ratings_in_process,
)
from tests.harness.cli import BIN, REDIS_URL, run_cli, train_args
from tests.ratinglog.support import log_ratings, register_version

PROG = "rbm-ratings"


@dataclass(frozen=True)
class Setup:
    """A stream of the test's own and a registry in tmp, with the arguments naming both."""

    client: redis.Redis
    prefix: str
    registry: FileRegistry
    tmp: Path

    @property
    def key(self) -> str:
        return stream_key(self.prefix)

    @property
    def args(self) -> list[str]:
        return ["--redis-url", REDIS_URL, "--prefix", self.prefix, "--registry", str(self.tmp)]

    @property
    def archive(self) -> RatingArchive:
        return RatingArchive(self.tmp, self.prefix)


@pytest.fixture
def setup(redis_prefix: str, tmp_path: Path) -> Iterator[Setup]:
    client = redis.Redis.from_url(REDIS_URL)
    yield Setup(client, f"{redis_prefix}:{uuid.uuid4().hex[:8]}", FileRegistry(tmp_path), tmp_path)
    client.close()


@pytest.fixture
def cli(setup: Setup, capsys: pytest.CaptureFixture[str]) -> Cli:
    """rbm-ratings in-process against the setup's stream and registry."""

    return ratings_in_process(setup.args, capsys)


def ratings_cli(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The installed rbm-ratings, as an operator runs it."""
    return subprocess.run(
        [str(BIN / PROG), *argv],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


def exported(setup: Setup, out: Path) -> list[tuple[int, int, float, int]]:
    """Export through the real CLI and read the CSV back."""
    proc = ratings_cli("export", "--out", str(out), "--json", *setup.args)
    assert proc.returncode == 0, proc.stderr
    with out.open(newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["user_id", "movie_id", "rating", "timestamp"]
    assert json.loads(proc.stdout) == {"rows": len(rows) - 1, "out": str(out)}
    return [(int(u), int(m), float(r), int(t)) for u, m, r, t in rows[1:]]


def as_rows(logged: list[Entry]) -> list[tuple[int, int, float, int]]:
    return [(r.user_id, r.movie_id, r.rating, r.timestamp) for _, r in logged]


# -- status, trim, export: --json shapes and texts --------------------------------------------
def test_status_shows_the_stream_what_is_absorbed_and_what_is_archived(
    setup: Setup, cli: Cli
) -> None:
    empty = cli("status", "--json")
    assert empty.code == 1, "no model yet: nothing could say what was absorbed"
    assert_one_line_error(empty.err, PROG, "model 'rbm' not found")
    logged = log_ratings(setup.client, setup.key, 10)
    register_version(setup.registry, logged[3][0], "production")
    ran = cli("status", "--json")
    assert ran.code == 0, ran.err
    assert json.loads(ran.out) == {
        "length": 10,
        "first_id": logged[0][0],
        "last_id": logged[-1][0],
        "absorbed_until": logged[3][0],
        "archived_entries": 0,
    }
    register_version(setup.registry, None, "staging")
    ran = cli("status")
    assert ran.code == 0 and "10 entries" in ran.out
    assert "nothing: version 2 (staging) was trained without the rating log" in ran.out
    assert json.loads(cli("status", "--json").out)["absorbed_until"] is None


def test_trim_archives_and_drops_what_every_aliased_version_absorbed(
    setup: Setup, cli: Cli, tmp_path: Path
) -> None:
    logged = log_ratings(setup.client, setup.key, 30)
    old = register_version(setup.registry, logged[9][0], "production")
    register_version(setup.registry, logged[19][0], "staging")
    ran = cli("trim", "--json", "--segment-rows", "4")
    assert ran.code == 0, ran.err
    archive = setup.archive
    assert json.loads(ran.out) == {
        "trimmed": 10,
        "length": 20,
        "archive": {
            "path": str(archive.path),
            "entries": 10,
            "last_id": logged[9][0],
            "added": 10,
        },
    }
    assert [s.rows for s in archive.segments()] == [4, 4, 2]
    assert setup.client.xrange(setup.key, count=1)[0][0].decode() == logged[10][0]
    setup.registry.set_alias("rbm", "production", old + 1)
    ran = cli("trim")
    assert ran.code == 0, ran.err
    assert ran.out.startswith(f"archived 10 entries to {archive.path} (20 in all); trimmed 10")
    status = json.loads(cli("status", "--json").out)
    assert status["length"] == 10 and status["archived_entries"] == 20
    assert status["first_id"] == logged[20][0] and status["absorbed_until"] == logged[19][0]
    again = json.loads(cli("trim", "--json").out)
    assert again["trimmed"] == 0 and again["archive"]["added"] == 0 and again["length"] == 10


def test_trim_with_nothing_absorbed_does_nothing_and_says_why(setup: Setup, cli: Cli) -> None:
    log_ratings(setup.client, setup.key, 5)
    register_version(setup.registry, "1-0")  # no alias points to it
    ran = cli("trim")
    assert ran.code == 0, ran.err
    assert (
        ran.out.strip() == "nothing to trim: model 'rbm' has no alias; the stream holds 5 entries"
    )
    register_version(setup.registry, None, "production")
    ran = cli("trim", "--json")
    assert json.loads(ran.out) == {
        "trimmed": 0,
        "length": 5,
        "archive": {"path": str(setup.archive.path), "entries": 0, "last_id": None, "added": 0},
    }
    assert "trained without the rating log" in cli("trim").out
    assert setup.client.xlen(setup.key) == 5


def test_export_writes_every_rating_ever_logged_in_log_order(
    setup: Setup, cli: Cli, tmp_path: Path
) -> None:
    logged = log_ratings(setup.client, setup.key, 12)
    setup.client.xadd(setup.key, {"not": "a rating"})  # skipped, as the trainer skips it
    logged += log_ratings(setup.client, setup.key, 3, first_user=500)
    register_version(setup.registry, logged[7][0], "production")
    assert cli("trim", "--segment-rows", "3").code == 0
    out = tmp_path / "all.csv"
    ran = cli("export", "--out", str(out), "--json")
    assert ran.code == 0, ran.err
    assert json.loads(ran.out) == {"rows": 15, "out": str(out)}
    assert exported(setup, out) == as_rows(logged)
    text = cli("export", "--out", str(out))
    assert text.out.strip() == f"wrote 15 ratings to {out}"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


# -- SIGKILL inside trim, then a rerun --------------------------------------------------------
@pytest.mark.parametrize(
    "point", ["segment-temp:1", "segment:2", "manifest:2", "segment-temp:3", "xtrim", "trimmed"]
)
def test_trim_killed_at_any_step_loses_nothing_and_a_rerun_completes(
    setup: Setup, tmp_path: Path, point: str
) -> None:
    logged = log_ratings(setup.client, setup.key, 250)
    register_version(setup.registry, logged[199][0], "production")
    args = ["trim", "--json", "--segment-rows", "60", *setup.args]
    killed = ratings_cli(*args, env={KILL_ENV: point})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert exported(setup, tmp_path / "killed.csv") == as_rows(logged), "nothing lost"
    done = ratings_cli(*args)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["archive"]["entries"] == 200 and report["length"] == 50
    trimmed_before = 200 if point == "trimmed" else 0
    assert report["trimmed"] == 200 - trimmed_before
    assert [e for page in setup.archive.pages() for e in page] == logged[:200], "no duplicates"
    assert [s.rows for s in setup.archive.segments()] == [60, 60, 60, 20]
    assert exported(setup, tmp_path / "after.csv") == as_rows(logged)


class Writer(threading.Thread):
    """Appends ratings as fast as Redis takes them, as the server does, until stopped."""

    def __init__(self, key: str) -> None:
        super().__init__(daemon=True)
        self.key, self.stop, self.failed = key, threading.Event(), 0
        self.acked: list[Entry] = []

    def run(self) -> None:
        client = redis.Redis.from_url(REDIS_URL)
        user = 1_000_000
        while not self.stop.is_set():
            record = RatingRecord(user, user % 50 + 1, 3.0, user)
            try:
                entry_id = client.xadd(self.key, encode_fields(record)).decode()
            except redis.RedisError:
                self.failed += 1
                continue
            self.acked.append((entry_id, record))
            user += 1
        client.close()


def test_trim_under_load_killed_midway_loses_nothing(setup: Setup, tmp_path: Path) -> None:
    logged = log_ratings(setup.client, setup.key, 60_000)
    register_version(setup.registry, logged[-1][0], "production")
    writer = Writer(setup.key)
    writer.start()
    args = ["trim", "--json", "--segment-rows", "10000", *setup.args]
    outcomes: list[tuple[int, int]] = []  # (exit status, entries archived by then)
    try:
        # Twice just after a segment landed (into reading and writing the next), once early.
        for grow in (True, True, False):
            before = setup.archive.entries
            proc = subprocess.Popen([str(BIN / PROG), *args], stdout=subprocess.DEVNULL)
            deadline = time.monotonic() + 120
            while grow and proc.poll() is None and time.monotonic() < deadline:
                if setup.archive.entries > before:
                    break
                time.sleep(0.005)
            time.sleep(0.05 if grow else 0.3)
            proc.send_signal(signal.SIGKILL)
            outcomes.append((proc.wait(60), setup.archive.entries))
        done = ratings_cli(*args)
        assert done.returncode == 0, done.stderr
    finally:
        writer.stop.set()
        writer.join(30)
    midway = [n for status, n in outcomes if status == -signal.SIGKILL and 0 < n < len(logged)]
    assert midway, f"no run was killed midway: {outcomes}"
    assert writer.failed == 0 and len(writer.acked) > 0
    archived = [e for page in setup.archive.pages() for e in page]
    assert archived == logged, "the archive holds every absorbed entry, once, in order"
    assert json.loads(done.stdout)["archive"]["entries"] == len(logged)
    assert setup.client.xrange(setup.key, count=1)[0][0].decode() == writer.acked[0][0]
    assert exported(setup, tmp_path / "all.csv") == as_rows(logged + writer.acked)


def test_a_retrain_reads_the_archive_and_the_stream(setup: Setup, movielens: Path) -> None:
    logged = log_ratings(setup.client, setup.key, 30)
    register_version(setup.registry, logged[19][0], "production")
    assert ratings_cli("trim", *setup.args).returncode == 0
    assert setup.client.xlen(setup.key) == 10
    proc = run_cli(
        "rbm-train",
        *train_args(setup.tmp, epochs=1, promote=False, data_dir=movielens),
        "--implicit-epochs",
        "1",
        "--item-epochs",
        "1",
        "--ratings-log",
        REDIS_URL,
        "--ratings-log-prefix",
        setup.prefix,
        env={"OMP_NUM_THREADS": "1"},
    )
    report = json.loads(proc.stdout)["rating_log"]
    assert report["read"] == 30 and report["last_id"] == logged[-1][0]


# -- errors -----------------------------------------------------------------------------------
def test_an_unreachable_redis_is_one_line_without_the_password(tmp_path: Path) -> None:
    register_version(FileRegistry(tmp_path), "1-0", "production")
    url = "redis://:hunter2@127.0.0.1:1/0"
    for argv in (["status"], ["trim"], ["export", "--out", str(tmp_path / "x.csv")]):
        proc = ratings_cli(*argv, "--redis-url", url, "--registry", str(tmp_path))
        assert proc.returncode == 1, proc.stderr
        line = assert_one_line_error(proc.stderr, PROG, "rbmrec:ratings", "127.0.0.1:1")
        assert "hunter2" not in line
    assert not (tmp_path / "x.csv").exists()


def test_a_bad_or_missing_url_is_a_usage_error(tmp_path: Path) -> None:
    proc = ratings_cli("status", "--redis-url", "http://example.com", "--registry", str(tmp_path))
    assert proc.returncode == 2
    assert_one_line_error(proc.stderr, PROG, "redis://")
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    proc = subprocess.run(
        [str(BIN / PROG), "status"], capture_output=True, text=True, timeout=60, env=env
    )
    assert proc.returncode == 2
    assert_one_line_error(proc.stderr, PROG, "--redis-url", "$REDIS_URL")
    proc = ratings_cli("status", "--env", "x")
    assert_usage_error(proc.returncode, proc.stderr, PROG)
    proc = ratings_cli("compact")
    assert_usage_error(proc.returncode, proc.stderr, PROG)


def test_redis_url_comes_from_the_environment(setup: Setup) -> None:
    log_ratings(setup.client, setup.key, 2)
    register_version(setup.registry, None, "production")
    args = ["--prefix", setup.prefix, "--registry", str(setup.tmp), "--json"]
    proc = ratings_cli("status", *args, env={"REDIS_URL": REDIS_URL})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["length"] == 2


def test_a_missing_registry_is_one_line(setup: Setup, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    base = ["--redis-url", REDIS_URL, "--prefix", setup.prefix, "--registry", str(missing)]
    for argv in (["status"], ["trim"], ["export", "--out", str(tmp_path / "x.csv")]):
        proc = ratings_cli(*argv, *base)
        assert proc.returncode == 1, proc.stderr
        assert_one_line_error(proc.stderr, PROG, str(missing), "does not exist")
    assert not missing.exists() and not (tmp_path / "x.csv").exists()


def test_a_corrupt_archive_is_one_line_and_trims_nothing(setup: Setup, tmp_path: Path) -> None:
    logged = log_ratings(setup.client, setup.key, 20)
    register_version(setup.registry, logged[9][0], "production")
    assert ratings_cli("trim", *setup.args).returncode == 0
    segment = setup.archive.path / "000001.csv.gz"
    segment.write_bytes(segment.read_bytes()[:-3])
    proc = ratings_cli("export", "--out", str(tmp_path / "x.csv"), *setup.args)
    assert proc.returncode == 1
    assert_one_line_error(proc.stderr, PROG, "000001.csv.gz", "sha256")
    assert not (tmp_path / "x.csv").exists(), "no partial export"
    (setup.archive.path / "MANIFEST.json").write_text("[")
    for argv in (["status"], ["trim"]):
        proc = ratings_cli(*argv, *setup.args)
        assert proc.returncode == 1
        assert_one_line_error(proc.stderr, PROG, "MANIFEST.json")
    assert setup.client.xlen(setup.key) == 10


def test_export_into_a_missing_folder_is_one_line(setup: Setup, tmp_path: Path) -> None:
    proc = ratings_cli("export", "--out", str(tmp_path / "no" / "x.csv"), *setup.args)
    assert proc.returncode == 1
    assert_one_line_error(proc.stderr, PROG, "No such file or directory")


def test_every_command_has_help() -> None:
    for argv in ([], ["status"], ["trim"], ["export"]):
        proc = ratings_cli(*argv, "--help")
        assert proc.returncode == 0 and proc.stdout.startswith("usage: rbm-ratings")
