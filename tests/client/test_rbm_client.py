"""rbm-client over the library: the options the library brought (similar, --exclude, ...)."""

from __future__ import annotations

import json
from typing import Any

import pytest

import server.client
from tests.client.conftest import TOKEN
from tests.harness.server import RunningServer


@pytest.fixture
def cli(
    served: RunningServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Any:
    """Run rbm-client in process against ``served``; return (exit code, stdout)."""
    monkeypatch.setenv("RBMREC_AUTH_TOKEN", TOKEN)
    monkeypatch.delenv("RBMREC_AUTH_TOKEN_FILE", raising=False)

    def run(*args: str) -> tuple[int, str]:
        code = server.client.main(["--target", served.target, *args])
        out = capsys.readouterr()
        assert out.err == "", out.err
        return code, out.out

    return run


def test_recommend_excludes_and_ranks_candidates(cli: Any) -> None:
    code, out = cli("--json", "recommend", "--user", "1", "-n", "4")
    top = [m["movie_id"] for m in json.loads(out)["movies"]]
    code, out = cli(
        "--json", "recommend", "--user", "1", "-n", "2", "--exclude", *map(str, top[:2])
    )
    assert code == 0 and [m["movie_id"] for m in json.loads(out)["movies"]] == top[2:]
    code, out = cli("--json", "recommend", "--user", "1", "-n", "2", "--candidates", str(top[3]))
    assert code == 0 and [m["movie_id"] for m in json.loads(out)["movies"]] == top[3:]


def test_similar_prints_the_nearest_movies(cli: Any) -> None:
    code, out = cli("similar", "--movie", "1", "-n", "3")
    lines = out.splitlines()
    assert code == 0 and lines[0] == "movie 1 (model version 1):" and len(lines) == 4
    assert all("similarity" in line for line in lines[1:])
    code, out = cli("--json", "similar", "--movie", "1", "-n", "3")
    reply = json.loads(out)
    assert (reply["movie_id"], reply["model_version"], len(reply["movies"])) == (1, "1", 3)


def test_a_popularity_answer_says_so(cli: Any) -> None:
    code, out = cli("recommend", "--user", "999999", "-n", "2")
    assert code == 0 and out.splitlines()[0] == (
        "user 999999 (model version 1, popularity fallback):"
    )
    code, out = cli("--json", "recommend", "--user", "999999", "-n", "2")
    assert json.loads(out)["fallback"] == "popularity"
    code, out = cli("--json", "recommend", "--user", "1", "-n", "2")
    assert "fallback" not in json.loads(out)  # a personal answer keeps the old shape


def test_info_shows_the_ranking_score(cli: Any) -> None:
    code, out = cli("--json", "info")
    assert code == 0 and json.loads(out)["ranking_score"]
