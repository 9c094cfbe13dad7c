"""The exceptions a call can raise: one per gRPC status code a caller may act on.

    RecommenderError                 any failed call; .code and .details as gRPC gave them
    ├── InvalidArgumentError         a bad user id, n, rating, ...
    ├── NotFoundError                an unknown movie (predict, similar)
    ├── UnauthenticatedError         a missing or wrong bearer token
    ├── PermissionDeniedError
    ├── ResourceExhaustedError       the server's queue is full: back off
    ├── UnavailableError             unreachable, or no model / no Redis yet (after retries)
    ├── DeadlineExceededError        the call took longer than timeout_s
    └── UnimplementedError           the server predates this RPC

A call raises these, never ``grpc.RpcError``: the original is the exception's ``__cause__``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import grpc

__all__ = [
    "DeadlineExceededError",
    "InvalidArgumentError",
    "NotFoundError",
    "PermissionDeniedError",
    "RecommenderError",
    "ResourceExhaustedError",
    "UnauthenticatedError",
    "UnavailableError",
    "UnimplementedError",
    "map_rpc_errors",
]


class RecommenderError(Exception):
    """A call failed with gRPC status ``code``; ``details`` is the server's reason."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


class InvalidArgumentError(RecommenderError):
    """The server refused the request's values (INVALID_ARGUMENT)."""


class NotFoundError(RecommenderError):
    """A movie the model does not know (NOT_FOUND)."""


class UnauthenticatedError(RecommenderError):
    """No bearer token, or not the server's (UNAUTHENTICATED)."""


class PermissionDeniedError(RecommenderError):
    """The caller may not make this call (PERMISSION_DENIED)."""


class ResourceExhaustedError(RecommenderError):
    """The server is overloaded (RESOURCE_EXHAUSTED): try again later."""


class UnavailableError(RecommenderError):
    """The server cannot answer now (UNAVAILABLE), after the channel's retries."""


class DeadlineExceededError(RecommenderError):
    """The call did not finish within its timeout (DEADLINE_EXCEEDED)."""


class UnimplementedError(RecommenderError):
    """The server does not offer this RPC (UNIMPLEMENTED): it is older than the client."""


_BY_CODE: dict[grpc.StatusCode, type[RecommenderError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.UNIMPLEMENTED: UnimplementedError,
}


def _from_rpc_error(exc: grpc.RpcError) -> RecommenderError:
    # Every RpcError a call raises is also a grpc.Call (sync) or grpc.aio.AioRpcError.
    if isinstance(exc, grpc.Call | grpc.aio.AioRpcError):
        code, details = exc.code(), exc.details() or ""
    else:
        code, details = grpc.StatusCode.UNKNOWN, str(exc)
    return _BY_CODE.get(code, RecommenderError)(code, " ".join(details.split()))


@contextlib.contextmanager
def map_rpc_errors() -> Iterator[None]:
    """Turn a ``grpc.RpcError`` raised inside the block into a RecommenderError."""
    try:
        yield
    except grpc.RpcError as exc:
        raise _from_rpc_error(exc) from exc
