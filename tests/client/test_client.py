"""RecommenderClient against a real server: typed results, the token, errors as exceptions."""

from __future__ import annotations

import math
import socket
import time
from collections.abc import Iterator

import grpc
import pytest
from rbmrec_client import (
    DeadlineExceededError,
    InvalidArgumentError,
    ModelInfo,
    NotFoundError,
    Predictions,
    Rating,
    RatingAck,
    Recommendations,
    RecommenderClient,
    RecommenderError,
    RecommendQuery,
    ScoredMovie,
    SimilarMovies,
    UnauthenticatedError,
    UnavailableError,
)

from tests.client.conftest import TOKEN
from tests.harness.server import RunningServer

UNKNOWN_MOVIE = 10**9


@pytest.fixture
def client(served: RunningServer) -> Iterator[RecommenderClient]:
    with RecommenderClient(served.target, token=TOKEN, timeout_s=30) as client:
        yield client


def _assert_ranked(movies: tuple[ScoredMovie, ...], n: int) -> None:
    assert len(movies) == n
    assert all(isinstance(m, ScoredMovie) and m.title for m in movies), movies
    scores = [m.score for m in movies]
    assert scores == sorted(scores, reverse=True)
    assert len({m.movie_id for m in movies}) == n


def test_info_describes_the_model(client: RecommenderClient) -> None:
    info = client.info()
    assert isinstance(info, ModelInfo)
    assert (info.model_name, info.model_version, info.alias) == ("rbm", "1", "production")
    assert info.num_users > 0 and info.num_movies > 0 and info.hidden_units > 0
    assert info.rating_levels == (1.0, 2.0, 3.0, 4.0, 5.0)
    assert info.backend == "torch" and info.device  # cpu, or cuda:0 where a GPU is
    assert info.refused_version == "" and info.last_reload_error == ""


def test_info_names_the_ranking_score(client: RecommenderClient) -> None:
    assert client.info().ranking_score in {"expected_rating", "rated", "liked_and_rated"}


def test_recommend_returns_ranked_typed_movies(client: RecommenderClient) -> None:
    got = client.recommend(1, 5)
    assert isinstance(got, Recommendations)
    assert (got.user_id, got.model_version, got.fallback, got.error) == (1, "1", "", "")
    _assert_ranked(got.movies, 5)
    assert all(1.0 <= m.predicted_rating <= 5.0 for m in got.movies)


def test_recommend_leaves_out_excluded_movies(client: RecommenderClient) -> None:
    top = [m.movie_id for m in client.recommend(1, 5).movies]
    got = client.recommend(1, 5, exclude=top[:2])
    _assert_ranked(got.movies, 5)
    assert not {m.movie_id for m in got.movies} & set(top[:2])
    assert [m.movie_id for m in got.movies][:3] == top[2:]


def test_recommend_ranks_only_the_candidates(client: RecommenderClient) -> None:
    top = [m.movie_id for m in client.recommend(2, 10).movies]
    candidates = [*reversed(top[5:]), UNKNOWN_MOVIE]  # an unknown movie is skipped
    got = client.recommend(2, 3, candidates=candidates)
    _assert_ranked(got.movies, 3)
    assert [m.movie_id for m in got.movies] == top[5:8]


def test_recommend_many_answers_each_user_in_order(client: RecommenderClient) -> None:
    queries = [RecommendQuery(3, 4), RecommendQuery(1, 2, exclude=(50,)), RecommendQuery(2, 3)]
    answers = client.recommend_many(queries)
    assert [a.user_id for a in answers] == [3, 1, 2]
    for query, answer in zip(queries, answers, strict=True):
        assert answer.error == "" and answer.model_version == "1"
        alone = client.recommend(query.user_id, query.n, exclude=query.exclude)
        assert [m.movie_id for m in answer.movies] == [m.movie_id for m in alone.movies]


def test_recommend_many_reports_a_failed_user_in_its_answer(client: RecommenderClient) -> None:
    answers = client.recommend_many([RecommendQuery(0, 5), RecommendQuery(1, 5)])
    assert answers[0].error.startswith("INVALID_ARGUMENT") and answers[0].movies == ()
    assert answers[1].error == "" and len(answers[1].movies) == 5


def test_similar_returns_nearest_movies_never_the_movie(client: RecommenderClient) -> None:
    got = client.similar(1, 5)
    assert isinstance(got, SimilarMovies)
    assert (got.movie_id, got.model_version) == (1, "1")
    _assert_ranked(got.movies, 5)
    assert 1 not in {m.movie_id for m in got.movies}
    assert all(-1.0 - 1e-5 <= m.score <= 1.0 + 1e-5 for m in got.movies)


