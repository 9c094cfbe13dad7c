"""What the property tests share: the served model's facts, oracles, strategies, a health check.

An oracle says which status code the server must answer for a request, from the request and
the model alone; the tests then state "the server agrees with the oracle for every request
hypothesis draws". The validation order they encode is the API's: arguments that are wrong
whatever the model (INVALID_ARGUMENT) before lookups in it (NOT_FOUND).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from rbm.checkpoint import load_checkpoint
from rbmrec.v1 import recommender_pb2 as pb
from registry.store import FileRegistry
from server.recommender import MAX_FUTURE_S, MAX_N, MAX_PREDICT
from tests.harness.server import RunningServer

INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
NOW = int(time.time())  # timestamps within a day of MAX_FUTURE_S's edge are never drawn
OK = grpc.StatusCode.OK
GRPC_MAX_RECEIVE = 4 * 1024 * 1024  # grpc's default max receive message size, in bytes

# Reproducible in CI: the same examples on every run, no example database, no deadline (an
# RPC through the batcher may take a while on a loaded 2-core machine). 40 examples a test
# keep the whole folder at about half a minute (plus the server starts).
PROPERTY = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    # The autouse health check is per test on purpose, not per example.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@dataclass(frozen=True)
class Catalogue:
    """What the served version knows, read from its checkpoint."""

    version: str
    movie_ids: tuple[int, ...]  # catalogue order
    levels: tuple[float, ...]
    rated: dict[int, frozenset[int]]  # movie ids each training user rated

    @classmethod
    def load(cls, registry: FileRegistry, alias: str = "production") -> Catalogue:
        """The facts of the version ``alias`` points at."""
        info = registry.resolve("rbm", alias)
        ckpt = load_checkpoint(info.path)
        ids: list[int] = ckpt.movie_ids.tolist()
        bounds: list[int] = ckpt.user_indptr.tolist()
        movies: list[int] = ckpt.user_movies.tolist()
        rated = {
            int(user): frozenset(ids[m] for m in movies[bounds[row] : bounds[row + 1]])
            for row, user in enumerate(ckpt.user_ids.tolist())
        }
        return cls(str(info.version), tuple(ids), tuple(ckpt.levels), rated)

    @property
    def known(self) -> frozenset[int]:
        """The catalogue's movie ids."""
        return frozenset(self.movie_ids)

    def expected_count(self, user: int, n: int, include_rated: bool) -> int:
        """How many movies Recommend must return: n, fewer only when fewer remain."""
        left = len(self.movie_ids) - (0 if include_rated else len(self.rated.get(user, ())))
        return min(n, left)


# -- oracles --------------------------------------------------------------------------------
def recommend_code(request: pb.RecommendRequest) -> grpc.StatusCode:
    """The status Recommend must answer."""
    if request.user_id <= 0 or not 1 <= request.n <= MAX_N:
        return grpc.StatusCode.INVALID_ARGUMENT
    return OK


def predict_code(request: pb.PredictRatingsRequest, catalogue: Catalogue) -> grpc.StatusCode:
    """The status PredictRatings must answer."""
    if request.user_id <= 0 or len(request.movie_ids) > MAX_PREDICT:
        return grpc.StatusCode.INVALID_ARGUMENT
    if not set(request.movie_ids) <= catalogue.known:
        return grpc.StatusCode.NOT_FOUND
    return OK


def update_problems(update: pb.RatingUpdate, catalogue: Catalogue) -> set[str]:
    """The words an update's rejection may name: one per invalid field (empty: accept it)."""
    problems = set()
    if update.user_id <= 0:
        problems.add("user_id")
    if update.movie_id <= 0:  # an unknown positive id is stored for the next retrain
        problems.add("movie")
    if update.rating not in catalogue.levels:  # NaN is in no tuple
        problems.add("rating")
    if update.timestamp < 0 or update.timestamp > NOW + MAX_FUTURE_S:
        problems.add("timestamp")
    return problems


