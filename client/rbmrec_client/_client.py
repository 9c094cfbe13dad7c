"""RecommenderClient: blocking calls to rbmrec.v1.Recommender over one gRPC channel."""

from __future__ import annotations

from collections.abc import Iterable
from types import TracebackType
from typing import TypeVar

import grpc
from google.protobuf.message import Message

from rbmrec_client import _convert as convert
from rbmrec_client._config import DEFAULT_TIMEOUT_S, ClientConfig, method_path
from rbmrec_client._exceptions import map_rpc_errors
from rbmrec_client._models import (
    ModelInfo,
    Predictions,
    Rating,
    RatingAck,
    Recommendations,
    RecommendQuery,
    SimilarMovies,
)
from rbmrec_client._proto import recommender_pb2 as pb

__all__ = ["RecommenderClient"]

_Reply = TypeVar("_Reply", bound=Message)


class RecommenderClient:
    """A blocking client of one rbmrec server; use it in ``with``, or close() it.

    Calls raise a RecommenderError subclass on failure. Reads are retried on UNAVAILABLE
    within their deadline (``timeout_s``); rate() never is. Thread-safe, as its channel is.
    """

    def __init__(
        self,
        target: str,
        *,
        token: str | None = None,
        root_certificates: bytes | None = None,
        certificate_chain: bytes | None = None,
        private_key: bytes | None = None,
        tls: bool = False,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self.config = ClientConfig(
            target, token, root_certificates, certificate_chain, private_key, tls, timeout_s
        )
        credentials = self.config.credentials()
        options = self.config.channel_options
        self._channel = (
            grpc.insecure_channel(target, options)
            if credentials is None
            else grpc.secure_channel(target, credentials, options)
        )

    def recommend(
        self,
        user_id: int,
        n: int = 10,
        *,
        exclude: Iterable[int] = (),
        candidates: Iterable[int] = (),
        include_rated: bool = False,
    ) -> Recommendations:
        """The top ``n`` movies for a user, best first (not ``exclude``; among ``candidates``)."""
        query = RecommendQuery(user_id, n, tuple(exclude), tuple(candidates), include_rated)
        reply = self._unary("Recommend", convert.recommend_request(query), pb.RecommendResponse)
        return convert.recommendations(user_id, reply)

    def recommend_many(self, queries: Iterable[RecommendQuery]) -> list[Recommendations]:
        """Recommendations for many users in one call, in order; a failed one has ``error``."""
        listed = list(queries)
        request = convert.many_request(listed)
        reply = self._unary("RecommendMany", request, pb.RecommendManyResponse)
        return convert.recommend_many_results(listed, reply)

    def similar(self, movie_id: int, n: int = 10) -> SimilarMovies:
        """The ``n`` movies nearest to ``movie_id`` in the model."""
        request = pb.SimilarMoviesRequest(movie_id=movie_id, n=n)
        reply = self._unary("SimilarMovies", request, pb.SimilarMoviesResponse)
        return convert.similar_movies(movie_id, reply)

    def predict(
        self, user_id: int, movie_ids: Iterable[int], *, skip_unknown: bool = False
    ) -> Predictions:
        """Predicted ratings of ``movie_ids``; with ``skip_unknown``, NaN for unknown movies."""
        movies = tuple(movie_ids)
        request = pb.PredictRatingsRequest(
            user_id=user_id, movie_ids=movies, skip_unknown=skip_unknown
        )
        reply = self._unary("PredictRatings", request, pb.PredictRatingsResponse)
        return convert.predictions(user_id, movies, reply)

    def rate(self, updates: Iterable[Rating]) -> list[RatingAck]:
        """Stream rating updates; one ack per update, in order.

        Never retried here: retry it yourself only when every update has an update_id.
        """
        call = self._channel.stream_stream(
            method_path("UpdateRatings"),
            request_serializer=pb.RatingUpdate.SerializeToString,
            response_deserializer=pb.RatingAck.FromString,
        )
        requests = (convert.rating_update(u) for u in updates)
        with map_rpc_errors():
            acks = call(requests, timeout=self.config.timeout_s, metadata=self.config.metadata)
            return [convert.rating_ack(ack) for ack in acks]

    def info(self) -> ModelInfo:
        """What model the server is serving."""
        reply = self._unary("GetModelInfo", pb.GetModelInfoRequest(), pb.ModelInfo)
        return convert.model_info(reply)

    def close(self) -> None:
        """Close the channel; calls in flight are cancelled."""
        self._channel.close()

    def __enter__(self) -> RecommenderClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _unary(self, method: str, request: Message, reply: type[_Reply]) -> _Reply:
        call = self._channel.unary_unary(
            method_path(method),
            request_serializer=type(request).SerializeToString,
            response_deserializer=reply.FromString,
        )
        with map_rpc_errors():
            answer: _Reply = call(
                request, timeout=self.config.timeout_s, metadata=self.config.metadata
            )
            return answer
