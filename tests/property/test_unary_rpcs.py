"""Recommend, PredictRatings and GetModelInfo against a running server, field by field.

Properties, for every request hypothesis draws:
- Recommend of a valid (user, n) returns min(n, catalogue minus rated) distinct catalogue
  movies in non-increasing score order, none the user rated unless include_rated;
- PredictRatings of known movies returns one rating per requested movie, in order, each
  within the model's rating scale;
- any other request gets the oracle's non-OK code and a message, never UNKNOWN or INTERNAL.
"""

from __future__ import annotations

import math

import grpc
from hypothesis import example, given
from hypothesis import strategies as st

from rbmrec.v1 import recommender_pb2 as pb
from server.recommender import MAX_N, MAX_PREDICT
from tests.harness.server import RunningServer
from tests.property.support import (
    GRPC_MAX_RECEIVE,
    INT32,
    INT64,
    OK,
    PROPERTY,
    Catalogue,
    any_movies,
    any_n,
    any_users,
    assert_clear_error,
    code_of,
    good_n,
    known_movies,
    positive_users,
    predict_code,
    recommend_code,
    rpc_error,
)

NEVER = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}


def _recommend(server: RunningServer, user: int, n: int, rated: bool) -> pb.RecommendResponse:
    request = pb.RecommendRequest(user_id=user, n=n, include_rated=rated)
    reply: pb.RecommendResponse = server.stub.Recommend(request, timeout=30)
    return reply


def _predict(server: RunningServer, user: int, movies: list[int]) -> list[float]:
    request = pb.PredictRatingsRequest(user_id=user, movie_ids=movies)
    return list(server.stub.PredictRatings(request, timeout=30).ratings)


# -- Recommend ------------------------------------------------------------------------------
@PROPERTY
@given(user=positive_users(), n=good_n(), include_rated=st.booleans())
@example(user=655, n=MAX_N, include_rated=False)  # rated 685 of 1,682: fewer than n remain
@example(user=INT64[1], n=1, include_rated=True)
def test_recommend_returns_min_n_remaining_distinct_movies_best_first(
    server: RunningServer, catalogue: Catalogue, user: int, n: int, include_rated: bool
) -> None:
    reply = _recommend(server, user, n, include_rated)
    ids = [m.movie_id for m in reply.movies]
    scores = [m.score for m in reply.movies]
    assert len(ids) == catalogue.expected_count(user, n, include_rated)
    assert len(set(ids)) == len(ids), "a movie was recommended twice"
    assert set(ids) <= catalogue.known
    assert scores == sorted(scores, reverse=True), "not best first"
    if not include_rated:
        assert not set(ids) & catalogue.rated.get(user, frozenset())
    low, high = min(catalogue.levels), max(catalogue.levels)
    assert all(low <= m.predicted_rating <= high for m in reply.movies)
    assert reply.model_version == catalogue.version


@PROPERTY
@given(user=any_users(), n=any_n(), include_rated=st.booleans())
@example(user=1, n=0, include_rated=False)
@example(user=1, n=INT32[0], include_rated=False)
@example(user=1, n=INT32[1], include_rated=True)
@example(user=0, n=10, include_rated=False)
@example(user=INT64[0], n=10, include_rated=False)
def test_recommend_answers_what_the_oracle_says_and_never_unknown(
    server: RunningServer, user: int, n: int, include_rated: bool
) -> None:
    request = pb.RecommendRequest(user_id=user, n=n, include_rated=include_rated)
    expected = recommend_code(request)
    error = rpc_error(server.stub.Recommend, request, timeout=30)
    assert code_of(error) not in NEVER
    if expected == OK:
        assert error is None, error
    else:
        assert_clear_error(error, expected)
        named = {"user_id"} if user <= 0 else set()
        named |= set() if 1 <= n <= MAX_N else {"n must be between"}
        assert any(word in error.details() for word in named), error.details()


def test_an_empty_recommend_request_is_invalid(server: RunningServer) -> None:
    # Every field at its default: user_id 0 and n 0, what a client that set nothing sends.
    assert_clear_error(
        rpc_error(server.stub.Recommend, pb.RecommendRequest(), timeout=10),
        grpc.StatusCode.INVALID_ARGUMENT,
    )


