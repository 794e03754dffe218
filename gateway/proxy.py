"""The local gRPC-web gateway: browsers speak gRPC-web over HTTP/1.1, the services gRPC.

Generic: a call is forwarded by its path as raw bytes over a `grpc.aio` channel with
identity serializers, so no RPC needs code here. Every call goes out as a
stream-stream call (on the wire all four RPC kinds look alike), carrying the request
body's messages; each response message is written and flushed as its own gRPC-web frame
as soon as it arrives, then a trailers frame (0x80) carries `grpc-status`. A call that
fails before its first message is answered trailers-only (status in the HTTP headers).

Per request: the `grpc-timeout` header becomes the call's deadline, and a unary call lasts
at most `GATEWAY_REQUEST_TIMEOUT_SECONDS` (as Envoy's route timeout), its body read
included. A body without exactly the one request message a unary or server-streaming
call takes (empty, truncated, two messages) is answered INVALID_ARGUMENT at once,
without calling the service. Request headers are
forwarded as metadata (authorization, x-request-id — one is generated when absent — and
any custom header) except transport headers and the mesh credentials
(`x-aivera-service-token`, and the retired `x-aivera-internal-token` and
`x-aivera-on-behalf-of`), which only the mesh may set.
UNAVAILABLE is retried, by gRPC's own retry machinery, for idempotent RPCs only (the
channel's service config from `services.common.channels`). If the browser goes away the
upstream call is cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
import uuid
from collections.abc import Iterable

import grpc
from aiohttp import web

from gateway import grpcweb
from gateway.config import MAX_MESSAGE_BYTES, REQUEST_TIMEOUT_SECONDS, GatewaySettings
from gateway.cors import CorsPolicy
from gateway.routes import Route, RouteTable
from gateway.static import FilesProxy, StaticSite, add_routes, content_security_policy
from services.common import tracing
from services.common.channels import service_config
from services.common.internal import HEADERS_STRIPPED_AT_EDGE, REQUEST_ID_HEADER

log = logging.getLogger("aivera.gateway")

# Refusal of a path this listener does not route (internal services; admin services on
# the public listener; unknown services): the status Envoy gives an unrouted gRPC call.
REFUSED = grpc.StatusCode.UNIMPLEMENTED


def _code_number(code: grpc.StatusCode) -> int:
    value: tuple[int, str] = code.value
    return value[0]


class Upstreams:
    """One channel per upstream service, opened on first use."""

    def __init__(self, addresses: dict[str, str]) -> None:
        self._addresses = dict(addresses)
        self._channels: dict[str, grpc.aio.Channel] = {}

    def channel(self, upstream: str) -> grpc.aio.Channel:
        chan = self._channels.get(upstream)
        if chan is None:
            chan = grpc.aio.insecure_channel(
                self._addresses[upstream],
                options=[
                    ("grpc.enable_retries", 1),
                    ("grpc.service_config", service_config()),
                    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                    ("grpc.keepalive_time_ms", 30_000),
                    ("grpc.keepalive_timeout_ms", 10_000),
                ],
            )
            self._channels[upstream] = chan
        return chan

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        for chan in channels:
            await chan.close()


class GrpcWebHandler:
    """The request handler of one listener (public or admin)."""

    def __init__(
        self,
        table: RouteTable,
        upstreams: Upstreams,
        request_timeout: float = REQUEST_TIMEOUT_SECONDS,
    ) -> None:
        self.table = table
        self.upstreams = upstreams
        self.request_timeout = request_timeout

    async def handle(self, request: web.Request) -> web.StreamResponse:
        request_mode = grpcweb.mode_for(request.headers.get("Content-Type"))
        if request_mode is None:
            return web.Response(
                status=415,
                text="this gateway speaks gRPC-web (application/grpc-web[-text][+proto]); "
                "native gRPC clients connect to the services directly\n",
            )
        mode = grpcweb.response_mode(request_mode, request.headers.get("Accept"))
        route = self.table.resolve(request.path)
        if route is None:
            return self._trailers_only(
                mode, _code_number(REFUSED), f"{request.path} is not routed by this gateway"
            )
        unary = route.method is not None and not (
            route.method.server_streaming or route.method.client_streaming
        )
        try:
            timeout = grpcweb.parse_timeout(request.headers.get("grpc-timeout"))
            read_for = self.request_timeout if timeout is None else timeout
            try:
                raw = await asyncio.wait_for(request.read(), min(read_for, self.request_timeout))
            except TimeoutError:
                return self._trailers_only(
                    mode,
                    _code_number(grpc.StatusCode.DEADLINE_EXCEEDED),
                    "the request body did not arrive in time",
                )
            messages = grpcweb.request_messages(request_mode.decode(raw))
            single = route.method is None or not route.method.client_streaming
            if not messages:
                raise grpcweb.FrameError("empty request body: the call needs a request message")
            if single and len(messages) != 1:
                raise grpcweb.FrameError(
                    f"{route.path} takes one request message, the body has {len(messages)}"
                )
        except grpcweb.FrameError as exc:
            return self._trailers_only(
                mode, _code_number(grpc.StatusCode.INVALID_ARGUMENT), str(exc)
            )
        if unary:
            timeout = (
                self.request_timeout if timeout is None else min(timeout, self.request_timeout)
            )
        metadata = grpcweb.request_metadata(request.headers.items(), HEADERS_STRIPPED_AT_EDGE)
        request_id = next((str(v) for k, v in metadata if k == REQUEST_ID_HEADER), "")
        if not request_id:
            request_id = uuid.uuid4().hex
            metadata.append((REQUEST_ID_HEADER, request_id))
        if request.remote:
            metadata.append(("x-forwarded-for", request.remote))
        # While tracing is on, the call is a span of the trace the browser started (its
        # `traceparent`, if any), and the service's spans are its children.
        attributes = {
            "rpc.system": "grpc",
            "http.route": route.path,
            "aivera.request_id": request_id,
        }
        with tracing.server_span(f"gateway {route.path}", request.headers, attributes):
            tracing.inject_metadata(metadata)
            return await self._forward(
                request, mode, route, messages, timeout, metadata, request_id
            )

    async def _forward(
        self,
        request: web.Request,
        mode: grpcweb.Mode,
        route: Route,
        messages: list[bytes],
        timeout: float | None,
        metadata: list[tuple[str, str | bytes]],
        request_id: str,
    ) -> web.StreamResponse:
        started = time.monotonic()
        multicallable = self.upstreams.channel(route.upstream).stream_stream(
            route.path, request_serializer=None, response_deserializer=None
        )
        call = multicallable(iter(messages), timeout=timeout, metadata=tuple(metadata))
        response: web.StreamResponse | None = None
        sent = 0
        try:
            try:
                async for message in call:
                    if response is None:
                        response = await self._start(
                            request, mode, await call.initial_metadata(), request_id
                        )
                    await response.write(mode.encode(grpcweb.encode_message(message)))
                    sent += 1
                code = await call.code()
                details = await call.details() or ""
                trailing = await call.trailing_metadata()
                initial = await call.initial_metadata()
            except grpc.aio.AioRpcError as err:
                code, details = err.code(), err.details() or ""
                trailing, initial = err.trailing_metadata(), err.initial_metadata()
        except ConnectionResetError:
            # The browser went away between two messages: nobody to answer.
            log.info(
                "%s CANCELLED by the client",
                route.path,
                extra={"fields": {"request_id": request_id, "messages": sent}},
            )
            assert response is not None  # writes happen only once the response started
            return response
        finally:
            if not call.done():
                call.cancel()  # the browser went away (handler cancelled) or a write failed
        number = _code_number(code)
        tracing.current_span().set_attribute("rpc.grpc.status_code", number)
        log.info(
            "%s %s",
            route.path,
            code.name,
            extra={
                "fields": {
                    "request_id": request_id,
                    "grpc_status": number,
                    "messages": sent,
                    "duration_ms": round((time.monotonic() - started) * 1000, 1),
                }
            },
        )
        lines = grpcweb.status_lines(number, details, trailing or ())
        if response is None:  # trailers-only: the status travels in the HTTP headers
            headers = grpcweb.response_metadata(initial or ())
            return self._trailers_only(mode, number, details, [*headers, *lines], request_id)
        with contextlib.suppress(ConnectionResetError):  # a client gone at the very end
            await response.write(mode.encode(grpcweb.encode_trailers(lines)))
            await response.write_eof()
        return response

    async def _start(
        self,
        request: web.Request,
        mode: grpcweb.Mode,
        initial: Iterable[tuple[str, str | bytes]] | None,
        request_id: str,
    ) -> web.StreamResponse:
        response = web.StreamResponse(status=200)
        response.content_type = mode.content_type
        for key, value in grpcweb.response_metadata(initial or ()):
            response.headers.add(key, value)
        response.headers.setdefault(REQUEST_ID_HEADER, request_id)
        response.enable_chunked_encoding()
        await response.prepare(request)
        return response

    @staticmethod
    def _trailers_only(
        mode: grpcweb.Mode,
        code: int,
        message: str,
        extra: Iterable[tuple[str, str]] = (),
        request_id: str = "",
    ) -> web.Response:
        response = web.Response(status=200, content_type=mode.content_type)
        response.headers["grpc-status"] = str(code)
        if message:
            response.headers["grpc-message"] = grpcweb.encode_grpc_message(message)
        for key, value in extra:
            if key not in ("grpc-status", "grpc-message"):
                response.headers.add(key, value)
        if request_id:
            response.headers.setdefault(REQUEST_ID_HEADER, request_id)
        return response


async def _healthz(_: web.Request) -> web.Response:
    return web.Response(text="ok\n")


def build_app(
    table: RouteTable,
    upstreams: Upstreams,
    cors: CorsPolicy,
    *,
    max_request_bytes: int,
    request_timeout: float = REQUEST_TIMEOUT_SECONDS,
    site: StaticSite | None = None,
    files: FilesProxy | None = None,
) -> web.Application:
    handler = GrpcWebHandler(table, upstreams, request_timeout)
    app = web.Application(client_max_size=max_request_bytes)
    app.on_response_prepare.append(cors.on_prepare)
    app.router.add_get("/healthz", _healthz)
    add_routes(app, site, files)  # the console and signed URLs on this origin (public)
    app.router.add_route("OPTIONS", "/{tail:.*}", cors.preflight)
    app.router.add_post("/{tail:.*}", handler.handle)
    return app


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=512)


class Gateway:
    """Both listeners, sharing the upstream channels."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.upstreams = Upstreams(settings.upstreams)
        self.port = 0
        self.admin_port = 0
        self._runners: list[web.AppRunner] = []
        self.files = FilesProxy(settings.storage_http) if settings.storage_http else None

    async def start(self) -> None:
        s = self.settings
        cors = CorsPolicy(s.cors_origins)
        site = None
        if s.web_root is not None:
            site = StaticSite(s.web_root, content_security_policy(s.csp_connect_src))
            if not site.available:
                log.warning("no console at %s (build it: make web)", s.web_root)
                site = None
        listeners = [(False, s.host, s.port), (True, s.admin_host, s.admin_port)]
        for admin, host, port in listeners:
            app = build_app(
                RouteTable.for_listener(admin=admin),
                self.upstreams,
                cors,
                max_request_bytes=s.max_request_bytes,
                request_timeout=s.request_timeout_seconds,
                site=None if admin else site,
                files=None if admin else self.files,
            )
            # handler_cancellation: a browser that goes away cancels the handler, and with
            # it the upstream call (streams stop producing for nobody).
            runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
            await runner.setup()
            self._runners.append(runner)
            sock = _bind(host, port)
            await web.SockSite(runner, sock).start()
            bound = sock.getsockname()[1]
            if admin:
                self.admin_port = bound
            else:
                self.port = bound
            log.info("gateway %s listener on %s:%d", "admin" if admin else "public", host, bound)

    async def stop(self) -> None:
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()
        await self.upstreams.close()
        if self.files is not None:
            await self.files.close()
