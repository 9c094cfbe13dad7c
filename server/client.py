"""``rbm-client``: a small command-line client of rbmrec.v1.Recommender.

Exit codes: 0 success, 1 the RPC failed (the status code is printed), 2 bad usage, 141
stdout was closed before everything was printed (``| head``), as SIGPIPE would end a tool.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
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

CLOSED_PIPE = 128 + signal.SIGPIPE  # what a shell reports for a tool that SIGPIPE ended

_EPILOG = """\
output:
  Human-readable text by default; --json prints one JSON object on stdout instead.
  model_version is a string in every response, as in the API (rbmrec.v1's proto):
  that is the contract, whatever the version looks like. rbm-registry --json gives
  the same version as a number ("version": 3); both formats stay as they are.
  predict prints movie ids with their predicted ratings (PredictRatings carries no
  titles; recommend shows them); its --json "ratings" maps each movie id, a string
  as JSON object keys are, to its rating.

exit codes:
  0 success, 1 the RPC failed (its status code is printed), 2 bad usage,
  141 stdout closed early (e.g. | head), as SIGPIPE would end a tool
"""


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
    p = argparse.ArgumentParser(
        prog="rbm-client",
        description="Call an rbmrec server.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--target",
        default=os.environ.get("RBMREC_TARGET", "127.0.0.1:50051"),
        help="host:port of the server (env $RBMREC_TARGET, default 127.0.0.1:50051)",
    )
    p.add_argument(
        "--timeout",
        type=_positive,
        default=10.0,
        help="seconds each call may take, its gRPC deadline (default %(default)s)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print the response as one JSON object (default: text); see output below",
    )
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
    rec.add_argument("--user", type=_int64, required=True, help="MovieLens user id")
    rec.add_argument(
        "-n", "--n", type=_int32, default=10, help="how many movies, 1..1000 (default %(default)s)"
    )
    rec.add_argument(
        "--include-rated", action="store_true", help="also movies the user rated (default: not)"
    )
    rate = sub.add_parser(
        "rate", help="stream one rating update (needs a server with --cache redis)"
    )
    rate.add_argument("--user", type=_int64, required=True, help="MovieLens user id")
    rate.add_argument("--movie", type=_int64, required=True, help="MovieLens movie id")
    rate.add_argument("--rating", type=float, required=True, help="on the data set's scale")
    rate.add_argument("--timestamp", type=_int64, default=0, help="Unix seconds (default now)")
    pred = sub.add_parser("predict", help="predicted ratings of some movies for a user")
    pred.add_argument("--user", type=_int64, required=True, help="MovieLens user id")
    pred.add_argument("--movies", type=_int64, nargs="+", required=True, help="MovieLens movie ids")
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
    elif command == "predict":
        # PredictRatings carries no titles: movie ids and ratings, in aligned columns.
        print(f"user {out['user_id']} (model version {out['model_version']}):")
        width = max(len("movie"), *(len(str(m)) for m in out["ratings"]))
        print(f"{'movie':>{width}}  predicted")
        for movie, rating in out["ratings"].items():
            print(f"{movie:>{width}}  {rating:9.2f}")
    else:
        for key, value in out.items():
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
    try:
        if args.json:
            print(json.dumps(out))
        else:
            _print_human(args.command, out)
        sys.stdout.flush()  # here, where a closed pipe can still be answered quietly
    except BrokenPipeError:
        # The reader (head, a pager) has gone: stop quietly, as command-line tools do. What
        # is still buffered must not be flushed again at exit, which would complain.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return CLOSED_PIPE
    return 0 if args.command != "rate" or out["accepted"] else 1


if __name__ == "__main__":
    sys.exit(main())
