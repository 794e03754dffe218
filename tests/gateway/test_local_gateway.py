"""The local gRPC-web gateway, driven as a browser would: gRPC-web frames over HTTP/1.1,
against a real grpc.aio server answering real aivera method paths."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import grpc
import pytest

from aivera.auth.v1 import auth_pb2
from gateway import grpcweb
from gateway.config import DEV_CORS_ORIGINS, ConfigError, GatewaySettings
from gateway.proxy import Gateway
from gateway.routes import UPSTREAMS, RouteTable
from services.common.access import Access, method_table, routable_services

from .conftest import (
    ORIGIN,
    FakeMesh,
    WebClient,
    WebResult,
    grpc_web_body,
    parse_response,
    wait_for,
)

UNARY = "/aivera.auth.v1.AuthService/GetJwks"  # public, NO_SIDE_EFFECTS
NOT_IDEMPOTENT = "/aivera.auth.v1.AuthService/ExchangeStaticToken"
STREAM = "/aivera.chat.v1.ChatService/SendMessage"  # server-streaming
ADMIN = "/aivera.auth.v1.AuthAdminService/ListUsers"
INTERNAL = "/aivera.auth.v1.AuthInternalService/GetProviderKey"

OK, DEADLINE, NOT_FOUND, RESOURCE, UNIMPLEMENTED, UNAVAILABLE = 0, 4, 5, 8, 12, 14
INVALID_ARGUMENT = 3
ROOT = Path(__file__).resolve().parents[2]


def test_paths_used_here_exist_with_the_access_they_are_tested_for() -> None:
    table = method_table()
    assert table[UNARY].idempotent and not table[NOT_IDEMPOTENT].idempotent
    assert table[STREAM].server_streaming and not table[STREAM].client_streaming
    assert table[ADMIN].access is Access.ADMIN
    assert table[INTERNAL].access is Access.INTERNAL


def test_route_table_comes_from_the_access_options() -> None:
    public, admin = RouteTable.for_listener(admin=False), RouteTable.for_listener(admin=True)
    assert public.services == set(routable_services(admin=False))
    assert admin.services == set(routable_services(admin=True))
    for path, info in method_table().items():
        on_public, on_admin = public.resolve(path), admin.resolve(path)
        # Internal RPCs, and every RPC of an internal service (ServiceIdentityService's
        # public IssueServiceToken too), are never routed.
        if info.access is Access.INTERNAL or info.service not in public.services | admin.services:
            assert on_public is None and on_admin is None, path
        elif info.service in public.services:
            assert on_public is not None and on_admin is None, path
            assert on_public.upstream == info.service.split(".")[1]
        else:
            assert on_admin is not None and on_public is None, path
    for bad in ("/", "/x", "//Method", "/aivera.auth.v1.AuthService/", "/a/b/c"):
        assert public.resolve(bad) is None


async def test_unary_binary(client: WebClient, fake: FakeMesh) -> None:
    async def jwks(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        auth_pb2.GetJwksRequest.FromString(request)
        await context.send_initial_metadata((("x-served-by", "fake-auth"),))
        return auth_pb2.Jwks(keys=[auth_pb2.Jwk(kid="k1", kty="OKP")]).SerializeToString()

    fake.unary[UNARY] = jwks
    result = await client.call(UNARY, auth_pb2.GetJwksRequest().SerializeToString())
    assert result.http_status == 200
    assert result.headers["content-type"] == grpcweb.CONTENT_TYPE_BINARY
    assert result.grpc_status == OK and not result.trailers_only
    assert [auth_pb2.Jwks.FromString(m).keys[0].kid for m in result.messages] == ["k1"]
    assert result.headers["x-served-by"] == "fake-auth"  # initial metadata → headers
    # CORS: the browser may read the status headers and the service's metadata.
    assert result.headers["access-control-allow-origin"] == ORIGIN
    exposed = result.headers["access-control-expose-headers"]
    assert {"grpc-status", "grpc-message", "x-served-by"} <= set(exposed.split(", "))
    assert fake.paths() == [UNARY]


async def test_unary_text_mode(client: WebClient, fake: FakeMesh) -> None:
    result = await client.call(NOT_IDEMPOTENT, b"\x0a\x03abc", text=True)
    assert result.headers["content-type"] == grpcweb.CONTENT_TYPE_TEXT
    assert result.grpc_status == OK
    assert result.messages == [b"\x0a\x03abc"]  # echoed through base64 both ways


async def test_accept_text_gets_a_text_response(client: WebClient, fake: FakeMesh) -> None:
    # As with Envoy: the response mode follows Accept (grpc-web clients in text mode).
    headers = {"Content-Type": grpcweb.CONTENT_TYPE_BINARY, "Accept": grpcweb.CONTENT_TYPE_TEXT}
    async with client.http.post(
        client.url(NOT_IDEMPOTENT), data=grpc_web_body(b"x"), headers=headers
    ) as resp:
        assert resp.headers["Content-Type"] == grpcweb.CONTENT_TYPE_TEXT
        frames = grpcweb.parse_frames(grpcweb.decode_text(await resp.read()))
    assert frames[0] == (0, b"x")


async def test_text_mode_accepts_chunked_base64(client: WebClient, fake: FakeMesh) -> None:
    # A client may send several padded base64 chunks back to back.
    frame = grpcweb.encode_message(b"x")
    body = base64.b64encode(frame[:2]) + base64.b64encode(frame[2:])
    headers = {"Content-Type": grpcweb.CONTENT_TYPE_TEXT}
    async with client.http.post(client.url(NOT_IDEMPOTENT), data=body, headers=headers) as resp:
        raw = await resp.read()
    frames = grpcweb.parse_frames(grpcweb.decode_text(raw))
    assert frames[0] == (0, b"x")


async def test_server_streaming_flushes_each_message(client: WebClient, fake: FakeMesh) -> None:
    gate = asyncio.Event()

    async def chat(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        yield b"phase"
        await gate.wait()  # the next message waits until the client has seen the first
        yield b"token"
        yield b"final"

    fake.streams[STREAM] = chat
    headers = {"Content-Type": grpcweb.CONTENT_TYPE_BINARY, "Origin": ORIGIN}
    async with client.http.post(
        client.url(STREAM), data=grpc_web_body(b"hi"), headers=headers
    ) as resp:
        assert resp.status == 200
        first = await asyncio.wait_for(resp.content.readexactly(5 + len(b"phase")), 5)
        assert grpcweb.parse_frames(first) == [(0, b"phase")]  # arrived while the RPC is open
        gate.set()
        rest = await resp.read()
    frames = grpcweb.parse_frames(rest)
    assert frames[:2] == [(0, b"token"), (0, b"final")]
    assert frames[2][0] == grpcweb.TRAILERS_FLAG
    assert grpcweb.parse_trailers(frames[2][1])["grpc-status"] == "0"


async def test_server_streaming_text_mode(client: WebClient, fake: FakeMesh) -> None:
    result = await client.call(STREAM, b"m", text=True)
    assert result.messages == [b"m", b"m", b"m"] and result.grpc_status == OK


async def test_error_before_any_message_is_trailers_only(client: WebClient, fake: FakeMesh) -> None:
    async def missing(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await context.abort(
            grpc.StatusCode.NOT_FOUND,
            "user not found: é 100%",
            trailing_metadata=(("x-why", "gone"),),
        )
        raise AssertionError

    fake.unary[UNARY] = missing
    result = await client.call(UNARY, b"")
    assert result.http_status == 200 and result.trailers_only and result.messages == []
    assert result.grpc_status == NOT_FOUND
    assert "%" in result.headers["grpc-message"]  # percent-encoded as gRPC requires
    from urllib.parse import unquote

    assert unquote(result.headers["grpc-message"]) == "user not found: é 100%"
    assert result.headers["x-why"] == "gone"


async def test_error_after_messages_is_in_the_trailers_frame(
    client: WebClient, fake: FakeMesh
) -> None:
    async def quota(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        yield b"partial"
        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "quota")

    fake.streams[STREAM] = quota
    for text in (False, True):
        result = await client.call(STREAM, b"", text=text)
        assert result.messages == [b"partial"] and not result.trailers_only
        assert result.grpc_status == RESOURCE and result.trailers["grpc-message"] == "quota"


async def test_metadata_forwarded_and_mesh_credentials_stripped(
    client: WebClient, fake: FakeMesh
) -> None:
    await client.call(
        UNARY,
        b"",
        headers={
            "Authorization": "Bearer user-jwt",
            "X-Request-Id": "rid-123",
            "X-Aivera-Internal-Token": "stolen",
            "X-Aivera-On-Behalf-Of": "victim",
            "X-Aivera-Service-Token": "stolen-service-jwt",
            "X-Trace-Bin": base64.b64encode(b"\x00\x01").decode(),
            "Cookie": "session=1",
            "Accept-Language": "en",
        },
    )
    (received,) = fake.calls
    assert received.metadata["authorization"] == "Bearer user-jwt"
    assert received.metadata["accept-language"] == "en"  # errors in the user's language
    assert received.metadata["x-request-id"] == "rid-123"
    assert received.metadata["x-trace-bin"] == b"\x00\x01"
    assert "x-aivera-internal-token" not in received.metadata
    assert "x-aivera-on-behalf-of" not in received.metadata
    assert "x-aivera-service-token" not in received.metadata
    assert "cookie" not in received.metadata


async def test_request_id_generated_when_absent(client: WebClient, fake: FakeMesh) -> None:
    result = await client.call(UNARY, b"")
    rid = fake.calls[0].metadata["x-request-id"]
    assert isinstance(rid, str) and len(rid) >= 16
    assert result.headers["x-request-id"] == rid


async def test_grpc_timeout_header_is_the_deadline(client: WebClient, fake: FakeMesh) -> None:
    async def slow(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await asyncio.sleep(10)
        return b""

    fake.unary[NOT_IDEMPOTENT] = slow
    started = time.monotonic()
    result = await client.call(NOT_IDEMPOTENT, b"", headers={"grpc-timeout": "300m"})
    assert result.grpc_status == DEADLINE
    assert time.monotonic() - started < 5
    bad = await client.call(NOT_IDEMPOTENT, b"", headers={"grpc-timeout": "soon"})
    assert bad.grpc_status == INVALID_ARGUMENT


async def test_unavailable_retried_for_idempotent_methods_only(
    client: WebClient, fake: FakeMesh
) -> None:
    attempts: dict[str, int] = {}

    async def flaky(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        path = fake.calls[-1].path
        attempts[path] = attempts.get(path, 0) + 1
        if attempts[path] == 1:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "restarting")
        return b"ok"

    fake.unary[UNARY] = flaky
    fake.unary[NOT_IDEMPOTENT] = flaky
    assert (await client.call(UNARY, b"")).messages == [b"ok"]
    assert attempts[UNARY] == 2
    result = await client.call(NOT_IDEMPOTENT, b"")
    assert result.grpc_status == UNAVAILABLE and attempts[NOT_IDEMPOTENT] == 1


@pytest.mark.parametrize(
    ("path", "admin"),
    [
        (INTERNAL, False),
        (INTERNAL, True),
        (ADMIN, False),  # admin services only on the admin listener
        (UNARY, True),  # and only them there
        ("/aivera.nope.v1.NopeService/Do", False),
        ("/not-grpc", False),
    ],
)
async def test_refused_paths(client: WebClient, fake: FakeMesh, path: str, admin: bool) -> None:
    for text in (False, True):
        result = await client.call(path, b"", admin=admin, text=text)
        assert result.http_status == 200 and result.trailers_only
        assert result.grpc_status == UNIMPLEMENTED
    assert fake.calls == []  # nothing reached the mesh


async def test_admin_service_on_admin_listener(client: WebClient, fake: FakeMesh) -> None:
    result = await client.call(ADMIN, b"q", admin=True)
    assert result.grpc_status == OK and result.messages == [b"q"]
    assert fake.paths() == [ADMIN]


async def test_cors_preflight(client: WebClient) -> None:
    wanted = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type,x-grpc-web,authorization,grpc-timeout",
    }
    async with client.http.options(client.url(STREAM), headers={"Origin": ORIGIN, **wanted}) as r:
        assert r.status == 204
        assert r.headers["Access-Control-Allow-Origin"] == ORIGIN
        allowed = {h.strip() for h in r.headers["Access-Control-Allow-Headers"].split(",")}
        assert {"content-type", "x-grpc-web", "authorization", "grpc-timeout"} <= allowed
        assert "POST" in r.headers["Access-Control-Allow-Methods"]
    other = {"Origin": "https://evil.test", **wanted}
    async with client.http.options(client.url(STREAM), headers=other) as r:
        assert r.status == 403
        assert "Access-Control-Allow-Origin" not in r.headers


async def test_other_origin_gets_no_cors_grant(client: WebClient, fake: FakeMesh) -> None:
    result = await client.call(UNARY, b"", headers={"Origin": "https://evil.test"})
    assert result.grpc_status == OK  # the call itself works (non-browser callers) …
    assert "access-control-allow-origin" not in result.headers  # … a browser cannot read it


async def test_bad_requests(client: WebClient, fake: FakeMesh) -> None:
    async with client.http.post(
        client.url(UNARY), data=b"{}", headers={"Content-Type": "application/json"}
    ) as resp:
        assert resp.status == 415
    headers = {"Content-Type": grpcweb.CONTENT_TYPE_BINARY}
    async with client.http.post(client.url(UNARY), data=b"\x00\x00\x00", headers=headers) as resp:
        assert resp.headers["grpc-status"] == str(INVALID_ARGUMENT)
    compressed = b"\x01\x00\x00\x00\x01x"
    async with client.http.post(client.url(UNARY), data=compressed, headers=headers) as resp:
        assert resp.headers["grpc-status"] == str(INVALID_ARGUMENT)
    assert fake.calls == []


async def test_browser_going_away_cancels_the_upstream_stream(
    client: WebClient, fake: FakeMesh
) -> None:
    cancelled = asyncio.Event()

    async def forever(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        try:
            while True:
                yield b"tick"
                await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    fake.streams[STREAM] = forever
    async with aiohttp.ClientSession() as http:
        resp = await http.post(
            client.url(STREAM),
            data=grpc_web_body(b""),
            headers={"Content-Type": grpcweb.CONTENT_TYPE_BINARY},
        )
        await resp.content.readexactly(9)
        resp.close()  # drops the connection mid-stream
    assert await wait_for(cancelled), "the upstream stream was not cancelled"


async def test_upstream_down_is_unavailable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{sock.getsockname()[1]}"  # nothing listens once closed
    gw = Gateway(
        GatewaySettings(
            host="127.0.0.1",
            port=0,
            admin_port=0,
            upstreams=dict.fromkeys(UPSTREAMS, dead),
        )
    )
    await gw.start()
    try:
        async with aiohttp.ClientSession() as http:
            web = WebClient(http, gw.port, gw.admin_port)
            result = await web.call(NOT_IDEMPOTENT, b"")
            assert result.grpc_status == UNAVAILABLE
            async with http.get(web.url("/healthz")) as resp:
                assert resp.status == 200
    finally:
        await gw.stop()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_python_m_gateway_serves_and_stops_on_sigterm() -> None:
    port, admin_port = _free_port(), _free_port()
    env = {
        **os.environ,
        "GATEWAY_HOST": "127.0.0.1",
        "GATEWAY_PORT": str(port),
        "GATEWAY_ADMIN_PORT": str(admin_port),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        up: set[int] = set()
        while time.monotonic() < deadline and len(up) < 2 and proc.poll() is None:
            for p in (port, admin_port):
                with socket.socket() as sock:
                    if sock.connect_ex(("127.0.0.1", p)) == 0:
                        up.add(p)
            time.sleep(0.1)
        assert up == {port, admin_port}, proc.stderr.read() if proc.stderr else ""
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# -- hygiene: malformed bodies answered at once, timeouts, methods, bind address, CORS ----


async def _raw_post(client: WebClient, path: str, body: bytes, *, text: bool = False) -> WebResult:
    ctype = grpcweb.CONTENT_TYPE_TEXT if text else grpcweb.CONTENT_TYPE_BINARY
    headers = {"Content-Type": ctype, "Accept": ctype, "X-Grpc-Web": "1", "Origin": ORIGIN}
    async with client.http.post(client.url(path), data=body, headers=headers) as resp:
        lowered = {k.lower(): v for k, v in resp.headers.items()}
        return parse_response(resp.status, lowered, await resp.read(), text)


@pytest.mark.parametrize(
    ("path", "body", "text"),
    [
        (UNARY, b"", False),  # empty: no request message at all
        (UNARY, b"", True),
        (STREAM, b"", False),
        (UNARY, b"\x00\x00\x00\x00\x0aabc", False),  # a frame promising 10 bytes, 3 sent
        (UNARY, base64.b64encode(b"\x00\x00\x00\x00\x0aabc"), True),
        (UNARY, b"\x00\x00", False),  # a truncated frame header
        (UNARY, grpc_web_body(b"one", b"two"), False),  # two messages to a unary RPC
        (STREAM, grpc_web_body(b"one", b"two"), False),
    ],
)
async def test_empty_or_truncated_body_is_answered_at_once(
    client: WebClient, fake: FakeMesh, path: str, body: bytes, text: bool
) -> None:
    started = time.monotonic()
    result = await asyncio.wait_for(_raw_post(client, path, body, text=text), 5)
    assert time.monotonic() - started < 1
    assert result.trailers_only and result.grpc_status == INVALID_ARGUMENT, result
    assert fake.calls == []


async def test_unary_calls_are_bounded_by_the_gateway_timeout(
    mesh: tuple[FakeMesh, int], fake: FakeMesh
) -> None:
    async def slow(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await asyncio.sleep(5)
        return b""

    fake.unary[NOT_IDEMPOTENT] = slow
    gw = Gateway(
        GatewaySettings(
            port=0,
            admin_port=0,
            upstreams=dict.fromkeys(UPSTREAMS, f"127.0.0.1:{mesh[1]}"),
            request_timeout_seconds=0.5,
        )
    )
    await gw.start()
    try:
        async with aiohttp.ClientSession() as http:
            web = WebClient(http, gw.port, gw.admin_port)
            started = time.monotonic()
            result = await web.call(NOT_IDEMPOTENT, b"")  # no grpc-timeout: the gateway's
            assert result.grpc_status == DEADLINE
            assert time.monotonic() - started < 2
            result = await web.call(NOT_IDEMPOTENT, b"", headers={"grpc-timeout": "60S"})
            assert result.grpc_status == DEADLINE  # a longer grpc-timeout is capped
            assert time.monotonic() - started < 4

            async def trickle() -> AsyncIterator[bytes]:
                yield b"\x00\x00\x00"  # half a frame header, then nothing for a while
                await asyncio.sleep(3)
                yield b"\x00\x00"

            started = time.monotonic()
            headers = {"Content-Type": grpcweb.CONTENT_TYPE_BINARY}
            async with http.post(web.url(UNARY), data=trickle(), headers=headers) as resp:
                assert resp.headers["grpc-status"] == str(DEADLINE)  # a slow body, too
            assert time.monotonic() - started < 2.5
    finally:
        await gw.stop()


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
async def test_only_post_is_forwarded(client: WebClient, fake: FakeMesh, method: str) -> None:
    headers = {"Content-Type": grpcweb.CONTENT_TYPE_BINARY, "Origin": ORIGIN}
    async with client.http.request(
        method, client.url(UNARY), data=grpc_web_body(b"x"), headers=headers
    ) as resp:
        assert resp.status == 405
    assert fake.calls == []


async def test_foreign_preflight_is_refused_at_the_gateway(
    client: WebClient, fake: FakeMesh
) -> None:
    headers = {"Origin": "https://evil.test", "Access-Control-Request-Method": "POST"}
    async with client.http.options(client.url(UNARY), headers=headers) as resp:
        assert resp.status == 403
        assert "Access-Control-Allow-Origin" not in resp.headers
    assert fake.calls == []


def test_binds_loopback_and_production_origins_come_from_configuration() -> None:
    assert GatewaySettings().host == "127.0.0.1"
    assert GatewaySettings.from_env({}).host == "127.0.0.1"  # `make run`, and any default
    assert GatewaySettings().cors_origins == ()
    assert GatewaySettings.from_env({"AIVERA_ENV": "dev"}).cors_origins == DEV_CORS_ORIGINS
    with pytest.raises(ConfigError, match="GATEWAY_CORS_ORIGINS"):
        GatewaySettings.from_env({"AIVERA_ENV": "prod"})
    prod = GatewaySettings.from_env(
        {"AIVERA_ENV": "prod", "GATEWAY_CORS_ORIGINS": "https://app.example.org/"}
    )
    assert prod.cors_origins == ("https://app.example.org",)
    env = {"GATEWAY_REQUEST_TIMEOUT_SECONDS": "7.5"}
    assert GatewaySettings.from_env(env).request_timeout_seconds == 7.5


def test_console_may_reach_the_admin_listener_in_development_only() -> None:
    """Without GATEWAY_CSP_CONNECT_SRC the console's policy lets it call the admin
    listener (administration under `make run`); production lists origins explicitly."""
    assert GatewaySettings.from_env({}).csp_connect_src == ("http://127.0.0.1:8081",)
    moved = {"GATEWAY_ADMIN_HOST": "10.0.0.5", "GATEWAY_ADMIN_PORT": "9181"}
    assert GatewaySettings.from_env(moved).csp_connect_src == ("http://10.0.0.5:9181",)
    prod = {"AIVERA_ENV": "prod", "GATEWAY_CORS_ORIGINS": "https://app.example.org"}
    assert GatewaySettings.from_env(prod).csp_connect_src == ()
    given = {"GATEWAY_CSP_CONNECT_SRC": "https://s3.example.org https://admin.example.org"}
    assert GatewaySettings.from_env(given).csp_connect_src == (
        "https://s3.example.org",
        "https://admin.example.org",
    )
