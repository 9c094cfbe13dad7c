"""deploy/docker-compose.yml: the services, their order, and consistency with the CLIs."""

from __future__ import annotations

from typing import Any

from tests.deploy.support import (
    CliHelp,
    check_invocation,
    compose_invocation,
    dockerfile,
    env_assignments,
)


def _argv(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else str(value).split()


def _named_volumes(service: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """volume name -> (mount path, read-only), for short-syntax named volumes."""
    out = {}
    for spec in service.get("volumes", []):
        parts = str(spec).split(":")
        if not parts[0].startswith((".", "/", "~")):
            out[parts[0]] = (parts[1], len(parts) > 2 and "ro" in parts[2].split(","))
    return out


def _listen_port(service: dict[str, Any]) -> int:
    inv = compose_invocation("server", service)
    image_env = env_assignments(dockerfile(), ("python-base", "runtime"))
    return int(inv.flag("--port") or inv.env.get("RBMREC_PORT") or image_env["RBMREC_PORT"])


def test_the_four_services(compose: dict[str, Any]) -> None:
    assert {"redis", "redis-cache", "server", "trainer"} <= set(compose["services"])
    assert {"registry", "redis-data"} <= set(compose["volumes"])


def test_the_log_redis_is_append_only_and_never_evicts(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    argv = _argv(redis["command"])
    assert argv[0] == "redis-server"
    assert argv[argv.index("--appendonly") + 1] == "yes"
    assert argv[argv.index("--appendfsync") + 1] == "always", "no acknowledged rating lost"
    assert argv[argv.index("--maxmemory-policy") + 1] == "noeviction", "the log is never evicted"
    assert _named_volumes(redis)["redis-data"][0] == "/data"
    assert "healthcheck" in redis


def test_the_cache_redis_evicts_and_keeps_nothing(compose: dict[str, Any]) -> None:
    cache = compose["services"]["redis-cache"]
    argv = [str(a) for a in cache["command"]]  # a list: `--save ""` must stay one empty word
    assert argv[0] == "redis-server"
    assert argv[argv.index("--save") + 1] == "", "no RDB snapshots"
    assert argv[argv.index("--appendonly") + 1] == "no"
    assert argv[argv.index("--maxmemory-policy") + 1] == "allkeys-lru"
    assert "--maxmemory" in argv
    assert _named_volumes(cache) == {} and not cache.get("volumes"), "nothing to keep"
    assert "healthcheck" in cache


def test_the_server_gets_both_redis(compose: dict[str, Any]) -> None:
    env = compose["services"]["server"]["environment"]
    assert env["REDIS_URL"].startswith("redis://redis:6379/")
    assert env["RBMREC_CACHE_REDIS_URL"].startswith("redis://redis-cache:6379/")


def test_server_waits_for_the_trainer_and_a_healthy_redis(compose: dict[str, Any]) -> None:
    depends = compose["services"]["server"]["depends_on"]
    assert depends["trainer"]["condition"] == "service_completed_successfully"
    assert depends["redis"]["condition"] == "service_healthy"
    assert depends["redis-cache"]["condition"] == "service_healthy"


def test_server_healthcheck_asks_grpc_health_on_its_port(compose: dict[str, Any]) -> None:
    server = compose["services"]["server"]
    check = _argv(server["healthcheck"]["test"])
    assert check[0] == "CMD" and check[1] == "rbm-healthcheck"
    port = _listen_port(server)
    address = check[check.index("--address") + 1] if "--address" in check else "127.0.0.1:50051"
    assert address.rsplit(":", 1)[1] == str(port)
    published = [str(p).rsplit(":", 1)[1] for p in server["ports"]]
    assert str(port) in published
    assert server["environment"]["RBMREC_HOST"] == "0.0.0.0"


def test_trainer_and_server_share_the_registry(compose: dict[str, Any]) -> None:
    server, trainer = compose["services"]["server"], compose["services"]["trainer"]
    s_path, s_ro = _named_volumes(server)["registry"]
    t_path, t_ro = _named_volumes(trainer)["registry"]
    assert (s_ro, t_ro) == (True, False), "servers read the registry, the trainer writes it"
    assert s_path == server["environment"]["RBMREC_REGISTRY"]
    assert t_path == trainer["environment"]["RBMREC_REGISTRY"]


def test_trainer_downloads_movielens_into_a_volume(compose: dict[str, Any]) -> None:
    trainer = compose["services"]["trainer"]
    inv = compose_invocation("trainer", trainer)
    assert "--promote" in inv.args and "--no-register" not in inv.args
    data = inv.flag("--data-dir") or inv.env["RBMREC_DATA"]
    mounts = {path: name for name, (path, _) in _named_volumes(trainer).items()}
    assert data in mounts, "the data folder must be a named volume (filled by rbm-train)"
    assert mounts[data] in compose["volumes"]
    assert trainer.get("restart", "no") == "no"


def test_trainer_reads_the_servers_rating_log(compose: dict[str, Any]) -> None:
    services = compose["services"]
    trainer = compose_invocation("trainer", services["trainer"])
    server = compose_invocation("server", services["server"])
    if trainer.flag("--ratings-log") is None:
        return
    assert trainer.flag("--ratings-log") == server.env["REDIS_URL"]
    prefix = server.env.get("RBMREC_REDIS_PREFIX", "rbmrec")
    assert (trainer.flag("--ratings-log-prefix") or "rbmrec") == prefix
    assert services["trainer"]["depends_on"]["redis"]["condition"] == "service_healthy"


def test_flags_and_env_exist_in_the_clis(
    compose: dict[str, Any], helps: dict[str, CliHelp]
) -> None:
    invocations = [
        compose_invocation(name, compose["services"][name]) for name in ("server", "trainer")
    ]
    assert [i.cli for i in invocations] == ["rbm-serve", "rbm-train"]
    problems = [p for inv in invocations for p in check_invocation(inv, helps[inv.cli])]
    assert problems == []


def test_both_services_build_the_chosen_variant(compose: dict[str, Any]) -> None:
    for name in ("server", "trainer"):
        service = compose["services"][name]
        assert service["build"]["dockerfile"] == "deploy/Dockerfile"
        assert service["build"]["args"]["VARIANT"] == "${RBMREC_VARIANT:-cpu}"
        assert service["image"] == "rbmrec:${RBMREC_VARIANT:-cpu}"
