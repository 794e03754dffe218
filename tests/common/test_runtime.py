"""The shared runtime through real gRPC on loopback: access levels, every bad-token case,
health, reflection, UNIMPLEMENTED, error mapping, relay of identity, and drain."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import jwt
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from pydantic import SecretStr

from aivera.auth.v1 import auth_pb2, auth_pb2_grpc
from aivera.storage.v1 import storage_pb2, storage_pb2_grpc
from services.common import context
from services.common.config import CommonSettings
from services.common.errors import InvalidArgument, not_found
from services.common.server import App, Servicers, ServiceSpec
from tests.helpers.errors import bad_field, error_info, localized, reason
from tests.helpers.services import bearer, channel, running
from tests.helpers.tokens import Keyring, ed25519_key, es256_key

AUTH = auth_pb2.DESCRIPTOR.services_by_name


class FakeAuth:
    """A servicer exercising each access level (what it returns is not under test)."""

    async def GetJwks(self, request: Any, ctx: Any) -> auth_pb2.Jwks:
        return auth_pb2.Jwks()

    async def GetCurrentUser(self, request: Any, ctx: Any) -> auth_pb2.User:
        caller = context.current_caller()
        return auth_pb2.User(id=caller.user_id or "", username=caller.role or "")

    async def SetProviderKey(self, request: Any, ctx: Any) -> auth_pb2.ProviderKeyStatus:
        if len(request.api_key) < 5:
            raise InvalidArgument("api_key is too short", field="api_key")
        raise RuntimeError("boom with a secret AIzaSyD-0123456789abcdefghijklmno")

    async def DeleteProviderKey(self, request: Any, ctx: Any) -> Any:
        raise not_found("provider key", "gemini")


class FakeAdmin:
    async def ListUsers(self, request: Any, ctx: Any) -> auth_pb2.ListUsersResponse:
        return auth_pb2.ListUsersResponse()


class FakeInternal:
    async def GetProviderKey(self, request: Any, ctx: Any) -> auth_pb2.GetProviderKeyResponse:
        caller = context.current_caller()
        return auth_pb2.GetProviderKeyResponse(api_key=f"for:{caller.user_id}")


class SlowDownload:
    """A server stream that takes a while, for drain and cancellation tests."""

    def __init__(self) -> None:
        self.closed = asyncio.Event()

    async def Download(self, request: Any, ctx: Any) -> AsyncIterator[storage_pb2.DownloadResponse]:
        try:
            for i in range(int(request.length or 5)):
                await asyncio.sleep(0.1)
                yield storage_pb2.DownloadResponse(chunk=bytes([i]))
        finally:
            self.closed.set()


def make_spec(download: SlowDownload, schema: str | None = None) -> ServiceSpec:
    async def build(app: App) -> Servicers:
        return [
            (AUTH["AuthService"], FakeAuth()),
            (AUTH["AuthAdminService"], FakeAdmin()),
            (AUTH["AuthInternalService"], FakeInternal()),
            (storage_pb2.DESCRIPTOR.services_by_name["StorageService"], download),
        ]

    return ServiceSpec(name=NAME, port=0, http_port=0, build=build, schema=schema)


# The service's name: delegations for it are addressed to `aivera.svc.<NAME>`.
NAME = "auth"
# DownloadRequest.id is declared a UUID in the contract (validated before the handler).
FILE_ID = str(uuid.uuid4())


@pytest.fixture
def keyring() -> Keyring:
    return Keyring()


@pytest.fixture
async def svc(keyring: Keyring, database_url: str) -> AsyncIterator[tuple[App, SlowDownload]]:
    download = SlowDownload()
    settings = CommonSettings(
        database_url=database_url,  # type: ignore[arg-type]
    )
    async with running(make_spec(download, "rt"), settings, verifier=keyring.verifier()) as app:
        yield app, download


async def code_of(call: Any) -> grpc.StatusCode:
    return (await error_of(call)).code()


async def error_of(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value


async def test_public_rpc_needs_no_token(svc: tuple[App, SlowDownload]) -> None:
    async with channel(svc[0]) as ch:
        await auth_pb2_grpc.AuthServiceStub(ch).GetJwks(auth_pb2.GetJwksRequest())


async def test_user_rpc_with_valid_tokens_of_both_algorithms(
    svc: tuple[App, SlowDownload], keyring: Keyring
) -> None:
    keyring.keys.append(es256_key())
    uid = str(uuid.uuid4())
    async with channel(svc[0]) as ch:
        stub = auth_pb2_grpc.AuthServiceStub(ch)
        for key in keyring.keys:
            user = await stub.GetCurrentUser(
                auth_pb2.GetCurrentUserRequest(), metadata=bearer(keyring.mint(uid, key=key))
            )
            assert user.id == uid and user.username == "user"


def _forge(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).decode().rstrip("=")

    head = b64(json.dumps(header).encode())
    body = b64(json.dumps(claims).encode())
    return f"{head}.{body}.{b64(signature)}"


async def test_bad_tokens_are_unauthenticated(
    svc: tuple[App, SlowDownload], keyring: Keyring
) -> None:
    good = keyring.mint()
    claims = jwt.decode(good, options={"verify_signature": False})
    head, _body, sig = good.split(".")
    tampered_claims = dict(claims, role="admin")
    tampered = ".".join(
        [
            head,
            base64.urlsafe_b64encode(json.dumps(tampered_claims).encode()).decode().rstrip("="),
            sig,
        ]
    )
    public_jwk = keyring.keys[0].jwk()
    hs256_with_public_key = jwt.encode(
        claims, public_jwk["x"], algorithm="HS256", headers={"kid": keyring.keys[0].kid}
    )
    cases = {
        "missing": None,
        "not bearer": "Basic abc",
        "garbage": "Bearer not-a-jwt",
        "expired": "Bearer " + keyring.mint(ttl=-10),
        "tampered": "Bearer " + tampered,
        "wrong key": "Bearer " + keyring.mint(key=ed25519_key(kid=keyring.keys[0].kid)),
        "unknown kid": "Bearer " + keyring.mint(key=ed25519_key(kid="nobody")),
        "alg none": "Bearer " + _forge({"alg": "none", "kid": keyring.keys[0].kid}, claims),
        "hs256": "Bearer " + hs256_with_public_key,
        "wrong audience": "Bearer " + keyring.mint(aud="someone-else"),
        "wrong issuer": "Bearer " + keyring.mint(iss="evil"),
        "no kid": "Bearer " + jwt.encode(claims, keyring.keys[0].private, algorithm="EdDSA"),
    }
    async with channel(svc[0]) as ch:
        stub = auth_pb2_grpc.AuthServiceStub(ch)
        for name, header in cases.items():
            md = () if header is None else (("authorization", header),)
            code = await code_of(stub.GetCurrentUser(auth_pb2.GetCurrentUserRequest(), metadata=md))
            assert code is grpc.StatusCode.UNAUTHENTICATED, name


async def test_key_rotation_refetches_and_removed_key_stops(
    svc: tuple[App, SlowDownload], keyring: Keyring
) -> None:
    old = keyring.keys[0]
    old_token = keyring.mint(key=old)
    new = ed25519_key(kid="rotated")
    keyring.keys.insert(0, new)  # new current key, old still published
    async with channel(svc[0]) as ch:
        stub = auth_pb2_grpc.AuthServiceStub(ch)
        req = auth_pb2.GetCurrentUserRequest()
        await stub.GetCurrentUser(req, metadata=bearer(keyring.mint(key=new)))  # new kid: refetch
        await stub.GetCurrentUser(req, metadata=bearer(old_token))  # previous key still valid
        keyring.keys.remove(old)
        await svc[0].runtime.verifier.refresh(force=True)  # type: ignore[union-attr]
        code = await code_of(stub.GetCurrentUser(req, metadata=bearer(old_token)))
        assert code is grpc.StatusCode.UNAUTHENTICATED


async def test_admin_rpc_needs_admin_role(svc: tuple[App, SlowDownload], keyring: Keyring) -> None:
    async with channel(svc[0]) as ch:
        stub = auth_pb2_grpc.AuthAdminServiceStub(ch)
        req = auth_pb2.ListUsersRequest()
        code = await code_of(stub.ListUsers(req, metadata=bearer(keyring.mint(role="user"))))
        assert code is grpc.StatusCode.PERMISSION_DENIED
        await stub.ListUsers(req, metadata=bearer(keyring.mint(role="admin")))
        assert await code_of(stub.ListUsers(req)) is grpc.StatusCode.UNAUTHENTICATED


async def test_internal_rpc_needs_a_service_token_and_a_declared_caller(
    svc: tuple[App, SlowDownload], keyring: Keyring
) -> None:
    async with channel(svc[0]) as ch:
        stub = auth_pb2_grpc.AuthInternalServiceStub(ch)
        users = auth_pb2_grpc.AuthServiceStub(ch)
        me = auth_pb2.GetCurrentUserRequest()
        req = auth_pb2.GetProviderKeyRequest()
        user_md = bearer(keyring.mint(role="admin"))
        assert await code_of(stub.GetProviderKey(req, metadata=user_md)) is (
            grpc.StatusCode.PERMISSION_DENIED
        )
        assert await code_of(stub.GetProviderKey(req)) is grpc.StatusCode.UNAUTHENTICATED
        forged = Keyring().service_md("chat", "u7", audience=NAME)  # keys auth never had
        err = await error_of(stub.GetProviderKey(req, metadata=forged))
        assert err.code() is grpc.StatusCode.UNAUTHENTICATED
        assert reason(err) == "BAD_SERVICE_CREDENTIAL"
        # The declared caller (chat) with a delegation for the user gets through.
        ok = keyring.service_md("chat", "u7", audience=NAME)
        assert (await stub.GetProviderKey(req, metadata=ok)).api_key == "for:u7"
        assert (await users.GetCurrentUser(me, metadata=ok)).id == "u7"
        # Another service, delegation or not, is not a declared caller.
        err = await error_of(
            stub.GetProviderKey(req, metadata=keyring.service_md("rag", "u7", audience=NAME))
        )
        assert err.code() is grpc.StatusCode.PERMISSION_DENIED
        assert reason(err) == "CALLER_NOT_ALLOWED"
        # A service naming no user cannot call a user RPC.
        err = await error_of(
            users.GetCurrentUser(me, metadata=keyring.service_md("chat", audience=NAME))
        )
        assert err.code() is grpc.StatusCode.UNAUTHENTICATED
        assert reason(err) == "DELEGATION_REQUIRED"
        # A delegation for another audience, issued to another service, or expired: refused.
        chat = keyring.service_md("chat", audience=NAME)[0]
        for name, delegation in {
            "other audience": keyring.mint_delegation("u7", audience="storage", actor="chat"),
            "other actor": keyring.mint_delegation("u7", audience=NAME, actor="rag"),
            "expired": keyring.mint_delegation("u7", audience=NAME, actor="chat", ttl=-60),
            "an access token": keyring.mint("u7"),
        }.items():
            md = (chat, ("authorization", f"Bearer {delegation}"))
            err = await error_of(users.GetCurrentUser(me, metadata=md))
            assert err.code() is grpc.StatusCode.UNAUTHENTICATED, name
            assert reason(err) == "DELEGATION_INVALID", name
        # A user's delegation is no admin's.
        admin_stub = auth_pb2_grpc.AuthAdminServiceStub(ch)
        assert await code_of(admin_stub.ListUsers(auth_pb2.ListUsersRequest(), metadata=ok)) is (
            grpc.StatusCode.PERMISSION_DENIED
        )


async def test_errors_map_to_codes_with_field_details_and_no_secrets(
    svc: tuple[App, SlowDownload], keyring: Keyring
) -> None:
    md = bearer(keyring.mint())
    async with channel(svc[0]) as ch:
        stub = auth_pb2_grpc.AuthServiceStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.SetProviderKey(auth_pb2.SetProviderKeyRequest(api_key="x"), metadata=md)
        assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert bad_field(info.value) == "api_key"
        # Every error carries the reason a program branches on, with the service as
        # domain, and the user's text in Russian unless the caller asked for English.
        info_detail = error_info(info.value)
        assert (info_detail.reason, info_detail.domain) == ("INVALID_ARGUMENT", "auth.aivera.dev")
        assert info_detail.metadata["field"] == "api_key"
        assert localized(info.value).locale == "ru-RU"
        assert "api_key" in localized(info.value).message
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.SetProviderKey(
                auth_pb2.SetProviderKeyRequest(api_key="x"),
                metadata=(*md, ("accept-language", "en-GB,en;q=0.9")),
            )
        assert localized(info.value).locale == "en-US"
        assert localized(info.value).message.startswith("Invalid request")

        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.SetProviderKey(
                auth_pb2.SetProviderKeyRequest(api_key="long enough"), metadata=md
            )
        assert info.value.code() is grpc.StatusCode.INTERNAL
        assert "AIza" not in (info.value.details() or "")
        assert "request id" in (info.value.details() or "")
        assert reason(info.value) == "INTERNAL"
        assert "AIza" not in localized(info.value).message

        code = await code_of(
            stub.DeleteProviderKey(auth_pb2.DeleteProviderKeyRequest(), metadata=md)
        )
        assert code is grpc.StatusCode.NOT_FOUND
        code = await code_of(stub.Logout(auth_pb2.LogoutRequest(), metadata=md))
        assert code is grpc.StatusCode.UNIMPLEMENTED


async def test_health_serving_and_reflection_lists_services(
    svc: tuple[App, SlowDownload],
) -> None:
    async with channel(svc[0]) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        resp = await health.Check(health_pb2.HealthCheckRequest())
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
        resp = await health.Check(
            health_pb2.HealthCheckRequest(service="aivera.auth.v1.AuthService")
        )
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
        refl = reflection_pb2_grpc.ServerReflectionStub(ch)

        async def requests() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
            yield reflection_pb2.ServerReflectionRequest(list_services="")

        async for answer in refl.ServerReflectionInfo(requests()):
            names = {s.name for s in answer.list_services_response.service}
            assert {
                "aivera.auth.v1.AuthService",
                "aivera.storage.v1.StorageService",
                "grpc.health.v1.Health",
            } <= names
            break


async def test_health_not_serving_until_database_answers(keyring: Keyring, pg: Any) -> None:
    # Point at a port where nothing listens yet: the service is up but NOT_SERVING.
    from services.common.devpg import free_port

    port = free_port()
    dsn = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    settings = CommonSettings(
        database_url=dsn,  # type: ignore[arg-type]
    )
    async with (
        running(
            make_spec(SlowDownload(), "late"), settings, verifier=keyring.verifier(), wait=False
        ) as app,
        channel(app) as ch,
    ):
        health = health_pb2_grpc.HealthStub(ch)
        resp = await health.Check(health_pb2.HealthCheckRequest())
        assert resp.status == health_pb2.HealthCheckResponse.NOT_SERVING
        code = await code_of(auth_pb2_grpc.AuthServiceStub(ch).GetJwks(auth_pb2.GetJwksRequest()))
        assert code is grpc.StatusCode.UNAVAILABLE
        # Now "start the database": move the app to the real cluster.
        app.settings = app.settings.model_copy(update={"database_url": SecretStr(pg.dsn())})
        await app.wait_ready(30)
        resp = await health.Check(health_pb2.HealthCheckRequest())
        assert resp.status == health_pb2.HealthCheckResponse.SERVING


async def test_sigterm_drain_lets_a_stream_finish(keyring: Keyring, database_url: str) -> None:
    download = SlowDownload()
    settings = CommonSettings(
        database_url=database_url,  # type: ignore[arg-type]
    )
    async with running(make_spec(download, "drain"), settings, verifier=keyring.verifier()) as app:
        async with channel(app) as ch:
            stub = storage_pb2_grpc.StorageServiceStub(ch)
            stream = stub.Download(
                storage_pb2.DownloadRequest(id=FILE_ID, length=8), metadata=bearer(keyring.mint())
            )
            first = await stream.read()
            assert first.chunk == b"\x00"
            stopping = asyncio.create_task(app.stop(grace=10))
            await asyncio.sleep(0.05)
            # New calls are refused while draining...
            new_ch = grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}")
            with pytest.raises(grpc.aio.AioRpcError):
                await auth_pb2_grpc.AuthServiceStub(new_ch).GetJwks(
                    auth_pb2.GetJwksRequest(), timeout=2
                )
            await new_ch.close()
            # ...while the stream in flight delivers everything.
            rest = []
            while (msg := await stream.read()) is not grpc.aio.EOF:
                rest.append(msg.chunk)
            assert len(rest) == 7
            assert await stream.code() is grpc.StatusCode.OK
            await stopping


async def test_client_cancel_closes_the_handler_generator(
    svc: tuple[App, SlowDownload], keyring: Keyring
) -> None:
    app, download = svc
    async with channel(app) as ch:
        stub = storage_pb2_grpc.StorageServiceStub(ch)
        stream = stub.Download(
            storage_pb2.DownloadRequest(id=FILE_ID, length=100), metadata=bearer(keyring.mint())
        )
        await stream.read()
        stream.cancel()
    await asyncio.wait_for(download.closed.wait(), 5)


async def test_deadline_and_identity_are_relayed(
    svc: tuple[App, SlowDownload], keyring: Keyring
) -> None:
    from services.common.channels import outgoing_metadata

    uid = str(uuid.uuid4())
    # Without a mesh identity (this test's service has no credential) a user's call relays
    # the user's own token, and background work without a grant has nothing to send.
    # With one (delegations from auth), the meshes of tests/e2e, tests/chat and tests/client.
    context.bind(
        caller=context.Caller(user_id=uid, role="user", token="tok"),
        request_id="rid-1",
        method="/x/y",
        timeout=5,
    )
    md = dict(await outgoing_metadata("/aivera.auth.v1.AuthService/GetCurrentUser", None))
    assert md == {"x-request-id": "rid-1", "authorization": "Bearer tok"}
    with context.acting_for(uid, grant=None):
        md = dict(await outgoing_metadata("/aivera.storage.v1.StorageService/GetFile", None))
        assert "authorization" not in md
    remaining = context.deadline_remaining()
    assert remaining is not None and 0 < remaining <= 5
    context.bind(caller=context.ANONYMOUS, request_id="", method="", timeout=None)
    # And through a real channel: the callee sees the caller's user.
    chan = svc[0].channel(f"127.0.0.1:{svc[0].grpc_port}")
    context.bind(
        caller=context.Caller(user_id=uid, role="user", token=keyring.mint(uid)),
        request_id="rid-2",
        method="/x/y",
        timeout=3,
    )
    start = time.monotonic()
    user = await auth_pb2_grpc.AuthServiceStub(chan).GetCurrentUser(
        auth_pb2.GetCurrentUserRequest()
    )
    assert user.id == uid and time.monotonic() - start < 3
    # Streaming calls are relayed too (grpc.aio files interceptors per call kind).
    chunks = [
        m.chunk
        async for m in storage_pb2_grpc.StorageServiceStub(chan).Download(
            storage_pb2.DownloadRequest(id=FILE_ID, length=2)
        )
    ]
    assert chunks == [b"\x00", b"\x01"]
    context.bind(caller=context.ANONYMOUS, request_id="", method="", timeout=None)


async def test_metrics_and_json_logs_carry_method_code_and_request_id(
    svc: tuple[App, SlowDownload], keyring: Keyring, capsys: pytest.CaptureFixture[str]
) -> None:
    import aiohttp

    from services.common import logs

    app = svc[0]
    logs.configure("runtime-test", "INFO")
    md = (*bearer(keyring.mint()), ("x-request-id", "req-metrics-1"))
    async with channel(app) as ch:
        stub = auth_pb2_grpc.AuthServiceStub(ch)
        await stub.GetCurrentUser(auth_pb2.GetCurrentUserRequest(), metadata=md)
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.DeleteProviderKey(auth_pb2.DeleteProviderKeyRequest(), metadata=md)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{app.http_port}/metrics") as resp:
            text = await resp.text()
        async with http.get(f"http://127.0.0.1:{app.http_port}/healthz") as resp:
            assert resp.status == 200
    assert (
        'grpc_server_handled_total{grpc_code="NOT_FOUND",grpc_method="DeleteProviderKey",'
        'grpc_service="aivera.auth.v1.AuthService"}' in text
    )
    assert 'grpc_server_handling_seconds_count{grpc_method="GetCurrentUser"' in text
    lines = [
        json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")
    ]
    mine = [line for line in lines if line.get("request_id") == "req-metrics-1"]
    assert {line.get("code") for line in mine} >= {"OK", "NOT_FOUND"}
    assert all(line["service"] == "runtime-test" and "ms" in line for line in mine)
