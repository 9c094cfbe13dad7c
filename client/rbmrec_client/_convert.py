"""Between the dataclasses and the wire: request messages in, result dataclasses out.

Both clients call these, so that each of their methods is only the call itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import grpc

from rbmrec_client._exceptions import RecommenderError
from rbmrec_client._models import (
    ModelInfo,
    Predictions,
    Rating,
    RatingAck,
    Recommendations,
    RecommendQuery,
    ScoredMovie,
    SimilarMovies,
)
from rbmrec_client._proto import recommender_pb2 as pb

__all__ = [
    "many_request",
    "model_info",
    "predictions",
    "rating_ack",
    "rating_update",
    "recommend_many_results",
    "recommend_request",
    "recommendations",
    "similar_movies",
]


def recommend_request(query: RecommendQuery) -> pb.RecommendRequest:
    """The Recommend request of one query."""
    return pb.RecommendRequest(
        user_id=query.user_id,
        n=query.n,
        include_rated=query.include_rated,
        exclude_movie_ids=query.exclude,
        candidate_movie_ids=query.candidates,
    )


def _movies(movies: Iterable[pb.ScoredMovie]) -> tuple[ScoredMovie, ...]:
    return tuple(ScoredMovie(m.movie_id, m.score, m.predicted_rating, m.title) for m in movies)


def recommendations(user_id: int, reply: pb.RecommendResponse) -> Recommendations:
    """A Recommend answer for ``user_id``."""
    return Recommendations(
        user_id, _movies(reply.movies), reply.model_version, reply.fallback, reply.error
    )


def many_request(queries: Sequence[RecommendQuery]) -> pb.RecommendManyRequest:
    """One RecommendMany request of ``queries``."""
    return pb.RecommendManyRequest(requests=[recommend_request(q) for q in queries])


def recommend_many_results(
    queries: Sequence[RecommendQuery], reply: pb.RecommendManyResponse
) -> list[Recommendations]:
    """A RecommendMany answer, one Recommendations per query, in order."""
    if len(reply.responses) != len(queries):
        raise RecommenderError(
            grpc.StatusCode.INTERNAL,
            f"RecommendMany answered {len(reply.responses)} of {len(queries)} requests",
        )
    return [recommendations(q.user_id, r) for q, r in zip(queries, reply.responses, strict=True)]


def similar_movies(movie_id: int, reply: pb.SimilarMoviesResponse) -> SimilarMovies:
    """A SimilarMovies answer for ``movie_id``."""
    return SimilarMovies(movie_id, _movies(reply.movies), reply.model_version)


def predictions(
    user_id: int, movie_ids: Sequence[int], reply: pb.PredictRatingsResponse
) -> Predictions:
    """A PredictRatings answer, its ratings aligned with ``movie_ids``."""
    if len(reply.ratings) != len(movie_ids):
        raise RecommenderError(
            grpc.StatusCode.INTERNAL,
            f"PredictRatings answered {len(reply.ratings)} ratings for {len(movie_ids)} movies",
        )
    return Predictions(user_id, tuple(movie_ids), tuple(reply.ratings), reply.model_version)


def rating_update(rating: Rating) -> pb.RatingUpdate:
    """The wire form of one Rating."""
    return pb.RatingUpdate(
        user_id=rating.user_id,
        movie_id=rating.movie_id,
        rating=rating.rating,
        timestamp=rating.timestamp,
        update_id=rating.update_id,
    )


def rating_ack(ack: pb.RatingAck) -> RatingAck:
    """One RatingAck."""
    return RatingAck(ack.accepted, ack.error, ack.log_id, ack.applied, ack.duplicate)


def model_info(info: pb.ModelInfo) -> ModelInfo:
    """A GetModelInfo answer."""
    return ModelInfo(
        model_name=info.model_name,
        model_version=info.model_version,
        alias=info.alias,
        num_users=info.num_users,
        num_movies=info.num_movies,
        hidden_units=info.hidden_units,
        rating_levels=tuple(info.rating_levels),
        device=info.device,
        backend=info.backend,
        ranking_score=info.ranking_score,
        refused_version=info.refused_version,
        last_reload_error=info.last_reload_error,
        canary_version=info.canary_version,
        canary_percent=info.canary_percent,
        canary_alias=info.canary_alias,
    )
