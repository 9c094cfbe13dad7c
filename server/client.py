"""``rbm-client``: a small command line over the client library ``rbmrec_client``.

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
from pathlib import Path
from typing import Any

from rbmrec_client import Rating, RecommenderClient, RecommenderError, ScoredMovie

from server.auth import load_token
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
  as JSON object keys are, to its rating. recommend says "popularity fallback" (--json:
  "fallback": "popularity") when the model knew nothing of the user; similar's score is
  a cosine similarity.

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
    rec.add_argument(
        "--exclude", type=_int64, nargs="+", default=[], metavar="MOVIE", help="never these movies"
    )
    rec.add_argument(
        "--candidates",
        type=_int64,
        nargs="+",
        default=[],
        metavar="MOVIE",
        help="rank only these movies (unknown ones are skipped)",
    )
    similar = sub.add_parser("similar", help="the movies nearest to a movie in the model")
    similar.add_argument("--movie", type=_int64, required=True, help="MovieLens movie id")
    similar.add_argument(
        "-n", "--n", type=_int32, default=10, help="how many movies, 1..1000 (default %(default)s)"
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


def _movies(movies: tuple[ScoredMovie, ...]) -> list[dict[str, Any]]:
    return [
        {
            "movie_id": m.movie_id,
            "title": m.title,
            "score": m.score,
            "predicted_rating": m.predicted_rating,
        }
        for m in movies
    ]


def _recommend(client: RecommenderClient, a: argparse.Namespace) -> dict[str, Any]:
    r = client.recommend(
        a.user, a.n, exclude=a.exclude, candidates=a.candidates, include_rated=a.include_rated
    )
    out = {"user_id": a.user, "model_version": r.model_version, "movies": _movies(r.movies)}
    return out | ({"fallback": r.fallback} if r.fallback else {})


def _similar(client: RecommenderClient, a: argparse.Namespace) -> dict[str, Any]:
    r = client.similar(a.movie, a.n)
    return {"movie_id": a.movie, "model_version": r.model_version, "movies": _movies(r.movies)}


def _rate(client: RecommenderClient, a: argparse.Namespace) -> dict[str, Any]:
    acks = client.rate([Rating(a.user, a.movie, a.rating, a.timestamp or int(time.time()))])
    if len(acks) != 1:
        raise RuntimeError(f"expected one ack, got {len(acks)}")
    return {"accepted": acks[0].accepted, "error": acks[0].error}


def _predict(client: RecommenderClient, a: argparse.Namespace) -> dict[str, Any]:
    r = client.predict(a.user, a.movies)
    return {"user_id": a.user, "model_version": r.model_version, "ratings": r.by_movie()}


def _info(client: RecommenderClient, a: argparse.Namespace) -> dict[str, Any]:
    r = client.info()
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
        **({"ranking_score": r.ranking_score} if r.ranking_score else {}),
        **(
            {"canary_version": r.canary_version, "canary_percent": r.canary_percent}
            if r.canary_version
            else {}
        ),
    }


def _print_human(command: str, out: dict[str, Any]) -> None:
    if command == "recommend":
        fallback = f", {out['fallback']} fallback" if "fallback" in out else ""
        print(f"user {out['user_id']} (model version {out['model_version']}{fallback}):")
        for i, m in enumerate(out["movies"], 1):
            print(
                f"{i:>4}. {m['title'][:60]:<60} predicted {m['predicted_rating']:.2f}"
                f"  (movie {m['movie_id']}, score {m['score']:.3f})"
            )
    elif command == "similar":
        print(f"movie {out['movie_id']} (model version {out['model_version']}):")
        for i, m in enumerate(out["movies"], 1):
            where = f"(movie {m['movie_id']}, similarity {m['score']:.3f})"
            print(f"{i:>4}. {m['title'][:60]:<60} {where}")
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


_COMMANDS: dict[str, Callable[[RecommenderClient, argparse.Namespace], dict[str, Any]]] = {
    "recommend": _recommend,
    "similar": _similar,
    "rate": _rate,
    "predict": _predict,
    "info": _info,
}


def _pem(path: str | None) -> bytes | None:
    return None if path is None else Path(path).read_bytes()


def _client(args: argparse.Namespace) -> RecommenderClient:
    """A client with the flags' token and TLS files; ValueError names a bad one."""
    token = load_token(args.token_file)
    if not (args.tls_ca or args.tls_cert or args.tls_key):
        return RecommenderClient(args.target, token=token, timeout_s=args.timeout)
    # Each file checked now, a bad one named in one line, rather than a failed handshake later.
    channel_credentials(args.tls_ca, args.tls_cert, args.tls_key)
    return RecommenderClient(
        args.target,
        token=token,
        timeout_s=args.timeout,
        tls=True,  # with only --tls-cert/--tls-key: the system's roots
        root_certificates=_pem(args.tls_ca),
        certificate_chain=_pem(args.tls_cert),
        private_key=_pem(args.tls_key),
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``rbm-client``."""
    args = _parser().parse_args(argv)
    try:
        client = _client(args)
    except (ValueError, OSError) as exc:
        print(f"rbm-client: error: {exc}", file=sys.stderr)
        return 2
    with client:
        try:
            out = _COMMANDS[args.command](client, args)
        except RecommenderError as exc:
            print(f"rbm-client: error: {exc.code.name}: {exc.details}", file=sys.stderr)
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
