"""How a client connects: its validated settings, the channel they make, the retry policy."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import grpc

from rbmrec_client._proto import recommender_pb2 as pb

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "RETRIED_METHODS",
    "STREAM_ACCEPTED",
    "ClientConfig",
    "method_path",
    "service_config",
]

DEFAULT_TIMEOUT_S = 10.0

# The server sends this header as soon as it accepts an UpdateRatings stream, before it
# reads an update. A client that waits for it never writes into a stream the server has
# already refused, which is what lets an asyncio client report the server's own status.
STREAM_ACCEPTED = ("rbmrec-stream", "accepted")

_SERVICE = pb.DESCRIPTOR.services_by_name["Recommender"]  # "rbmrec.v1.Recommender"

# Reads only: answering one twice changes nothing. UpdateRatings is left out, because a
# stream retried after the server logged some of its updates would log them again; that
# waits for RatingUpdate.update_id, which lets the server drop a repeat.
RETRIED_METHODS = ("Recommend", "RecommendMany", "SimilarMovies", "PredictRatings", "GetModelInfo")

# gRPC retries these on UNAVAILABLE (the server unreachable, restarting, or with no model
# yet), all within the call's one deadline: 4 attempts, 0.1 s then up to 2 s apart.
_RETRY_POLICY = {
    "maxAttempts": 4,
    "initialBackoff": "0.1s",
    "maxBackoff": "2s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}


def method_path(name: str) -> str:
    """The wire path of one of the service's RPCs, e.g. ``/rbmrec.v1.Recommender/Recommend``."""
    return f"/{_SERVICE.full_name}/{_SERVICE.methods_by_name[name].name}"


def service_config() -> dict[str, Any]:
    """The gRPC service config every client channel gets: retries for the reads only."""
    names = [{"service": _SERVICE.full_name, "method": m} for m in RETRIED_METHODS]
    return {"methodConfig": [{"name": names, "retryPolicy": _RETRY_POLICY}]}


@dataclass(frozen=True)
class ClientConfig:
    """Where and how to connect; checked when made, so that a bad value fails before a call."""

    target: str  # host:port
    token: str | None = None  # sent as "authorization: Bearer <token>" on every call
    root_certificates: bytes | None = None  # PEM CAs to trust (TLS); None: the system's
    certificate_chain: bytes | None = None  # PEM client certificate, for mutual TLS
    private_key: bytes | None = None  # its unencrypted PEM key
    tls: bool = False  # TLS even with none of the three above (system roots)
    timeout_s: float = DEFAULT_TIMEOUT_S  # each call's deadline, its retries included

    def __post_init__(self) -> None:
        if not self.target:
            raise ValueError("target must be host:port")
        if not self.timeout_s > 0 or self.timeout_s == float("inf"):
            raise ValueError(f"timeout_s must be a number of seconds > 0, got {self.timeout_s}")
        if (self.certificate_chain is None) != (self.private_key is None):
            raise ValueError("certificate_chain and private_key must be given together")
        # A metadata value must be visible ASCII; saying so beats a confusing failure per call.
        if self.token is not None and not (self.token and all("!" <= c <= "~" for c in self.token)):
            raise ValueError("the token must be non-empty visible ASCII with no spaces")

    def __repr__(self) -> str:
        # The token and key never reach a log through repr().
        return (
            f"ClientConfig(target={self.target!r}, token={'***' if self.token else None}, "
            f"secure={self.secure}, timeout_s={self.timeout_s})"
        )

    @property
    def secure(self) -> bool:
        """Whether the channel uses TLS."""
        return self.tls or any(
            pem is not None
            for pem in (self.root_certificates, self.certificate_chain, self.private_key)
        )

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The metadata sent with every call."""
        return () if self.token is None else (("authorization", f"Bearer {self.token}"),)

    @property
    def channel_options(self) -> list[tuple[str, Any]]:
        """The channel arguments: retries on, with the service config above."""
        return [("grpc.enable_retries", 1), ("grpc.service_config", json.dumps(service_config()))]

    def credentials(self) -> grpc.ChannelCredentials | None:
        """TLS credentials when ``secure``, else None (plaintext)."""
        if not self.secure:
            return None
        return grpc.ssl_channel_credentials(
            self.root_certificates, self.private_key, self.certificate_chain
        )
