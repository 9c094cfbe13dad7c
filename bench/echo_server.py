"""A grpc.aio server with rbmrec's Recommend messages and no model: the Python-gRPC ceiling.

It answers every Recommend with a fixed 10-movie response of the same size as the real
one, so the benchmark can compare the real server with what gRPC alone costs here.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
from pathlib import Path
from typing import Any

import grpc
import uvloop

from rbmrec.v1 import recommender_pb2 as pb
from rbmrec.v1 import recommender_pb2_grpc as pb_grpc


class Echo(pb_grpc.RecommenderServicer):  # type: ignore[misc]
    """Recommend returns a canned response; nothing else is served."""

    def __init__(self) -> None:
        self.reply = pb.RecommendResponse(
            movies=[
                pb.ScoredMovie(
                    movie_id=i,
                    score=4.5 - i / 100,
                    predicted_rating=4.2,
                    title=f"Some Movie Title Of Typical Length ({1990 + i})",
                )
                for i in range(1, 11)
            ],
            model_version="1",
        )

    async def Recommend(self, request: pb.RecommendRequest, context: Any) -> pb.RecommendResponse:
        """The canned response."""
        return self.reply


def _write_address(path: Path, address: str) -> None:
    """What rbm-serve writes to --address-file, written as atomically (temp file + rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({"address": address, "metrics": None, "pid": os.getpid()}))
    os.replace(tmp, path)


async def serve(port: int, address_file: Path | None) -> None:
    """Serve until SIGTERM."""
    server = grpc.aio.server()
    pb_grpc.add_RecommenderServicer_to_server(Echo(), server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"serving echo on 127.0.0.1:{bound}", flush=True)
    if address_file:
        _write_address(address_file, f"127.0.0.1:{bound}")
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(1)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--address-file", type=Path, help="as rbm-serve's --address-file")
    args = parser.parse_args()
    uvloop.run(serve(args.port, args.address_file))  # the same event loop as rbm-serve
