"""A client that streams rating updates in a loop and keeps what was acknowledged."""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field

import grpc

from rbmrec.v1 import recommender_pb2 as pb
from tests.harness.calls import recommend
from tests.harness.server import RunningServer


@dataclass
class Updater:
    """Rates each user's currently top-recommended movies, one update per call."""

    server: RunningServer
    users: list[int]
    acked: list[tuple[int, int, float]] = field(default_factory=list)
    refused: Counter[str] = field(default_factory=Counter)
    stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        # Movies the users have not rated yet (recommended ones are unrated by definition).
        self.todo = {
            u: [m.movie_id for m in recommend(self.server.stub, u, 200).movies] for u in self.users
        }
        self.thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        i = 0
        while not self.stop.is_set() and any(self.todo.values()):
            user = self.users[i % len(self.users)]
            i += 1
            if not self.todo[user]:
                continue
            movie = self.todo[user][0]
            try:
                (ack,) = self.server.stub.UpdateRatings(
                    iter([pb.RatingUpdate(user_id=user, movie_id=movie, rating=1.0)]), timeout=5
                )
            except grpc.RpcError as exc:
                self.refused[exc.code().name] += 1
                self.stop.wait(0.02)
                continue
            if ack.accepted:
                self.acked.append((user, movie, 1.0))
                self.todo[user].pop(0)

    def __enter__(self) -> Updater:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)
