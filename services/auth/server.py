"""Wiring of the auth service: keys, servicers, schema, migrations, JWKS over HTTP, the
bootstrap admin, and the `rotate-master-key` command."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from aivera.auth.v1 import auth_pb2
from services.auth import store
from services.auth.config import AuthSettings
from services.auth.core import Auth, rotate_master_key
from services.auth.crypto import SecretBox
from services.auth.keys import Keyring
from services.auth.servicer import (
    AuthAdminServiceServicer,
    AuthInternalServiceServicer,
    AuthServiceServicer,
)
from services.auth.tokens import TokenHasher
from services.common import db, logs, migrations
from services.common.server import App, Servicers, ServiceSpec

log = logging.getLogger("aivera.auth")

MIGRATIONS = Path(__file__).parent / "migrations"
PURGE_INTERVAL_SECONDS = 3600.0
PURGE_KEEP_SECONDS = 7 * 24 * 3600.0  # expired refresh tokens kept a week, then deleted


def make_auth(settings: AuthSettings, pool: Callable[[], Any]) -> Auth:
    """The domain object; raises (the service refuses to start) on unusable keys, or on
    missing ones outside dev/test."""
    keyring = Keyring.from_env(
        settings.jwt_private_keys.get_secret_value(),
        env=settings.aivera_env,
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
    )
    box = SecretBox.from_env(
        settings.master_encryption_key.get_secret_value(), env=settings.aivera_env
    )
    hasher = TokenHasher(settings.token_hash_key.get_secret_value())
    if not settings.token_hash_key.get_secret_value() and settings.aivera_env == "prod":
        log.warning("TOKEN_HASH_KEY is not set: token hashes use the built-in key (no pepper)")
    return Auth(settings, pool=pool, keyring=keyring, box=box, hasher=hasher)


def make_spec(settings: AuthSettings) -> ServiceSpec:
    app_holder: dict[str, App] = {}
    auth = make_auth(settings, lambda: app_holder["app"].pool)
    keyring = auth.keyring

    async def build(app: App) -> Servicers:
        app_holder["app"] = app
        services = auth_pb2.DESCRIPTOR.services_by_name
        return [
            (services["AuthService"], AuthServiceServicer(auth)),
            (services["AuthAdminService"], AuthAdminServiceServicer(auth)),
            (services["AuthInternalService"], AuthInternalServiceServicer(auth)),
        ]

    async def on_ready(app: App) -> None:
        app_holder["app"] = app
        await auth.bootstrap_admin()
        app.spawn(_purge_loop(auth), name="auth-purge")

    def http_routes(app: App, web_app: web.Application) -> None:
        async def jwks(_: web.Request) -> web.Response:
            return web.json_response(
                {"keys": keyring.jwks()}, headers={"Cache-Control": "public, max-age=300"}
            )

        web_app.router.add_get("/.well-known/jwks.json", jwks)

    return ServiceSpec(
        name="auth",
        port=settings.auth_port,
        http_port=settings.auth_http_port,
        build=build,
        schema="auth",
        migrations=MIGRATIONS,
        on_ready=on_ready,
        http_routes=http_routes,
        verifier=lambda app: keyring.verifier(
            min_refresh_seconds=settings.jwks_min_refresh_seconds
        ),
    )


async def _purge_loop(auth: Auth) -> None:
    while True:
        try:
            n = await store.purge_expired(auth.pool, keep_seconds=PURGE_KEEP_SECONDS)
            if n:
                log.info("purged %d expired refresh tokens", n)
        except Exception as exc:  # the next round retries
            log.warning("refresh-token purge failed: %s", type(exc).__name__)
        await asyncio.sleep(PURGE_INTERVAL_SECONDS)


async def rotate_master_key_command(settings: AuthSettings) -> None:
    """`python -m services.auth rotate-master-key`: re-encrypt every stored provider key
    under the first MASTER_ENCRYPTION_KEY version. Run with the new version first and the
    old one still listed; afterwards the old entry can be removed."""
    logs.configure("auth", settings.log_level)
    box = SecretBox.from_env(
        settings.master_encryption_key.get_secret_value(), env=settings.aivera_env
    )
    await migrations.migrate(settings.dsn(), "auth", MIGRATIONS)
    pool = await db.create_pool(
        settings.dsn(), schema="auth", service="auth", min_size=1, max_size=2
    )
    try:
        report = await rotate_master_key(pool, box)
    finally:
        await pool.close()
    log.info(
        "master key rotation to %s: %d re-encrypted, %d changed meanwhile, %d unreadable",
        box.current_version,
        report.reencrypted,
        report.skipped_changed,
        report.failed,
    )
    if report.failed:
        raise SystemExit(1)
