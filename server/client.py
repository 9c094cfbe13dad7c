"""``rbm-client``: a small command-line client of rbmrec.v1.Recommender.

Exit codes: 0 success, 1 the RPC failed (the status code is printed), 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import grpc

from rbmrec.v1 import recommender_pb2 as pb
from rbmrec.v1 import recommender_pb2_grpc as pb_grpc
from server.auth import bearer_metadata, load_token
from server.tls import channel_credentials

__all__ = ["main"]


def _bounded_int(bits: int) -> Callable[[str], int]:
    """An argparse type for a signed integer that fits the proto's ``bits``-bit field."""
    low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1

    def parse(text: str) -> int:
        value = int(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text} does not fit a {bits}-bit integer")
        return value

    parse.__name__ = f"int{bits}"  # argparse names the type in its error message
    return parse


_int32, _int64 = _bounded_int(32), _bounded_int(64)


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} is not a number of seconds > 0")
    return value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rbm-client", description="Call an rbmrec server.")
    p.add_argument(
        "--target",
        default=os.environ.get("RBMREC_TARGET", "127.0.0.1:50051"),
        help="host:port of the server ($RBMREC_TARGET)",
    )
    p.add_argument("--timeout", type=_positive, default=10.0, help="seconds per call")
    p.add_argument("--json", action="store_true", help="print the response as JSON")
    p.add_argument("--tls-ca", metavar="PATH", help="PEM CA to trust: connect with TLS")
    p.add_argument("--tls-cert", metavar="PATH", help="PEM client certificate, for mutual TLS")
    p.add_argument("--tls-key", metavar="PATH", help="PEM key of --tls-cert")
    p.add_argument(
        "--token-file",
        default=os.environ.get("RBMREC_AUTH_TOKEN_FILE"),
        metavar="PATH",
        help="send the bearer token in this file "
        "($RBMREC_AUTH_TOKEN_FILE; else $RBMREC_AUTH_TOKEN)",
    )
    sub = p.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("recommend", help="top-n movies for a user")
    rec.add_argument("--user", type=_int64, required=True)
    rec.add_argument("-n", "--n", type=_int32, default=10)
    rec.add_argument("--include-rated", action="store_true")
    rate = sub.add_parser("rate", help="stream one rating update")
    rate.add_argument("--user", type=_int64, required=True)
    rate.add_argument("--movie", type=_int64, required=True)
    rate.add_argument("--rating", type=float, required=True)
    rate.add_argument("--timestamp", type=_int64, default=0, help="Unix seconds (default now)")
    pred = sub.add_parser("predict", help="predicted ratings of some movies for a user")
    pred.add_argument("--user", type=_int64, required=True)
    pred.add_argument("--movies", type=_int64, nargs="+", required=True)
    sub.add_parser("info", help="the model being served")
    return p


def _recommend(stub: pb_grpc.RecommenderStub, a: argparse.Namespace) -> dict[str, Any]:
    r = stub.Recommend(
        pb.RecommendRequest(user_id=a.user, n=a.n, include_rated=a.include_rated),
        timeout=a.timeout,
        metadata=a.metadata,
    )
    movies = [
        {
            "movie_id": m.movie_id,
            "title": m.title,
            "score": m.score,
            "predicted_rating": m.predicted_rating,
        }
        for m in r.movies
    ]
    return {"user_id": a.user, "model_version": r.model_version, "movies": movies}


def _rate(stub: pb_grpc.RecommenderStub, a: argparse.Namespace) -> dict[str, Any]:
    update = pb.RatingUpdate(
        user_id=a.user, movie_id=a.movie, rating=a.rating, timestamp=a.timestamp or int(time.time())
    )
    acks = list(stub.UpdateRatings(iter([update]), timeout=a.timeout, metadata=a.metadata))
    if len(acks) != 1:
        raise RuntimeError(f"expected one ack, got {len(acks)}")
    return {"accepted": acks[0].accepted, "error": acks[0].error}


def _predict(stub: pb_grpc.RecommenderStub, a: argparse.Namespace) -> dict[str, Any]:
    r = stub.PredictRatings(
        pb.PredictRatingsRequest(user_id=a.user, movie_ids=a.movies),
        timeout=a.timeout,
        metadata=a.metadata,
    )
    return {
        "user_id": a.user,
        "model_version": r.model_version,
        "ratings": dict(zip(a.movies, r.ratings, strict=True)),
    }


def _info(stub: pb_grpc.RecommenderStub, a: argparse.Namespace) -> dict[str, Any]:
    r = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=a.timeout, metadata=a.metadata)
    return {
        "model_name": r.model_name,
        "model_version": r.model_version,
        "alias": r.alias,
        "num_users": r.num_users,
        "num_movies": r.num_movies,
        "hidden_units": r.hidden_units,
        "rating_levels": list(r.rating_levels),
        "device": r.device,
        "backend": r.backend,
    }


def _print_human(command: str, out: dict[str, Any]) -> None:
    if command == "recommend":
        print(f"user {out['user_id']} (model version {out['model_version']}):")
        for i, m in enumerate(out["movies"], 1):
            print(
                f"{i:>4}. {m['title'][:60]:<60} predicted {m['predicted_rating']:.2f}"
                f"  (movie {m['movie_id']}, score {m['score']:.3f})"
            )
    elif command == "rate":
        if out["accepted"]:
            print("accepted")
        else:
            print(f"rbm-client: rejected: {out['error']}", file=sys.stderr)
    else:
        for key, value in (out["ratings"] if command == "predict" else out).items():
            print(f"{key}: {value}")


_COMMANDS = {"recommend": _recommend, "rate": _rate, "predict": _predict, "info": _info}


def _channel(args: argparse.Namespace) -> grpc.Channel:
    """A TLS channel when any --tls-* flag is given, else a plaintext one."""
    if not (args.tls_ca or args.tls_cert or args.tls_key):
        return grpc.insecure_channel(args.target)
    credentials = channel_credentials(args.tls_ca, args.tls_cert, args.tls_key)
    return grpc.secure_channel(args.target, credentials)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``rbm-client``."""
    args = _parser().parse_args(argv)
    try:
        args.metadata = bearer_metadata(load_token(args.token_file))
        channel = _channel(args)
    except ValueError as exc:
        print(f"rbm-client: error: {exc}", file=sys.stderr)
        return 2
    with channel:
        stub = pb_grpc.RecommenderStub(channel)
        try:
            out = _COMMANDS[args.command](stub, args)
        except grpc.RpcError as exc:
            code = exc.code().name if hasattr(exc, "code") else "UNKNOWN"
            details = exc.details() if hasattr(exc, "details") else str(exc)
            print(f"rbm-client: error: {code}: {details}", file=sys.stderr)
            return 1
    if args.json:
        print(json.dumps(out))
    else:
        _print_human(args.command, out)
    return 0 if args.command != "rate" or out["accepted"] else 1


if __name__ == "__main__":
    sys.exit(main())