def test_predict_aligns_ratings_with_the_movies(client: RecommenderClient) -> None:
    got = client.predict(1, [181, 1, 50])
    assert isinstance(got, Predictions)
    assert (got.user_id, got.movie_ids, got.model_version) == (1, (181, 1, 50), "1")
    assert all(1.0 <= r <= 5.0 for r in got.ratings)
    assert got.by_movie() == dict(zip((181, 1, 50), got.ratings, strict=True))


def test_predict_of_an_unknown_movie_is_not_found(client: RecommenderClient) -> None:
    with pytest.raises(NotFoundError) as raised:
        client.predict(1, [1, UNKNOWN_MOVIE])
    assert raised.value.code == grpc.StatusCode.NOT_FOUND
    assert isinstance(raised.value.__cause__, grpc.RpcError)


def test_predict_skip_unknown_gives_nan(client: RecommenderClient) -> None:
    got = client.predict(1, [1, UNKNOWN_MOVIE], skip_unknown=True)
    assert 1.0 <= got.ratings[0] <= 5.0 and math.isnan(got.ratings[1])


def test_rate_streams_updates_and_returns_one_ack_each(client: RecommenderClient) -> None:
    updates = (r for r in [Rating(11, 50, 5.0), Rating(11, 1, 9.0), Rating(11, 1, 4.0)])
    acks = client.rate(updates)  # a rating off the scale is refused, and the stream goes on
    assert all(a.accepted and a.applied and a.log_id and not a.error for a in acks[::2])
    assert acks[0].log_id != acks[2].log_id  # two entries in the log
    assert not acks[1].accepted and "9" in acks[1].error and not acks[1].log_id


def test_rate_with_an_update_id_is_safe_to_repeat(client: RecommenderClient) -> None:
    rating = Rating(13, 50, 4.0, update_id=f"client-test-{time.time_ns()}")
    (first,) = client.rate([rating])
    (again,) = client.rate([rating])
    assert first.accepted and not first.duplicate
    assert again == RatingAck(True, "", first.log_id, True, True)


def test_a_rated_movie_is_no_longer_recommended(client: RecommenderClient) -> None:
    first = client.recommend(12, 1).movies[0].movie_id
    assert [a.accepted for a in client.rate([Rating(12, first, 5.0)])] == [True]
    assert first not in {m.movie_id for m in client.recommend(12, 10).movies}


@pytest.mark.parametrize(("user", "n"), [(0, 5), (-1, 5), (1, 0), (1, 1001)])
def test_bad_arguments_raise_invalid_argument(client: RecommenderClient, user: int, n: int) -> None:
    with pytest.raises(InvalidArgumentError) as raised:
        client.recommend(user, n)
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT and raised.value.details
    assert str(raised.value).startswith("INVALID_ARGUMENT: ")


@pytest.mark.parametrize("token", [None, "not-the-token"])
def test_a_missing_or_wrong_token_is_unauthenticated(
    served: RunningServer, token: str | None
) -> None:
    with RecommenderClient(served.target, token=token) as client:
        with pytest.raises(UnauthenticatedError):
            client.info()
        with pytest.raises(UnauthenticatedError):
            client.rate([Rating(1, 50, 5.0)])


def test_an_unreachable_server_is_unavailable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        target = f"127.0.0.1:{sock.getsockname()[1]}"  # bound, not listening: refused
        with (
            RecommenderClient(target, timeout_s=5) as client,
            pytest.raises(UnavailableError) as raised,
        ):
            client.info()
    assert isinstance(raised.value, RecommenderError)


def test_a_call_past_its_deadline_is_deadline_exceeded(served: RunningServer) -> None:
    client = RecommenderClient(served.target, token=TOKEN, timeout_s=1e-6)
    with client, pytest.raises(DeadlineExceededError):
        client.recommend(1, 1000)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"token": "two words"}, "visible ASCII"),
        ({"token": ""}, "visible ASCII"),
        ({"timeout_s": 0}, "timeout_s"),
        ({"timeout_s": float("nan")}, "timeout_s"),
        ({"certificate_chain": b"pem"}, "together"),
    ],
)
def test_bad_settings_fail_when_the_client_is_made(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RecommenderClient("127.0.0.1:1", **kwargs)  # type: ignore[arg-type]


def test_the_config_never_shows_the_token() -> None:
    with RecommenderClient("127.0.0.1:1", token="s3cret") as client:
        assert "s3cret" not in repr(client.config)
        assert client.config.metadata == (("authorization", "Bearer s3cret"),)
