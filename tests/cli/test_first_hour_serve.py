"""The first hour with rbm-serve and rbm-client: what a newcomer meets before reading code.

- a server with nothing to serve says, periodically, what it waits for and where it looked;
- ``--cache memory`` says, where the flag is documented and in the start-up line, that
  rating updates are off;
- ``rbm-client ... | head`` ends quietly; ``predict`` prints aligned columns; ``--help``
  shows defaults and the ``model_version`` contract.

(A taken port printing one line only is checked in test_serve_cli_errors.py.)
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
import time
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import server.client
import server.main
from rbmrec.v1 import recommender_pb2 as pb
from tests.harness.cli import BIN, ROOT, TrainedModel
from tests.harness.redis import wait_for
from tests.harness.registry import copy_registry
from tests.harness.server import RunningServer, start_server

POLL_S, WARN_S = 0.1, 0.5  # the server checks the alias every POLL_S and warns every WARN_S
WAITING = ("--cache", "memory", "--poll-interval", str(POLL_S), "--warn-interval", str(WARN_S))
WARNING = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) WARNING \S+: nothing to serve yet: (.*)$",
    re.MULTILINE,
)


def _warnings(log: str) -> list[tuple[datetime, str]]:
    """(time, message) of each "nothing to serve yet" warning in a server's stderr."""
    return [
        (datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f"), text)
        for stamp, text in WARNING.findall(log)
    ]


def _wait_a_while(running: RunningServer, seconds: float) -> None:
    """Let a waiting server run (it must stay up and NOT_SERVING meanwhile)."""
    time.sleep(seconds)
    assert running.process.poll() is None, "the waiting server exited"


# -- a server with nothing to serve -----------------------------------------------------------
@pytest.mark.parametrize(
    ("where", "flags", "reason"),
    [
        ("missing", (), "no such registry folder (set --registry or $RBMREC_REGISTRY)"),
        ("empty", (), "no such model 'rbm' (it holds no model yet)"),
        ("trained", ("--model", "nosuch"), "no such model 'nosuch' (it holds rbm)"),
        ("trained", ("--alias", "staging"), "alias 'staging' is not set"),
    ],
    ids=["no-registry-folder", "empty-registry", "model-nosuch", "alias-staging-not-set"],
)
def test_a_server_with_nothing_to_serve_says_why_periodically(
    where: str,
    flags: tuple[str, ...],
    reason: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    if where == "trained":
        trained: TrainedModel = request.getfixturevalue("trained")
        registry = trained.registry
    else:
        registry = tmp_path / "registry"
        if where == "empty":
            registry.mkdir()
    model = flags[1] if flags[:1] == ("--model",) else "rbm"
    alias = flags[1] if flags[:1] == ("--alias",) else "production"
    with start_server(registry, *WAITING, *flags) as running:
        _wait_a_while(running, 6 * WARN_S)
    assert running.process.returncode == 0, running.log

    warnings = _warnings(running.log)
    assert len(warnings) >= 3, f"expected a warning every {WARN_S}s:\n{running.log}"
    for _, text in warnings:  # each names what it waits for, where it looked, and why
        assert text.startswith(f"waiting for {model}@{alias} in registry {registry}: "), text
        assert reason in text, (reason, text)
    # Periodic, not every poll: about one per WARN_S although the alias is read every POLL_S.
    gaps = [(b[0] - a[0]).total_seconds() for a, b in itertools.pairwise(warnings)]
    assert min(gaps) >= WARN_S - 0.05, gaps
    # The start-up line does not claim to serve what is not there, and says where it looks.
    assert not re.search(r"^serving ", running.stdout, re.MULTILINE), running.stdout
    assert f"not serving yet: waiting for {model}@{alias} in registry {registry}" in running.stdout
    assert running.stdout.rstrip().endswith(f"; listening on {running.target}"), running.stdout


def test_the_warnings_stop_and_the_serving_line_comes_once_a_version_arrives(
    trained: TrainedModel, tmp_path: Path
) -> None:
    registry = tmp_path / "served"
    registry.mkdir()
    with start_server(registry, *WAITING) as running:
        _wait_a_while(running, 2 * WARN_S)
        # Publish the trained model whole (a rename), as a registry publishes a version.
        staged = copy_registry(trained, tmp_path / "staging").root
        (staged / "rbm").rename(registry / "rbm")
        wait_for(lambda: _answers(running), timeout_s=60)
        loaded_at = datetime.now()
        _wait_a_while(running, 4 * WARN_S)  # time for a warning that should not come
    assert running.process.returncode == 0, running.log

    warnings = _warnings(running.log)
    assert warnings and all(when <= loaded_at for when, _ in warnings), running.log
    lines = running.stdout.splitlines()
    waiting = [line for line in lines if line.startswith("not serving yet: ")]
    serving = [line for line in lines if line.startswith("serving ")]
    assert len(waiting) == 1 and len(serving) == 1, running.stdout
    assert serving[0] == (
        f"serving rbm@production version 1, rating updates off (--cache memory), "
        f"on {running.target}"
    )


def _answers(running: RunningServer) -> bool:
    try:
        running.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=5)
    except Exception:  # UNAVAILABLE until the version is loaded
        return False
    return True


# -- --cache memory says that rating updates are off ------------------------------------------
def _print_start_up_line(cache: str, version: str | None) -> None:
    config = server.main.ServerConfig(cache=cache, registry="/srv/registry")
    engine = SimpleNamespace(version=version) if version else None
    holder = SimpleNamespace(engine=engine, waiting_for="rbm@production in registry /srv/reg")
    app: Any = SimpleNamespace(holder=holder)
    server.main._print_serving(app, config, "127.0.0.1:5")


@pytest.mark.parametrize("version", ["3", None], ids=["serving", "waiting"])
def test_the_start_up_line_says_rating_updates_are_off_with_the_memory_cache(
    version: str | None, capsys: pytest.CaptureFixture[str]
) -> None:
    _print_start_up_line("memory", version)
    memory = capsys.readouterr().out
    _print_start_up_line("redis", version)
    redis = capsys.readouterr().out
    assert "rating updates off (--cache memory)" in memory, memory
    assert "rating updates" not in redis, redis
    for line in (memory, redis):
        assert line.endswith(" 127.0.0.1:5\n") and line.count("\n") == 1, line
        assert line.startswith("serving " if version else "not serving yet: "), line
    if version:  # the form scripts parse: "serving ... on HOST:PORT"
        assert re.fullmatch(r"serving .* on (\S+:\d+)\n", memory)


def test_the_cache_flag_documents_that_memory_turns_updates_off(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        server.main.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    cache_help = text[text.index("--cache {redis,memory} ") :][:400]
    assert "memory keeps hidden states in this process and turns rating updates off" in (
        cache_help
    ), cache_help
    assert "even when a Redis answers" in cache_help


RECOMMEND_1000 = ["recommend", "--user", "1", "-n", "1000"]


# -- rbm-client -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def memory_server(trained: TrainedModel) -> Any:
    with start_server(trained.registry, "--cache", "memory") as running:
        yield running


def test_the_client_stops_quietly_when_its_reader_goes(memory_server: RunningServer) -> None:
    # 1000 lines (~100 KB, more than a pipe holds): head -1 is gone long before the end.
    command = [str(BIN / "rbm-client"), "--target", memory_server.target]
    command += RECOMMEND_1000
    client = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    head = subprocess.Popen(["head", "-1"], stdin=client.stdout, stdout=subprocess.PIPE)
    assert client.stdout is not None and client.stderr is not None
    client.stdout.close()  # only head reads the pipe now: its exit closes it
    first, _ = head.communicate(timeout=60)
    err = client.stderr.read().decode()
    client.stderr.close()
    code = client.wait(timeout=60)
    assert head.returncode == 0
    assert first.decode() == "user 1 (model version 1):\n"
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    assert err == "", err
    assert code == 128 + 13, (code, err)  # as a tool that SIGPIPE ended


def test_the_client_prints_every_line_when_nobody_closes_the_pipe(
    memory_server: RunningServer,
) -> None:
    proc = subprocess.run(
        [str(BIN / "rbm-client"), "--target", memory_server.target, *RECOMMEND_1000],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ),
    )
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert len(proc.stdout.splitlines()) == 1001


def test_predict_prints_movie_ids_and_ratings_in_columns(
    memory_server: RunningServer, capsys: pytest.CaptureFixture[str]
) -> None:
    target = ["--target", memory_server.target]
    assert (
        server.client.main([*target, "predict", "--user", "1", "--movies", "1", "50", "1682"]) == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "user 1 (model version 1):"
    assert lines[1].split() == ["movie", "predicted"]
    rows = [line.split() for line in lines[2:]]
    assert [row[0] for row in rows] == ["1", "50", "1682"]
    for row in rows:
        assert len(row) == 2 and re.fullmatch(r"\d\.\d\d", row[1]), lines
    assert len({len(line) for line in lines[1:]}) == 1, lines  # aligned columns
    # --json keeps its shape: model_version a string (the proto's), ratings by movie id.
    assert server.client.main([*target, "--json", "predict", "--user", "1", "--movies", "50"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model_version"] == "1" and set(out["ratings"]) == {"50"}


def test_client_help_shows_defaults_and_the_version_contract(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        server.client.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(env $RBMREC_TARGET, default 127.0.0.1:50051)" in text
    assert "gRPC deadline (default 10.0)" in text
    assert "model_version is a string" in text and '("version": 3)' in text
    with pytest.raises(SystemExit):
        server.client.main(["recommend", "--help"])
    assert "(default 10)" in " ".join(capsys.readouterr().out.split())


# -- make demo -------------------------------------------------------------------------------
_STUBS = {
    # Stand-ins for the console scripts, so that the demo's own logic runs in a second.
    "rbm-train": 'echo "train registry=$RBMREC_REGISTRY" >>"$DEMO_LOG"\n'
    'mkdir -p "$RBMREC_REGISTRY/rbm/versions"\n'
    'touch "$RBMREC_REGISTRY/rbm/versions/v$(date +%s%N)"\n',
    "rbm-registry": 'echo "registry $*" >>"$DEMO_LOG"\n',
    "rbm-client": 'echo "client $*" >>"$DEMO_LOG"\n',
    "rbm-serve": 'echo "serve $*" >>"$DEMO_LOG"\n'
    'while [ $# -gt 0 ]; do [ "$1" = --address-file ] && file=$2; shift; done\n'
    "echo 'serving rbm@production version 1 on 127.0.0.1:9'\n"
    'echo \'{"address": "127.0.0.1:9", "metrics": null, "pid": 1}\' >"$file"\n'
    "trap 'exit 0' TERM\nwhile true; do sleep 0.1; done\n",
}


def _run_demo(tmp_path: Path, env: dict[str, str]) -> list[str]:
    """scripts/demo.sh, copied into ``tmp_path``, run with stand-in CLIs; what they saw."""
    checkout, stubs = tmp_path / "checkout", tmp_path / "stubs"
    if not checkout.exists():
        (checkout / "scripts").mkdir(parents=True)
        shutil.copy(ROOT / "scripts" / "demo.sh", checkout / "scripts" / "demo.sh")
        stubs.mkdir()
        for name, body in _STUBS.items():
            (stubs / name).write_text("#!/usr/bin/env bash\n" + body)
            (stubs / name).chmod(0o755)
    log = tmp_path / "demo.log"
    log.unlink(missing_ok=True)
    base = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "RBMREC_REGISTRY")}
    path = f"{stubs}{os.pathsep}{BIN}{os.pathsep}{os.environ['PATH']}"
    proc = subprocess.run(
        ["bash", str(checkout / "scripts" / "demo.sh")],
        capture_output=True,
        text=True,
        timeout=120,
        env={**base, "PATH": path, "DEMO_LOG": str(log), "RBMREC_DATA": str(tmp_path), **env},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return log.read_text().splitlines()


def test_the_demo_starts_its_own_registry_afresh_and_keeps_off_redis_db_0(tmp_path: Path) -> None:
    own = tmp_path / "checkout" / ".demo" / "registry"
    for _ in range(2):
        seen = _run_demo(tmp_path, {})
        assert f"train registry={own}" in seen
        assert len(list((own / "rbm" / "versions").iterdir())) == 1, "a version piled up"
    serve = next(line for line in seen if line.startswith("serve "))
    assert "--redis-url redis://127.0.0.1:6379/1 " in serve, serve
    assert sum(line.startswith("client ") for line in seen) == 2, seen


def test_the_demo_uses_a_given_registry_and_redis_as_they_are(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    given = {"RBMREC_REGISTRY": str(mine), "REDIS_URL": "redis://127.0.0.1:1/4"}
    for _ in range(2):
        seen = _run_demo(tmp_path, given)
    assert len(list((mine / "rbm" / "versions").iterdir())) == 2, "the caller's was emptied"
    serve = next(line for line in seen if line.startswith("serve "))
    assert "--cache memory --redis-url redis://127.0.0.1:1/4 " in serve, serve


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
@pytest.mark.parametrize("given", [None, "redis://127.0.0.1:6379/7"], ids=["default", "given"])
def test_make_demo_passes_its_own_redis_database_unless_told(given: str | None) -> None:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    if given:
        env["REDIS_URL"] = given
    shown = subprocess.run(
        ["make", "-n", "-C", str(ROOT), "demo"], capture_output=True, text=True, env=env
    ).stdout
    expected = given or "redis://127.0.0.1:6379/1"
    assert f'REDIS_URL="{expected}" ./scripts/demo.sh' in shown, shown
