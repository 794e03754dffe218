"""A real auth service for tests: settings with fresh keys, a running service on a
loopback port, and shortcuts to create users and sign in. Used by the auth tests and by
every test that needs real identities (chat, client, training)."""

from __future__ import annotations

import base64
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg
import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from aivera.auth.v1 import auth_pb2, auth_pb2_grpc
from services.auth.config import AuthSettings
from services.auth.server import make_spec
from services.common.identity import SERVICE_TOKEN_HEADER
from services.common.server import App
from tests.helpers.identity import CLIENTS, secret
from tests.helpers.services import bearer, channel, running


def pem(private: Any) -> str:
    return str(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
    )


def ed25519_pem() -> str:
    return pem(ed25519.Ed25519PrivateKey.generate())


def p256_pem() -> str:
    return pem(ec.generate_private_key(ec.SECP256R1()))


def master_entry(version: str) -> str:
    return f"{version}:" + base64.urlsafe_b64encode(os.urandom(32)).decode()


def make_settings(database_url: str, **overrides: Any) -> AuthSettings:
    values: dict[str, Any] = {
        "aivera_env": "test",
        "database_url": database_url,
        "auth_service_clients": CLIENTS,
        "jwt_private_keys": ed25519_pem(),
        "master_encryption_key": master_entry("v1"),
        "aivera_bootstrap_admin_token": "avs_bootstrap_" + uuid.uuid4().hex,
        "refresh_reuse_grace_seconds": 0.5,
        "exchange_failure_limit": 1000,
    }
    values.update(overrides)
    return AuthSettings(**values)


def variant(settings: AuthSettings, **overrides: Any) -> AuthSettings:
    """The same settings with some changed (validated, so secrets stay SecretStr)."""
    return AuthSettings(**{**settings.model_dump(), **overrides})


async def code_of(call: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value.code()


async def error_of(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value


@dataclass
class Client:
    """Stubs on one channel to a running auth service, plus a few shortcuts."""

    app: App
    settings: AuthSettings
    channel: grpc.aio.Channel

    @property
    def auth(self) -> auth_pb2_grpc.AuthServiceStub:
        return auth_pb2_grpc.AuthServiceStub(self.channel)

    @property
    def admin(self) -> auth_pb2_grpc.AuthAdminServiceStub:
        return auth_pb2_grpc.AuthAdminServiceStub(self.channel)

    @property
    def internal(self) -> auth_pb2_grpc.AuthInternalServiceStub:
        return auth_pb2_grpc.AuthInternalServiceStub(self.channel)

    @property
    def identity(self) -> auth_pb2_grpc.ServiceIdentityServiceStub:
        return auth_pb2_grpc.ServiceIdentityServiceStub(self.channel)

    async def service_md(
        self, service: str = "chat", *, user_token: str | None = None, audience: str = "auth"
    ) -> tuple[tuple[str, str], ...]:
        """Metadata of a call from mesh service `service` (its real service token); with
        `user_token`, acting for that user with a delegation for `audience`."""
        issued = await self.identity.IssueServiceToken(
            auth_pb2.IssueServiceTokenRequest(service=service, secret=secret(service))
        )
        md: tuple[tuple[str, str], ...] = ((SERVICE_TOKEN_HEADER, issued.service_token),)
        if user_token is not None:
            got = await self.internal.ExchangeToken(
                auth_pb2.ExchangeTokenRequest(subject_token=user_token, audience=audience),
                metadata=md,
            )
            md += (("authorization", f"Bearer {got.token}"),)
        return md

    async def exchange(self, static_token: str) -> auth_pb2.ExchangeStaticTokenResponse:
        got: auth_pb2.ExchangeStaticTokenResponse = await self.auth.ExchangeStaticToken(
            auth_pb2.ExchangeStaticTokenRequest(static_token=static_token)
        )
        return got

    async def admin_token(self) -> str:
        token = self.settings.aivera_bootstrap_admin_token.get_secret_value()
        return (await self.exchange(token)).access_token

    async def new_user(
        self, role: auth_pb2.Role.ValueType = auth_pb2.ROLE_USER
    ) -> tuple[auth_pb2.User, str, auth_pb2.ExchangeStaticTokenResponse]:
        """A fresh user: (user, static token, a first session)."""
        created = await self.admin.CreateUser(
            auth_pb2.CreateUserRequest(username="u-" + uuid.uuid4().hex[:12], role=role),
            metadata=bearer(await self.admin_token()),
        )
        session = await self.exchange(created.static_token)
        return created.user, created.static_token, session


@asynccontextmanager
async def serve(settings: AuthSettings) -> AsyncIterator[Client]:
    async with running(make_spec(settings), settings) as app, channel(app) as ch:
        yield Client(app=app, settings=settings, channel=ch)


async def db(database_url: str) -> asyncpg.Connection:
    return await asyncpg.connect(database_url, server_settings={"search_path": "auth"})
