"""Client fixtures: the real auth service (short access TTL) on loopback, a private config
directory per test, and the CLI run in-process (typer's CliRunner, in a worker thread so
the services keep running on the test's event loop)."""

from __future__ import annotations

import asyncio
import base64
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from typer.testing import CliRunner, Result

from aivera.auth.v1 import auth_pb2, auth_pb2_grpc
from client.cli import app
from services.auth.config import AuthSettings
from services.auth.server import make_spec as auth_spec
from services.common.server import App
from tests.helpers.identity import CLIENTS
from tests.helpers.services import bearer, channel, running

ACCESS_TTL = 2  # seconds: long enough for one command, short enough to expire in a test


def ed25519_pem() -> str:
    key = ed25519.Ed25519PrivateKey.generate()
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def auth_settings(database_url: str, **overrides: Any) -> AuthSettings:
    values: dict[str, Any] = {
        "aivera_env": "test",
        "database_url": database_url,
        "auth_service_clients": CLIENTS,
        "jwt_private_keys": ed25519_pem(),
        "master_encryption_key": "v1:" + base64.urlsafe_b64encode(os.urandom(32)).decode(),
        "aivera_bootstrap_admin_token": "avs_bootstrap_" + uuid.uuid4().hex,
        "access_token_ttl_seconds": ACCESS_TTL,
        "refresh_reuse_grace_seconds": 0.5,
        "exchange_failure_limit": 1000,
    }
    values.update(overrides)
    return AuthSettings(**values)


@dataclass
class Auth:
    """The running auth service and admin shortcuts."""

    app: App
    settings: AuthSettings
    channel: grpc.aio.Channel

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.app.grpc_port}"

    @property
    def stub(self) -> auth_pb2_grpc.AuthServiceStub:
        return auth_pb2_grpc.AuthServiceStub(self.channel)

    @property
    def admin(self) -> auth_pb2_grpc.AuthAdminServiceStub:
        return auth_pb2_grpc.AuthAdminServiceStub(self.channel)

    @property
    def admin_static(self) -> str:
        return self.settings.aivera_bootstrap_admin_token.get_secret_value()

    async def admin_md(self) -> tuple[tuple[str, str], ...]:
        resp = await self.stub.ExchangeStaticToken(
            auth_pb2.ExchangeStaticTokenRequest(static_token=self.admin_static)
        )
        return bearer(resp.access_token)

    async def new_user(self) -> tuple[auth_pb2.User, str]:
        created = await self.admin.CreateUser(
            auth_pb2.CreateUserRequest(username="u-" + uuid.uuid4().hex[:12]),
            metadata=await self.admin_md(),
        )
        return created.user, created.static_token


@pytest.fixture(scope="module")
async def auth(database_url: str) -> AsyncIterator[Auth]:
    settings = auth_settings(database_url)
    async with running(auth_spec(settings), settings) as app, channel(app) as ch:
        yield Auth(app=app, settings=settings, channel=ch)


@dataclass
class Cli:
    """Runs `aivera` in-process with a private config dir and the mesh's addresses."""

    config_dir: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def credentials(self) -> Path:
        return self.config_dir / "credentials.json"

    async def __call__(self, *args: str, input: str | None = None, **env: str) -> Result:
        runner = CliRunner()
        merged = {"AIVERA_CONFIG_DIR": str(self.config_dir), "COLUMNS": "200", **self.env, **env}
        return await asyncio.to_thread(
            runner.invoke, app, list(args), input=input, env=merged, catch_exceptions=False
        )


@pytest.fixture
def cli(tmp_path: Path, auth: Auth) -> Iterator[Cli]:
    closed = "127.0.0.1:1"  # only auth runs here; never reach a local `make run` mesh
    env = {f"AIVERA_{s}_ADDR": closed for s in ("STORAGE", "RAG", "CHAT", "TRAINING")}
    yield Cli(tmp_path / "cfg", {**env, "AIVERA_AUTH_ADDR": auth.addr, "AIVERA_LANG": ""})
