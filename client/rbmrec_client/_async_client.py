"""AsyncRecommenderClient: RecommenderClient's calls for asyncio, over a grpc.aio channel."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from types import TracebackType
from typing import TypeVar

import grpc
from google.protobuf.message import Message

from rbmrec_client import _convert as convert
from rbmrec_client._config import DEFAULT_TIMEOUT_S, STREAM_ACCEPTED, ClientConfig, method_path
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

__all__ = ["AsyncRecommenderClient"]

_Reply = TypeVar("_Reply", bound=Message)


class AsyncRecommenderClient:
    """RecommenderClient for asyncio: make it inside the event loop that awaits its calls.

    Use it in ``async with``, or ``await close()`` it. Same arguments, errors and retries.
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
            grpc.aio.insecure_channel(target, options)
            if credentials is None
            else grpc.aio.secure_channel(target, credentials, options)
        )

    async def recommend(
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
        request = convert.recommend_request(query)
        reply = await self._unary("Recommend", request, pb.RecommendResponse)
        return convert.recommendations(user_id, reply)

    async def recommend_many(self, queries: Iterable[RecommendQuery]) -> list[Recommendations]:
        """Recommendations for many users in one call, in order; a failed one has ``error``."""
        listed = list(queries)
        request = convert.many_request(listed)
        reply = await self._unary("RecommendMany", request, pb.RecommendManyResponse)
        return convert.recommend_many_results(listed, reply)

    async def similar(self, movie_id: int, n: int = 10) -> SimilarMovies:
        """The ``n`` movies nearest to ``movie_id`` in the model."""
        request = pb.SimilarMoviesRequest(movie_id=movie_id, n=n)
        reply = await self._unary("SimilarMovies", request, pb.SimilarMoviesResponse)
        return convert.similar_movies(movie_id, reply)

    async def predict(
        self, user_id: int, movie_ids: Iterable[int], *, skip_unknown: bool = False
    ) -> Predictions:
        """Predicted ratings of ``movie_ids``; with ``skip_unknown``, NaN for unknown movies."""
        movies = tuple(movie_ids)
        request = pb.PredictRatingsRequest(
            user_id=user_id, movie_ids=movies, skip_unknown=skip_unknown
        )
        reply = await self._unary("PredictRatings", request, pb.PredictRatingsResponse)
        return convert.predictions(user_id, movies, reply)

    async def rate(self, updates: Iterable[Rating] | AsyncIterable[Rating]) -> list[RatingAck]:
        """Stream rating updates; one ack per update, in order.

        Never retried here: retry it yourself only when every update has an update_id.
        """
        call = self._channel.stream_stream(
            method_path("UpdateRatings"),
            request_serializer=pb.RatingUpdate.SerializeToString,
            response_deserializer=pb.RatingAck.FromString,
        )
        stream = _AcceptedStream()
        with map_rpc_errors():
            acks = call(
                stream.wire(updates), timeout=self.config.timeout_s, metadata=self.config.metadata
            )
            stream.call = acks
            return [convert.rating_ack(ack) async for ack in acks]

    async def info(self) -> ModelInfo:
        """What model the server is serving."""
        reply = await self._unary("GetModelInfo", pb.GetModelInfoRequest(), pb.ModelInfo)
        return convert.model_info(reply)

    async def close(self) -> None:
        """Close the channel; calls in flight are cancelled."""
        await self._channel.close(None)  # grace None: cancel what is in flight

    async def __aenter__(self) -> AsyncRecommenderClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def _unary(self, method: str, request: Message, reply: type[_Reply]) -> _Reply:
        call = self._channel.unary_unary(
            method_path(method),
            request_serializer=type(request).SerializeToString,
            response_deserializer=reply.FromString,
        )
        with map_rpc_errors():
            answer: _Reply = await call(
                request, timeout=self.config.timeout_s, metadata=self.config.metadata
            )
            return answer


# How long to wait for the server's STREAM_ACCEPTED header before writing anyway: a server
# from before that header sends its headers only with its first ack.
_ACCEPT_WAIT_S = 1.0


class _AcceptedStream:
    """The request side of one UpdateRatings call: writes only once the server accepted it.

    grpcio's asyncio client replaces the server's status with INTERNAL when a write races
    the server ending the call (grpc/grpc#36066): a refused stream of 1-20 updates came
    back INTERNAL in 281 of 400 calls. Waiting for the header means no write is in flight
    when a refusal arrives, so the caller sees the server's own code.
    """

    def __init__(self) -> None:
        self.call: grpc.aio.StreamStreamCall[pb.RatingUpdate, pb.RatingAck] | None = None

    async def wire(
        self, updates: Iterable[Rating] | AsyncIterable[Rating]
    ) -> AsyncIterator[pb.RatingUpdate]:
        """The updates as messages, read lazily, once the server accepted the stream."""
        if not await self._accepted():
            return
        if isinstance(updates, AsyncIterable):
            async for update in updates:
                yield convert.rating_update(update)
        else:
            for update in updates:
                yield convert.rating_update(update)

    async def _accepted(self) -> bool:
        """False when the server ended the call without accepting it (its status then set)."""
        call = self.call
        # grpc reads us from a task it starts with the call, so rate() has set it by now.
        assert call is not None, "the stream is read before its call exists"
        try:
            headers = await asyncio.wait_for(call.initial_metadata(), _ACCEPT_WAIT_S)
        except TimeoutError:
            return True
        if STREAM_ACCEPTED in tuple(headers or ()):
            return True
        # Headers without the mark come with a refusal (trailers only). Wait for its status,
        # so that grpc's half-close after us finds the call done and leaves the status be.
        await call.code()
        return False
