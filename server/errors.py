"""Domain errors of the serving layer; ``service.py`` maps each to one gRPC status code."""

from __future__ import annotations

__all__ = [
    "DeadlineExceeded",
    "InvalidArgument",
    "NotFound",
    "NotReady",
    "ResourceExhausted",
    "ServiceError",
    "Unavailable",
]


class ServiceError(Exception):
    """Base of every error a client should see as a status code with this message."""


class InvalidArgument(ServiceError):
    """The request is malformed: bad n, a rating off the scale, ..."""


class NotFound(ServiceError):
    """A movie id the model does not know."""


class Unavailable(ServiceError):
    """A dependency the request needs (Redis for durable updates) is unreachable."""


class NotReady(ServiceError):
    """No model version is loaded yet."""


class ResourceExhausted(ServiceError):
    """The request queue is full."""


class DeadlineExceeded(ServiceError):
    """The request's deadline passed while it waited in the queue."""
