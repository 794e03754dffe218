"""Wiring of the auth service: keys, the domain, servicers, JWKS over HTTP, the bootstrap
admin, the refresh-token and sign-in failure purges, and the `rotate-master-key` command.

The wiring pattern (the same in every service; storage's server.py follows it too):

- `make_spec(settings)` returns `Wiring(settings).spec()`. `Wiring` is one object per
  service process; its methods *are* the spec's hooks (`build`, `on_ready`, `on_stop`,
  `http_routes`, `verifier`), so they share state through `self`, never through
  module-level dicts or closures patched later.
- `__init__` builds what needs no `App` and must fail fast on bad configuration (here
  the signing keys, the master key and the token hasher: `make_spec` raises, the
  service refuses to start).
- `build(app)` builds the stores and domain objects from the `App`, once, and returns
  the servicers. A store gets the `App` itself (`Store(app)`) and reads `app.pool` when
  a query runs: the pool connects after `build`, during start-up.
- `on_ready`/`on_stop`/`http_routes` use what `build` made (`self.auth`); tests and
  tools that need the domain use `Wiring(settings)` directly and read the same
  attributes.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from pathlib import Path

from aiohttp import web

from aivera.auth.v1 import auth_pb2
from services.auth.config import AuthSettings
from services.auth.core import Auth, rotate_master_key
from services.auth.crypto import SecretBox
from services.auth.delegation import Delegation, parse_clients
from services.auth.keys import Keyring
from services.auth.servicer import (
    AuthAdminServiceServicer,
    AuthInternalServiceServicer,
    AuthServiceServicer,
    ServiceIdentityServiceServicer,
)
from services.auth.store import Store
from services.auth.tokens import TokenHasher
from services.common import db, logs, migrations
from services.common.db import Connected
from services.common.jwks import JwksVerifier
from services.common.revocations import RevocationFetcher, Revoked
from services.common.server import App, Servicers, ServiceSpec

log = logging.getLogger("aivera.auth")

MIGRATIONS = Path(__file__).parent / "migrations"
SCHEMA = "auth"
PURGE_INTERVAL_SECONDS = 3600.0
PURGE_KEEP_SECONDS = 7 * 24 * 3600.0  # expired refresh tokens kept a week, then deleted


class Wiring:
    """The auth service's parts and the spec hooks that build and run them."""

    def __init__(self, settings: AuthSettings) -> None:
        self.settings = settings
        # Secrets first: unusable keys (or missing ones outside dev/test) raise here.
        self.keyring = Keyring.from_env(
            settings.jwt_private_keys.get_secret_value(),
            env=settings.aivera_env,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
        )
        self.box = SecretBox.from_env(
            settings.master_encryption_key.get_secret_value(), env=settings.aivera_env
        )
        self.hasher = TokenHasher(settings.token_hash_key.get_secret_value())
        parse_clients(settings.auth_service_clients)  # a malformed list refuses to start
        if not settings.token_hash_key.get_secret_value() and settings.aivera_env == "prod":
            log.warning("TOKEN_HASH_KEY is not set: token hashes use the built-in key (no pepper)")
        self._auth: Auth | None = None

    @property
    def auth(self) -> Auth:
        """The domain, once `build` ran."""
        if self._auth is None:
            raise RuntimeError("the auth service is not built yet")
        return self._auth

    # -- spec hooks ---------------------------------------------------------------------
    async def build(self, app: App) -> Servicers:
        self._auth = auth = Auth(
            self.settings,
            store=Store(app),
            keyring=self.keyring,
            box=self.box,
            hasher=self.hasher,
        )
        delegation = Delegation(
            self.settings, store=auth.store, keyring=self.keyring, hasher=self.hasher
        )
        services = auth_pb2.DESCRIPTOR.services_by_name
        return [
            (services["AuthService"], AuthServiceServicer(auth)),
            (services["AuthAdminService"], AuthAdminServiceServicer(auth)),
            (services["AuthInternalService"], AuthInternalServiceServicer(auth, delegation)),
            (services["ServiceIdentityService"], ServiceIdentityServiceServicer(delegation)),
        ]

    async def on_ready(self, app: App) -> None:
        await self.auth.bootstrap_admin()
        app.spawn(self._purge_loop(), name="auth-purge")

    def http_routes(self, app: App, web_app: web.Application) -> None:
        web_app.router.add_get("/.well-known/jwks.json", self._jwks)

    def verifier(self, app: App) -> JwksVerifier:
        """Auth verifies access tokens with its own keys (other services fetch the JWKS)."""
        return self.keyring.verifier(min_refresh_seconds=self.settings.jwks_min_refresh_seconds)

    def revocations(self, app: App) -> RevocationFetcher:
        """Auth reads ended sessions from its own table (the others ask it over gRPC);
        the domain is built after the App, so it is looked up per poll."""

        async def fetch(since: dt.datetime | None) -> tuple[list[Revoked], dt.datetime]:
            return await self.auth.session_revocations(since)

        return fetch

    def spec(self) -> ServiceSpec:
        return ServiceSpec(
            name="auth",
            port=self.settings.auth_port,
            http_port=self.settings.auth_http_port,
            build=self.build,
            schema=SCHEMA,
            migrations=MIGRATIONS,
            on_ready=self.on_ready,
            http_routes=self.http_routes,
            verifier=self.verifier,
            revocations=self.revocations,
        )

    # -- behind the hooks ---------------------------------------------------------------
    async def _jwks(self, _: web.Request) -> web.Response:
        return web.json_response(
            {"keys": self.keyring.jwks()}, headers={"Cache-Control": "public, max-age=300"}
        )

    async def _purge_loop(self) -> None:
        while True:
            try:
                n = await self.auth.store.purge_expired(keep_seconds=PURGE_KEEP_SECONDS)
                if n:
                    log.info("purged %d expired refresh tokens", n)
                await self.auth.store.purge_grants()
                # A revocation matters while a token issued before it can be alive.
                await self.auth.store.purge_session_revocations(
                    keep_seconds=2 * self.settings.access_token_ttl_seconds
                )
            except Exception as exc:  # the next round retries
                log.warning("refresh-token purge failed: %s", type(exc).__name__)
            # Ended sign-in failure windows go every window (at least every minute), so
            # the table holds about one window of failures.
            window = self.settings.exchange_failure_window_seconds
            interval = min(max(window, 60.0), PURGE_INTERVAL_SECONDS)
            for _ in range(max(1, int(PURGE_INTERVAL_SECONDS // interval))):
                try:
                    await self.auth.limiter.purge()
                except Exception as exc:
                    log.warning("sign-in failure purge failed: %s", type(exc).__name__)
                await asyncio.sleep(interval)


def make_spec(settings: AuthSettings) -> ServiceSpec:
    """The auth service's spec; raises on unusable keys (the service refuses to start)."""
    return Wiring(settings).spec()


async def rotate_master_key_command(settings: AuthSettings) -> None:
    """`python -m services.auth rotate-master-key`: re-encrypt every stored provider key
    under the first MASTER_ENCRYPTION_KEY version. Run with the new version first and the
    old one still listed; afterwards the old entry can be removed."""
    logs.configure("auth", settings.log_level)
    box = SecretBox.from_env(
        settings.master_encryption_key.get_secret_value(), env=settings.aivera_env
    )
    await migrations.migrate(settings.dsn(), SCHEMA, MIGRATIONS)
    pool = await db.create_pool(
        settings.dsn(), schema=SCHEMA, service="auth", min_size=1, max_size=2
    )
    try:
        report = await rotate_master_key(Store(Connected(pool)), box)
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
