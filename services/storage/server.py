"""Wiring of the storage service: backends, the domain, servicers, the HTTP routes for
local signed URLs, and the purge/sync background task."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from aivera.storage.v1 import storage_pb2
from services.common import db, migrations
from services.common.server import App, Check, Servicers, ServiceSpec
from services.storage.backends.base import BackendUnavailable
from services.storage.backends.local import LocalBackend
from services.storage.config import StorageSettings
from services.storage.files import Files
from services.storage.http import routes
from services.storage.servicer import StorageServiceServicer
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


def make_files(settings: StorageSettings, store: Store | None, base_url: str | None) -> Files:
    """The domain with its backends (the S3 client still to be started)."""
    signer = UrlSigner(signing_key(settings))
    public = settings.storage_public_url or base_url or ""
    local = LocalBackend(settings.local_root(), signer, lambda: public)
    s3 = _s3_backend(settings)

    def get_store() -> Store:
        assert store is not None
        return store

    return Files(settings, get_store, local, s3)


@dataclass
class StorageSpec(ServiceSpec):
    """The storage service's spec; `files` is the domain once built (tests use it)."""

    files: Files | None = None


def make_spec(settings: StorageSettings) -> StorageSpec:
    state: dict[str, Files] = {}
    signer = UrlSigner(signing_key(settings))

    def files() -> Files:
        return state["files"]

    async def build(app: App) -> Servicers:
        def base_url() -> str:
            return settings.storage_public_url or f"http://127.0.0.1:{app.http_port}"

        local = LocalBackend(settings.local_root(), signer, base_url)
        s3 = _s3_backend(settings)
        if s3 is not None:
            await s3.start()
        state["files"] = spec.files = Files(settings, lambda: Store(app.pool), local, s3)
        services = storage_pb2.DESCRIPTOR.services_by_name
        return [(services["StorageService"], StorageServiceServicer(state["files"]))]

    async def on_ready(app: App) -> None:
        s3 = files().s3
        if s3 is not None and settings.s3_create_bucket:
            try:
                await s3.ensure_bucket()
            except BackendUnavailable as exc:
                log.warning("object storage unreachable at start-up: %s", exc.message)
        app.spawn(files().background(), name="storage-purge")

    async def on_stop(app: App) -> None:
        s3 = state["files"].s3 if "files" in state else None
        if s3 is not None:
            await s3.close()

    async def s3_up(app: App) -> bool:
        s3 = files().s3
        return s3 is None or await s3.check()

    checks: list[Check] = []
    if settings.storage_backend == "s3" and not settings.storage_fallback_local:
        checks.append(s3_up)

    def http_routes(app: App, web_app: web.Application) -> None:
        routes(files, signer)(web_app)

    spec = StorageSpec(
        name="storage",
        port=settings.storage_port,
        http_port=settings.storage_http_port,
        build=build,
        schema=SCHEMA,
        migrations=MIGRATIONS,
        on_ready=on_ready,
        on_stop=on_stop,
        checks=checks,
        http_routes=http_routes,
    )
    return spec


async def sync_command(settings: StorageSettings) -> None:
    """`python -m services.storage sync`: move fallback files to S3."""
    if settings.storage_backend != "s3":
        print("STORAGE_BACKEND is not s3: nothing to sync")
        return
    await migrations.migrate(settings.dsn(), SCHEMA, MIGRATIONS)
    pool = await db.create_pool(
        settings.dsn(), schema=SCHEMA, service="storage-sync", min_size=1, max_size=2
    )
    files = make_files(settings, Store(pool), None)
    assert files.s3 is not None
    await files.s3.start()
    try:
        moved = await files.sync()
        print(f"synced {moved} file(s) to object storage")
    finally:
        await files.s3.close()
        await pool.close()
