"""The public surface of rbmrec_client: what ``__all__`` names, and nothing private in it."""

from __future__ import annotations

import rbmrec_client

EXPECTED = {
    "AsyncRecommenderClient",
    "ClientConfig",
    "DEFAULT_TIMEOUT_S",
    "DeadlineExceededError",
    "InvalidArgumentError",
    "ModelInfo",
    "NotFoundError",
    "PermissionDeniedError",
    "Predictions",
    "RETRIED_METHODS",
    "STREAM_ACCEPTED",
    "Rating",
    "RatingAck",
    "RecommendQuery",
    "Recommendations",
    "RecommenderClient",
    "RecommenderError",
    "ResourceExhaustedError",
    "ScoredMovie",
    "SimilarMovies",
    "UnauthenticatedError",
    "UnavailableError",
    "UnimplementedError",
}


def test_the_public_names_are_pinned() -> None:
    assert set(rbmrec_client.__all__) == EXPECTED


def test_every_public_name_is_defined_and_public() -> None:
    for name in rbmrec_client.__all__:
        member = getattr(rbmrec_client, name)
        module = getattr(member, "__module__", "rbmrec_client._")
        assert module.startswith("rbmrec_client."), (name, module)


def test_every_error_is_a_recommender_error() -> None:
    errors = [getattr(rbmrec_client, n) for n in EXPECTED if n.endswith("Error")]
    assert all(issubclass(e, rbmrec_client.RecommenderError) for e in errors)
    assert issubclass(rbmrec_client.RecommenderError, Exception)
