"""``rbm-serve``: build the collaborators, start the gRPC server, stop it gracefully."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import logging
import math
import os
import signal
import sys
from dataclasses import dataclass, field
from typing import Any

import grpc
import redis.asyncio as aioredis
import torch
import uvloop
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from redis.connection import parse_url
from redis.exceptions import RedisError

from rbmrec.v1 import recommender_pb2 as pb
from registry.errors import RegistryError
from registry.names import check_alias, check_model_name
from registry.store import FileRegistry, resolve_root
from server.auth import TokenAuth, load_token
from server.backends import BACKENDS
from server.batcher import BatcherConfig
from server.errors import Unavailable
from server.hidden_cache import HiddenCache, MemoryHiddenCache, RedisHiddenCache
from server.logs import configure_logging, redact_url
from server.metrics import Metrics, ServerState
from server.model_holder import ModelHolder
from server.ratings import NoRatingLog, RatingLog, RedisRatingLog, UserOverlay
from server.recommender import Recommender
from server.service import RecommenderService, add_to_server
from server.tls import check_pair, server_credentials

__all__ = ["Security", "ServerConfig", "main", "serve"]

log = logging.getLogger("rbm-serve")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Recommender"].full_name


@dataclass(frozen=True)
class ServerConfig:
    """Everything ``rbm-serve`` can be told, by flag or environment variable."""

    host: str = "127.0.0.1"
    port: int = 50051
    registry: str = "registry"
    model: str = "rbm"
    alias: str = "production"
    device: str = "auto"
    cache: str = "redis"
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_prefix: str = "rbmrec"  # every Redis key starts with it; the rating log is PREFIX:ratings
    cache_ttl_s: int = 86_400
    cache_capacity: int = 100_000  # users kept in the in-process cache (and Redis fallback)
    max_batch_size: int = 64
    max_batch_wait_us: int = 0
    max_queue: int = 2048
    poll_interval_s: float = 1.0
    backend: str = "torch"
    metrics_port: int | None = None  # None: no /metrics endpoint; 0 picks a free port
    torch_threads: int = 1  # one beat two on a 2-core host: the event loop needs the other
    grace_s: float = 5.0
    # Paths only: the secrets themselves never enter the config, which is logged.
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None  # set: mutual TLS, a client certificate it signed required
    auth_token_file: str | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {self.port}")
        if self.cache not in ("redis", "memory"):
            raise ValueError(f"cache must be redis or memory, got {self.cache!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda was asked for, but no CUDA device is available")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ValueError(f"metrics port must be in 0..65535, got {self.metrics_port}")
        if self.cache_capacity < 1:
            raise ValueError(f"cache capacity must be >= 1, got {self.cache_capacity}")
        if not math.isfinite(self.poll_interval_s) or self.poll_interval_s <= 0:
            raise ValueError(f"poll interval must be a number > 0, got {self.poll_interval_s}")
        if self.torch_threads < 1:
            raise ValueError(f"torch threads must be >= 1, got {self.torch_threads}")
        _check_names(self.model, self.alias)
        if self.cache == "redis":
            _check_redis_url(self.redis_url)
        BatcherConfig(self.max_batch_size, self.max_batch_wait_us, self.max_queue)
        check_pair(self.tls_cert, self.tls_key)
        if self.tls_client_ca and not self.tls_cert:
            raise ValueError("--tls-client-ca needs --tls-cert and --tls-key")

    def torch_device(self) -> torch.device:
        """The device to serve on."""
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)


@dataclass(frozen=True)
class Security:
    """TLS credentials and the bearer token, read from the files a ``ServerConfig`` names."""

    credentials: grpc.ServerCredentials | None = None
    token: str | None = field(default=None, repr=False)

    @classmethod
    def load(cls, config: ServerConfig) -> Security:
        """Read and check every file now, before binding; ValueError names what is wrong."""
        credentials = None
        if config.tls_cert and config.tls_key:
            credentials = server_credentials(config.tls_cert, config.tls_key, config.tls_client_ca)
        return cls(credentials, load_token(config.auth_token_file))

    def describe(self, config: ServerConfig) -> str:
        """How callers are authenticated, for the start-up log (never the secrets)."""
        transport = "plaintext"
        if self.credentials is not None:
            transport = "mutual TLS" if config.tls_client_ca else "TLS"
        token = "required (health exempt)" if self.token else "off"
        return f"gRPC transport {transport}; bearer token {token}; /metrics is plain HTTP"


def _check_names(model: str, alias: str) -> None:
    """A name the registry can never hold is a configuration error, not a wait."""
    try:
        check_model_name(model)
        check_alias(alias)
    except RegistryError as exc:
        raise ValueError(str(exc)) from None


def _check_redis_url(url: str) -> None:
    try:
        parse_url(url)  # type: ignore[no-untyped-call]
    except ValueError as exc:
        raise ValueError(f"--redis-url {redact_url(url)} is not a Redis URL: {exc}") from None


async def _storage(config: ServerConfig) -> tuple[HiddenCache, RatingLog, str]:
    if config.cache == "memory":
        return MemoryHiddenCache(config.cache_capacity), NoRatingLog(), "memory (--cache memory)"
    client = aioredis.from_url(config.redis_url, socket_timeout=1.0, socket_connect_timeout=1.0)
    try:
        await client.ping()
        where = f"redis at {redact_url(config.redis_url)}"
    except (RedisError, OSError) as exc:
        where = f"memory (no Redis answered at {redact_url(config.redis_url)}: {exc}; retrying)"
    return (
        RedisHiddenCache(
            client,
            config.cache_ttl_s,
            config.redis_prefix,
            fallback=MemoryHiddenCache(config.cache_capacity),
        ),
        RedisRatingLog(client, config.redis_prefix),
        where,
    )


@dataclass
class _App:
    """The collaborators of one running server."""

    holder: ModelHolder
    cache: HiddenCache
    recommender: Recommender
    metrics: Metrics
    health: Any  # grpc_health's aio HealthServicer (untyped)

    def state(self) -> ServerState:
        """Live counters for /metrics."""
        stats, status, engine = self.cache.stats, self.holder.status, self.holder.engine
        return ServerState(
            cache_hits=stats.hits,
            cache_misses=stats.misses,
            cache_errors=stats.errors,
            cache_backend=self.cache.backend,
            reloads=status.reloads,
            reload_failures=status.failures,
            queue_depth=self.recommender.batcher.depth,
            model_version=engine.version if engine else "",
        )

    async def set_health(self) -> None:
        """SERVING once a model is loaded, NOT_SERVING before."""
        serving = health_pb2.HealthCheckResponse.SERVING
        status = serving if self.holder.engine else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)

    async def follow_alias(self, interval_s: float) -> None:
        """Reload when the registry alias moves (cancel the task to stop)."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                if await self.holder.refresh():
                    settle_heap()
                await self.set_health()
            except Exception:  # a surprise must not end following the alias for good
                log.exception("following the alias failed; trying again")


