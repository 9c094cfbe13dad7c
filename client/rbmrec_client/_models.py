"""What the client sends and gets back, as frozen dataclasses rather than protobuf messages."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ModelInfo",
    "Predictions",
    "Rating",
    "RatingAck",
    "RecommendQuery",
    "Recommendations",
    "ScoredMovie",
    "SimilarMovies",
]


@dataclass(frozen=True)
class ScoredMovie:
    """One movie of an answer, best first."""

    movie_id: int  # MovieLens movie id
    score: float  # ranking score, higher is better (similar(): cosine similarity)
    predicted_rating: float  # on the data set's scale; 0.0 in similar()
    title: str


@dataclass(frozen=True)
class Recommendations:
    """The top movies for one user, and the model version that chose them."""

    user_id: int
    movies: tuple[ScoredMovie, ...]
    model_version: str
    fallback: str = ""  # "popularity" when the model knew nothing of the user
    error: str = ""  # recommend_many() only: why this user has no answer


@dataclass(frozen=True)
class RecommendQuery:
    """One user's request in recommend_many(), with recommend()'s parameters."""

    user_id: int
    n: int = 10
    exclude: tuple[int, ...] = ()  # movie ids never returned
    candidates: tuple[int, ...] = ()  # when given, rank only these movies
    include_rated: bool = False


@dataclass(frozen=True)
class SimilarMovies:
    """The movies nearest to one movie in the model, never the movie itself."""

    movie_id: int
    movies: tuple[ScoredMovie, ...]
    model_version: str


@dataclass(frozen=True)
class Predictions:
    """Predicted ratings of one user, aligned with ``movie_ids`` (NaN: an unknown movie)."""

    user_id: int
    movie_ids: tuple[int, ...]
    ratings: tuple[float, ...]
    model_version: str

    def by_movie(self) -> dict[int, float]:
        """The ratings keyed by movie id."""
        return dict(zip(self.movie_ids, self.ratings, strict=True))


@dataclass(frozen=True)
class Rating:
    """A rating update to stream with rate()."""

    user_id: int
    movie_id: int
    rating: float  # on the data set's scale
    timestamp: int = 0  # Unix seconds; 0: the server stamps it on arrival
    # Yours, at most 128 characters: a repeat within 24 h is acknowledged (duplicate=True)
    # and never logged twice, so a rate() of updates that all carry one is safe to retry.
    update_id: str = ""


@dataclass(frozen=True)
class RatingAck:
    """The server's answer to one Rating, in the order they were sent."""

    accepted: bool
    error: str = ""
    log_id: str = ""  # the rating log's entry id of the stored update
    applied: bool = False  # the serving version knows the movie (else kept for a retrain)
    duplicate: bool = False  # its update_id was stored before; nothing new was logged


@dataclass(frozen=True)
class ModelInfo:
    """What model the server is serving, and how."""

    model_name: str
    model_version: str
    alias: str
    num_users: int
    num_movies: int
    hidden_units: int
    rating_levels: tuple[float, ...]
    device: str  # where the scoring pass runs, e.g. "cpu" or "cuda:0"
    backend: str  # "torch" or "onnx"
    ranking_score: str  # what ScoredMovie.score means for this version
    refused_version: str  # a version the alias pointed at that failed to load
    last_reload_error: str
    canary_version: str = ""  # a canary's version, "" while none is served
    canary_percent: float = 0.0  # the share of users it answers
    canary_alias: str = ""  # the alias the server follows for it ("" without --canary-alias)
