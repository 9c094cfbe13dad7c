"""``rbm-serve``: build the collaborators, start the gRPC server, stop it gracefully."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import itertools
import json
import logging
import math
import os
import random
import signal
import socket
import sys
import typing
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
import redis.asyncio as aioredis
import torch
import uvloop
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from redis.connection import parse_url
from redis.exceptions import RedisError

from ratinglog.archive import RatingArchive
from rbmrec.v1 import recommender_pb2 as pb
from registry.errors import RegistryError
from registry.names import check_alias, check_model_name
from registry.store import DEFAULT_ROOT, ENV_VAR, FileRegistry, resolve_root
from server.auth import TokenAuth, load_token
from server.backends import BACKENDS, onnx_providers
from server.batcher import BatcherConfig
from server.cache_client import connect_cache
from server.canary import Router, Split
from server.errors import Unavailable
from server.hidden_cache import HiddenCache, MemoryHiddenCache, RedisHiddenCache
from server.impressions import ImpressionConfig, ImpressionSink, NoImpressions, RedisImpressions
from server.logs import configure_logging, redact_url
from server.metrics import Metrics, ServerState
from server.model_holder import LOAD_TIMEOUT_S, WAIT_WARNING_S, ModelHolder
from server.ratings import NoRatingLog, RatingLog, RedisRatingLog
from server.recommender import Recommender
from server.service import RecommenderService, add_to_server
from server.tls import check_pair, server_credentials

__all__ = [
    "Flag",
    "Security",
    "ServerConfig",
    "cli_options",
    "main",
    "serve",
    "write_address_file",
]

log = logging.getLogger("rbm-serve")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Recommender"].full_name
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
T = TypeVar("T")


@dataclass(frozen=True)
class Flag:
    """How one ``ServerConfig`` field is given: its flag, its environment variable, its help."""

    flag: str
    env: str
    help: str = ""
    choices: tuple[str, ...] = ()
    metavar: str | None = None
    parse: Callable[[str], Any] | None = None  # None: the field's own type (str, int, float)


def _option(default: T, flag: str, env: str, help: str = "", **more: Any) -> T:
    """A config field that rbm-serve also takes as ``flag`` or ``$env`` (the one declaration)."""
    return field(default=default, metadata={"cli": Flag(flag, env, help, **more)})


@dataclass(frozen=True)
class ServerConfig:
    """Everything ``rbm-serve`` can be told, by flag or environment variable.

    Each field made with ``_option`` is a flag and a variable too: the parser is built from
    these declarations, so a new setting is added here and nowhere else.
    """

    host: str = _option(
        "127.0.0.1",
        "--host",
        "RBMREC_HOST",
        "bind address, default loopback only; use 0.0.0.0 to listen on all interfaces",
    )
    port: int = _option(
        50051, "--port", "RBMREC_PORT", "0 picks a free port, named on stdout and in --address-file"
    )
    registry: str = _option(DEFAULT_ROOT, "--registry", ENV_VAR, "registry root")
    model: str = _option("rbm", "--model", "RBMREC_MODEL", "model name in the registry")
    alias: str = _option("production", "--alias", "RBMREC_ALIAS", "alias to serve and follow")
    device: str = _option(
        "auto", "--device", "RBMREC_DEVICE", "where the model runs", choices=("auto", "cpu", "cuda")
    )
    cache: str = _option(
        "redis",
        "--cache",
        "RBMREC_CACHE",
        "where hidden states and streamed ratings live; memory keeps hidden states in this "
        "process and turns rating updates off (UpdateRatings answers UNAVAILABLE), even when "
        "a Redis answers",
        choices=("redis", "memory"),
    )
    redis_url: str = _option("redis://127.0.0.1:6379/0", "--redis-url", "REDIS_URL", "Redis URL")
    cache_redis_url: str | None = _option(
        None,
        "--cache-redis-url",
        "RBMREC_CACHE_REDIS_URL",
        "Redis for the hidden-state cache alone, a Redis Cluster too (told apart by asking "
        "it); unlike the rating log's it may evict and need not persist; none: --redis-url",
        metavar="URL",
    )
    redis_prefix: str = _option(
        "rbmrec",
        "--redis-prefix",
        "RBMREC_REDIS_PREFIX",
        "prefix of every Redis key; the rating log is PREFIX:ratings",
    )
    cache_ttl_s: int = 86_400
    cache_capacity: int = _option(
        100_000,
        "--cache-capacity",
        "RBMREC_CACHE_CAPACITY",
        "users whose hidden state the in-process cache (and the Redis fallback) keeps",
    )
    max_batch_size: int = _option(
        64, "--max-batch-size", "RBMREC_MAX_BATCH_SIZE", "1 turns batching off"
    )
    max_batch_wait_us: int = _option(
        0, "--max-batch-wait-us", "RBMREC_MAX_BATCH_WAIT_US", "how long a batch waits to fill"
    )
    max_queue: int = _option(
        2048, "--max-queue", "RBMREC_MAX_QUEUE", "requests waiting beyond it are refused"
    )
    max_concurrent_rpcs: int = _option(
        4096,
        "--max-concurrent-rpcs",
        "RBMREC_MAX_CONCURRENT_RPCS",
        "RPCs (UpdateRatings streams included) in progress at once; beyond it, "
        "RESOURCE_EXHAUSTED; 0: no bound",
    )
    max_connection_age_s: float = _option(
        300.0,
        "--max-connection-age-s",
        "RBMREC_MAX_CONNECTION_AGE_S",
        "close each client connection after this long (GOAWAY; clients reconnect), so "
        "long-lived connections spread over new replicas; 0: never",
    )
    max_connection_age_grace_s: float = _option(
        30.0,
        "--max-connection-age-grace-s",
        "RBMREC_MAX_CONNECTION_AGE_GRACE_S",
        "how long RPCs in progress on an aged connection may still run",
    )
    keepalive_s: float = _option(
        60.0,
        "--keepalive-s",
        "RBMREC_KEEPALIVE_S",
        "ping an idle connection this often and drop it if no answer comes in 20 s",
    )
    poll_interval_s: float = _option(
        1.0, "--poll-interval", "RBMREC_POLL_INTERVAL", "seconds between checks of the alias"
    )
    poll_jitter: float = _option(
        0.5,
        "--poll-jitter",
        "RBMREC_POLL_JITTER",
        "each wait between checks is the interval times a random factor in [1-J, 1+J], and "
        "the first is random too, so replicas started together reload at different times",
    )
    poll_seed: int | None = _option(
        None,
        "--poll-seed",
        "RBMREC_POLL_SEED",
        "seed of that randomness, for tests; none: a fresh one",
    )
    swap_spread_s: float = _option(
        5.0,
        "--swap-spread-s",
        "RBMREC_SWAP_SPREAD_S",
        "after seeing an alias move, wait a random time up to this before loading the new "
        "version, so that a fleet's loads spread out; a first version loads at once",
    )
    canary_alias: str | None = _option(
        None,
        "--canary-alias",
        "RBMREC_CANARY_ALIAS",
        "also serve the version this alias points to, to --canary-percent of users (a stable "
        "hash of the user id); while it is unset or not loaded, every user gets --alias's",
        metavar="ALIAS",
    )
    canary_percent: float = _option(
        10.0, "--canary-percent", "RBMREC_CANARY_PERCENT", "share of users the canary answers"
    )
    online_max_entries: int = _option(
        1_000_000,
        "--online-max-entries",
        "RBMREC_ONLINE_MAX_ENTRIES",
        "impressions (what each version recommended to whom) kept in Redis for "
        "rbm-ratings online, at most; 0: none recorded",
    )
    online_retention_h: float = _option(
        168.0,
        "--online-retention-h",
        "RBMREC_ONLINE_RETENTION_H",
        "impressions older than this many hours are dropped",
    )
    load_timeout_s: float = _option(
        LOAD_TIMEOUT_S,
        "--load-timeout-s",
        "RBMREC_LOAD_TIMEOUT_S",
        "a version whose load and rating-log replay take longer is abandoned (the old one "
        "keeps serving) and retried later",
    )
    warn_interval_s: float = _option(
        WAIT_WARNING_S,
        "--warn-interval",
        "RBMREC_WARN_INTERVAL",
        "while there is no version to serve, seconds between the warnings that say what the "
        "server waits for and where it looked",
    )
    backend: str = _option(
        "torch",
        "--backend",
        "RBMREC_BACKEND",
        "run the scoring pass with PyTorch or the version's ONNX export",
        choices=BACKENDS,
    )
    metrics_port: int | None = _option(
        None,
        "--metrics-port",
        "RBMREC_METRICS_PORT",
        "serve Prometheus /metrics on this port (0 picks one; none: off); plain HTTP on "
        "--host even with TLS",
    )
    # One beat two on a 2-core host: the event loop needs the other.
    torch_threads: int = _option(
        1,
        "--torch-threads",
        "RBMREC_TORCH_THREADS",
        "threads of one model pass; see bench/README.md",
    )
    grace_s: float = 5.0
    # Paths only: the secrets themselves never enter the config, which is logged.
    tls_cert: str | None = _option(
        None,
        "--tls-cert",
        "RBMREC_TLS_CERT",
        "PEM certificate chain: serve TLS; needs --tls-key",
        metavar="PATH",
    )
    tls_key: str | None = _option(
        None, "--tls-key", "RBMREC_TLS_KEY", "PEM private key of --tls-cert", metavar="PATH"
    )
    tls_client_ca: str | None = _option(
        None,
        "--tls-client-ca",
        "RBMREC_TLS_CLIENT_CA",
        "PEM CA: mutual TLS, clients need a certificate it signed",
        metavar="PATH",
    )
    auth_token_file: str | None = _option(
        None,
        "--auth-token-file",
        "RBMREC_AUTH_TOKEN_FILE",
        "require 'authorization: Bearer <token in this file>' on every RPC but health; "
        "without it, the token itself may be in $RBMREC_AUTH_TOKEN",
        metavar="PATH",
    )
    address_file: str | None = _option(
        None,
        "--address-file",
        "RBMREC_ADDRESS_FILE",
        'once serving, write {"address": HOST:PORT, "metrics": URL or null, "pid": N} '
        "here as JSON (atomically; removed at shutdown)",
        metavar="PATH",
    )
    log_level: str = _option(
        "INFO", "--log-level", "RBMREC_LOG_LEVEL", "log level", choices=LOG_LEVELS, parse=str.upper
    )
    log_format: str = _option(
        "text",
        "--log-format",
        "RBMREC_LOG_FORMAT",
        "json: one JSON object per log line",
        choices=("text", "json"),
    )

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {self.port}")
        _check_choices(self)
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda was asked for, but no CUDA device is available")
        if self.backend == "onnx" and self.device == "cuda":
            onnx_providers(torch.device("cuda"))  # refused here, at start, in one line
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ValueError(f"metrics port must be in 0..65535, got {self.metrics_port}")
        if self.cache_capacity < 1:
            raise ValueError(f"cache capacity must be >= 1, got {self.cache_capacity}")
        if not math.isfinite(self.poll_interval_s) or self.poll_interval_s <= 0:
            raise ValueError(f"poll interval must be a number > 0, got {self.poll_interval_s}")
        if not (math.isfinite(self.poll_jitter) and 0 <= self.poll_jitter < 1):
            raise ValueError(f"poll jitter must be in [0, 1), got {self.poll_jitter}")
        if not math.isfinite(self.load_timeout_s) or self.load_timeout_s <= 0:
            raise ValueError(f"load timeout must be a number > 0, got {self.load_timeout_s}")
        if not math.isfinite(self.warn_interval_s) or self.warn_interval_s <= 0:
            raise ValueError(f"warn interval must be a number > 0, got {self.warn_interval_s}")
        if self.max_concurrent_rpcs < 0:
            raise ValueError(f"max concurrent RPCs must be >= 0, got {self.max_concurrent_rpcs}")
        for name, value in (
            ("max connection age", self.max_connection_age_s),
            ("max connection age grace", self.max_connection_age_grace_s),
        ):
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a number >= 0 (seconds), got {value}")
        if not math.isfinite(self.keepalive_s) or self.keepalive_s <= 0:
            raise ValueError(f"keepalive must be a number > 0 (seconds), got {self.keepalive_s}")
        if self.torch_threads < 1:
            raise ValueError(f"torch threads must be >= 1, got {self.torch_threads}")
        _check_names(self.model, self.alias)
        self._check_rollout()
        if self.cache == "redis":
            _check_redis_url(self.redis_url)
            if self.cache_redis_url is not None:
                _check_redis_url(self.cache_redis_url, "--cache-redis-url")
        BatcherConfig(self.max_batch_size, self.max_batch_wait_us, self.max_queue)
        check_pair(self.tls_cert, self.tls_key)
        if self.tls_client_ca and not self.tls_cert:
            raise ValueError("--tls-client-ca needs --tls-cert and --tls-key")

    def _check_rollout(self) -> None:
        if not math.isfinite(self.swap_spread_s) or self.swap_spread_s < 0:
            raise ValueError(f"swap spread must be a number >= 0, got {self.swap_spread_s}")
        Split(self.canary_percent if math.isfinite(self.canary_percent) else -1.0)
        if self.canary_alias is not None:
            _check_names(self.model, self.canary_alias)
            if self.canary_alias == self.alias:
                raise ValueError(f"--canary-alias must differ from --alias ({self.alias!r})")
        if self.online_max_entries < 0:
            raise ValueError(f"online max entries must be >= 0, got {self.online_max_entries}")
        if not math.isfinite(self.online_retention_h) or self.online_retention_h <= 0:
            raise ValueError(f"online retention must be > 0 hours, got {self.online_retention_h}")

    def torch_device(self) -> torch.device:
        """The device to serve on."""
        if self.device != "auto":
            return torch.device(self.device)
        if not torch.cuda.is_available():
            return torch.device("cpu")
        if self.backend == "onnx":  # "auto" takes the GPU only where ONNX Runtime can use it
            try:
                onnx_providers(torch.device("cuda"))
            except ValueError:
                return torch.device("cpu")
        return torch.device("cuda")


def cli_options() -> Iterator[tuple[dataclasses.Field[Any], Flag]]:
    """Each ``ServerConfig`` field that is a flag, with its declaration, in --help order."""
    for f in dataclasses.fields(ServerConfig):
        if "cli" in f.metadata:
            yield f, f.metadata["cli"]


def _check_choices(config: ServerConfig) -> None:
    # argparse checks choices on the command line only: values from the environment and
    # from code meet this check instead.
    for f, flag in cli_options():
        value = getattr(config, f.name)
        if flag.choices and value not in flag.choices:
            allowed = ", ".join(flag.choices)
            raise ValueError(f"{f.name.replace('_', ' ')} must be one of {allowed}, got {value!r}")


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


def _check_redis_url(url: str, flag: str = "--redis-url") -> None:
    try:
        parse_url(url)  # type: ignore[no-untyped-call]
    except ValueError as exc:
        raise ValueError(f"{flag} {redact_url(url)} is not a Redis URL: {exc}") from None


NO_UPDATES = "rating updates off: UpdateRatings answers UNAVAILABLE"
# The lag metric counts this many entries at most: one bounded XRANGE a poll, ~50 ms of
# parsing even for a replica far behind (10,000 would be ~0.5 s of every second).
LAG_CAP = 1_000


async def _storage(config: ServerConfig) -> tuple[HiddenCache, RatingLog, str]:
    if config.cache == "memory":
        where = f"memory (--cache memory; {NO_UPDATES}, even if a Redis answers)"
        return MemoryHiddenCache(config.cache_capacity), NoRatingLog(), where
    client = aioredis.from_url(config.redis_url, socket_timeout=1.0, socket_connect_timeout=1.0)
    cache_url = config.cache_redis_url or config.redis_url
    own = cache_url != config.redis_url
    # One Redis for both: the cache shares the log's connections (and closes them at the end).
    cache_client = await connect_cache(cache_url, None if own else client)
    if cache_client.kind is None:
        where = f"memory (no Redis answered at {redact_url(cache_url)}: {cache_client.error}; "
        where += "retrying)"
    else:
        where = f"{cache_client.kind} at {redact_url(cache_url)}"
    if own:
        try:
            await client.ping()
            where += f"; rating log at {redact_url(config.redis_url)}"
        except (RedisError, OSError) as exc:
            where += f"; no rating log at {redact_url(config.redis_url)} yet: {exc}; retrying"
    elif cache_client.kind == "redis cluster":
        log.warning("--redis-url names a Redis Cluster: the rating log needs a plain Redis")
    return (
        RedisHiddenCache(
            cache_client,
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
    recommender: Recommender  # the stable version's
    router: Router
    metrics: Metrics
    health: Any  # grpc_health's aio HealthServicer (untyped)
    impressions: ImpressionSink = field(default_factory=NoImpressions)
    log_length: int = -1
    log_lag: int = 0

    @property
    def recommenders(self) -> list[Recommender]:
        """One per version served: the stable one, then the canary's if there is one."""
        return [arm.recommender for arm in self.router.arms]

    def state(self) -> ServerState:
        """Live counters for /metrics."""
        stats, status, engine = self.cache.stats, self.holder.status, self.holder.engine
        overlay = self.recommender.built_overlay(engine) if engine else None
        canary = self.router.canary
        canary_engine = canary.recommender.holder.engine if canary else None
        return ServerState(
            cache_hits=stats.hits,
            cache_misses=stats.misses,
            cache_errors=stats.errors,
            cache_backend=self.cache.backend,
            reloads=status.reloads,
            reload_failures=status.failures,
            queue_depth=sum(r.batcher.depth for r in self.recommenders),
            model_version=engine.version if engine else "",
            overlay_users=len(overlay.ratings) if overlay else 0,
            overlay_ratings=overlay.entries if overlay else 0,
            log_length=self.log_length,
            log_lag=self.log_lag,
            replay_seconds=self.recommender.replayed.seconds,
            replay_entries=self.recommender.replayed.entries,
            canary_version=canary_engine.version if canary_engine else "",
            canary_percent=self.router.split.percent if canary_engine else 0.0,
            impressions_written=self.impressions.written,
            impressions_dropped=self.impressions.dropped,
        )

    async def observe_log(self) -> None:
        """Read the stream's length and this replica's lag for /metrics."""
        engine, log_ = self.holder.engine, self.recommender.rating_log
        if engine is None or not isinstance(log_, RedisRatingLog):
            return
        try:
            self.log_length = await log_.length()
            overlay = self.recommender.built_overlay(engine)
            if overlay is not None:
                self.log_lag = await log_.count_after(overlay.last_id, LAG_CAP)
        except Unavailable:
            pass  # the batches and updates say so in the log already

    async def set_health(self) -> None:
        """SERVING once a model is loaded, NOT_SERVING before."""
        serving = health_pb2.HealthCheckResponse.SERVING
        status = serving if self.holder.engine else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)

    async def follow_alias(
        self,
        interval_s: float,
        on_first: Callable[[], None] = lambda: None,
        jitter: float = 0.0,
        rng: random.Random | None = None,
    ) -> None:
        """Reload when the registry alias moves (cancel the task to stop).

        ``on_first`` is called once a server that started with no version loads its first.
        Polls are ``poll_delays(interval_s, jitter, rng)`` apart, on deadlines (no drift).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time()
        log.info("following the alias: polls every %gs +- %g%%", interval_s, jitter * 100)
        for delay in poll_delays(interval_s, jitter, rng):
            # On deadlines, so the polls keep the schedule the seed drew; after a refresh
            # that overran (a load), the schedule goes on from now.
            deadline = max(deadline + delay, loop.time())
            await asyncio.sleep(deadline - loop.time())
            try:
                had_one = self.holder.engine is not None
                if await self.holder.refresh():
                    settle_heap()
                    if not had_one:
                        on_first()
                # The canary only while a stable version serves: loads one at a time, and a
                # server never answers with a canary alone.
                canary = self.router.canary
                if had_one and canary and await canary.recommender.holder.refresh():
                    settle_heap()
                await self.set_health()
                await self.observe_log()
            except Exception:  # a surprise must not end following the alias for good
                log.exception("following the alias failed; trying again")


def poll_delays(
    interval_s: float, jitter: float, rng: random.Random | None = None
) -> Iterator[float]:
    """Seconds between alias checks: interval x U[1-j, 1+j], the first U[0, interval x (1+j)].

    The random first wait spreads replicas that start together (a rollout) over a whole
    interval; the jitter keeps them from falling back into step.
    """
    if jitter == 0:
        yield from itertools.repeat(interval_s)
        return
    rng = rng or random.Random()
    yield rng.uniform(0, interval_s * (1 + jitter))
    while True:
        yield interval_s * rng.uniform(1 - jitter, 1 + jitter)


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


def swap_rng(seed: int | None) -> random.Random:
    """The randomness of the swap spread: seeded by --poll-seed, apart from the polls'."""
    return random.Random(None if seed is None else f"swap-spread:{seed}")


