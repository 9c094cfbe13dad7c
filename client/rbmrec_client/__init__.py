"""rbmrec_client: a typed client of the rbmrec recommender (rbmrec.v1.Recommender over gRPC).

from rbmrec_client import RecommenderClient

with RecommenderClient("127.0.0.1:50051", token=None) as client:
    for movie in client.recommend(1, 5, exclude=[50]).movies:
        print(movie.title, movie.predicted_rating)
"""

from rbmrec_client._async_client import AsyncRecommenderClient
from rbmrec_client._client import RecommenderClient
from rbmrec_client._config import DEFAULT_TIMEOUT_S, RETRIED_METHODS, STREAM_ACCEPTED, ClientConfig
from rbmrec_client._exceptions import (
    DeadlineExceededError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    RecommenderError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
    UnimplementedError,
)
from rbmrec_client._models import (
    ModelInfo,
    Predictions,
    Rating,
    RatingAck,
    Recommendations,
    RecommendQuery,
    ScoredMovie,
    SimilarMovies,
)

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "RETRIED_METHODS",
    "STREAM_ACCEPTED",
    "AsyncRecommenderClient",
    "ClientConfig",
    "DeadlineExceededError",
    "InvalidArgumentError",
    "ModelInfo",
    "NotFoundError",
    "PermissionDeniedError",
    "Predictions",
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
]
