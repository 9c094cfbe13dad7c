"""A canary version for a share of users: the split, real servers, metrics and impressions."""

from __future__ import annotations

import json
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis
from rbmrec_client import RecommenderClient

from ratinglog.impressions import decode_impression, impressions_key
from rbmrec.v1 import recommender_pb2 as pb
from registry.store import FileRegistry
from server.canary import BUCKETS, Split, bucket
from tests.harness.cli import REDIS_URL, TrainedModel, run_cli
from tests.harness.metrics import metric
from tests.harness.redis import wait_for
from tests.harness.registry import copy_registry, register_copy
from tests.harness.server import RunningServer, start_server

USERS = range(1, 301)  # ml-100k users the model knows

# ---- the split ----------------------------------------------------------------------------


def test_a_users_bucket_is_stable_and_buckets_spread_evenly() -> None:
    assert [bucket(u) for u in range(1, 50)] == [bucket(u) for u in range(1, 50)]
    counts = Counter(bucket(u) * 10 // BUCKETS for u in range(1, 100_001))
    assert set(counts) == set(range(10))
    assert all(9_500 < c < 10_500 for c in counts.values()), counts


@pytest.mark.parametrize("percent", [0.0, 1.0, 10.0, 50.0, 100.0])
def test_a_split_takes_its_percent_of_users(percent: float) -> None:
    split = Split(percent)
    taken = sum(split.takes(u) for u in range(1, 100_001)) / 1000  # in percent
    assert abs(taken - percent) < 0.5, taken


def test_a_larger_canary_keeps_the_users_it_had() -> None:
    ten, twenty = Split(10.0), Split(20.0)
    assert all(twenty.takes(u) for u in range(1, 10_001) if ten.takes(u))


@pytest.mark.parametrize("percent", [-1.0, 100.5, float("nan")])
def test_a_percent_outside_0_to_100_is_refused(percent: float) -> None:
    with pytest.raises(ValueError, match="canary percent"):
        Split(percent)


# ---- real servers ------------------------------------------------------------------------


@pytest.fixture
def registry(trained: TrainedModel, tmp_path: Path) -> FileRegistry:
    """Version 1 in production, version 2 (the same model again) at the alias canary."""
    registry = copy_registry(trained, tmp_path)
    registry.set_alias("rbm", "canary", register_copy(registry), reason="test: canary")
    return registry


def _info(server: RunningServer) -> pb.ModelInfo:
    reply: pb.ModelInfo = server.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=5)
    return reply


def _versions(server: RunningServer, users: range, rounds: int) -> dict[int, set[str]]:
    """Every version that answered each user, over ``rounds`` concurrent passes."""

    def ask(user: int) -> tuple[int, str]:
        reply = server.stub.Recommend(pb.RecommendRequest(user_id=user, n=5), timeout=10)
        return user, reply.model_version

    seen: dict[int, set[str]] = {u: set() for u in users}
    with ThreadPoolExecutor(8) as pool:
        for user, version in pool.map(ask, [u for _ in range(rounds) for u in users]):
            seen[user].add(version)
    return seen


def test_half_the_users_get_the_canary_and_each_user_always_the_same_version(
    registry: FileRegistry, prefix: str
) -> None:
    flags = ("--canary-alias", "canary", "--canary-percent", "50", "--redis-prefix", prefix)
    with start_server(registry.root, *flags, "--metrics-port", "0") as server:
        wait_for(lambda: _info(server).canary_version == "2")
        info = _info(server)
        assert (info.model_version, info.canary_percent, info.canary_alias) == ("1", 50, "canary")
        seen = _versions(server, USERS, rounds=3)  # raises on any failed request
        assert all(len(versions) == 1 for versions in seen.values()), "a user never flips"
        expected = {u: {"2" if Split(50).takes(u) else "1"} for u in USERS}
        assert seen == expected
        shares = Counter(v for versions in seen.values() for v in versions)
        assert 0.35 < shares["2"] / len(USERS) < 0.65, shares
        predicted = server.stub.PredictRatings(
            pb.PredictRatingsRequest(
                user_id=next(u for u in USERS if Split(50).takes(u)), movie_ids=[1]
            ),
            timeout=5,
        )
        assert predicted.model_version == "2", "PredictRatings follows the same split"
        for arm, version in (("stable", "1"), ("canary", "2")):
            answered = metric(
                server.metrics_url,
                "rbmrec_served_total",
                method="Recommend",
                arm=arm,
                version=version,
            )
            assert answered == 3 * shares[version]
        assert metric(server.metrics_url, "rbmrec_canary_version_info", version="2") == 1
        with RecommenderClient(server.target) as client:  # the client library says so too
            seen_by_client = client.info()
        assert (seen_by_client.canary_version, seen_by_client.canary_percent) == ("2", 50)
        shown = json.loads(
            run_cli("rbm-client", "--target", server.target, "--json", "info").stdout
        )
        assert (shown["canary_version"], shown["canary_percent"]) == ("2", 50)
        assert metric(server.metrics_url, "rbmrec_canary_percent") == 50
    assert server.process.returncode == 0


