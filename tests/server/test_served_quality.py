"""The trainer's report measures what the server serves: lists, ratings and the figures.

A client asks the real server for every u1 test user and scores the answers itself (its own
RMSE and NDCG code below); ``rbm-train --json`` must report the same figures, and the
evaluation's own top-10 lists and ratings must equal the served ones.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from rbm.checkpoint import load_checkpoint, save_checkpoint
from rbm.model import RBMParams
from rbmrec.v1 import recommender_pb2 as pb
from registry.records import VersionMeta
from registry.store import FileRegistry
from tests.harness.cli import TrainedModel
from tests.harness.server import RunningServer, start_server
from trainer.data import Dataset, load_dataset
from trainer.served_eval import engine_for, served_predictions, served_top_n

K = 10


@pytest.fixture(scope="module")
def u1(movielens: Path) -> Dataset:
    """ml-100k with its canonical u1 split, as the session's model was trained on."""
    return load_dataset("ml-100k", movielens, "u1")


@pytest.fixture(scope="module")
def quiet_server(trained: TrainedModel) -> Iterator[RunningServer]:
    """A server with a rating log of its own: no other test's updates reach these users."""
    prefix = f"rbmrec-quality-{uuid.uuid4().hex[:8]}"
    with start_server(trained.registry, "--redis-prefix", prefix) as running:
        yield running


def _by_user(users: np.ndarray, movies: np.ndarray) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for u, m in zip(users.tolist(), movies.tolist(), strict=True):
        out.setdefault(u, []).append(m)
    return out


def _client_ndcg(served: dict[int, list[int]], liked: dict[int, list[int]]) -> float:
    """NDCG@10 with binary gains, as a client team would compute it from the answers."""
    total = 0.0
    for user, relevant in liked.items():
        dcg = sum(1 / math.log2(i + 2) for i, m in enumerate(served[user]) if m in relevant)
        ideal = sum(1 / math.log2(i + 2) for i in range(min(len(relevant), K)))
        total += dcg / ideal
    return total / len(liked)


def test_report_figures_are_what_a_client_measures(
    quiet_server: RunningServer, trained: TrainedModel, u1: Dataset
) -> None:
    test = u1.test
    pairs = _by_user(test.users, test.movies)
    truth = _by_user(test.users, test.ratings)
    sq, n = 0.0, 0
    for user, movies in pairs.items():
        reply = quiet_server.stub.PredictRatings(
            pb.PredictRatingsRequest(user_id=user, movie_ids=movies), timeout=30
        )
        for got, want in zip(reply.ratings, truth[user], strict=True):
            sq, n = sq + (got - want) ** 2, n + 1
    client_rmse = math.sqrt(sq / n)

    liked_mask = test.ratings >= 4
    liked = _by_user(test.users[liked_mask], test.movies[liked_mask])
    served = {
        user: [
            m.movie_id
            for m in quiet_server.stub.Recommend(
                pb.RecommendRequest(user_id=user, n=K), timeout=30
            ).movies
        ]
        for user in liked
    }
    client_ndcg = _client_ndcg(served, liked)

    report = trained.report
    assert n == len(test) and len(liked) == report["ranking_users"]
    assert abs(float(report["rmse"]) - client_rmse) <= 0.002, (report["rmse"], client_rmse)  # type: ignore[arg-type]
    assert abs(float(report["ndcg@10"]) - client_ndcg) <= 0.005, (report["ndcg@10"], client_ndcg)  # type: ignore[arg-type]


def test_evaluation_lists_and_ratings_equal_the_served_ones(
    quiet_server: RunningServer, trained: TrainedModel, u1: Dataset
) -> None:
    version = FileRegistry(trained.registry).resolve("rbm", "production")
    ckpt = load_checkpoint(version.path)
    assert ckpt.rating_inference == "second_order"  # the default: its ratings are checked here
    engine = engine_for(ckpt)
    users = sorted({int(u) for u in u1.test.users})[::9]  # a sample of ~100 test users
    pairs = _by_user(u1.test.users, u1.test.movies)

    for user, evaluated in zip(users, served_top_n(engine, users, K), strict=True):
        reply = quiet_server.stub.Recommend(pb.RecommendRequest(user_id=user, n=K), timeout=30)
        assert [m.movie_id for m in reply.movies] == evaluated.movie_ids, user
        np.testing.assert_allclose([m.score for m in reply.movies], evaluated.scores, atol=1e-5)
        np.testing.assert_allclose(
            [m.predicted_rating for m in reply.movies], evaluated.predicted, atol=1e-5
        )

    wanted = [pairs[u] for u in users]
    for user, movies, evaluated_ratings in zip(
        users, wanted, served_predictions(engine, users, wanted), strict=True
    ):
        reply = quiet_server.stub.PredictRatings(
            pb.PredictRatingsRequest(user_id=user, movie_ids=movies), timeout=30
        )
        np.testing.assert_allclose(list(reply.ratings), evaluated_ratings, atol=1e-5)


def test_two_registries_version_1_never_share_cached_states(
    trained: TrainedModel, u1: Dataset, tmp_path: Path
) -> None:
    # Both registries hold a "version 1" of "rbm", with different weights, and both
    # servers use one Redis prefix. Keyed by version number alone, the second server read
    # the first one's cached hidden states and served the first model's answers for them.
    ckpt = load_checkpoint(FileRegistry(trained.registry).resolve("rbm", "production").path)
    ckpt.params = RBMParams(
        ckpt.params.weights * 0.5, ckpt.params.visible_bias, ckpt.params.hidden_bias
    )
    other = FileRegistry(tmp_path / "other")
    info = other.register("rbm", lambda d: save_checkpoint(ckpt, d), VersionMeta())
    other.set_alias("rbm", "production", info.version)
    assert info.version == 1
    users = sorted({int(u) for u in u1.test.users})[:20]
    prefix = f"rbmrec-identity-{uuid.uuid4().hex[:8]}"
    with start_server(trained.registry, "--redis-prefix", prefix) as first:
        for user in users:  # fills the cache with the first model's states
            first.stub.Recommend(pb.RecommendRequest(user_id=user, n=K), timeout=30)
    with start_server(other.root, "--redis-prefix", prefix) as second:
        for user, want in zip(users, served_top_n(engine_for(ckpt), users, K), strict=True):
            reply = second.stub.Recommend(pb.RecommendRequest(user_id=user, n=K), timeout=30)
            assert [m.movie_id for m in reply.movies] == want.movie_ids, user
