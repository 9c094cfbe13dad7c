"""rbm-ratings online against the real Redis: impressions and ratings written with explicit
entry ids (their times), figures per version as JSON and as a table, the canary's exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from ratinglog import (
    Impression,
    RatingRecord,
    encode_fields,
    encode_impression,
    impressions_key,
    stream_key,
)
from registry.store import FileRegistry
from tests.cli.support import (
    Cli,
    assert_one_line_error,
    assert_usage_error,
    ratings_in_process,
)
from tests.harness.cli import BIN, REDIS_URL
from tests.harness.redis import free_port
from tests.ratinglog.support import register_version

PROG = "rbm-ratings"
HOUR = 3_600_000
KEYS = ["version", "users", "recommended", "rated_after", "liked_after", "hit_rate"]


@dataclass(frozen=True)
class Setup:
    """Streams of the test's own, a registry in tmp, and Redis's clock when it began."""

    client: redis.Redis
    prefix: str
    registry: FileRegistry
    tmp: Path
    now: int  # Redis millis

    @property
    def args(self) -> list[str]:
        return ["--redis-url", REDIS_URL, "--prefix", self.prefix, "--registry", str(self.tmp)]

    def show(self, millis: int, version: str, user: int, *movies: int, seq: int = 0) -> None:
        """An impression at ``millis`` (its entry id: ``millis-seq``), as the server writes one."""
        fields = encode_impression(Impression(version, "stable", user, movies))
        self.client.xadd(impressions_key(self.prefix), fields, id=f"{millis}-{seq}")

    def rate(self, millis: int, user: int, movie: int, rating: float) -> None:
        """A rating stored at ``millis`` (its entry id); its ts field says otherwise."""
        record = RatingRecord(user, movie, rating, 1)
        self.client.xadd(stream_key(self.prefix), encode_fields(record), id=f"{millis}-0")


@pytest.fixture
def setup(redis_prefix: str, tmp_path: Path) -> Iterator[Setup]:
    client = redis.Redis.from_url(REDIS_URL)
    seconds, micros = client.time()
    prefix = f"{redis_prefix}:{uuid.uuid4().hex[:8]}"
    yield Setup(client, prefix, FileRegistry(tmp_path), tmp_path, seconds * 1000 + micros // 1000)
    client.delete(impressions_key(prefix), stream_key(prefix))
    client.close()


@pytest.fixture
def cli(setup: Setup, capsys: pytest.CaptureFixture[str]) -> Cli:
    """rbm-ratings in-process against the setup's streams and registry."""

    return ratings_in_process(setup.args, capsys)


def ratings_cli(*argv: str) -> subprocess.CompletedProcess[str]:
    """The installed rbm-ratings, as an operator (or a promotion script) runs it."""
    return subprocess.run(
        [str(BIN / PROG), *argv], capture_output=True, text=True, timeout=300, env=os.environ
    )


