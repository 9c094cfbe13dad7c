"""``rbm-healthcheck``: ask a server's ``grpc.health.v1`` service whether it is SERVING.

Exit codes: 0 SERVING, 1 anything else (not serving, unknown service, unreachable, timed
out), with a one-line reason on stderr; 2 bad usage. It imports neither torch nor the
model, so a container's HEALTHCHECK stays cheap.
"""

from __future__ import annotations

import argparse
import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

__all__ = ["check", "main"]

DEFAULT_ADDRESS = "127.0.0.1:50051"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rbm-healthcheck",
        description="Exit 0 if the gRPC health service at ADDRESS answers SERVING, else 1.",
    )
    p.add_argument(
        "--address",
        default=os.environ.get("RBMREC_ADDRESS") or DEFAULT_ADDRESS,
        help=f"host:port of the server ($RBMREC_ADDRESS, else {DEFAULT_ADDRESS})",
    )
    p.add_argument(
        "--service",
        default="",
        help="service name to ask about (default '': the server as a whole)",
    )
    p.add_argument("--timeout", type=float, default=3.0, help="seconds to wait (default 3)")
    return p


def check(address: str, service: str = "", timeout: float = 3.0) -> str | None:
    """None when ``address`` answers SERVING for ``service``, else why not."""
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else None
            details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
            name = code.name if code is not None else "ERROR"
            return f"{address}: {name}: {' '.join(str(details).split())}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return None if status == "SERVING" else f"{address}: {status}"


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``rbm-healthcheck``."""
    args = _parser().parse_args(argv)
    if args.timeout <= 0:
        print("rbm-healthcheck: error: --timeout must be > 0", file=sys.stderr)
        return 2
    problem = check(args.address, args.service, args.timeout)
    if problem is None:
        return 0
    print(f"rbm-healthcheck: {problem}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
