"""Online evaluation end to end: a real server's impressions, real ratings, rbm-ratings online."""

from __future__ import annotations

import json
import time
from pathlib import Path

import redis

from ratinglog.impressions import impressions_key
from rbmrec.v1 import recommender_pb2 as pb
from registry.store import FileRegistry
from server.canary import Split
from tests.harness.calls import update
from tests.harness.cli import REDIS_URL, TrainedModel, run_cli
from tests.harness.redis import wait_for
from tests.harness.registry import copy_registry, register_copy
from tests.harness.server import RunningServer, start_server

WINDOW_H = 0.001  # 3.6 s: the test waits for it to close (only settled windows count)
X, Y, A, B = 1, 2, 50, 100  # ml-100k movie ids


def _recommend(server: RunningServer, user: int, *movies: int) -> str:
    """Recommend exactly ``movies`` (as candidates, rated ones too); the version that answered."""
    request = pb.RecommendRequest(
        user_id=user, n=len(movies), include_rated=True, candidate_movie_ids=movies
    )
    reply = server.stub.Recommend(request, timeout=5)
    assert sorted(m.movie_id for m in reply.movies) == sorted(movies)
    return str(reply.model_version)


def test_a_rating_after_a_recommendation_counts_and_one_before_does_not(
    trained: TrainedModel, tmp_path: Path, prefix: str
) -> None:
    registry: FileRegistry = copy_registry(trained, tmp_path)
    registry.set_alias("rbm", "canary", register_copy(registry), reason="test: canary")
    stable_user = next(u for u in range(1, 900) if not Split(50).takes(u))
    canary_user = next(u for u in range(1, 900) if Split(50).takes(u))
    client = redis.Redis.from_url(REDIS_URL)
    key = impressions_key(prefix)
    flags = ("--canary-alias", "canary", "--canary-percent", "50", "--redis-prefix", prefix)
    with start_server(registry.root, *flags) as server:
        wait_for(lambda: server.stub.GetModelInfo(pb.GetModelInfoRequest()).canary_version)
        # Rated first, recommended after: the rating precedes the impression, so it is ignored.
        assert update(server, stable_user, X, 5.0).accepted
        assert _recommend(server, stable_user, X, Y) == "1"
        assert _recommend(server, stable_user, A, B) == "1"
        assert _recommend(server, canary_user, A, B) == "2"
        wait_for(lambda: client.xlen(key) == 3)  # flushed: the ratings below come after
        assert update(server, stable_user, A, 4.0).accepted  # follows: rated and liked
        assert update(server, canary_user, B, 2.0).accepted  # follows: rated, not liked
    time.sleep(WINDOW_H * 3600 + 0.5)  # every window closed
    common = ("--redis-url", REDIS_URL, "--prefix", prefix, "--registry", str(registry.root))
    out = run_cli("rbm-ratings", *common, "online", "--json", "--window-h", str(WINDOW_H))
    figures = {str(row["version"]): row for row in json.loads(out.stdout)}
    keys = ("users", "recommended", "rated_after", "liked_after", "hit_rate")
    assert {v: tuple(row[k] for k in keys) for v, row in figures.items()} == {
        "1": (1, 4, 1, 1, 0.25),  # X (rated before), Y, A (rated after, liked), B
        "2": (1, 2, 1, 0, 0.5),  # A, B (rated after, 2 stars)
    }
