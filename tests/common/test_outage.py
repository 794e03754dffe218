"""A database that is down is UNAVAILABLE with reason DATABASE_UNAVAILABLE — retryable,
never INTERNAL — and the service answers again once it is back. The real Postgres is
stopped and started."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest
from pydantic import SecretStr

from aivera.auth.v1 import auth_pb2, auth_pb2_grpc
from services.common import context
from services.common.config import CommonSettings
from services.common.devpg import LocalPostgres, temporary_cluster
from services.common.server import App, Servicers, ServiceSpec
from tests.helpers.errors import error_info, localized, reason
from tests.helpers.services import bearer, channel, running
from tests.helpers.tokens import Keyring

AUTH = auth_pb2.DESCRIPTOR.services_by_name


class CountingAuth:
    """GetCurrentUser reads the database on every call."""

    def __init__(self, app: App) -> None:
        self.app = app

    async def GetCurrentUser(self, request: Any, ctx: Any) -> auth_pb2.User:
        async with self.app.pool.acquire() as conn:
            n = await conn.fetchval("SELECT count(*) FROM pg_class")
        return auth_pb2.User(id=context.require_user_id(), username=str(n))


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalPostgres]:
    with temporary_cluster("aivera-outage-") as pg:
        yield pg


@pytest.fixture
async def app(cluster: LocalPostgres) -> AsyncIterator[tuple[App, Keyring]]:
    keyring = Keyring()

    async def build(app: App) -> Servicers:
        return [(AUTH["AuthService"], CountingAuth(app))]

    spec = ServiceSpec(name="outage-test", port=0, http_port=0, build=build, schema="outage")
    settings = CommonSettings(
        database_url=SecretStr(cluster.create_database("outage")),
    )
    async with running(spec, settings, verifier=keyring.verifier()) as app:
        yield app, keyring


async def test_database_down_is_unavailable_then_recovers(
    app: tuple[App, Keyring], cluster: LocalPostgres
) -> None:
    svc, keyring = app
    md = bearer(keyring.mint("u1"))
    async with channel(svc) as ch:
        stub = auth_pb2_grpc.AuthServiceStub(ch)
        assert (await stub.GetCurrentUser(auth_pb2.GetCurrentUserRequest(), metadata=md)).id == "u1"
        cluster.stop()
        try:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.GetCurrentUser(auth_pb2.GetCurrentUserRequest(), metadata=md)
            assert info.value.code() is grpc.StatusCode.UNAVAILABLE
            assert reason(info.value) == "DATABASE_UNAVAILABLE"
            assert error_info(info.value).metadata["dependency"] == "postgres"
            assert "База данных" in localized(info.value).message
        finally:
            cluster.start(fast=True)
        reply = await stub.GetCurrentUser(auth_pb2.GetCurrentUserRequest(), metadata=md)
        assert reply.id == "u1"
