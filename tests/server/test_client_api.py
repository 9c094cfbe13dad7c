"""What client teams asked for, over gRPC against the real server: filters, many users at once,
similar movies, the fallback flag, lenient predictions, the ranking score's name, and the
connection limits (keepalive, connection age, concurrent RPCs)."""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from rbm.model import RANKINGS
from rbmrec.v1 import recommender_pb2 as pb
from registry.store import FileRegistry
from tests.harness.calls import recommend, update
from tests.harness.cli import TrainedModel
from tests.harness.server import RunningServer, start_server

UNKNOWN_MOVIE = 99_999_999
UNKNOWN_USER = 10_000_000  # not in the training data: no ratings


def _ids(reply: pb.RecommendResponse) -> list[int]:
    return [m.movie_id for m in reply.movies]


def _ask(server: RunningServer, **fields: object) -> pb.RecommendResponse:
    reply: pb.RecommendResponse = server.stub.Recommend(pb.RecommendRequest(**fields), timeout=30)
    return reply


def test_excluded_movies_never_appear(server: RunningServer) -> None:
    for user in (1, 7, 300, UNKNOWN_USER):
        top = _ids(recommend(server.stub, user, 20))
        exclude = [*top[:10], UNKNOWN_MOVIE]  # the best ten, and an id nobody knows
        again = _ids(_ask(server, user_id=user, n=20, exclude_movie_ids=exclude))
        assert len(again) == 20 and not set(again) & set(exclude)
        assert again[:10] == top[10:], "leaving movies out must not reorder the others"


def test_every_result_is_among_the_candidates(server: RunningServer) -> None:
    candidates = [1, 50, 100, 127, 181, 258, 286, 294, UNKNOWN_MOVIE]
    for user in (1, 2, 300, UNKNOWN_USER):
        reply = _ask(server, user_id=user, n=5, candidate_movie_ids=candidates)
        assert 1 <= len(reply.movies) <= 5 and set(_ids(reply)) <= set(candidates)
        scores = [m.score for m in reply.movies]
        assert scores == sorted(scores, reverse=True)
    # Candidates the user rated are still left out unless include_rated is set.
    rated = _ids(_ask(server, user_id=1, n=5, include_rated=True, candidate_movie_ids=[1, 2, 3]))
    assert set(rated) == {1, 2, 3}  # user 1 rated all three in training (u1.base)
    assert _ids(_ask(server, user_id=1, n=5, candidate_movie_ids=[1, 2, 3])) == []
    unknown_only = _ask(server, user_id=1, n=5, candidate_movie_ids=[UNKNOWN_MOVIE])
    assert list(unknown_only.movies) == [] and unknown_only.model_version


def test_recommend_many_equals_the_single_calls(server: RunningServer) -> None:
    requests = [
        pb.RecommendRequest(user_id=1, n=10),
        pb.RecommendRequest(user_id=2, n=3, include_rated=True),
        pb.RecommendRequest(user_id=3, n=10, exclude_movie_ids=[50, 100]),
        pb.RecommendRequest(user_id=4, n=5, candidate_movie_ids=[1, 50, 100, 181, 258]),
        pb.RecommendRequest(user_id=UNKNOWN_USER, n=10),
        pb.RecommendRequest(user_id=0, n=10),  # invalid: its own error, not the call's
        pb.RecommendRequest(user_id=5, n=5000),  # invalid too
    ]
    many = server.stub.RecommendMany(pb.RecommendManyRequest(requests=requests), timeout=30)
    assert len(many.responses) == len(requests)
    for request, got in zip(requests[:5], many.responses[:5], strict=True):
        single = server.stub.Recommend(request, timeout=30)
        assert got.error == "" and _ids(got) == _ids(single)
        assert [m.score for m in got.movies] == pytest.approx([m.score for m in single.movies])
        assert got.fallback == single.fallback and got.model_version == single.model_version
    assert many.responses[5].error.startswith("INVALID_ARGUMENT: user_id must be positive")
    assert many.responses[6].error.startswith("INVALID_ARGUMENT: n must be between")
    assert not many.responses[5].movies and not many.responses[6].movies


