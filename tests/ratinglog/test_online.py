"""The online evaluation: which recommended movies users rated after, per version, and the
canary's verdict; the pure join first, then reading both streams (and the archive) in Redis."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from ratinglog import (
    Impression,
    RatingArchive,
    RatingRecord,
    VersionFigures,
    compare,
    compare_versions,
    decode_fields,
    encode_fields,
    encode_impression,
    impressions_key,
    online_figures,
    outcomes,
    read_outcomes,
    stream_key,
)
from ratinglog.online import RatingRow
from tests.harness.cli import REDIS_URL

HOUR = 3_600_000
NOW = 100 * HOUR


def shown(millis: int, user: int, *movies: int, version: str = "1") -> tuple[int, Impression]:
    """``movies`` recommended to ``user`` by ``version`` at ``millis``."""
    return millis, Impression(version, "stable", user, movies)


def figures_of(
    impressions: list[tuple[int, Impression]],
    ratings: list[RatingRow],
    window_ms: int = HOUR,
    now_ms: int = NOW,
) -> dict[str, VersionFigures]:
    return {f.version: f for f in online_figures(impressions, ratings, window_ms, now_ms)}


def counts(f: VersionFigures) -> tuple[int, int, int, int]:
    return f.users, f.recommended, f.rated_after, f.liked_after


# -- the join --------------------------------------------------------------------------------
def test_a_rating_after_a_recommendation_counts_one_before_it_does_not() -> None:
    t0 = 10 * HOUR
    impressions = [shown(t0, 7, 1, 2, 3, 4, 5, 6)]
    ratings: list[RatingRow] = [
        (t0 - 1, 7, 1, 5.0),  # before: ignored
        (t0, 7, 2, 5.0),  # at the impression: does not follow it
        (t0 + 1, 7, 3, 4.0),  # right after: counts, liked
        (t0 + HOUR, 7, 4, 3.5),  # at the window's end: counts, not liked
        (t0 + HOUR + 1, 7, 5, 5.0),  # past the window: ignored
        (t0 + 5, 8, 6, 5.0),  # another user rating the same movie: not this pair
    ]
    f = figures_of(impressions, ratings)["1"]
    assert counts(f) == (1, 6, 2, 1)
    assert f.hit_rate == pytest.approx(2 / 6) and f.like_rate == pytest.approx(1 / 6)
    assert (f.first_ms, f.last_ms, f.pending) == (t0, t0, 0)
    assert f.as_dict()["hit_rate"] == f.hit_rate


def test_liked_is_decided_by_the_first_rating_in_the_window() -> None:
    t0 = HOUR
    ratings: list[RatingRow] = [(t0 + 10, 7, 1, 3.0), (t0 + 20, 7, 1, 5.0), (t0 + 10, 7, 2, 4.0)]
    ratings += [(t0 - 10, 7, 3, 2.0), (t0 + 10, 7, 3, 4.5)]  # re-rated after: counts
    f = figures_of([shown(t0, 7, 1, 2, 3)], ratings)["1"]
    assert counts(f) == (1, 3, 3, 2)


def test_the_first_impression_of_a_pair_is_when_it_was_recommended() -> None:
    first, again = 10 * HOUR, 12 * HOUR
    impressions = [shown(first, 7, 1, 2), shown(again, 7, 1, 2), shown(again, 7, 3)]
    # Rated within an hour of the first impression, before the second.
    f = figures_of(impressions, [(first + HOUR // 2, 7, 1, 5.0)])["1"]
    assert counts(f) == (1, 3, 1, 1), "a pair shown twice is recommended once, at its first"
    assert (f.first_ms, f.last_ms) == (first, again)
    # The input's order does not matter: the earliest time wins.
    f = figures_of(list(reversed(impressions)), [(first + HOUR // 2, 7, 1, 5.0)])["1"]
    assert counts(f) == (1, 3, 1, 1)


def test_only_settled_pairs_count() -> None:
    closed, open_ = NOW - HOUR, NOW - HOUR + 1
    impressions = [shown(closed, 7, 1), shown(open_, 8, 1), shown(open_, 9, 2)]
    ratings: list[RatingRow] = [(closed + 5, 7, 1, 5.0), (open_ + 5, 8, 1, 5.0)]
    f = figures_of(impressions, ratings)["1"]
    assert counts(f) == (1, 1, 1, 1), "a pair whose window is open is not counted yet"
    assert f.pending == 2 and f.last_ms == closed
    later = figures_of(impressions, ratings, now_ms=NOW + 1)["1"]
    assert counts(later) == (3, 3, 2, 2) and later.pending == 0


def test_versions_are_counted_apart_and_sorted_by_number() -> None:
    t0 = HOUR
    impressions = [
        shown(t0, 7, 1, 2, version="10"),
        shown(t0, 7, 1, version="9"),
        shown(t0 + 1, 8, 1, version="9"),
    ]
    ratings: list[RatingRow] = [(t0 + 2, 7, 1, 4.0), (t0 + 3, 8, 1, 1.0)]
    listed = online_figures(impressions, ratings, HOUR, NOW)
    assert [f.version for f in listed] == ["9", "10"]
    nine, ten = listed
    assert counts(nine) == (2, 2, 2, 1)
    assert counts(ten) == (1, 2, 1, 1)


def test_nothing_recommended_is_a_zero_rate_and_no_impression_is_an_empty_list() -> None:
    f = figures_of([shown(NOW, 7, 1)], [(NOW + 1, 7, 1, 5.0)])["1"]
    assert counts(f) == (0, 0, 0, 0) and f.hit_rate == 0.0 and f.like_rate == 0.0
    assert (f.first_ms, f.last_ms, f.pending) == (None, None, 1)
    assert online_figures([], [(1, 7, 1, 5.0)], HOUR, NOW) == []
    assert figures_of([shown(HOUR, 7)], [])["1"].recommended == 0  # an empty answer
    with pytest.raises(ValueError, match="window"):
        online_figures([], [], 0, NOW)


def test_the_join_agrees_with_a_plain_loop_on_random_data() -> None:
    rng = random.Random(17)
    impressions = [
        shown(
            rng.randrange(50 * HOUR),
            rng.randrange(30),
            *rng.sample(range(40), 4),
            version=rng.choice("12"),
        )
        for _ in range(300)
    ]
    ratings: list[RatingRow] = [
        (rng.randrange(60 * HOUR), rng.randrange(30), rng.randrange(40), rng.randrange(1, 6) / 1)
        for _ in range(2000)
    ]
    got = {v: counts(f) for v, f in figures_of(impressions, ratings, now_ms=40 * HOUR).items()}
    assert got == _by_loop(impressions, ratings, HOUR, 40 * HOUR)
    assert all(c[2] > 0 for c in got.values()), "the data should have hits to compare"


def _by_loop(
    impressions: list[tuple[int, Impression]], ratings: list[RatingRow], window: int, now: int
) -> dict[str, tuple[int, int, int, int]]:
    first: dict[tuple[str, int, int], int] = {}
    for t, imp in impressions:
        for m in imp.movie_ids:
            key = (imp.version, imp.user_id, m)
            first[key] = min(first.get(key, t), t)
    result = {}
    for version in sorted({v for v, _, _ in first}):
        pairs = [(u, m, t) for (v, u, m), t in first.items() if v == version and t + window <= now]
        users, rated, liked = set(), 0, 0
        for u, m, t0 in pairs:
            users.add(u)
            after = sorted((t, r) for t, uu, mm, r in ratings if (uu, mm) == (u, m) and t0 < t)
            after = [(t, r) for t, r in after if t <= t0 + window]
            rated += bool(after)
            liked += bool(after) and after[0][1] >= 4
        result[version] = (len(users), len(pairs), rated, liked)
    return result


# -- the comparison --------------------------------------------------------------------------
def figures(version: str, recommended: int, rated: int) -> VersionFigures:
    return VersionFigures(version, recommended, recommended, rated, 0, 0, 0, 0)


def test_a_canary_significantly_below_production_is_worse() -> None:
    verdict = compare(figures("2", 2000, 100), figures("1", 2000, 160))
    assert verdict.outcome == "worse"
    assert verdict.canary_rate == 0.05 and verdict.production_rate == 0.08
    assert verdict.z is not None and verdict.z < -1.645
    assert "0.0500" in verdict.reason and "\n" not in verdict.reason
    near = compare(figures("2", 2000, 130), figures("1", 2000, 160))  # just past alpha 0.05
    assert near.outcome == "worse" and near.z is not None and -2 < near.z < -1.645
    assert compare(figures("2", 2000, 130), figures("1", 2000, 160), alpha=0.01).outcome == (
        "not worse"
    )


def test_a_canary_not_significantly_below_is_not_worse() -> None:
    small_gap = compare(figures("2", 2000, 150), figures("1", 2000, 160))
    assert small_gap.outcome == "not worse" and small_gap.z is not None
    assert -1.645 < small_gap.z < 0
    better = compare(figures("2", 2000, 200), figures("1", 2000, 160))
    assert better.outcome == "not worse" and better.z is not None and better.z > 0
    nothing_rated = compare(figures("2", 2000, 0), figures("1", 2000, 0))
    assert nothing_rated.outcome == "not worse" and nothing_rated.z == 0.0


def test_too_few_recommendations_are_undecided() -> None:
    verdict = compare(figures("2", 999, 0), figures("1", 5000, 4000))
    assert verdict.outcome == "undecided" and verdict.z is None
    assert "999" in verdict.reason and "1000" in verdict.reason
    assert compare(figures("2", 50, 0), figures("1", 50, 40), min_recommended=50).outcome == (
        "worse"
    )


def test_the_comparison_keeps_to_the_period_both_versions_served() -> None:
    canary_start = 20 * HOUR
    impressions, ratings = [], []
    # Production alone, before the canary: every pair rated.
    for user in range(100):
        impressions.append(shown(HOUR + user, user, 1, version="1"))
        ratings.append((HOUR + user + 1, user, 1, 5.0))
    # Then both, alike: half the pairs rated.
    for user in range(100, 300):
        version = "1" if user % 2 else "2"
        impressions.append(shown(canary_start + user, user, 1, version=version))
        if user % 4 < 2:
            ratings.append((canary_start + user + 1, user, 1, 5.0))
    found = outcomes(sorted(impressions), sorted(ratings), HOUR)
    whole = {f.version: f for f in found.figures(NOW)}
    assert whole["1"].hit_rate == pytest.approx(150 / 200)
    assert compare(whole["2"], whole["1"], min_recommended=50).outcome == "worse"
    verdict, used = compare_versions(found, "2", "1", NOW, min_recommended=50)
    assert verdict.outcome == "not worse", verdict.reason
    assert [f.recommended for f in used] == [100, 100]
    assert used[1].first_ms == canary_start + 101  # production's first in the period
    assert verdict.canary_rate == pytest.approx(0.5) and verdict.production_rate == 0.5


def test_a_version_without_impressions_is_undecided() -> None:
    found = outcomes([shown(HOUR, 7, 1, version="1")], [], HOUR)
    verdict, used = compare_versions(found, "2", "1", NOW)
    assert verdict.outcome == "undecided" and used == []
    assert "version 2" in verdict.reason


# -- reading Redis ---------------------------------------------------------------------------
@pytest.fixture
def prefix(redis_prefix: str) -> str:
    return f"{redis_prefix}:{uuid.uuid4().hex[:8]}"


@pytest.fixture
def client(prefix: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    yield client
    client.delete(impressions_key(prefix), stream_key(prefix))
    client.close()


def add_impression(client: redis.Redis, prefix: str, millis: int, imp: Impression) -> None:
    client.xadd(impressions_key(prefix), encode_impression(imp), id=f"{millis}-0")


def add_rating(
    client: redis.Redis, prefix: str, entry_id: str, user: int, movie: int, rating: float
) -> None:
    record = RatingRecord(user, movie, rating, 0)  # ts is the client's word: never used
    client.xadd(stream_key(prefix), encode_fields(record), id=entry_id)


def test_both_streams_are_read_by_entry_id_in_pages_skipping_malformed_entries(
    client: redis.Redis, prefix: str, tmp_path: Path
) -> None:
    t0 = 10 * HOUR
    add_impression(client, prefix, t0, Impression("3", "canary", 7, (1, 2, 3)))
    client.xadd(impressions_key(prefix), {"v": "3", "u": "7"}, id=f"{t0 + 1}-0")  # no m, a
    client.xadd(impressions_key(prefix), {"v": "3", "a": "x", "u": "x", "m": "1"}, id=f"{t0 + 2}-0")
    big = {"v": "3", "a": "x", "u": str(2**63), "m": "9"}  # no int64
    client.xadd(impressions_key(prefix), big, id=f"{t0 + 3}-0")
    add_impression(client, prefix, t0 + 4, Impression("3", "canary", 8, (1,)))
    add_rating(client, prefix, f"{t0 - 1}-0", 7, 1, 5.0)  # before: ignored
    add_rating(client, prefix, f"{t0}-1", 7, 2, 5.0)  # same millis, later seq: does not follow
    client.xadd(stream_key(prefix), {"user": "7", "movie": "3"}, id=f"{t0 + 5}-0")  # no rating
    add_rating(client, prefix, f"{t0 + 6}-0", 7, 3, 4.0)
    add_rating(client, prefix, f"{t0 + 7}-0", 8, 1, 2.0)
    archive = RatingArchive(tmp_path, prefix)
    found, skipped = read_outcomes(client, archive, HOUR, NOW, page_size=2)
    (f,) = found.figures(NOW)
    assert f.version == "3" and counts(f) == (2, 4, 2, 1)
    assert (skipped.impressions, skipped.ratings) == (3, 1)


def test_ratings_trimmed_into_the_archive_still_count(
    client: redis.Redis, prefix: str, tmp_path: Path
) -> None:
    t0 = 10 * HOUR
    add_impression(client, prefix, t0, Impression("1", "stable", 7, (1, 2, 3)))
    add_rating(client, prefix, f"{t0 - 5}-0", 7, 1, 5.0)
    add_rating(client, prefix, f"{t0 + 1}-0", 7, 1, 5.0)
    add_rating(client, prefix, f"{t0 + 2}-0", 7, 2, 1.0)
    add_rating(client, prefix, f"{t0 + 3}-0", 7, 3, 4.0)
    archive = RatingArchive(tmp_path, prefix)
    logged = client.xrange(stream_key(prefix), count=3)
    archive.append([(raw.decode(), decode_fields(fields)) for raw, fields in logged])
    client.xtrim(stream_key(prefix), minid=f"{t0 + 3}-0", approximate=False)
    assert client.xlen(stream_key(prefix)) == 1
    found, _ = read_outcomes(client, archive, HOUR, NOW, page_size=1)
    assert counts(found.figures(NOW)[0]) == (1, 3, 3, 2)


def test_an_empty_impression_stream_reads_as_no_version(
    client: redis.Redis, prefix: str, tmp_path: Path
) -> None:
    add_rating(client, prefix, "5-0", 7, 1, 5.0)
    found, skipped = read_outcomes(client, RatingArchive(tmp_path, prefix), HOUR, NOW)
    assert found.figures(NOW) == [] and (skipped.impressions, skipped.ratings) == (0, 0)
