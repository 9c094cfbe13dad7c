"""AsyncRecommenderClient against a real server: the same calls, awaited."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import pytest
from rbmrec_client import (
    AsyncRecommenderClient,
    InvalidArgumentError,
    ModelInfo,
    NotFoundError,
    Rating,
    RatingAck,
    RecommendQuery,
    UnauthenticatedError,
)

from tests.client.conftest import TOKEN
from tests.harness.server import RunningServer

T = TypeVar("T")
UNKNOWN_MOVIE = 10**9


def run(
    served: RunningServer,
    calls: Callable[[AsyncRecommenderClient], Awaitable[T]],
    token: str | None = TOKEN,
) -> T:
    """``calls`` with a client made, as it must be, inside the event loop that awaits it."""

    async def main() -> T:
        async with AsyncRecommenderClient(served.target, token=token, timeout_s=30) as client:
            return await calls(client)

    return asyncio.run(main())


def test_every_read_answers_typed(served: RunningServer) -> None:
    async def calls(client: AsyncRecommenderClient) -> None:
        info, top, similar, predicted = await asyncio.gather(
            client.info(),
            client.recommend(1, 5),
            client.similar(1, 4),
            client.predict(1, [1, UNKNOWN_MOVIE], skip_unknown=True),
        )
        assert isinstance(info, ModelInfo) and info.model_version == "1"
        assert len(top.movies) == 5 and top.user_id == 1
        assert len(similar.movies) == 4 and 1 not in {m.movie_id for m in similar.movies}
        assert 1.0 <= predicted.ratings[0] <= 5.0 and math.isnan(predicted.ratings[1])
        excluded = await client.recommend(1, 5, exclude=[top.movies[0].movie_id])
        assert top.movies[0].movie_id not in {m.movie_id for m in excluded.movies}
        many = await client.recommend_many([RecommendQuery(1, 5), RecommendQuery(2, 2)])
        assert [m.movie_id for m in many[0].movies] == [m.movie_id for m in top.movies]
        assert [len(a.movies) for a in many] == [5, 2]

    run(served, calls)


def test_rate_takes_a_plain_or_an_async_iterable(served: RunningServer) -> None:
    async def updates() -> AsyncIterator[Rating]:
        for rating in (4.0, 9.0):  # 9: off the scale, refused
            yield Rating(21, 50, rating)

    async def calls(client: AsyncRecommenderClient) -> tuple[list[RatingAck], list[RatingAck]]:
        return await client.rate([Rating(21, 1, 3.0)]), await client.rate(updates())

    plain, streamed = run(served, calls)
    (ack,) = plain
    assert ack.accepted and ack.applied and ack.log_id and not ack.duplicate and not ack.error
    assert [a.accepted for a in streamed] == [True, False] and streamed[1].error


def test_errors_are_the_same_exceptions(served: RunningServer) -> None:
    async def calls(client: AsyncRecommenderClient) -> None:
        with pytest.raises(InvalidArgumentError):
            await client.recommend(0, 5)
        with pytest.raises(NotFoundError):
            await client.predict(1, [UNKNOWN_MOVIE])

    run(served, calls)


def test_no_token_is_unauthenticated(served: RunningServer) -> None:
    async def calls(client: AsyncRecommenderClient) -> None:
        with pytest.raises(UnauthenticatedError):
            await client.info()
        with pytest.raises(UnauthenticatedError):
            await client.rate([Rating(1, 50, 5.0)])

    run(served, calls, token=None)


def test_a_refused_stream_reports_its_status_every_time(served: RunningServer) -> None:
    # grpcio's aio client overwrote the server's status with INTERNAL when a write raced
    # the server's early end (grpc/grpc#36066); it hit about one call in a few hundred.
    async def calls(client: AsyncRecommenderClient) -> list[str]:
        seen = []
        for attempt in range(400):
            updates = [Rating(1, 50 + i, 4.0) for i in range(1 + attempt % 20)]
            try:
                await client.rate(updates)
            except UnauthenticatedError:
                seen.append("unauthenticated")
            except Exception as exc:  # the test counts what else came back
                seen.append(f"{type(exc).__name__}: {exc}")
        return seen

    seen = run(served, calls, token=None)
    assert [s for s in seen if s != "unauthenticated"] == []


def test_server_and_client_agree_on_the_accepted_header() -> None:
    from rbmrec_client import STREAM_ACCEPTED as client_side

    from server.service import STREAM_ACCEPTED as server_side

    assert client_side == server_side == ("rbmrec-stream", "accepted")
