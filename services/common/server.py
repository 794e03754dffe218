"""Service bootstrap: one way every service starts, reports health and stops.

Start-up order: the gRPC port opens at once with health NOT_SERVING (probes can tell
"starting" from "dead"), then the database pool connects (retrying while Postgres is not
up), migrations run under their advisory lock, the service's `on_ready` hook runs, and
health turns SERVING. Dependencies are re-checked periodically and health follows them.
SIGTERM drains: health NOT_SERVING, new calls refused, in-flight calls (streams too) get
`shutdown_grace_seconds` to finish, then the process exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import gc
import logging
import signal
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from aiohttp import web
from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from services.common import db, logs, metrics, migrations, pages, tracing
from services.common.channels import open_channel
from services.common.config import CommonSettings
from services.common.errors import Unavailable
from services.common.http import start_http
from services.common.identity import ServiceIdentity, require_identity
from services.common.jwks import JwksVerifier
from services.common.remote import Deadlines, StorageClient
from services.common.revocations import RevocationFeed, RevocationFetcher, Revoked
from services.common.rpc import RpcRuntime, service_handler

log = logging.getLogger("aivera.server")

Servicers = list[tuple[ServiceDescriptor, object]]
LIVENESS = "liveness"  # health service name for liveness probes
Check = Callable[["App"], Awaitable[bool]]


@dataclass
class ServiceSpec:
    """What a service tells the runtime about itself."""

    name: str  # "auth"
    port: int
    http_port: int
    # Builds the stores, the domain and the servicers from the App, once (see the wiring
    # pattern in services/auth/server.py). Stores keep the App as their `db.Database`
    # and read `app.pool` when a query runs: the pool connects after build.
    build: Callable[[App], Awaitable[Servicers]]
    schema: str | None = None  # Postgres schema; None for a service without a database
    migrations: Path | None = None
    on_ready: Callable[[App], Awaitable[None]] | None = None  # after migrations
    on_stop: Callable[[App], Awaitable[None]] | None = None
    checks: list[Check] = field(default_factory=list)  # extra dependency checks
    http_routes: Callable[[App, web.Application], None] | None = None
    # Defaults to the auth service's GetJwks over gRPC; auth itself passes its own keys.
    verifier: Callable[[App], JwksVerifier] | None = None
    # Where ended sessions come from: auth's ListSessionRevocations over gRPC by default;
    # auth itself reads its own table.
    revocations: Callable[[App], RevocationFetcher] | None = None
    # Extra gRPC server options (channel args), after the runtime's own defaults.
    grpc_options: list[tuple[str, Any]] = field(default_factory=list)


_heap_frozen = False


def _freeze_startup_heap() -> None:
    """Moves what start-up built (modules, protobuf descriptors, what on_ready loaded)
    out of the cyclic collector's reach, once per process: it lives as long as the
    process, yet every full collection walked it, a 100-180 ms pause of the event loop
    under 500 chat streams (issue 23). Once, so a process that starts several Apps
    (tests) does not pin what later becomes garbage."""
    global _heap_frozen
    if not _heap_frozen:
        _heap_frozen = True
        gc.collect()
        gc.freeze()


class App:
    """A running service: its settings, pool, channels and background tasks."""

    def __init__(self, spec: ServiceSpec, settings: CommonSettings) -> None:
        self.spec = spec
        self.settings = settings
        self._pool: Any = None
        self.ready = False
        self.serving = False
        self.grpc_port = 0
        self.http_port = 0
        self.health = HealthServicer()
        self.service_names: list[str] = []
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._ready_event = asyncio.Event()
        self._server: grpc.aio.Server | None = None
        self._http: web.AppRunner | None = None
        self._stopped = False
        # Loop time by which a draining service should be done (set by `stop`; on_stop
        # hooks give running work what is left of the grace period).
        self.drain_deadline: float | None = None
        pages.configure(settings.page_token_key.get_secret_value())
        self.deadlines = Deadlines.from_settings(settings)
        verifier = spec.verifier(self) if spec.verifier else self._auth_verifier()
        fetch = spec.revocations(self) if spec.revocations else self._auth_revocations()
        self.revocations = RevocationFeed(
            fetch,
            poll_seconds=settings.session_revocation_poll_seconds,
            keep_seconds=2.0 * settings.access_token_ttl_seconds,
        )
        # This service's mesh identity (none without a credential, e.g. auth itself).
        require_identity(spec.name, settings)
        self.identity = (
            ServiceIdentity(spec.name, settings.service_secret(), settings.auth_addr)
            if settings.service_secret()
            else None
        )
        self.runtime = RpcRuntime(
            verifier=verifier,
            revocations=self.revocations,
            service_name=spec.name,
            ready=lambda: self.ready,
        )

    # -- resources ----------------------------------------------------------------------
    @property
    def pool(self) -> Any:
        if self._pool is None:
            raise Unavailable("database is not connected yet")
        return self._pool

    def channel(self, target: str) -> grpc.aio.Channel:
        """A shared channel to another service (created once per target)."""
        chan = self._channels.get(target)
        if chan is None:
            chan = open_channel(target, identity=self.identity)
            self._channels[target] = chan
        return chan

    def storage(self) -> StorageClient:
        """The storage service, for services that move files."""
        return StorageClient(self.channel(self.settings.storage_addr), self.deadlines)

    def spawn(self, coro: Coroutine[Any, Any, Any], *, name: str = "") -> asyncio.Task[Any]:
        """Run a background task that is cancelled when the service stops."""
        task = asyncio.create_task(coro, name=name or None)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task %s failed", task.get_name(), exc_info=task.exception())

    def _auth_verifier(self) -> JwksVerifier:
        from aivera.auth.v1 import auth_pb2, auth_pb2_grpc

        async def fetch() -> list[dict[str, Any]]:
            stub = auth_pb2_grpc.AuthServiceStub(self.channel(self.settings.auth_addr))
            jwks = await stub.GetJwks(auth_pb2.GetJwksRequest(), timeout=self.deadlines.lookup)
            return [
                {
                    k: v
                    for k, v in (
                        ("kid", j.kid),
                        ("kty", j.kty),
                        ("alg", j.alg),
                        ("use", j.use),
                        ("crv", j.crv),
                        ("x", j.x),
                        ("y", j.y),
                    )
                    if v
                }
                for j in jwks.keys
            ]

        return JwksVerifier(
            fetch,
            issuer=self.settings.jwt_issuer,
            audience=self.settings.jwt_audience,
            min_refresh_seconds=self.settings.jwks_min_refresh_seconds,
        )

    def _auth_revocations(self) -> RevocationFetcher:
        from aivera.auth.v1 import auth_pb2, auth_pb2_grpc

        async def fetch(since: dt.datetime | None) -> tuple[list[Revoked], dt.datetime]:
            stub = auth_pb2_grpc.AuthInternalServiceStub(self.channel(self.settings.auth_addr))
            request = auth_pb2.ListSessionRevocationsRequest()
            if since is not None:
                request.since.FromDatetime(since)
            reply = await stub.ListSessionRevocations(request, timeout=self.deadlines.lookup)
            revoked = [
                Revoked(r.user_id, r.epoch, r.revoke_time.ToDatetime(dt.UTC))
                for r in reply.revocations
            ]
            return revoked, reply.next_since.ToDatetime(dt.UTC)

        return fetch

    # -- lifecycle ----------------------------------------------------------------------
    async def wait_ready(self, timeout: float = 60.0) -> None:
        await asyncio.wait_for(self._ready_event.wait(), timeout)

    async def _set_health(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        self.serving = serving
        metrics.set_serving(self.spec.name, serving)
        for name in ["", *self.service_names]:
            await self.health.set(name, status)

    async def _check_dependencies(self) -> bool:
        try:
            if self.spec.schema is not None:
                async with self.pool.acquire(timeout=self.deadlines.lookup) as conn:
                    await conn.fetchval("SELECT 1")
            for check in self.spec.checks:
                if not await check(self):
                    return False
            return True
        except Exception as exc:
            log.warning("dependency check failed: %s", exc)
            return False

    async def _bring_up(self) -> None:
        settings = self.settings
        if self.spec.schema is not None:
            delay = 0.2
            while True:
                try:
                    dsn = self.settings.dsn()  # re-read: tests repoint a starting service
                    if self.spec.migrations is not None:
                        await migrations.migrate(dsn, self.spec.schema, self.spec.migrations)
                    self._pool = await db.create_pool(
                        dsn,
                        schema=self.spec.schema,
                        service=self.spec.name,
                        min_size=settings.db_pool_min,
                        max_size=settings.db_pool_max,
                    )
                    break
                except (TimeoutError, OSError) as exc:
                    log.warning("database not reachable yet (%s); retrying", type(exc).__name__)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
        if self.spec.on_ready is not None:
            await self.spec.on_ready(self)
        _freeze_startup_heap()
        self.spawn(self.revocations.run(), name=f"{self.spec.name}-revocations")
        self.ready = True
        while True:
            serving = await self._check_dependencies()
            if serving != self.serving:
                await self._set_health(serving)
                log.info("health %s", "SERVING" if serving else "NOT_SERVING")
            if serving:
                self._ready_event.set()
            await asyncio.sleep(settings.health_check_interval_seconds)

    async def start(self) -> None:
        server = grpc.aio.server(
            # A server span per call while tracing is on; none (no cost) while it is off.
            interceptors=tracing.server_interceptors(),
            options=[
                ("grpc.max_receive_message_length", 16 * 1024 * 1024),
                ("grpc.max_send_message_length", 16 * 1024 * 1024),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
                *self.spec.grpc_options,
            ],
        )
        for descriptor, servicer in await self.spec.build(self):
            server.add_generic_rpc_handlers((service_handler(descriptor, servicer, self.runtime),))
            self.service_names.append(descriptor.full_name)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            [
                *self.service_names,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ],
            server,
        )
        self.grpc_port = server.add_insecure_port(f"{self.settings.grpc_host}:{self.spec.port}")
        await self._set_health(False)
        # "liveness" answers SERVING while the process is up, whatever its dependencies
        # do: Kubernetes liveness probes use it, so a database outage makes pods unready
        # (NOT_SERVING on "") without restarting them.
        await self.health.set(LIVENESS, health_pb2.HealthCheckResponse.SERVING)
        await server.start()
        self._server = server
        self._http, self.http_port = await start_http(self, self.settings.http_host)
        log.info(
            "%s listening: grpc %s:%d, http %s:%d",
            self.spec.name,
            self.settings.grpc_host,
            self.grpc_port,
            self.settings.http_host,
            self.http_port,
        )
        self.spawn(self._bring_up(), name=f"{self.spec.name}-bring-up")

    async def stop(self, grace: float | None = None) -> None:
        """Drain and stop: NOT_SERVING, refuse new calls, let in-flight ones finish;
        background tasks are cancelled, then `on_stop` runs while channels and the pool
        are still open, then they close."""
        if self._stopped:
            return
        self._stopped = True
        grace = self.settings.shutdown_grace_seconds if grace is None else grace
        self.drain_deadline = asyncio.get_running_loop().time() + grace
        self.ready = False
        with contextlib.suppress(Exception):
            await self.health.enter_graceful_shutdown()
        if self._server is not None:
            await self._server.stop(grace)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.spec.on_stop is not None:
            await self.spec.on_stop(self)
        for chan in self._channels.values():
            await chan.close()
        if self.identity is not None:
            await self.identity.close()
        if self._http is not None:
            await self._http.cleanup()
        if self._pool is not None:
            await self._pool.close()
        log.info("%s stopped", self.spec.name)


async def serve(spec: ServiceSpec, settings: CommonSettings) -> None:
    """Run until SIGTERM or SIGINT, then drain."""
    logs.configure(spec.name, settings.log_level)
    tracing.configure(spec.name)
    app = App(spec, settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await app.start()
    await stop.wait()
    log.info(
        "%s: shutdown signal, draining for up to %.0fs", spec.name, settings.shutdown_grace_seconds
    )
    await app.stop()
    tracing.shutdown()


async def migrate_only(spec: ServiceSpec, settings: CommonSettings) -> None:
    """Apply the service's migrations and exit (the Kubernetes migrations Job)."""
    logs.configure(spec.name, settings.log_level)
    if spec.schema is None or spec.migrations is None:
        log.info("%s has no migrations", spec.name)
        return
    applied = await migrations.migrate(settings.dsn(), spec.schema, spec.migrations)
    log.info("%s: %d migration(s) applied", spec.name, len(applied))
