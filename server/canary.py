"""Which version answers a user: the stable one, or a canary for a fixed share of users.

A user's share is a stable hash of the user id, so a user stays on one version for as long
as the split holds (their recommendations do not flip between versions from one request to
the next), and moving the canary alias moves only the canary's users. While the canary
alias is unset or its version is not loaded, every user gets the stable version.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from ratinglog.impressions import Impression
from server.errors import InvalidArgument, ServiceError
from server.impressions import ImpressionSink, NoImpressions
from server.ratings import RatingRecord
from server.recommender import (
    Predicted,
    PredictJob,
    Recommender,
    RecommendJob,
    Served,
    Similar,
    UpdateAck,
)

__all__ = ["BUCKETS", "MAX_MANY", "Arm", "Router", "Split", "bucket"]

BUCKETS = 10_000  # a percent is resolved to 0.01%
MAX_MANY = 1000  # requests per RecommendMany


def bucket(user_id: int) -> int:
    """The user's place in [0, BUCKETS): the same on every replica, restart and version."""
    digest = hashlib.blake2b(user_id.to_bytes(8, "little", signed=True), digest_size=8)
    return int.from_bytes(digest.digest(), "little") % BUCKETS


@dataclass(frozen=True)
class Split:
    """``percent`` of users, chosen by ``bucket``, go to the canary."""

    percent: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.percent <= 100:
            raise ValueError(f"canary percent must be in [0, 100], got {self.percent}")

    def takes(self, user_id: int) -> bool:
        """Whether ``user_id`` belongs to the canary's share."""
        return bucket(user_id) < round(self.percent * BUCKETS / 100)


class ServedMeter(Protocol):
    """Counts and times answers per arm and version (``Metrics.served_one``)."""

    def served_one(self, method: str, arm: str, version: str, seconds: float) -> None:
        """Record one answer."""


@dataclass(frozen=True)
class Arm:
    """One version's side of the split: its name ("stable" or "canary") and its recommender."""

    name: str
    recommender: Recommender


class Router:
    """Sends each user's requests and rating updates to the stable or the canary arm."""

    def __init__(
        self,
        stable: Recommender,
        canary: Recommender | None = None,
        split: Split = Split(),
        impressions: ImpressionSink | None = None,
        meter: ServedMeter | None = None,
    ) -> None:
        self.stable = Arm("stable", stable)
        self.canary = Arm("canary", canary) if canary is not None else None
        self.split = split
        self.impressions = impressions or NoImpressions()
        self.meter = meter

    @property
    def arms(self) -> list[Arm]:
        """Every arm, stable first."""
        return [self.stable] if self.canary is None else [self.stable, self.canary]

    def arm_of(self, user_id: int) -> Arm:
        """The arm that answers ``user_id`` now."""
        canary = self.canary
        if canary is not None and canary.recommender.holder.engine and self.split.takes(user_id):
            return canary
        return self.stable

    async def recommend(self, job: RecommendJob, timeout_s: float | None = None) -> Served:
        """Recommend on the user's arm; what it answered is an impression of that version."""
        arm = self.arm_of(job.user_id)
        started = time.perf_counter()
        served = await arm.recommender.recommend(job, timeout_s)
        if self.meter is not None:
            self.meter.served_one(
                "Recommend", arm.name, served.version, time.perf_counter() - started
            )
        if served.movie_ids:
            movies = tuple(served.movie_ids)
            self.impressions.record(Impression(served.version, arm.name, job.user_id, movies))
        return served

    async def recommend_many(
        self, jobs: Sequence[RecommendJob], timeout_s: float | None = None
    ) -> list[Served | ServiceError]:
        """Recommend for each job on its user's arm, all at once so that they share passes.

        One user's failure is that user's result, not the call's.
        """
        if len(jobs) > MAX_MANY:
            raise InvalidArgument(f"at most {MAX_MANY} requests per call, got {len(jobs)}")
        results = await asyncio.gather(
            *(self.recommend(job, timeout_s) for job in jobs), return_exceptions=True
        )
        out: list[Served | ServiceError] = []
        for result in results:
            if isinstance(result, Served | ServiceError):
                out.append(result)
            else:  # not a domain error: a bug, or a cancellation; the whole call fails
                raise result
        return out

    async def predict(self, job: PredictJob, timeout_s: float | None = None) -> Predicted:
        """PredictRatings on the user's arm."""
        arm = self.arm_of(job.user_id)
        started = time.perf_counter()
        predicted = await arm.recommender.predict(job, timeout_s)
        if self.meter is not None:
            seconds = time.perf_counter() - started
            self.meter.served_one("PredictRatings", arm.name, predicted.version, seconds)
        return predicted

    async def similar(self, movie_id: int, n: int) -> Similar:
        """SimilarMovies concerns no user: the stable version answers."""
        return await self.stable.recommender.similar(movie_id, n)

    async def update(self, record: RatingRecord, update_id: str = "") -> UpdateAck:
        """Log the update once, through the user's arm; the other arm reads it from the log."""
        return await self.arm_of(record.user_id).recommender.update(record, update_id)
