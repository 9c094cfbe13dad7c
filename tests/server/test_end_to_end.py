"""The first slice end to end: a model trained on ml-100k u1.base, served over real gRPC."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rbmrec.v1 import recommender_pb2 as pb
from tests.harness.cli import TrainedModel, run_cli
from tests.harness.server import RunningServer, start_server
from trainer.data import load_dataset


@pytest.fixture(scope="module")
def u1(movielens: Path):  # type: ignore[no-untyped-def]
    return load_dataset("ml-100k", movielens, "u1")


def _rated_in_training(u1, user: int) -> set[int]:  # type: ignore[no-untyped-def]
    return set(u1.train.movies[u1.train.users == user].tolist())


def test_health_is_serving(server: RunningServer) -> None:
    stub = health_pb2_grpc.HealthStub(server.channel)
    reply = stub.Check(health_pb2.HealthCheckRequest(service="rbmrec.v1.Recommender"), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize("user", [1, 13, 405])
def test_recommend_returns_n_distinct_unrated_movies_best_first(
    server: RunningServer,
    u1,
    user: int,  # type: ignore[no-untyped-def]
) -> None:
    reply = server.stub.Recommend(pb.RecommendRequest(user_id=user, n=25), timeout=10)
    ids = [m.movie_id for m in reply.movies]
    scores = [m.score for m in reply.movies]
    assert len(ids) == 25 and len(set(ids)) == 25
    assert not set(ids) & _rated_in_training(u1, user)
    assert scores == sorted(scores, reverse=True)
    assert all(m.title for m in reply.movies)
    assert all(1.0 <= m.predicted_rating <= 5.0 for m in reply.movies)
    assert reply.model_version == "1"


def test_recommend_serves_up_to_1000_and_include_rated(server: RunningServer, u1) -> None:  # type: ignore[no-untyped-def]
    big = server.stub.Recommend(pb.RecommendRequest(user_id=1, n=1000), timeout=10)
    assert len(big.movies) == 1000 and len({m.movie_id for m in big.movies}) == 1000
    rated = _rated_in_training(u1, 1)
    every = server.stub.Recommend(
        pb.RecommendRequest(user_id=1, n=1000, include_rated=True), timeout=10
    )
    assert rated & {m.movie_id for m in every.movies}, "include_rated must allow rated movies"


def test_fewer_movies_when_fewer_remain(server: RunningServer, u1) -> None:  # type: ignore[no-untyped-def]
    # User 655 rated 685 of the 1,682 movies in u1.base: only 997 remain for n = 1000.
    remaining = len(u1.movie_ids) - len(_rated_in_training(u1, 655))
    assert remaining < 1000
    reply = server.stub.Recommend(pb.RecommendRequest(user_id=655, n=1000), timeout=10)
    assert len(reply.movies) == remaining


def test_unknown_user_gets_popular_movies(server: RunningServer, u1) -> None:  # type: ignore[no-untyped-def]
    reply = server.stub.Recommend(pb.RecommendRequest(user_id=10_000_000, n=5), timeout=10)
    counts = np.bincount(u1.train.movies)
    assert [m.movie_id for m in reply.movies] == list(np.argsort(-counts, kind="stable")[:5])


def test_predicted_ratings_on_u1_test_have_rmse_below_one(server: RunningServer, u1) -> None:  # type: ignore[no-untyped-def]
    sq, n = 0.0, 0
    for user in np.unique(u1.test.users):
        mask = u1.test.users == user
        movies = u1.test.movies[mask].tolist()
        reply = server.stub.PredictRatings(
            pb.PredictRatingsRequest(user_id=int(user), movie_ids=movies), timeout=10
        )
        assert len(reply.ratings) == len(movies)
        pred = np.clip(np.asarray(reply.ratings), 1.0, 5.0)
        sq += float(((pred - u1.test.ratings[mask]) ** 2).sum())
        n += len(movies)
    assert n == 20_000
    rmse = math.sqrt(sq / n)
    assert rmse < 1.0, rmse


def test_model_info_names_the_promoted_version(
    server: RunningServer, trained: TrainedModel
) -> None:
    info = server.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=5)
    shown = json.loads(
        run_cli(
            "rbm-registry",
            "--registry",
            str(trained.registry),
            "--json",
            "show",
            "rbm",
            "production",
        ).stdout
    )
    assert info.model_version == str(shown["version"]) == "1"
    assert (info.model_name, info.num_movies, info.num_users) == ("rbm", 1682, 943)
    assert list(info.rating_levels) == [1, 2, 3, 4, 5]
    assert info.hidden_units > 0 and info.device == "cpu"


@pytest.mark.parametrize(
    ("request_", "code"),
    [
        (pb.RecommendRequest(user_id=1, n=0), grpc.StatusCode.INVALID_ARGUMENT),
        (pb.RecommendRequest(user_id=1, n=-5), grpc.StatusCode.INVALID_ARGUMENT),
        (pb.RecommendRequest(user_id=1, n=1001), grpc.StatusCode.INVALID_ARGUMENT),
        (pb.PredictRatingsRequest(user_id=1, movie_ids=[1, 99_999]), grpc.StatusCode.NOT_FOUND),
        (pb.PredictRatingsRequest(user_id=1, movie_ids=[-3]), grpc.StatusCode.NOT_FOUND),
    ],
)
def test_bad_requests_get_clear_status_codes(
    server: RunningServer, request_: object, code: grpc.StatusCode
) -> None:
    call = (
        server.stub.Recommend
        if isinstance(request_, pb.RecommendRequest)
        else server.stub.PredictRatings
    )
    with pytest.raises(grpc.RpcError) as err:
        call(request_, timeout=5)
    assert err.value.code() == code
    assert err.value.details()


def test_rating_update_changes_next_recommendations(server: RunningServer) -> None:
    user = 2
    before = server.stub.Recommend(pb.RecommendRequest(user_id=user, n=10), timeout=10)
    top = before.movies[0].movie_id
    updates = [
        pb.RatingUpdate(user_id=user, movie_id=top, rating=1.0, timestamp=int(time.time())),
        pb.RatingUpdate(user_id=user, movie_id=99_999, rating=4.0),
        pb.RatingUpdate(user_id=user, movie_id=top, rating=3.5),
        pb.RatingUpdate(user_id=user, movie_id=top, rating=float("nan")),
    ]
    acks = list(server.stub.UpdateRatings(iter(updates), timeout=10))
    assert [a.accepted for a in acks] == [True, True, False, False]
    # A movie the version does not know is stored for the next retrain, not applied.
    assert acks[0].applied and not acks[1].applied and acks[1].log_id
    assert "scale" in acks[2].error
    after = server.stub.Recommend(pb.RecommendRequest(user_id=user, n=10), timeout=10)
    assert top not in {m.movie_id for m in after.movies}


def test_new_user_gets_personal_recommendations_from_streamed_ratings(
    server: RunningServer,
) -> None:
    user = 5_000_001
    cold = [
        m.movie_id
        for m in server.stub.Recommend(pb.RecommendRequest(user_id=user, n=10), timeout=10).movies
    ]
    acks = list(
        server.stub.UpdateRatings(
            iter([pb.RatingUpdate(user_id=user, movie_id=m, rating=5.0) for m in (172, 181, 50)]),
            timeout=10,
        )
    )
    assert all(a.accepted for a in acks)
    warm = [
        m.movie_id
        for m in server.stub.Recommend(pb.RecommendRequest(user_id=user, n=10), timeout=10).movies
    ]
    assert warm != cold and not {172, 181, 50} & set(warm)


def test_memory_cache_refuses_updates_but_recommends(trained: TrainedModel) -> None:
    with start_server(trained.registry, "--cache", "memory") as running:
        reply = running.stub.Recommend(pb.RecommendRequest(user_id=1, n=3), timeout=10)
        assert len(reply.movies) == 3
        with pytest.raises(grpc.RpcError) as err:
            list(
                running.stub.UpdateRatings(
                    iter([pb.RatingUpdate(user_id=1, movie_id=50, rating=5.0)]), timeout=10
                )
            )
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
