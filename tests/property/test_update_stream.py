"""UpdateRatings against a running server: every field, and a stream of 100k updates.

Properties: each update of a stream gets exactly one ack, in order; an ack accepts the update
exactly when every field is valid, else it refuses it with an error naming a bad field; the
stream goes on after a refusal; and the server's memory does not grow with the stream.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from rbmrec.v1 import recommender_pb2 as pb
from tests.harness.server import RunningServer
from tests.property.support import (
    NOW,
    PROPERTY,
    Catalogue,
    any_movies,
    any_ratings,
    any_timestamps,
    any_users,
    update_problems,
)

FIRST_TEST_USER = 40_000_000  # far above MovieLens ids, so no other test's users are touched
STREAM = 100_000
# A stream is answered one update at a time and HTTP/2 flow control caps what waits unread
# in either direction (a few MiB), so a long stream must cost no more than a short one.
# Measured here: 2 to 2.5 MiB of allocator noise, while a server that kept just the
# RatingRecord of each update (about 230 bytes) grew 22 MiB over the 100k updates.
RSS_BOUND_KIB = 16 * 1024


def _stream(server: RunningServer, updates: Iterator[pb.RatingUpdate]) -> list[pb.RatingAck]:
    return list(server.stub.UpdateRatings(updates, timeout=600))


@PROPERTY
@given(data=st.data())
def test_each_update_is_acked_in_order_accepted_exactly_when_valid(
    server: RunningServer, catalogue: Catalogue, data: st.DataObject
) -> None:
    update = st.builds(
        pb.RatingUpdate,
        user_id=any_users(),
        movie_id=any_movies(catalogue),
        rating=any_ratings(catalogue),
        timestamp=any_timestamps(),
    )
    updates = data.draw(st.lists(update, min_size=1, max_size=15), "updates")
    acks = _stream(server, iter(updates))
    assert len(acks) == len(updates)
    for update_, ack in zip(updates, acks, strict=True):
        problems = update_problems(update_, catalogue)
        assert ack.accepted == (not problems), (update_, ack)
        if problems:
            assert any(word in ack.error for word in problems), (update_, ack.error)
        else:
            assert ack.error == "" and ack.log_id, (update_, ack)
            assert ack.applied == (update_.movie_id in catalogue.known), (update_, ack)


def test_an_empty_stream_gets_no_acks_and_an_empty_update_is_refused(
    server: RunningServer,
) -> None:
    assert _stream(server, iter([])) == []
    (ack,) = _stream(server, iter([pb.RatingUpdate()]))  # user_id 0: the field was not set
    assert not ack.accepted and "user_id" in ack.error


@dataclass(frozen=True)
class _Expected:
    """What the ack of one update of the long stream must say."""

    accepted: bool
    says: str = ""  # a text only this update's error contains


def _long_stream(catalogue: Catalogue, count: int) -> Iterator[tuple[pb.RatingUpdate, _Expected]]:
    """One valid update in a hundred; the others each break one field in a way that names i.

    A refusal that names its own update's number proves the acks come back in order.
    """
    movies, levels = catalogue.movie_ids, catalogue.levels
    for i in range(count):
        j = i // 100  # ten users rate fifty movies over and over: the overlay stays small
        user, movie, rating = FIRST_TEST_USER + j % 10, movies[j % 50], levels[j % len(levels)]
        fields = {"user_id": user, "movie_id": movie, "rating": rating, "timestamp": NOW - i}
        kind = 0 if i % 100 == 0 else 1 + i % 4
        if kind == 0:
            yield pb.RatingUpdate(**fields), _Expected(True)
        elif kind == 1:  # an unknown movie would be stored: a non-positive one is refused
            fields["movie_id"] = -i
            yield (
                pb.RatingUpdate(**fields),
                _Expected(False, f"movie_id must be positive, got {-i}"),
            )
        elif kind == 2:
            fields["user_id"] = -i
            yield pb.RatingUpdate(**fields), _Expected(False, f"got {-i}")
        elif kind == 3:
            fields["timestamp"] = -i
            yield pb.RatingUpdate(**fields), _Expected(False, f"timestamp {-i} ")
        else:
            fields["rating"] = 1000.0 + i  # exact in float32 below 2**24
            yield pb.RatingUpdate(**fields), _Expected(False, f"rating {1000.0 + i!r} ")


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS in /proc/{pid}/status")


class _PeakRss:
    """Samples a process's resident set every 20 ms while in the ``with`` block."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = _rss_kib(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, _rss_kib(self.pid))

    def __enter__(self) -> _PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def test_a_100k_update_stream_is_acked_in_order_in_bounded_memory(
    server: RunningServer, catalogue: Catalogue
) -> None:
    pid = server.process.pid
    warm_up = _stream(server, (u for u, _ in _long_stream(catalogue, 2_000)))
    assert len(warm_up) == 2_000  # connections, metrics labels and allocator pools now exist
    expected: list[_Expected] = []

    def updates() -> Iterator[pb.RatingUpdate]:  # records what each ack must say as it sends
        for update, wanted in _long_stream(catalogue, STREAM):
            expected.append(wanted)
            yield update

    before = _rss_kib(pid)
    started = time.monotonic()
    count = 0
    with _PeakRss(pid) as rss:
        for ack in server.stub.UpdateRatings(updates(), timeout=600):
            wanted = expected[count]
            assert ack.accepted == wanted.accepted, (count, ack)
            assert wanted.says in ack.error if wanted.says else not ack.error, (count, ack.error)
            count += 1
    assert count == STREAM, "every update gets exactly one ack"
    after = _rss_kib(pid)
    grew = rss.peak - before
    assert grew <= RSS_BOUND_KIB, f"RSS grew {grew} KiB during the stream"
    assert after - before <= RSS_BOUND_KIB, f"RSS grew {after - before} KiB after the stream"
    print(f"100k updates in {time.monotonic() - started:.1f}s; peak RSS growth {grew} KiB")
