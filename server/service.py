"""The gRPC servicer: parse the request, call the Router, map domain errors to status codes."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message

from rbmrec.v1 import recommender_pb2 as pb
from rbmrec.v1 import recommender_pb2_grpc as pb_grpc
from server.canary import Router
from server.errors import (
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    NotReady,
    ResourceExhausted,
    ServiceError,
    Unavailable,
)
from server.metrics import Metrics, RpcTimer
from server.ratings import RatingRecord
from server.recommender import PredictJob, RecommendJob, Served

__all__ = ["STREAM_ACCEPTED", "RecommenderService", "status_for"]

log = logging.getLogger(__name__)

# Sent as soon as an UpdateRatings stream is accepted, before any update is read (the
# contract is in recommender.proto; rbmrec_client.STREAM_ACCEPTED is the same pair).
STREAM_ACCEPTED = ("rbmrec-stream", "accepted")

_STATUS: dict[type[ServiceError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    NotReady: grpc.StatusCode.UNAVAILABLE,
    ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def status_for(exc: ServiceError) -> grpc.StatusCode:
    """The gRPC status code for a domain error (a subclass maps like its nearest base)."""
    for cls in type(exc).__mro__:
        if cls in _STATUS:
            return _STATUS[cls]
    return grpc.StatusCode.INTERNAL


class _Unparsable(InvalidArgument):
    """A streamed message that does not parse; only ``_parsed`` raises it."""


async def _parsed(requests: AsyncIterator[pb.RatingUpdate]) -> AsyncIterator[pb.RatingUpdate]:
    # grpc parses a streamed message when the handler asks for it, so a DecodeError surfaces
    # here, in our code; left alone it would end the call as UNKNOWN "Unexpected DecodeError".
    count = 0
    try:
        async for update in requests:
            count += 1
            yield update
    except DecodeError as exc:
        raise _Unparsable(
            f"update {count + 1} of the stream is not a valid RatingUpdate message: {exc}"
        ) from exc


@dataclass(frozen=True)
class Unparsable:
    """A unary request body that is not a valid message of its type."""

    type_name: str
    reason: str

    def error(self) -> InvalidArgument:
        """What the caller is told."""
        return InvalidArgument(f"the request is not a valid {self.type_name}: {self.reason}")


M = TypeVar("M", bound=Message)
SERVICE = pb.DESCRIPTOR.services_by_name["Recommender"].full_name


def _lenient(message: type[M]) -> Callable[[bytes], M | Unparsable]:
    # grpc parses a unary body before the handler runs and answers UNKNOWN when that
    # raises; returning the failure instead lets the handler say INVALID_ARGUMENT.
    def parse(data: bytes) -> M | Unparsable:
        try:
            return message.FromString(data)
        except DecodeError as exc:
            return Unparsable(message.DESCRIPTOR.full_name, str(exc))

    return parse


def add_to_server(service: RecommenderService, server: grpc.aio.Server) -> None:
    """Register ``service`` as the generated code would, but with lenient unary parsing."""
    handlers = {
        "Recommend": grpc.unary_unary_rpc_method_handler(
            service.Recommend,
            request_deserializer=_lenient(pb.RecommendRequest),
            response_serializer=pb.RecommendResponse.SerializeToString,
        ),
        "PredictRatings": grpc.unary_unary_rpc_method_handler(
            service.PredictRatings,
            request_deserializer=_lenient(pb.PredictRatingsRequest),
            response_serializer=pb.PredictRatingsResponse.SerializeToString,
        ),
        "UpdateRatings": grpc.stream_stream_rpc_method_handler(
            service.UpdateRatings,
            request_deserializer=pb.RatingUpdate.FromString,  # parsed lazily: see _parsed
            response_serializer=pb.RatingAck.SerializeToString,
        ),
        "GetModelInfo": grpc.unary_unary_rpc_method_handler(
            service.GetModelInfo,
            request_deserializer=_lenient(pb.GetModelInfoRequest),
            response_serializer=pb.ModelInfo.SerializeToString,
        ),
        "RecommendMany": grpc.unary_unary_rpc_method_handler(
            service.RecommendMany,
            request_deserializer=_lenient(pb.RecommendManyRequest),
            response_serializer=pb.RecommendManyResponse.SerializeToString,
        ),
        "SimilarMovies": grpc.unary_unary_rpc_method_handler(
            service.SimilarMovies,
            request_deserializer=_lenient(pb.SimilarMoviesRequest),
            response_serializer=pb.SimilarMoviesResponse.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    # As the generated code does: registered methods take grpc's faster lookup (no stub).
    server.add_registered_method_handlers(SERVICE, handlers)  # type: ignore[attr-defined]


def _recommend_job(request: pb.RecommendRequest) -> RecommendJob:
    return RecommendJob(
        request.user_id,
        request.n,
        request.include_rated,
        tuple(request.exclude_movie_ids),
        tuple(request.candidate_movie_ids),
    )


def _recommend_response(served: Served) -> pb.RecommendResponse:
    # add() on the repeated field is about twice as fast as building each ScoredMovie
    # and passing the list, and this runs once per Recommend.
    response = pb.RecommendResponse(model_version=served.version, fallback=served.fallback)
    add = response.movies.add
    for movie_id, score, predicted, title in zip(
        served.movie_ids, served.scores, served.predicted, served.titles, strict=True
    ):
        add(movie_id=movie_id, score=score, predicted_rating=predicted, title=title)
    return response


class RecommenderService(pb_grpc.RecommenderServicer):
    """rbmrec.v1.Recommender over a ``Router`` (a ``Recommender`` per version served)."""

    def __init__(self, router: Router, model_name: str, alias: str, metrics: Metrics) -> None:
        self.router = router
        self.model_name = model_name
        self.alias = alias
        self.metrics = metrics

    async def _fail(
        self, call: RpcTimer, context: grpc.aio.ServicerContext[Any, Any], exc: ServiceError
    ) -> NoReturn:
        code = status_for(exc)
        call.code = code.name
        await context.abort(code, str(exc))
        raise AssertionError("context.abort returned")  # pragma: no cover - abort always raises

    async def Recommend(
        self,
        request: pb.RecommendRequest | Unparsable,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> pb.RecommendResponse:
        """Top-n movies for a user."""
        with self.metrics.rpc("Recommend") as call:
            if isinstance(request, Unparsable):
                await self._fail(call, context, request.error())
            try:
                served = await self.router.recommend(
                    _recommend_job(request), context.time_remaining()
                )
            except ServiceError as exc:
                await self._fail(call, context, exc)
            return _recommend_response(served)

    async def RecommendMany(
        self,
        request: pb.RecommendManyRequest | Unparsable,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> pb.RecommendManyResponse:
        """Recommend for each request, in order; one user's failure is its own ``error``."""
        with self.metrics.rpc("RecommendMany") as call:
            if isinstance(request, Unparsable):
                await self._fail(call, context, request.error())
            jobs = [_recommend_job(r) for r in request.requests]
            try:
                results = await self.router.recommend_many(jobs, context.time_remaining())
            except ServiceError as exc:
                await self._fail(call, context, exc)
            response = pb.RecommendManyResponse()
            for result in results:
                if isinstance(result, ServiceError):
                    error = f"{status_for(result).name}: {result}"
                    response.responses.append(pb.RecommendResponse(error=error))
                else:
                    response.responses.append(_recommend_response(result))
            return response

    async def SimilarMovies(
        self,
        request: pb.SimilarMoviesRequest | Unparsable,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> pb.SimilarMoviesResponse:
        """The movies nearest to one movie in the serving model."""
        with self.metrics.rpc("SimilarMovies") as call:
            if isinstance(request, Unparsable):
                await self._fail(call, context, request.error())
            try:
                near = await self.router.similar(request.movie_id, request.n)
            except ServiceError as exc:
                await self._fail(call, context, exc)
            response = pb.SimilarMoviesResponse(model_version=near.version)
            add = response.movies.add
            for movie_id, score, title in zip(
                near.movie_ids, near.scores, near.titles, strict=True
            ):
                add(movie_id=movie_id, score=score, title=title)
            return response

    async def PredictRatings(
        self,
        request: pb.PredictRatingsRequest | Unparsable,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> pb.PredictRatingsResponse:
        """One predicted rating per requested movie."""
        with self.metrics.rpc("PredictRatings") as call:
            if isinstance(request, Unparsable):
                await self._fail(call, context, request.error())
            job = PredictJob(request.user_id, tuple(request.movie_ids), request.skip_unknown)
            try:
                predicted = await self.router.predict(job, context.time_remaining())
            except ServiceError as exc:
                await self._fail(call, context, exc)
            return pb.PredictRatingsResponse(
                ratings=predicted.ratings, model_version=predicted.version
            )

    async def UpdateRatings(
        self,
        request_iterator: AsyncIterator[pb.RatingUpdate],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[pb.RatingAck]:
        """Validate and store each update, acknowledging in order.

        A bad update gets ``accepted=false`` and the stream goes on; if an update cannot be
        stored durably the stream ends with UNAVAILABLE, so no unstored update is acked. An
        update that is not a RatingUpdate message at all ends the stream with INVALID_ARGUMENT.
        A repeated ``update_id`` is acknowledged again (``duplicate``), never logged twice.
        """
        with self.metrics.rpc("UpdateRatings") as call:
            await context.send_initial_metadata((STREAM_ACCEPTED,))
            try:
                async for update in _parsed(request_iterator):
                    record = RatingRecord(
                        update.user_id, update.movie_id, update.rating, update.timestamp
                    )
                    try:
                        ack = await self.router.update(record, update.update_id)
                    except (InvalidArgument, NotFound) as exc:
                        self.metrics.updates.labels("rejected").inc()
                        yield pb.RatingAck(accepted=False, error=str(exc))
                        continue
                    except ServiceError as exc:
                        self.metrics.updates.labels("unavailable").inc()
                        await self._fail(call, context, exc)
                    outcome = "duplicate" if ack.duplicate else "accepted"
                    self.metrics.updates.labels(outcome).inc()
                    yield pb.RatingAck(
                        accepted=True,
                        log_id=ack.log_id,
                        applied=ack.applied,
                        duplicate=ack.duplicate,
                    )
            except _Unparsable as exc:
                await self._fail(call, context, exc)

    async def GetModelInfo(
        self,
        request: pb.GetModelInfoRequest | Unparsable,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> pb.ModelInfo:
        """What model version is serving, and where; and any version it refused."""
        with self.metrics.rpc("GetModelInfo") as call:
            if isinstance(request, Unparsable):
                await self._fail(call, context, request.error())
            holder = self.router.stable.recommender.holder
            try:
                engine = holder.require()
            except ServiceError as exc:
                await self._fail(call, context, exc)
            canary = self.router.canary
            canary_engine = canary.recommender.holder.engine if canary else None
            return pb.ModelInfo(
                model_name=self.model_name,
                model_version=engine.version,
                num_users=len(engine.user_row),
                num_movies=engine.config.n_movies,
                hidden_units=engine.config.n_hidden,
                rating_levels=list(engine.ckpt.levels),
                device=engine.where,
                alias=self.alias,
                backend=engine.backend,
                ranking_score=engine.ckpt.ranking,
                refused_version=holder.status.refused_version,
                last_reload_error=holder.status.last_error,
                canary_version=canary_engine.version if canary_engine else "",
                canary_percent=self.router.split.percent if canary_engine else 0.0,
                canary_alias=canary.recommender.holder.alias if canary else "",
            )