def test_recommend_many_takes_at_most_1000_requests(server: RunningServer) -> None:
    ok = [pb.RecommendRequest(user_id=1 + i % 900, n=1) for i in range(1000)]
    many = server.stub.RecommendMany(pb.RecommendManyRequest(requests=ok), timeout=60)
    assert len(many.responses) == 1000 and all(r.movies and not r.error for r in many.responses)
    with pytest.raises(grpc.RpcError) as err:
        server.stub.RecommendMany(pb.RecommendManyRequest(requests=[*ok, ok[0]]), timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "at most 1000" in str(err.value.details())


def test_similar_movies_are_plausible_and_never_the_movie_itself(server: RunningServer) -> None:
    def similar(movie: int, n: int = 10) -> list[str]:
        reply = server.stub.SimilarMovies(pb.SimilarMoviesRequest(movie_id=movie, n=n), timeout=30)
        assert movie not in [m.movie_id for m in reply.movies] and len(reply.movies) == n
        scores = [m.score for m in reply.movies]
        assert scores == sorted(scores, reverse=True) and all(-1.0 <= s <= 1.0 for s in scores)
        return [m.title for m in reply.movies]

    # Sequels and siblings a person would name (ml-100k ids: 50 Star Wars, 127 The
    # Godfather, 71 The Lion King), among the five nearest.
    star_wars = similar(50)
    assert {"Empire Strikes Back, The (1980)", "Return of the Jedi (1983)"} <= set(star_wars[:5])
    assert "Godfather: Part II, The (1974)" in similar(127)[:5]
    assert "Aladdin (1992)" in similar(71)[:5]
    assert len(similar(1, 1000)) == 1000
    print("SimilarMovies(Star Wars):", star_wars)  # shown with -s: the README quotes it
    with pytest.raises(grpc.RpcError) as err:
        similar(UNKNOWN_MOVIE)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as err:
        server.stub.SimilarMovies(pb.SimilarMoviesRequest(movie_id=50, n=0), timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_the_fallback_is_flagged_exactly_for_users_without_ratings(
    server: RunningServer,
) -> None:
    assert recommend(server.stub, UNKNOWN_USER).fallback == "popularity"
    for user in (1, 2, 943):
        assert recommend(server.stub, user).fallback == ""
    # A user unknown to training who streamed one rating now has a personal answer.
    newcomer = UNKNOWN_USER + 1
    assert recommend(server.stub, newcomer).fallback == "popularity"
    assert update(server, newcomer, 50, 5.0).accepted
    assert recommend(server.stub, newcomer).fallback == ""


def test_predict_skip_unknown_gives_nan_where_the_movie_is_unknown(
    server: RunningServer,
) -> None:
    movies = [1, UNKNOWN_MOVIE, 50]
    with pytest.raises(grpc.RpcError) as err:
        server.stub.PredictRatings(pb.PredictRatingsRequest(user_id=1, movie_ids=movies))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    lenient = server.stub.PredictRatings(
        pb.PredictRatingsRequest(user_id=1, movie_ids=movies, skip_unknown=True), timeout=30
    )
    strict = server.stub.PredictRatings(
        pb.PredictRatingsRequest(user_id=1, movie_ids=[1, 50]), timeout=30
    )
    assert math.isnan(lenient.ratings[1])
    assert [lenient.ratings[0], lenient.ratings[2]] == pytest.approx(list(strict.ratings))


def test_model_info_names_the_ranking_score(server: RunningServer, trained: TrainedModel) -> None:
    info = server.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=30)
    version = FileRegistry(trained.registry).resolve("rbm", "production")
    saved = json.loads((version.path / "model.json").read_text())["ranking"]
    assert info.ranking_score == saved and saved in RANKINGS


def test_an_aged_connection_is_closed_and_calls_go_on(trained: TrainedModel) -> None:
    args = ("--cache", "memory", "--max-connection-age-s", "1", "--max-connection-age-grace-s", "1")
    with start_server(trained.registry, *args) as running:
        # A stream held past age + grace is ended by the server (clients then reconnect)...
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as err:
            list(running.stub.UpdateRatings(_silent(threading.Event()), timeout=10))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert time.monotonic() - started < 9.0, "the stream should end at age + grace"
        # ...while unary calls on the same channel keep working across reconnections.
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            assert recommend(running.stub, 1).movies
            time.sleep(0.1)


def test_concurrent_rpcs_are_bounded(trained: TrainedModel) -> None:
    with start_server(trained.registry, "--cache", "memory", "--max-concurrent-rpcs", "2") as run:
        release = threading.Event()
        with ThreadPoolExecutor(2) as pool:
            held = [
                pool.submit(lambda: list(run.stub.UpdateRatings(_silent(release), timeout=15)))
                for _ in range(2)
            ]
            time.sleep(1.0)  # both streams open and waiting
            with pytest.raises(grpc.RpcError) as err:
                recommend(run.stub, 1)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            release.set()
            assert [call.result() for call in held] == [[], []]
        assert recommend(run.stub, 1).movies


def _silent(until: threading.Event) -> Iterator[pb.RatingUpdate]:
    """A request stream that sends nothing until ``until`` is set (or 10 s pass)."""
    until.wait(10)
    yield from ()
