"""Server spans take the status the RPC wrapper aborts with (`abort_with_status`, with
ErrorInfo): a failure of the service is an error span, a caller's mistake is not; a
streaming call's client span ends when the call does, however its caller reads it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.rpc import status_pb2
from grpc_status import rpc_status
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from services.common import tracing
from services.common.channels import open_channel
from tests.observability.conftest import attrs


async def _fail(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
    code = int(request.decode())
    await context.abort_with_status(
        rpc_status.to_status(status_pb2.Status(code=code, message=f"code {code}"))
    )
    return b""


async def _three(request: bytes, context: Any) -> AsyncIterator[bytes]:
    for n in range(3):
        yield str(n).encode()


@pytest.fixture(scope="module")
async def port(spans: InMemorySpanExporter) -> AsyncIterator[int]:
    server = grpc.aio.server(interceptors=tracing.server_interceptors())
    handlers = {
        "Fail": grpc.unary_unary_rpc_method_handler(_fail),
        "Three": grpc.unary_stream_rpc_method_handler(_three),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.T", handlers),))
    bound = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield bound
    await server.stop(0)


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (grpc.StatusCode.INTERNAL, True),
        (grpc.StatusCode.UNAVAILABLE, True),
        (grpc.StatusCode.NOT_FOUND, False),
        (grpc.StatusCode.INVALID_ARGUMENT, False),
    ],
)
async def test_server_span_status_follows_the_code(
    port: int, spans: InMemorySpanExporter, code: grpc.StatusCode, error: bool
) -> None:
    spans.clear()
    number = code.value[0]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await ch.unary_unary("/t.T/Fail")(str(number).encode())
    assert info.value.code() == code
    # The server's span ends as its handler unwinds, after the client has the status.
    for _ in range(100):
        found = [
            s
            for s in spans.get_finished_spans()
            if s.kind == SpanKind.SERVER and attrs(s).get("rpc.grpc.status_code") == number
        ]
        if found:
            break
        await asyncio.sleep(0.02)
    (server,) = found
    assert (server.status.status_code is StatusCode.ERROR) == error


async def test_stream_client_span_ends_when_the_caller_stops_reading(
    port: int, spans: InMemorySpanExporter
) -> None:
    spans.clear()
    channel = open_channel(f"127.0.0.1:{port}")
    try:
        with tracing.span("caller"):
            call = channel.unary_stream("/t.T/Three")(b"")
            async for message in call:
                if message == b"2":
                    break  # the answer it waited for: the end of the stream is never read
            for _ in range(100):
                names = [s.name for s in spans.get_finished_spans() if s.kind == SpanKind.CLIENT]
                if names:
                    break
                await asyncio.sleep(0.02)
        assert names == ["/t.T/Three"]
    finally:
        await channel.close()