# -- PredictRatings -------------------------------------------------------------------------
@PROPERTY
@given(data=st.data(), user=positive_users())
def test_predict_returns_one_rating_on_the_scale_per_movie_in_order(
    server: RunningServer, catalogue: Catalogue, data: st.DataObject, user: int
) -> None:
    movies = data.draw(st.lists(known_movies(catalogue), min_size=1, max_size=30), "movies")
    ratings = _predict(server, user, movies)
    assert len(ratings) == len(movies)
    low, high = min(catalogue.levels), max(catalogue.levels)
    assert all(math.isfinite(r) and low <= r <= high for r in ratings), ratings
    # In order: the same movies asked for backwards come back backwards.
    _assert_close(_predict(server, user, movies[::-1])[::-1], ratings)
    # One rating per movie, whatever else is asked for: a repeated movie gets its rating again.
    by_movie = dict(zip(movies, ratings, strict=True))
    _assert_close(ratings, [by_movie[m] for m in movies])


def _assert_close(actual: list[float], expected: list[float]) -> None:
    # Within float32 noise: two batches may differ in how BLAS blocks the matrix product.
    assert len(actual) == len(expected)
    for a, b in zip(actual, expected, strict=True):
        assert math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-5), (actual, expected)


@PROPERTY
@given(data=st.data(), user=any_users())
def test_predict_answers_what_the_oracle_says_and_never_unknown(
    server: RunningServer, catalogue: Catalogue, data: st.DataObject, user: int
) -> None:
    movies = data.draw(st.lists(any_movies(catalogue), max_size=12), "movies")
    request = pb.PredictRatingsRequest(user_id=user, movie_ids=movies)
    expected = predict_code(request, catalogue)
    error = rpc_error(server.stub.PredictRatings, request, timeout=30)
    assert code_of(error) not in NEVER
    if expected == OK:
        assert error is None, error
        return
    assert_clear_error(error, expected)
    if expected == grpc.StatusCode.NOT_FOUND:  # names the first movie the model lacks
        first = next(m for m in movies if m not in catalogue.known)
        assert f"movie {first} " in error.details()


def test_predict_of_no_movies_is_an_empty_answer(
    server: RunningServer, catalogue: Catalogue
) -> None:
    # Nothing asked, nothing to refuse: "one rating per requested movie" holds with zero.
    reply = server.stub.PredictRatings(pb.PredictRatingsRequest(user_id=1), timeout=10)
    assert list(reply.ratings) == []
    assert reply.model_version == catalogue.version


def test_predict_serves_up_to_its_cap_and_refuses_one_more(
    server: RunningServer, catalogue: Catalogue
) -> None:
    movies = [catalogue.movie_ids[i % len(catalogue.movie_ids)] for i in range(MAX_PREDICT + 1)]
    assert len(_predict(server, 1, movies[:MAX_PREDICT])) == MAX_PREDICT
    too_many = pb.PredictRatingsRequest(user_id=1, movie_ids=movies)
    error = rpc_error(server.stub.PredictRatings, too_many, timeout=30)
    assert_clear_error(error, grpc.StatusCode.INVALID_ARGUMENT)
    assert str(MAX_PREDICT) in error.details()


def test_a_request_over_grpcs_receive_limit_is_resource_exhausted(server: RunningServer) -> None:
    # grpc itself refuses a message over its default 4 MiB receive size, before our code runs;
    # its code for that is RESOURCE_EXHAUSTED. 600k ids of 9 bytes each make 5.4 MB.
    movies = [2**62] * 600_000
    request = pb.PredictRatingsRequest(user_id=1, movie_ids=movies)
    assert request.ByteSize() > GRPC_MAX_RECEIVE
    error = rpc_error(server.stub.PredictRatings, request, timeout=60)
    assert_clear_error(error, grpc.StatusCode.RESOURCE_EXHAUSTED)


# -- GetModelInfo ---------------------------------------------------------------------------
def test_model_info_describes_the_served_version(
    server: RunningServer, catalogue: Catalogue
) -> None:
    info = server.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
    assert info.model_version == catalogue.version
    assert info.num_movies == len(catalogue.movie_ids)
    assert info.num_users == len(catalogue.rated)
    assert tuple(info.rating_levels) == catalogue.levels
    assert info.refused_version == ""