def test_json_counts_what_users_rated_after_each_version_recommended_it(
    setup: Setup, cli: Cli
) -> None:
    t = setup.now - 10 * HOUR
    setup.rate(t - 5, 1, 11, 5.0)  # before the recommendation: ignored
    setup.show(t, "1", 1, 10, 11, 12)
    setup.show(t + 1, "1", 2, 10)
    setup.show(t + 2, "2", 3, 20, 21)
    setup.show(t + 3, "1", 1, 10, 11)  # shown again: still one recommendation each
    setup.rate(t + 4, 3, 21, 3.0)  # rated after: counts, not liked
    setup.rate(t + 5, 1, 10, 5.0)  # rated after: counts, liked
    setup.rate(t + 2 * HOUR, 2, 10, 5.0)  # past the 1 h window: ignored
    setup.show(setup.now - HOUR // 6, "2", 4, 30)  # its window is still open
    ran = cli("online", "--json", "--window-h", "1")
    assert ran.code == 0, ran.err
    listed = json.loads(ran.out)
    assert [list(entry)[: len(KEYS)] for entry in listed] == [KEYS, KEYS]
    assert [{k: entry[k] for k in KEYS} for entry in listed] == [
        {"version": "1", "users": 2, "recommended": 4, "rated_after": 1, "liked_after": 1}
        | {"hit_rate": 0.25},
        {"version": "2", "users": 1, "recommended": 2, "rated_after": 1, "liked_after": 0}
        | {"hit_rate": 0.5},
    ]
    assert [(e["pending"], e["first_ms"], e["last_ms"]) for e in listed] == [
        (0, t, t + 1),
        (1, t + 2, t + 2),
    ]
    # A window of three hours reaches the rating two hours after; the open pair stays out.
    wide = json.loads(cli("online", "--json", "--window-h", "3").out)
    assert [e["rated_after"] for e in wide] == [2, 1]
    assert wide[1]["pending"] == 1 and wide[1]["recommended"] == 2


def test_the_table_shows_each_version(setup: Setup, cli: Cli) -> None:
    t = setup.now - 30 * HOUR
    setup.show(t, "3", 1, 10, 11)
    setup.rate(t + 1, 1, 11, 4.0)
    ran = cli("online")
    assert ran.code == 0, ran.err
    header, row, footer = ran.out.strip().splitlines()
    assert header.split() == [*KEYS, "like_rate"]
    assert row.split() == ["3", "1", "2", "1", "1", "0.5000", "0.5000"]
    assert footer.startswith("window 24 h")


def test_an_empty_impression_stream_is_an_empty_list(setup: Setup, cli: Cli) -> None:
    register_version(setup.registry, None, "production")
    register_version(setup.registry, None, "canary")
    ran = cli("online", "--json")
    assert (ran.code, json.loads(ran.out), ran.err) == (0, [], "")
    assert "no impressions in" in cli("online").out
    ran = cli("online", "--json", "--canary", "canary")
    assert ran.code == 4, "nothing recommended yet: undecided"
    assert json.loads(ran.out) == []
    assert "undecided" in ran.err and len(ran.err.strip().splitlines()) == 1


def serve_both(setup: Setup, canary_rated: int, production_rated: int, pairs: int = 200) -> None:
    """``pairs`` recommendations of each version 10 h ago, some rated within the hour.

    Both versions start in the same millisecond: the same period is the whole of it.
    """
    t = setup.now - 10 * HOUR
    rated = []
    for n in range(pairs):
        production, canary = 2 * n + 1, 2 * n + 2  # users
        setup.show(t + n, "1", production, 7, seq=0)
        setup.show(t + n, "2", canary, 7, seq=1)
        rated += [production] if n < production_rated else []
        rated += [canary] if n < canary_rated else []
    for user in rated:
        setup.rate(t + pairs + user, user, 7, 4.0)
    register_version(setup.registry, None, "production")
    register_version(setup.registry, None, "canary")


def test_a_worse_canary_exits_3_with_its_verdict_on_stderr(setup: Setup) -> None:
    serve_both(setup, canary_rated=20, production_rated=100)
    argv = ["online", "--json", "--window-h", "1", "--canary", "canary", "--min-recommended"]
    proc = ratings_cli(*argv, "100", *setup.args)
    assert proc.returncode == 3, proc.stderr
    listed = json.loads(proc.stdout)  # the verdict stays off stdout
    assert [(e["version"], e["rated_after"], e["recommended"]) for e in listed] == [
        ("1", 100, 200),
        ("2", 20, 200),
    ]
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"{PROG}: canary canary (version 2) against production (version 1)")
    assert ": worse: hit rate 0.1000 against 0.5000" in line


def test_a_canary_as_good_exits_0_and_too_few_recommendations_exit_4(
    setup: Setup, cli: Cli
) -> None:
    serve_both(setup, canary_rated=95, production_rated=100)
    ran = cli(
        "online", "--window-h", "1", "--canary", "2", "--against", "1", "--min-recommended", "200"
    )
    assert ran.code == 0, ran.err
    assert ": not worse: hit rate 0.4750 against 0.5000" in ran.err
    assert ran.out.startswith("version")
    ran = cli("online", "--json", "--window-h", "1", "--canary", "canary")
    assert ran.code == 4, "200 recommendations each, 1000 needed by default"
    assert ": undecided: too few settled recommendations" in ran.err
    assert len(json.loads(ran.out)) == 2
    ran = cli(
        "online", "--json", "--window-h", "24", "--canary", "canary", "--min-recommended", "1"
    )
    assert ran.code == 4, "a 24 h window has not closed on recommendations 10 h old"


def test_a_canary_that_is_production_or_no_alias_is_one_line(setup: Setup, cli: Cli) -> None:
    register_version(setup.registry, None, "production")
    ran = cli("online", "--canary", "production")
    assert ran.code == 1
    assert_one_line_error(ran.err, PROG, "both version 1")
    ran = cli("online", "--canary", "canary")
    assert ran.code == 1
    assert_one_line_error(ran.err, PROG, "no alias 'canary'")


def test_bad_options_are_usage_errors_and_online_has_help(setup: Setup, cli: Cli) -> None:
    for argv in (["--window-h", "0"], ["--window-h", "-1"], ["--window-h", "nan"]):
        ran = cli("online", *argv)
        assert_usage_error(ran.code, ran.err, PROG)
    ran = cli("online", "--min-recommended", "0")
    assert_usage_error(ran.code, ran.err, PROG)
    proc = ratings_cli("online", "--help")
    assert proc.returncode == 0 and proc.stdout.startswith("usage: rbm-ratings online")
    for option in ("--window-h", "--canary", "--against", "--min-recommended"):
        assert option in proc.stdout
    top = ratings_cli("--help")
    assert top.returncode == 0 and "online" in top.stdout and "3  `online --canary`" in top.stdout


def test_an_unreachable_redis_is_one_line(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    proc = ratings_cli("online", "--redis-url", url, "--registry", str(tmp_path))
    assert proc.returncode == 1
    assert_one_line_error(proc.stderr, PROG, "impressions rbmrec:impressions")
