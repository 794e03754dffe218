"""A fake mesh (one real grpc.aio server answering real aivera method paths with bytes)
behind the real local gateway, and a browser-like gRPC-web client over HTTP/1.1."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import grpc
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from gateway import grpcweb
from gateway.config import GatewaySettings
from gateway.proxy import Gateway
from gateway.routes import UPSTREAMS
from services.common.access import method_table

ORIGIN = "http://app.test"

Unary = Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]
Stream = Callable[[bytes, grpc.aio.ServicerContext], AsyncIterator[bytes]]


@dataclass
class Received:
    path: str
    metadata: dict[str, str | bytes]
    request: bytes


@dataclass
class FakeMesh(grpc.GenericRpcHandler):
    """Answers every aivera RPC with the arity its proto declares; a test sets the
    behaviour of the paths it calls (default: echo the request)."""

    calls: list[Received] = field(default_factory=list)
    unary: dict[str, Unary] = field(default_factory=dict)
    streams: dict[str, Stream] = field(default_factory=dict)

    def reset(self) -> None:
        self.calls.clear()
        self.unary.clear()
        self.streams.clear()

    def paths(self) -> list[str]:
        return [c.path for c in self.calls]

    def service(self, details: Any) -> Any:
        path = details.method.decode() if isinstance(details.method, bytes) else details.method
        info = method_table().get(path)
        if info is None or info.client_streaming:
            return None
        if info.server_streaming:
            return grpc.unary_stream_rpc_method_handler(self._stream(path))
        return grpc.unary_unary_rpc_method_handler(self._unary(path))

    def _record(self, path: str, request: bytes, context: grpc.aio.ServicerContext) -> None:
        md = {k: v for k, v in context.invocation_metadata() or ()}
        self.calls.append(Received(path, md, request))

    def _unary(self, path: str) -> Unary:
        async def handle(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            self._record(path, request, context)
            behaviour = self.unary.get(path)
            return request if behaviour is None else await behaviour(request, context)

        return handle

    def _stream(self, path: str) -> Stream:
        async def handle(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
            self._record(path, request, context)
            behaviour = self.streams.get(path)
            if behaviour is None:
                for _ in range(3):
                    yield request
                return
            async for message in behaviour(request, context):
                yield message

        return handle


@dataclass
class WebResult:
    """A gRPC-web response as a browser client sees it."""

    http_status: int
    headers: dict[str, str]
    messages: list[bytes]
    trailers: dict[str, str]
    trailers_only: bool

    @property
    def grpc_status(self) -> int:
        return int(self.trailers["grpc-status"])


def grpc_web_body(*messages: bytes, text: bool = False) -> bytes:
    body = b"".join(grpcweb.encode_message(m) for m in messages)
    return grpcweb.Mode(text, "").encode(body)


def parse_response(status: int, headers: dict[str, str], body: bytes, text: bool) -> WebResult:
    frames = grpcweb.parse_frames(grpcweb.decode_text(body) if text else body)
    messages = [payload for flag, payload in frames if not flag & grpcweb.TRAILERS_FLAG]
    trailer_blocks = [payload for flag, payload in frames if flag & grpcweb.TRAILERS_FLAG]
    if trailer_blocks:
        return WebResult(
            status, headers, messages, grpcweb.parse_trailers(trailer_blocks[-1]), False
        )
    trailers = {k: v for k, v in headers.items() if k.startswith("grpc-")}
    return WebResult(status, headers, messages, trailers, True)


@dataclass
class WebClient:
    """A browser-like gRPC-web client of a gateway's public and admin listeners."""

    http: aiohttp.ClientSession
    port: int
    admin_port: int
    origin: str = ORIGIN

    def url(self, path: str, *, admin: bool = False) -> str:
        return f"http://127.0.0.1:{self.admin_port if admin else self.port}{path}"

    async def call(
        self,
        path: str,
        *messages: bytes,
        text: bool = False,
        admin: bool = False,
        headers: dict[str, str] | None = None,
    ) -> WebResult:
        ctype = grpcweb.CONTENT_TYPE_TEXT if text else grpcweb.CONTENT_TYPE_BINARY
        sent = {
            "Content-Type": ctype,
            "Accept": ctype,  # what grpc-web clients send; Envoy answers in the Accept mode
            "X-Grpc-Web": "1",
            "Origin": self.origin,
            **(headers or {}),
        }
        async with self.http.post(
            self.url(path, admin=admin), data=grpc_web_body(*messages, text=text), headers=sent
        ) as resp:
            body = await resp.read()
            lowered = {k.lower(): v for k, v in resp.headers.items()}
            return parse_response(resp.status, lowered, body, text)


@pytest_asyncio.fixture(scope="session")
async def mesh() -> AsyncIterator[tuple[FakeMesh, int]]:
    fake = FakeMesh()
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((fake,))
    health_pb2_grpc.add_HealthServicer_to_server(HealthServicer(), server)  # Envoy checks it
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield fake, port
    await server.stop(0)


@pytest_asyncio.fixture(scope="session")
async def gateway(mesh: tuple[FakeMesh, int]) -> AsyncIterator[Gateway]:
    _, port = mesh
    settings = GatewaySettings(
        host="127.0.0.1",
        port=0,
        admin_host="127.0.0.1",
        admin_port=0,
        upstreams={name: f"127.0.0.1:{port}" for name in UPSTREAMS},
        cors_origins=(ORIGIN,),
    )
    gw = Gateway(settings)
    await gw.start()
    yield gw
    await gw.stop()


@pytest_asyncio.fixture(scope="session")
async def client(gateway: Gateway) -> AsyncIterator[WebClient]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
        yield WebClient(http, gateway.port, gateway.admin_port)


@pytest.fixture
def fake(mesh: tuple[FakeMesh, int]) -> FakeMesh:
    mesh[0].reset()
    return mesh[0]


async def wait_for(event: asyncio.Event, timeout: float = 5.0) -> bool:
    try:
        await asyncio.wait_for(event.wait(), timeout)
    except TimeoutError:
        return False
    return True
