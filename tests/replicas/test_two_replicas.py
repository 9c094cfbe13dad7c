"""Two replicas behind one Redis and one registry behave as one service."""

from __future__ import annotations

import signal
import time

import numpy as np

from rbmrec.v1 import recommender_pb2 as pb
from tests.harness.calls import Load, recommend, update
from tests.harness.redis import wait_for
from tests.harness.registry import register_copy
from tests.harness.server import RunningServer
from tests.replicas.conftest import Replicas

SWAP_BOUND_S = 10.0  # poll interval 0.2 s plus load, verify and warm-up of a small model


def _movies(server: RunningServer, user: int, n: int = 50) -> list[int]:
    return [m.movie_id for m in recommend(server.stub, user, n).movies]


def test_an_update_streamed_to_a_changes_the_next_answer_of_b(replicas: Replicas) -> None:
    user = 5
    before_b = _movies(replicas.b, user)
    movie = before_b[0]
    assert update(replicas.a, user, movie, 1.0).accepted
    after_b = recommend(replicas.b.stub, user, 50)
    assert movie not in {m.movie_id for m in after_b.movies}, "B must see A's update at once"
    after_a = recommend(replicas.a.stub, user, 50)
    assert [m.movie_id for m in after_a.movies] == [m.movie_id for m in after_b.movies]
    np.testing.assert_allclose(
        [m.score for m in after_a.movies], [m.score for m in after_b.movies], atol=1e-5
    )


def test_a_new_user_rating_on_a_gets_personal_answers_from_b(replicas: Replicas) -> None:
    user = 50_000_000  # not in the training data
    popular = _movies(replicas.b, user, 10)
    for movie in popular[:3]:
        assert update(replicas.a, user, movie, 5.0).accepted
    personal = _movies(replicas.b, user, 10)
    assert not set(popular[:3]) & set(personal), "rated movies leave B's answer"
    assert personal == _movies(replicas.a, user, 10)


def test_a_promotion_reaches_both_replicas_in_bounded_time(replicas: Replicas) -> None:
    version = register_copy(replicas.registry)
    promoted = time.monotonic()
    replicas.registry.set_alias("rbm", "production", version, reason="two-replica test")
    switched: dict[str, float] = {}

    def both_switched() -> bool:
        for name, server in (("a", replicas.a), ("b", replicas.b)):
            info = server.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=5)
            if name not in switched and info.model_version == str(version):
                switched[name] = time.monotonic() - promoted
        return len(switched) == 2

    wait_for(both_switched, SWAP_BOUND_S)
    assert recommend(replicas.a.stub, 1).model_version == str(version)
    assert recommend(replicas.b.stub, 1).model_version == str(version)


def test_killing_one_replica_leaves_the_other_answering(replicas: Replicas) -> None:
    with Load(replicas.b) as load:
        wait_for(lambda: all(len(v) > 5 for v in load.versions))
        replicas.a.process.send_signal(signal.SIGKILL)
        replicas.a.process.wait(10)
        answered = [len(v) for v in load.versions]
        wait_for(lambda: all(len(v) > n + 20 for v, n in zip(load.versions, answered, strict=True)))
    assert load.failures == []
    assert replicas.a.process.returncode == -signal.SIGKILL
