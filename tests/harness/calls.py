"""Calls to a running server as the tests make them: one Recommend, one update, client load."""

from __future__ import annotations

import threading

import grpc

from rbmrec.v1 import recommender_pb2 as pb
from rbmrec.v1 import recommender_pb2_grpc as pb_grpc
from tests.harness.server import RunningServer


def recommend(stub: pb_grpc.RecommenderStub, user: int, n: int = 10) -> pb.RecommendResponse:
    """One Recommend call."""
    reply: pb.RecommendResponse = stub.Recommend(pb.RecommendRequest(user_id=user, n=n), timeout=30)
    return reply


def update(server: RunningServer, user: int, movie: int, rating: float) -> pb.RatingAck:
    """Stream one rating update and return its acknowledgement."""
    acks = list(
        server.stub.UpdateRatings(
            iter([pb.RatingUpdate(user_id=user, movie_id=movie, rating=rating)]), timeout=10
        )
    )
    assert len(acks) == 1
    ack: pb.RatingAck = acks[0]
    return ack


def try_update(server: RunningServer, user: int, movie: int, rating: float) -> bool:
    """Whether one update was acknowledged (False on any RPC error)."""
    try:
        return update(server, user, movie, rating).accepted
    except grpc.RpcError:
        return False


class Load:
    """Clients calling Recommend in a loop until stopped; records versions and failures."""

    def __init__(self, server: RunningServer, threads: int = 4) -> None:
        self.server = server
        self.stop = threading.Event()
        self.versions: list[list[str]] = [[] for _ in range(threads)]
        self.failures: list[str] = []
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]

    def _run(self, i: int) -> None:
        user = 1 + i
        while not self.stop.is_set():
            try:
                self.versions[i].append(recommend(self.server.stub, user).model_version)
            except grpc.RpcError as exc:
                self.failures.append(f"{exc.code()}: {exc.details()}")
            user = user % 900 + 1

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)