def test_moving_the_canary_alias_moves_only_the_canary_share(
    registry: FileRegistry, prefix: str
) -> None:
    third = register_copy(registry)
    flags = ("--canary-alias", "canary", "--canary-percent", "30", "--redis-prefix", prefix)
    with start_server(registry.root, *flags) as server:
        wait_for(lambda: _info(server).canary_version == "2")
        before = _versions(server, USERS, rounds=1)
        registry.set_alias("rbm", "canary", third, reason="test: a new canary")
        wait_for(lambda: _info(server).canary_version == str(third))
        after = _versions(server, USERS, rounds=1)
        for user in USERS:
            if Split(30).takes(user):
                assert (before[user], after[user]) == ({"2"}, {str(third)})
            else:
                assert before[user] == after[user] == {"1"}, "production's users stay put"
        registry.delete_alias("rbm", "canary", reason="test: the canary ends")
        wait_for(lambda: _info(server).canary_version == "")
        assert _versions(server, USERS, rounds=1) == {u: {"1"} for u in USERS}
        assert _info(server).canary_percent == 0


def test_a_broken_canary_leaves_every_user_on_production(
    registry: FileRegistry, prefix: str
) -> None:
    broken = register_copy(registry, corrupt="shapes")
    registry.set_alias("rbm", "canary", broken, reason="test: a broken canary")
    flags = ("--canary-alias", "canary", "--canary-percent", "50", "--redis-prefix", prefix)
    with start_server(registry.root, *flags) as server:
        log_path = server.log_path
        assert log_path is not None
        wait_for(lambda: "version 3 refused" in log_path.read_text())
        assert _info(server).canary_version == ""
        assert _versions(server, USERS, rounds=1) == {u: {"1"} for u in USERS}


def test_each_answer_is_an_impression_of_the_version_that_gave_it(
    registry: FileRegistry, prefix: str
) -> None:
    flags = ("--canary-alias", "canary", "--canary-percent", "50", "--redis-prefix", prefix)
    client = redis.Redis.from_url(REDIS_URL)
    with start_server(registry.root, *flags) as server:
        wait_for(lambda: _info(server).canary_version == "2")
        answers = {}
        for user in USERS[:40]:
            reply = server.stub.Recommend(pb.RecommendRequest(user_id=user, n=4), timeout=5)
            answers[user] = (reply.model_version, tuple(m.movie_id for m in reply.movies))
        key = impressions_key(prefix)
        wait_for(lambda: client.xlen(key) == len(answers))
    logged = {}
    for _, fields in client.xrange(key):
        impression = decode_impression(fields)
        assert impression.arm == ("canary" if impression.version == "2" else "stable")
        logged[impression.user_id] = (impression.version, impression.movie_ids)
    assert logged == answers


def test_no_canary_flag_means_no_canary(trained: TrainedModel, prefix: str) -> None:
    with start_server(trained.registry, "--redis-prefix", prefix) as server:
        info = _info(server)
        assert (info.canary_version, info.canary_percent, info.canary_alias) == ("", 0, "")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--canary-alias", "production"), "must differ from --alias"),
        (("--canary-alias", "canary", "--canary-percent", "101"), "canary percent"),
        (("--canary-alias", "Bad Alias!"), "alias"),
    ],
)
def test_bad_canary_flags_are_refused_at_start(
    trained: TrainedModel, flags: tuple[str, ...], message: str
) -> None:
    with (
        pytest.raises(AssertionError, match=message),
        start_server(trained.registry, *flags, timeout_s=20),
    ):
        pass  # pragma: no cover - it must not start