def _holder(config: ServerConfig, registry: FileRegistry, alias: str, canary: bool) -> ModelHolder:
    return ModelHolder(
        registry,
        config.model,
        alias,
        config.torch_device(),
        config.backend,
        warn_every_s=config.warn_interval_s,
        load_timeout_s=config.load_timeout_s,
        warm_batch=config.max_batch_size,
        spread_s=config.swap_spread_s,
        rng=swap_rng(config.poll_seed),
        optional=canary,
    )


def _impressions(config: ServerConfig, rating_log: RatingLog) -> ImpressionSink:
    if not isinstance(rating_log, RedisRatingLog) or config.online_max_entries == 0:
        return NoImpressions()
    bounds = ImpressionConfig(config.online_max_entries, config.online_retention_h * 3600)
    return RedisImpressions(rating_log.client, config.redis_prefix, bounds)


async def _build(config: ServerConfig, server: grpc.aio.Server) -> _App:
    registry = FileRegistry(resolve_root(config.registry))
    cache, rating_log, where = await _storage(config)
    batching = BatcherConfig(config.max_batch_size, config.max_batch_wait_us, config.max_queue)
    archive = (
        RatingArchive(registry.root, config.redis_prefix)
        if isinstance(rating_log, RedisRatingLog)
        else None
    )
    metrics = Metrics()
    # One model thread for every version served: their passes take turns, never cores.
    worker = ThreadPoolExecutor(1, thread_name_prefix="model")

    def recommender(alias: str, canary: bool) -> Recommender:
        holder = _holder(config, registry, alias, canary)
        made = Recommender(holder, cache, rating_log, batching, worker, archive)
        holder.prepare = made.prepare  # a version is served once its overlay is built
        made.batcher.on_batch = metrics.batch_size.observe
        return made

    stable = recommender(config.alias, canary=False)
    canary = recommender(config.canary_alias, canary=True) if config.canary_alias else None
    impressions = _impressions(config, rating_log)
    split = Split(config.canary_percent if canary else 0.0)
    router = Router(stable, canary, split, impressions, metrics)
    health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
    app = _App(stable.holder, cache, stable, router, metrics, health_servicer, impressions)
    metrics.watch(app.state)
    add_to_server(RecommenderService(router, config.model, config.alias, metrics), server)
    health_pb2_grpc.add_HealthServicer_to_server(app.health, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    print(f"cache: {where}", flush=True)
    return app


_LOOPBACK = ("127.0.0.1", "::1", "[::1]", "localhost")


def _check_bindable(host: str, port: int) -> None:
    """Raise RuntimeError, with the reason, if no address of ``host`` can take ``port``.

    gRPC's core logs its own line when a bind fails and then raises a message without the
    reason; trying the bind here first (as gRPC binds: SO_REUSEADDR, no SO_REUSEPORT) keeps
    the report to our one line, which says why.
    """
    if port == 0:
        return  # the kernel picks a free one
    shown = _host_port(host, port)
    try:
        infos = socket.getaddrinfo(
            host.strip("[]") or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except OSError as exc:
        raise RuntimeError(f"cannot bind {shown}: {exc}") from None
    failures = []
    for family, kind, proto, _, sockaddr in infos:
        try:
            with socket.socket(family, kind, proto) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(sockaddr)
                return  # gRPC serves if it can bind any one of them
        except OSError as exc:
            failures.append(exc)
    if failures:
        reason = failures[0].strerror or str(failures[0])
        raise RuntimeError(f"cannot bind {shown}: {reason.lower()}")


def _bind(server: grpc.aio.Server, config: ServerConfig, security: Security) -> int:
    address = f"{config.host}:{config.port}"
    if security.token and security.credentials is None and config.host not in _LOOPBACK:
        log.warning("the bearer token travels in clear text: give --tls-cert and --tls-key")
    _check_bindable(config.host, config.port)  # again, now: the port may have gone meanwhile
    try:
        if security.credentials is None:
            return server.add_insecure_port(address)
        return server.add_secure_port(address, security.credentials)
    except RuntimeError as exc:  # taken between the check and here, or refused by gRPC alone
        raise RuntimeError(f"cannot bind {_host_port(config.host, config.port)}: {exc}") from None


def _host_port(host: str, port: int) -> str:
    """``host:port``, an IPv6 literal in brackets so that the port stays unambiguous."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


def _serve_metrics(app: _App, config: ServerConfig) -> str | None:
    """Start /metrics if asked for; its URL, or None."""
    if config.metrics_port is None:
        return None
    try:
        port = app.metrics.serve_http(config.metrics_port, config.host)
    except OSError as exc:
        raise RuntimeError(f"cannot serve metrics on port {config.metrics_port}: {exc}") from None
    url = f"http://{_host_port(config.host, port)}/metrics"
    print(f"metrics on {url}", flush=True)
    return url


def write_address_file(path: Path, content: Mapping[str, object]) -> None:
    """Write ``content`` as JSON to ``path`` atomically: a reader sees all of it or no file."""
    # The temporary file sits next to the target: a rename within one filesystem is atomic.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(dict(content)) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"cannot write the address file {path}: {exc}") from None


def _print_serving(app: _App, config: ServerConfig, address: str) -> None:
    """The start-up line: what is served on ``address``, or what the server waits for.

    It ends in ``on HOST:PORT`` either way; it starts with ``serving`` only once a version is
    loaded (a server that started with none prints it again when its first version loads).
    """
    updates = ", rating updates off (--cache memory)," if config.cache == "memory" else ""
    engine = app.holder.engine
    if engine is None:
        what = f"not serving yet: waiting for {app.holder.waiting_for} (see the warnings)"
        line = f"{what}{updates.rstrip(',')}; listening on {address}"
    else:
        what = f"serving {config.model}@{config.alias} version {engine.version}"
        line = f"{what}{updates} on {address}"
    print(line, flush=True)


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def channel_options(config: ServerConfig) -> list[tuple[str, int]]:
    """The server's gRPC core options: port reuse off, keepalive, connection age."""
    ms = 1000
    options = [
        # No SO_REUSEPORT: a second server on a taken port must fail, not split the traffic.
        ("grpc.so_reuseport", 0),
        ("grpc.keepalive_time_ms", int(config.keepalive_s * ms)),
        ("grpc.keepalive_timeout_ms", 20 * ms),
        ("grpc.keepalive_permit_without_calls", 1),
        # Clients may ping every 10 s (more often is a GOAWAY "too_many_pings").
        ("grpc.http2.min_ping_interval_without_data_ms", 10 * ms),
        ("grpc.http2.max_pings_without_data", 0),
    ]
    if config.max_connection_age_s > 0:
        options += [
            ("grpc.max_connection_age_ms", int(config.max_connection_age_s * ms)),
            ("grpc.max_connection_age_grace_ms", int(config.max_connection_age_grace_s * ms)),
        ]
    return options


async def serve(config: ServerConfig, security: Security | None = None) -> str:
    """Serve until SIGTERM/SIGINT, finish in-flight work, stop; return the HOST:PORT it bound."""
    if security is None:
        security = Security.load(config)
    _check_bindable(config.host, config.port)  # before loading a model: fail fast
    torch.set_num_threads(config.torch_threads)
    interceptors = [TokenAuth(security.token)] if security.token else None
    server = grpc.aio.server(
        interceptors=interceptors,
        options=channel_options(config),
        maximum_concurrent_rpcs=config.max_concurrent_rpcs or None,
    )
    app = await _build(config, server)
    address = _host_port(config.host, _bind(server, config, security))
    metrics_url = _serve_metrics(app, config)
    await server.start()
    for recommender in app.recommenders:
        recommender.batcher.start()
    flusher = asyncio.create_task(app.impressions.run(), name="impressions")
    # Bound and answering health NOT_SERVING while the first version loads and replays the
    # rating log after its point (bounded by what came since the last retrain); then SERVING.
    await app.set_health()
    await app.holder.refresh()
    settle_heap()
    await app.set_health()
    watcher = asyncio.create_task(
        app.follow_alias(
            config.poll_interval_s,
            lambda: _print_serving(app, config, address),
            config.poll_jitter,
            random.Random(config.poll_seed),
        ),
        name="alias-watcher",
    )
    shown = {**dataclasses.asdict(config), "redis_url": redact_url(config.redis_url)}
    if config.cache_redis_url:  # may carry a password too
        shown["cache_redis_url"] = redact_url(config.cache_redis_url)
    log.info("config: %s", shown)
    log.info("security: %s", security.describe(config))
    _print_serving(app, config, address)
    address_file = Path(config.address_file) if config.address_file else None
    try:
        if address_file:  # after the line above: who sees the file also finds the line
            content = {"address": address, "metrics": metrics_url, "pid": os.getpid()}
            write_address_file(address_file, content)
        await _until_signalled()
    finally:
        log.info("shutting down: finishing in-flight requests")
        await app.health.enter_graceful_shutdown()
        await server.stop(config.grace_s)
        watcher.cancel()
        flusher.cancel()
        await asyncio.gather(flusher, return_exceptions=True)  # its last flush, then closed
        for recommender in reversed(app.recommenders):
            await recommender.close()
        await app.cache.close()
        await app.recommender.rating_log.close()
        if address_file:  # the address is no longer served: a stale file would mislead
            address_file.unlink(missing_ok=True)
    return address


def _scalar(hint: Any) -> Callable[[str], Any]:
    """The type a flag's text becomes: a field's type, without the ``| None``."""
    types = [t for t in typing.get_args(hint) if t is not type(None)]
    parse: Callable[[str], Any] = types[0] if types else hint
    return parse


def _metavar(flag: str) -> str:
    """``--poll-interval`` -> POLL_INTERVAL: named after the flag, not the field."""
    return flag.removeprefix("--").replace("-", "_").upper()


def _parser(env: Mapping[str, str] = os.environ) -> argparse.ArgumentParser:
    """The command line, from ``ServerConfig``'s declarations, defaults taken from ``env``."""
    p = argparse.ArgumentParser(
        prog="rbm-serve", description="Serve rbmrec.v1.Recommender over gRPC."
    )
    hints = typing.get_type_hints(ServerConfig)
    for f, flag in cli_options():
        shown = "none" if f.default is None else f.default
        p.add_argument(
            flag.flag,
            dest=f.name,
            type=flag.parse or _scalar(hints[f.name]),
            choices=flag.choices or None,
            metavar=flag.metavar or (None if flag.choices else _metavar(flag.flag)),
            # A value from the environment stays a string: argparse converts it with the
            # flag's type, so a bad one gets a usage error instead of a traceback. An empty
            # variable counts as unset, as compose and Kubernetes write unset ones.
            default=env.get(flag.env) or f.default,
            help=" ".join(filter(None, [flag.help, f"(env ${flag.env}, default {shown})"])),
        )
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``rbm-serve``."""
    args = _parser().parse_args(argv)
    configure_logging(args.log_level, args.log_format)
    try:
        values = {f.name: getattr(args, f.name) for f, _ in cli_options()}
        config = ServerConfig(**{**values, "registry": str(resolve_root(args.registry))})
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
