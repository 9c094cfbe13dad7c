"""The rating log over months: versions absorb it, it is trimmed into the archive, nothing is lost.

Real servers, real Redis, real retrains through rbm-train --ratings-log, and the real
rbm-ratings CLI.
"""

from __future__ import annotations

import csv
import json
import signal
import time
import uuid
from pathlib import Path

import redis

from ratinglog import RatingRecord, encode_fields, stream_key
from ratinglog.archive import KILL_ENV
from rbmrec.v1 import recommender_pb2 as pb
from tests.harness.calls import Load, recommend
from tests.harness.cli import REDIS_URL, TrainedModel, movielens_dir, run_cli, train_model
from tests.harness.metrics import metric
from tests.harness.redis import OwnRedis, wait_for
from tests.harness.registry import copy_registry, register_copy
from tests.harness.server import RunningServer, start_server

QUICK = ("--implicit-epochs", "3", "--item-epochs", "3")


def _updates(server: RunningServer, updates: list[pb.RatingUpdate]) -> list[pb.RatingAck]:
    acks = list(server.stub.UpdateRatings(iter(updates), timeout=30))
    assert len(acks) == len(updates)
    return acks


def _not_in_data(user: int, movies: list[int]) -> list[int]:
    """Those of ``movies`` the user never rated anywhere in ml-100k: a retrain absorbs them
    (they are in no held-out part)."""
    seen = set()
    with open(movielens_dir() / "ml-100k" / "u.data") as f:
        for line in f:
            u, m, *_ = line.split("\t")
            if int(u) == user:
                seen.add(int(m))
    return [m for m in movies if m not in seen]


def _top(
    server: RunningServer, user: int, n: int, include_rated: bool = False
) -> pb.RecommendResponse:
    request = pb.RecommendRequest(user_id=user, n=n, include_rated=include_rated)
    reply: pb.RecommendResponse = server.stub.Recommend(request, timeout=30)
    return reply


def test_a_repeated_update_id_is_logged_once(server: RunningServer, redis_prefix: str) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    before = client.xlen(stream_key(redis_prefix))
    update_id = f"client-{uuid.uuid4().hex}"
    update = pb.RatingUpdate(user_id=3, movie_id=7, rating=4.0, update_id=update_id)
    first, again = _updates(server, [update, update])
    retried = _updates(server, [update])[0]  # a retry on a new stream, as a client would
    assert first.accepted and first.applied and not first.duplicate and first.log_id
    for ack in (again, retried):
        assert ack.accepted and ack.duplicate and ack.log_id == first.log_id
    assert client.xlen(stream_key(redis_prefix)) == before + 1
    too_long = pb.RatingUpdate(user_id=3, movie_id=7, rating=4.0, update_id="x" * 129)
    (refused,) = _updates(server, [too_long])
    assert not refused.accepted and "update_id" in refused.error
    client.close()


def test_a_rating_of_an_unknown_movie_is_stored_not_refused(
    server: RunningServer, redis_prefix: str
) -> None:
    (ack,) = _updates(server, [pb.RatingUpdate(user_id=4, movie_id=99_999, rating=5.0)])
    assert ack.accepted and not ack.applied and ack.log_id and not ack.error
    client = redis.Redis.from_url(REDIS_URL)
    (entry,) = client.xrange(stream_key(redis_prefix), ack.log_id, ack.log_id)
    assert entry[1][b"movie"] == b"99999"
    client.close()
    assert recommend(server.stub, 4).movies  # the user is still served


