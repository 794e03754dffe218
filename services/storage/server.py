"""Wiring of the storage service: backends, the domain, servicers, the HTTP routes for
local signed URLs, the purge/sync background task, and the `sync` command.

The same wiring pattern as every service (auth's server.py describes it in full):
`make_spec(settings)` returns `Wiring(settings).spec()`; `Wiring`'s methods are the spec's
hooks and share what they build through `self`. `__init__` builds what needs no `App`
and fails fast on bad configuration (the URL signing key); `build(app)` builds the store
(`Store(app)`, which reads `app.pool` per query) and the domain `Files` with its backends,
once, and returns the servicers; `on_ready`, `on_stop`, the S3 health check and
`http_routes` use `self.files`. Tests use `Wiring(settings)` to reach `files`.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from aivera.storage.v1 import storage_pb2
from services.common import db, migrations
from services.common.db import Connected
from services.common.server import App, Check, Servicers, ServiceSpec
from services.storage.backends.base import BackendUnavailable
from services.storage.backends.local import LocalBackend
from services.storage.config import StorageSettings
from services.storage.files import Files
from services.storage.http import routes
from services.storage.memory import release
from services.storage.servicer import StorageInternalServiceServicer, StorageServiceServicer
from services.storage.signing import UrlSigner, signing_key
from services.storage.store import Store

if TYPE_CHECKING:
    from services.storage.backends.s3 import S3Backend

MIGRATIONS = Path(__file__).parent / "migrations"
SCHEMA = "storage"

log = logging.getLogger("aivera.storage")


def _s3_backend(settings: StorageSettings) -> S3Backend | None:
    if settings.storage_backend != "s3":
        return None
    from services.storage.backends.s3 import S3Backend  # aioboto3 only when needed

    return S3Backend(settings)


def make_files(
    settings: StorageSettings, store: Store, signer: UrlSigner, base_url: Callable[[], str]
) -> Files:
    """The domain with its backends (the S3 client still to be started). `base_url` is
    read when a local URL is signed: the HTTP port is known only once it listens."""
    local = LocalBackend(settings.local_root(), signer, base_url)
    return Files(settings, store, local, _s3_backend(settings))


class Wiring:
    """The storage service's parts and the spec hooks that build and run them."""

    def __init__(self, settings: StorageSettings) -> None:
        self.settings = settings
        self.signer = UrlSigner(signing_key(settings))  # prod without a key raises here
        self._app: App | None = None
        self._files: Files | None = None

    @property
    def files(self) -> Files:
        """The domain, once `build` ran."""
        if self._files is None:
            raise RuntimeError("the storage service is not built yet")
        return self._files

    def public_url(self) -> str:
        """Base of the local backend's signed URLs."""
        port = self._app.http_port if self._app is not None else self.settings.storage_http_port
        return self.settings.storage_public_url or f"http://127.0.0.1:{port}"

    # -- spec hooks ---------------------------------------------------------------------
    async def build(self, app: App) -> Servicers:
        self._app = app
        self._files = files = make_files(self.settings, Store(app), self.signer, self.public_url)
        if files.s3 is not None:
            await files.s3.start()
        services = storage_pb2.DESCRIPTOR.services_by_name
        return [
            (services["StorageService"], StorageServiceServicer(files)),
            (services["StorageInternalService"], StorageInternalServiceServicer(files)),
        ]

    async def on_ready(self, app: App) -> None:
        s3 = self.files.s3
        if s3 is not None and self.settings.s3_create_bucket:
            try:
                await s3.ensure_bucket()
            except BackendUnavailable as exc:
                log.warning("object storage unreachable at start-up: %s", exc.message)
        app.spawn(self.files.background(), name="storage-purge")
        # Started: the garbage of imports and client set-up goes back to the system.
        gc.collect()
        release()

    async def on_stop(self, app: App) -> None:
        s3 = self._files.s3 if self._files is not None else None
        if s3 is not None:
            await s3.close()

    async def s3_up(self, app: App) -> bool:
        s3 = self.files.s3
        return s3 is None or await s3.check()

    def http_routes(self, app: App, web_app: web.Application) -> None:
        routes(self.files, self.signer)(web_app)

    def spec(self) -> ServiceSpec:
        checks: list[Check] = []
        if self.settings.storage_backend == "s3" and not self.settings.storage_fallback_local:
            checks.append(self.s3_up)
        return ServiceSpec(
            name="storage",
            port=self.settings.storage_port,
            http_port=self.settings.storage_http_port,
            build=self.build,
            schema=SCHEMA,
            migrations=MIGRATIONS,
            on_ready=self.on_ready,
            on_stop=self.on_stop,
            checks=checks,
            http_routes=self.http_routes,
            grpc_options=grpc_options(self.settings),
        )


def grpc_options(settings: StorageSettings) -> list[tuple[str, Any]]:
    """Flow control of the storage port: a fixed per-stream HTTP/2 window instead of
    one grown by BDP probing. An upload whose bytes go out slower than they come in
    (S3) then holds at most this window in gRPC's buffers, not tens of MiB."""
    return [
        ("grpc.http2.bdp_probe", 0),
        ("grpc.http2.lookahead_bytes", settings.storage_grpc_stream_window_bytes),
    ]


def make_spec(settings: StorageSettings) -> ServiceSpec:
    return Wiring(settings).spec()


async def sync_command(settings: StorageSettings) -> None:
    """`python -m services.storage sync`: move fallback files to S3."""
    if settings.storage_backend != "s3":
        print("STORAGE_BACKEND is not s3: nothing to sync")
        return
    await migrations.migrate(settings.dsn(), SCHEMA, MIGRATIONS)
    pool = await db.create_pool(
        settings.dsn(), schema=SCHEMA, service="storage-sync", min_size=1, max_size=2
    )
    signer = UrlSigner(signing_key(settings))
    files = make_files(settings, Store(Connected(pool)), signer, lambda: "")  # signs no URL
    assert files.s3 is not None
    await files.s3.start()
    try:
        moved = await files.sync()
        print(f"synced {moved} file(s) to object storage")
    finally:
        await files.s3.close()
        await pool.close()