def settle_heap() -> None:
    """Collect once, then keep what is alive now (libraries, the model) out of later GCs.

    Every Recommend allocates, so full collections run several times a second, and each
    rescans every long-lived object: 6% of the event loop's time under load, and the
    slowest requests waited on it (p99 at concurrency 64 roughly halved once frozen).
    Unfreezing first lets the collection free a swapped-out version before the freeze.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()


async def _build(config: ServerConfig, server: grpc.aio.Server) -> _App:
    registry = FileRegistry(resolve_root(config.registry))
    holder = ModelHolder(
        registry, config.model, config.alias, config.torch_device(), config.backend
    )
    await holder.refresh()
    cache, rating_log, where = await _storage(config)
    overlay = UserOverlay()
    try:
        replayed = await overlay.catch_up(rating_log)
        log.info("replayed %d streamed ratings from the log", len(replayed))
    except Unavailable as exc:  # updates refuse until it answers; batches catch up then
        log.warning("rating log not replayed yet: %s", exc)
    batching = BatcherConfig(config.max_batch_size, config.max_batch_wait_us, config.max_queue)
    recommender = Recommender(holder, cache, overlay, rating_log, batching)
    metrics = Metrics()
    recommender.batcher.on_batch = metrics.batch_size.observe
    app = _App(holder, cache, recommender, metrics, health.aio.HealthServicer())  # type: ignore[attr-defined]
    metrics.watch(app.state)
    add_to_server(RecommenderService(recommender, config.model, config.alias, metrics), server)
    health_pb2_grpc.add_HealthServicer_to_server(app.health, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    print(f"cache: {where}", flush=True)
    return app


_LOOPBACK = ("127.0.0.1", "::1", "[::1]", "localhost")


def _bind(server: grpc.aio.Server, config: ServerConfig, security: Security) -> int:
    address = f"{config.host}:{config.port}"
    if security.token and security.credentials is None and config.host not in _LOOPBACK:
        log.warning("the bearer token travels in clear text: give --tls-cert and --tls-key")
    if security.credentials is None:
        return server.add_insecure_port(address)
    return server.add_secure_port(address, security.credentials)


async def serve(config: ServerConfig, security: Security | None = None) -> None:
    """Run the server until SIGTERM/SIGINT, then stop accepting, finish in-flight work, exit."""
    if security is None:
        security = Security.load(config)
    torch.set_num_threads(config.torch_threads)
    interceptors = [TokenAuth(security.token)] if security.token else None
    # No SO_REUSEPORT: a second server on a taken port must fail, not split the traffic.
    server = grpc.aio.server(interceptors=interceptors, options=[("grpc.so_reuseport", 0)])
    app = await _build(config, server)
    port = _bind(server, config, security)
    if config.metrics_port is not None:
        try:
            metrics_port = app.metrics.serve_http(config.metrics_port, config.host)
        except OSError as exc:
            where = f"port {config.metrics_port}"
            raise RuntimeError(f"cannot serve metrics on {where}: {exc}") from None
        print(f"metrics on http://{config.host}:{metrics_port}/metrics", flush=True)
    settle_heap()
    await server.start()
    app.recommender.batcher.start()
    await app.set_health()
    watcher = asyncio.create_task(app.follow_alias(config.poll_interval_s), name="alias-watcher")
    shown = {**dataclasses.asdict(config), "redis_url": redact_url(config.redis_url)}
    log.info("config: %s", shown)
    log.info("security: %s", security.describe(config))
    version = app.holder.engine.version if app.holder.engine else "none yet"
    print(
        f"serving {config.model}@{config.alias} version {version} on {config.host}:{port}",
        flush=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        log.info("shutting down: finishing in-flight requests")
        await app.health.enter_graceful_shutdown()
        await server.stop(config.grace_s)
        watcher.cancel()
        await app.recommender.close()
        await app.cache.close()


def _parser() -> argparse.ArgumentParser:
    # Defaults from the environment stay strings: argparse converts them with the flag's
    # type, so a bad value gets its usage error instead of a traceback.
    d = ServerConfig()
    env = os.environ.get
    p = argparse.ArgumentParser(
        prog="rbm-serve", description="Serve rbmrec.v1.Recommender over gRPC."
    )
    p.add_argument(
        "--host",
        default=env("RBMREC_HOST", d.host),
        help="bind address, default loopback only; use 0.0.0.0 to listen on all interfaces "
        "($RBMREC_HOST)",
    )
    p.add_argument(
        "--port",
        type=int,
        default=env("RBMREC_PORT", str(d.port)),
        help="0 picks a free port and prints it ($RBMREC_PORT)",
    )
    p.add_argument(
        "--registry", default=None, help="registry root (else $RBMREC_REGISTRY, else ./registry)"
    )
    p.add_argument("--model", default=env("RBMREC_MODEL", d.model))
    p.add_argument("--alias", default=env("RBMREC_ALIAS", d.alias))
    p.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default=env("RBMREC_DEVICE", d.device)
    )
    p.add_argument("--cache", choices=("redis", "memory"), default=env("RBMREC_CACHE", d.cache))
    p.add_argument("--redis-url", default=env("REDIS_URL", d.redis_url), help="($REDIS_URL)")
    p.add_argument(
        "--redis-prefix",
        default=env("RBMREC_REDIS_PREFIX", d.redis_prefix),
        help="prefix of every Redis key ($RBMREC_REDIS_PREFIX)",
    )
    p.add_argument(
        "--cache-capacity",
        type=int,
        default=d.cache_capacity,
        help="users whose hidden state the in-process cache keeps",
    )
    p.add_argument(
        "--max-batch-size", type=int, default=d.max_batch_size, help="1 turns batching off"
    )
    p.add_argument("--max-batch-wait-us", type=int, default=d.max_batch_wait_us)
    p.add_argument("--max-queue", type=int, default=d.max_queue)
    p.add_argument(
        "--torch-threads",
        type=int,
        default=env("RBMREC_TORCH_THREADS", str(d.torch_threads)),
        help="threads of one model pass ($RBMREC_TORCH_THREADS); see bench/README.md",
    )
    p.add_argument(
        "--poll-interval",
        type=float,
        default=d.poll_interval_s,
        help="seconds between checks of the registry alias",
    )
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        default=env("RBMREC_BACKEND", d.backend),
        help="run the scoring pass with PyTorch or the version's ONNX export",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=env("RBMREC_METRICS_PORT") or None,
        help="serve Prometheus /metrics on this port (0 picks one; default off); plain HTTP "
        "on --host even with TLS ($RBMREC_METRICS_PORT)",
    )
    _security_flags(p)
    p.add_argument(
        "--log-level",
        type=str.upper,
        choices=("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"),
        default=env("RBMREC_LOG_LEVEL", "INFO"),
        help="($RBMREC_LOG_LEVEL)",
    )
    p.add_argument(
        "--log-format",
        choices=("text", "json"),
        default=env("RBMREC_LOG_FORMAT", "text"),
        help="json: one JSON object per log line",
    )
    return p


def _security_flags(p: argparse.ArgumentParser) -> None:
    env = os.environ.get
    p.add_argument(
        "--tls-cert",
        default=env("RBMREC_TLS_CERT"),
        metavar="PATH",
        help="PEM certificate chain: serve TLS (with --tls-key; $RBMREC_TLS_CERT)",
    )
    p.add_argument(
        "--tls-key", default=env("RBMREC_TLS_KEY"), metavar="PATH", help="($RBMREC_TLS_KEY)"
    )
    p.add_argument(
        "--tls-client-ca",
        default=env("RBMREC_TLS_CLIENT_CA"),
        metavar="PATH",
        help="PEM CA: mutual TLS, clients need a certificate it signed ($RBMREC_TLS_CLIENT_CA)",
    )
    p.add_argument(
        "--auth-token-file",
        default=env("RBMREC_AUTH_TOKEN_FILE"),
        metavar="PATH",
        help="require 'authorization: Bearer <token in this file>' on every RPC but health "
        "($RBMREC_AUTH_TOKEN_FILE; else the token itself in $RBMREC_AUTH_TOKEN)",
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``rbm-serve``."""
    args = _parser().parse_args(argv)
    configure_logging(args.log_level, args.log_format)
    try:
        config = ServerConfig(
            host=args.host,
            port=args.port,
            registry=str(resolve_root(args.registry)),
            model=args.model,
            alias=args.alias,
            device=args.device,
            cache=args.cache,
            redis_url=args.redis_url,
            redis_prefix=args.redis_prefix,
            max_batch_size=args.max_batch_size,
            max_batch_wait_us=args.max_batch_wait_us,
            max_queue=args.max_queue,
            torch_threads=args.torch_threads,
            poll_interval_s=args.poll_interval,
            backend=args.backend,
            cache_capacity=args.cache_capacity,
            metrics_port=args.metrics_port,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            tls_client_ca=args.tls_client_ca,
            auth_token_file=args.auth_token_file,
        )
        security = Security.load(config)
    except ValueError as exc:
        print(f"rbm-serve: error: {exc}", file=sys.stderr)
        return 2
    try:
        # uvloop: a faster event loop, since the server is bound by Python time
        uvloop.run(serve(config, security))
    except RuntimeError as exc:  # e.g. the port is taken
        print(f"rbm-serve: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
