"""Call every method of both clients, with only rbmrec_client and its dependencies installed.

Run by test_fresh_venv.py with the fresh venv's python: ``every_method.py TARGET TOKEN``.
Prints one JSON object: for each method, "ok" or what went wrong.
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
from collections.abc import Awaitable, Callable
from dataclasses import is_dataclass
from typing import Any

from rbmrec_client import (
    AsyncRecommenderClient,
    NotFoundError,
    Rating,
    RecommenderClient,
    RecommendQuery,
)

UNKNOWN_MOVIE = 10**9


def check(result: Any) -> None:
    """An answer is a dataclass, or a non-empty list of them."""
    items = result if isinstance(result, list) else [result]
    assert items and all(is_dataclass(r) for r in items), result


def checks(client: Any) -> dict[str, Callable[[], Any]]:
    """Each method's call; ``client`` is either client (the async one's calls are awaited)."""
    return {
        "info": lambda: client.info(),
        "recommend": lambda: client.recommend(1, 5, exclude=[50], candidates=()),
        "recommend_many": lambda: client.recommend_many([RecommendQuery(1, 3), RecommendQuery(2)]),
        "similar": lambda: client.similar(1, 3),
        "predict": lambda: client.predict(1, [1, UNKNOWN_MOVIE], skip_unknown=True),
        "rate": lambda: client.rate([Rating(31, 50, 4.0), Rating(31, 50, 9.0)]),  # 9: refused
    }


def verify(name: str, result: Any) -> None:
    """What each answer must hold beyond its type."""
    check(result)
    if name == "info":
        assert result.model_version and result.num_movies > 0, result
    elif name == "recommend":
        assert len(result.movies) == 5 and 50 not in [m.movie_id for m in result.movies]
    elif name == "recommend_many":
        assert [len(r.movies) for r in result] == [3, 10] and not any(r.error for r in result)
    elif name == "similar":
        assert len(result.movies) == 3 and 1 not in [m.movie_id for m in result.movies]
    elif name == "predict":
        assert 1 <= result.ratings[0] <= 5 and math.isnan(result.ratings[1]), result
    elif name == "rate":
        assert [a.accepted for a in result] == [True, False], result


def outcome(name: str, call: Callable[[], Any]) -> str:
    try:
        verify(name, call())
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return "ok"


async def outcome_async(name: str, call: Callable[[], Awaitable[Any]]) -> str:
    try:
        verify(name, await call())
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return "ok"


async def run_async(target: str, token: str) -> dict[str, str]:
    async with AsyncRecommenderClient(target, token=token, timeout_s=30) as client:
        return {name: await outcome_async(name, call) for name, call in checks(client).items()}


def main(target: str, token: str) -> None:
    with RecommenderClient(target, token=token, timeout_s=30) as client:
        report = {name: outcome(name, call) for name, call in checks(client).items()}
        try:
            client.predict(1, [UNKNOWN_MOVIE])
            report["errors"] = "no NotFoundError"
        except NotFoundError:
            report["errors"] = "ok"
    report |= {f"async {k}": v for k, v in asyncio.run(run_async(target, token)).items()}
    print(json.dumps(report))


if __name__ == "__main__":
    main(*sys.argv[1:3])