def test_retrain_promote_trim_then_roll_back_loses_nothing(
    trained: TrainedModel, tmp_path: Path, prefix: str
) -> None:
    registry = copy_registry(trained, tmp_path)  # version 1: trained without the log
    args = ("--redis-prefix", prefix, "--metrics-port", "0", "--poll-interval", "0.2")
    with start_server(registry.root, *args) as running, start_server(registry.root, *args) as other:
        users = [1, 2, 3, 5, 8]
        sent: list[tuple[int, int, float]] = []
        for user in users:
            for movie in _not_in_data(user, list(range(1000, 1683)))[:6]:
                sent.append((user, movie, 5.0))
        acks = _updates(
            running, [pb.RatingUpdate(user_id=u, movie_id=m, rating=r) for u, m, r in sent]
        )
        assert all(a.accepted and a.applied for a in acks)
        replicas = (running.metrics_url, other.metrics_url)
        recommend(other.stub, 1)  # the other replica applies the log before its next batch
        for at in replicas:
            wait_for(lambda at=at: metric(at, "rbmrec_overlay_ratings") == len(sent))

        # Retrain with the log: version 2 absorbs every entry so far.
        report = train_model(
            registry.root,
            "--ratings-log",
            REDIS_URL,
            "--ratings-log-prefix",
            prefix,
            *QUICK,
            epochs=3,
            promote=False,
        )
        version = report["registered"]["version"]
        shown = json.loads(
            run_cli(
                "rbm-registry",
                "--registry",
                str(registry.root),
                "show",
                "rbm",
                str(version),
                "--json",
            ).stdout
        )
        assert shown["rating_log_until"] == acks[-1].log_id
        registry.set_alias("rbm", "production", version, reason="test: absorbed the log")
        for server in (running, other):
            wait_for(lambda server=server: recommend(server.stub, 1).model_version == str(version))
        for at in replicas:
            assert metric(at, "rbmrec_overlay_ratings") == 0  # all of it is in the model now

        later = [(9, m, 4.0) for m in _not_in_data(9, list(range(1000, 1683)))[:3]]
        _updates(running, [pb.RatingUpdate(user_id=u, movie_id=m, rating=r) for u, m, r in later])
        sent += later

        # Trim under load, killed midway once (after archiving, before XTRIM), then run
        # again: the stream keeps only what came after version 2's point.
        ratings_args = (
            "--redis-url",
            REDIS_URL,
            "--prefix",
            prefix,
            "--registry",
            str(registry.root),
        )
        with Load(running) as load, Load(other) as other_load:
            killed = run_cli(
                "rbm-ratings", "trim", *ratings_args, "--json",
                env={KILL_ENV: "xtrim"}, check=False,
            )  # fmt: skip
            assert killed.returncode == -signal.SIGKILL
            trimmed = json.loads(run_cli("rbm-ratings", "trim", *ratings_args, "--json").stdout)
            time.sleep(0.5)
        assert load.failures == [] and other_load.failures == []
        assert trimmed["trimmed"] == len(sent) - len(later) and trimmed["length"] == len(later)
        for server in (running, other):
            recommend(server.stub, 9)
        for at in replicas:
            wait_for(lambda at=at: metric(at, "rbmrec_overlay_ratings") == len(later))
        _assert_every_rating_excluded(running, sent)
        _assert_every_rating_excluded(other, sent)

        # Roll back to version 1 (trained without the log): the archive gives back the rest.
        registry.set_alias("rbm", "production", 1, reason="test: roll back after a trim")
        for server in (running, other):
            wait_for(lambda server=server: recommend(server.stub, 1).model_version == "1")
            _assert_every_rating_excluded(server, sent)
        for at in replicas:
            assert metric(at, "rbmrec_overlay_ratings") == len(sent)
            assert metric(at, "rbmrec_replay_entries") == len(sent)

        out = tmp_path / "all.csv"
        exported = json.loads(
            run_cli(
                "rbm-ratings", "export", "--out", str(out), "--redis-url", REDIS_URL,
                "--prefix", prefix, "--registry", str(registry.root), "--json",
            ).stdout
        )  # fmt: skip
        with open(out, newline="") as f:
            rows = [
                (int(r["user_id"]), int(r["movie_id"]), float(r["rating"]))
                for r in csv.DictReader(f)
            ]
        assert exported["rows"] == len(sent) and rows == sent


def _assert_every_rating_excluded(
    server: RunningServer, sent: list[tuple[int, int, float]]
) -> None:
    for user in {u for u, _, _ in sent}:
        shown = {m.movie_id for m in _top(server, user, 1000).movies}
        assert not shown & {m for u, m, _ in sent if u == user}, f"user {user} got a rated movie"


def test_a_restart_replays_only_what_came_after_the_version(
    trained: TrainedModel, tmp_path: Path, own_redis: OwnRedis
) -> None:
    total, after = 1_000_000, 10_000
    client = redis.Redis.from_url(own_redis.url)
    key = stream_key("rbmrec")
    last_absorbed = ""
    for start in range(0, total, after):
        pipe = client.pipeline(transaction=False)
        for i in range(start, start + after):
            record = RatingRecord(1 + i % 943, 1 + i % 1682, 4.0, 1_700_000_000 + i)
            pipe.xadd(key, encode_fields(record))
        ids = pipe.execute()
        if start + after <= total - after:  # every page but the last is absorbed
            last_absorbed = ids[-1].decode()
    assert client.xlen(key) == total
    registry = copy_registry(trained, tmp_path)
    version = register_copy(registry, rating_log_until=last_absorbed)
    registry.set_alias("rbm", "production", version, reason="test: absorbed all but 10k")
    with start_server(
        registry.root, "--metrics-port", "0", redis_url=own_redis.url, timeout_s=300
    ) as running:
        assert metric(running.metrics_url, "rbmrec_replay_entries") == after
        assert metric(running.metrics_url, "rbmrec_overlay_ratings") <= after
        assert recommend(running.stub, 1).movies
    client.close()