# -- strategies -----------------------------------------------------------------------------
def positive_users() -> st.SearchStrategy[int]:
    """Known MovieLens users, unknown ones and the int64 edge."""
    return st.one_of(
        st.integers(1, 943), st.integers(944, INT64[1]), st.sampled_from([1, 655, INT64[1]])
    )


def bad_users() -> st.SearchStrategy[int]:
    """Zero (an unset field) and negative ids down to the int64 edge."""
    return st.one_of(st.sampled_from([0, -1, INT64[0]]), st.integers(INT64[0], 0))


def any_users() -> st.SearchStrategy[int]:
    """Any user id the wire can carry, valid or not."""
    return st.one_of(positive_users(), bad_users())


def good_n() -> st.SearchStrategy[int]:
    """1..MAX_N with its edges."""
    return st.one_of(st.integers(1, MAX_N), st.sampled_from([1, MAX_N]))


def any_n() -> st.SearchStrategy[int]:
    """Any int32 n: the valid range, zero, negative, past MAX_N and the int32 edges."""
    edges = [0, -1, MAX_N + 1, *INT32]
    return st.one_of(good_n(), st.sampled_from(edges), st.integers(*INT32))


def known_movies(catalogue: Catalogue) -> st.SearchStrategy[int]:
    """Movie ids the model knows."""
    return st.sampled_from(catalogue.movie_ids)


def any_movies(catalogue: Catalogue) -> st.SearchStrategy[int]:
    """Known, unknown, zero, negative and int64-edge movie ids."""
    unknown = st.one_of(st.sampled_from([0, -1, 99_999, *INT64]), st.integers(*INT64))
    return st.one_of(known_movies(catalogue), unknown)


def any_ratings(catalogue: Catalogue) -> st.SearchStrategy[float]:
    """Every level, values between levels and off the scale, NaN and ±infinity (as float32)."""
    float32_max = 3.4028234663852886e38
    odd = [math.nan, math.inf, -math.inf, 0.0, -0.0, 0.5, 3.5, 5.5, 6.0, -1.0, float32_max]
    return st.one_of(st.sampled_from(catalogue.levels), st.sampled_from(odd), st.floats(width=32))


def any_timestamps() -> st.SearchStrategy[int]:
    """Now, 0 (the server stamps it), the past, negative, far future and the int64 edges."""
    far = NOW + 2 * MAX_FUTURE_S
    return st.one_of(
        st.sampled_from([0, NOW, -1, *INT64]),
        st.integers(0, NOW),
        st.integers(INT64[0], -1),
        st.integers(far, INT64[1]),
    )


# -- the server -----------------------------------------------------------------------------
def rpc_error(call: Callable[..., object], *args: object, **kwargs: object) -> grpc.RpcError | None:
    """Make a call; return its error, or None when it succeeded."""
    try:
        call(*args, **kwargs)
    except grpc.RpcError as exc:
        return exc
    return None


def code_of(error: grpc.RpcError | None) -> grpc.StatusCode:
    """OK for no error, else its status code."""
    return OK if error is None else error.code()


def assert_clear_error(error: grpc.RpcError | None, code: grpc.StatusCode) -> None:
    """The call failed with ``code`` and a message a person can act on."""
    assert error is not None, f"expected {code.name}, the call succeeded"
    assert error.code() == code, (error.code(), error.details())
    assert error.details().strip(), "the status carries no message"


def assert_healthy(server: RunningServer) -> None:
    """The process runs, health says SERVING and a normal Recommend answers."""
    assert server.process.poll() is None, "the server process died"
    health = health_pb2_grpc.HealthStub(server.channel)
    for service in ("", "rbmrec.v1.Recommender"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, service
    reply = server.stub.Recommend(pb.RecommendRequest(user_id=1, n=5), timeout=10)
    assert len(reply.movies) == 5


def tracebacks_through(log: str, folders: Iterable[Path]) -> list[str]:
    """The tracebacks in a server log that pass through files under ``folders``."""
    blocks = log.split("Traceback (most recent call last):")[1:]
    return [b for b in blocks if any(f'File "{folder}/' in b for folder in folders)]
