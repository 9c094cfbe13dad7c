"""Bearer-token authentication: the token is read from a file, checked on every RPC.

Every RPC must carry the metadata ``authorization: Bearer <token>``, except the standard
health service: Kubernetes gRPC probes and load balancers cannot send metadata, and a
health answer reveals nothing. Everything else, server reflection included, is checked,
so a service added later is covered without anyone remembering to list it.
"""

from __future__ import annotations

import hmac
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health

__all__ = ["OPEN_SERVICES", "TokenAuth", "bearer_metadata", "load_token"]

log = logging.getLogger(__name__)

OPEN_SERVICES = frozenset({health.SERVICE_NAME})  # "grpc.health.v1.Health": probes stay open

# grpc's classes are generic only in the type stubs, not at run time.
if TYPE_CHECKING:
    _Handler = grpc.RpcMethodHandler[Any, Any]
    _Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[_Handler]]
    _Interceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    _Interceptor = grpc.aio.ServerInterceptor


def load_token(path: str | None, env: Mapping[str, str] = os.environ) -> str | None:
    """The token in ``path`` (else $RBMREC_AUTH_TOKEN); None if neither is set."""
    if path:
        try:
            token = Path(path).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            # The file name only: an exception's text never holds the file's content.
            raise ValueError(f"cannot read the auth token file {path}: {_reason(exc)}") from exc
    elif env.get("RBMREC_AUTH_TOKEN"):
        token = env["RBMREC_AUTH_TOKEN"].strip()
    else:
        return None
    if not token:
        where = f"file {path}" if path else "$RBMREC_AUTH_TOKEN"
        raise ValueError(f"the auth token ({where}) is empty")
    # A metadata value must be visible ASCII; saying so beats a confusing failure per call.
    if not all("!" <= ch <= "~" for ch in token):
        raise ValueError("the auth token must be visible ASCII with no spaces")
    return token


def _reason(exc: BaseException) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__


def bearer_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """Call metadata carrying ``token`` (none when the token is None)."""
    return () if token is None else (("authorization", f"Bearer {token}"),)


class TokenAuth(_Interceptor):
    """Answer UNAUTHENTICATED to any RPC outside OPEN_SERVICES without the right bearer token."""

    def __init__(self, token: str) -> None:
        self._token = token.encode()

    def __repr__(self) -> str:
        return "TokenAuth(token=***)"

    async def intercept_service(
        self, continuation: _Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> _Handler:
        """Pass an authenticated call on; replace any other with one that is refused."""
        service = handler_call_details.method.lstrip("/").split("/", 1)[0]
        problem = None if service in OPEN_SERVICES else self._check(handler_call_details)
        handler = await continuation(handler_call_details)
        if problem is None:
            return handler
        log.debug("refused %s: %s", handler_call_details.method, problem)
        return _refusal(handler, problem)

    def _check(self, details: grpc.HandlerCallDetails) -> str | None:
        values = [v for k, v in details.invocation_metadata or () if k == "authorization"]
        if not values:
            return "missing bearer token: send metadata 'authorization: Bearer <token>'"
        scheme, _, given = str(values[0]).partition(" ")
        # compare_digest: the time taken must not tell how much of a guess was right.
        if (
            len(values) > 1
            or scheme.lower() != "bearer"
            or not hmac.compare_digest(given.strip().encode(), self._token)
        ):
            return "invalid bearer token"
        return None


def _refusal(handler: _Handler | None, message: str) -> _Handler:
    """A handler of the same streaming kind as ``handler`` that aborts with ``message``."""

    async def refuse(request: object, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    # The kind must match, or the server would read a stream as one message (or the
    # reverse). Requests are never parsed: no deserializer runs for an unknown caller.
    if handler is None or not (handler.request_streaming or handler.response_streaming):
        return grpc.unary_unary_rpc_method_handler(refuse)
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse)
    return grpc.unary_stream_rpc_method_handler(refuse)
