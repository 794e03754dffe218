"""One trace per request across the real mesh: a browser's call through the local
gateway into chat, the real RAG service and storage, every hop a child of the one
before it; model calls with their token counts; SQL statements inside the trace; log
lines that name the trace."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import REGISTRY

from aivera.chat.v1 import chat_pb2
from aivera.rag.v1 import rag_pb2, rag_pb2_grpc
from aivera.storage.v1 import storage_pb2
from gateway.config import GatewaySettings
from gateway.proxy import Gateway
from services.common import logs
from tests.chat.conftest import Mesh, User, build_mesh
from tests.chat.fakes import make_pdf, upload
from tests.gateway.conftest import ORIGIN, WebClient
from tests.helpers.gemini import Reply
from tests.helpers.services import channel
from tests.observability.conftest import Trace, attrs

KEY = "AIzaSyTEST0000000000000000000000000022"
# What a browser that traces its own work sends: the gateway continues this trace.
BROWSER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
BROWSER_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{BROWSER_TRACE}-{BROWSER_SPAN}-01"

CHAT = "aivera.chat.v1.ChatService"
RAG = "aivera.rag.v1.RagService"
STORAGE = "aivera.storage.v1.StorageService"


@dataclass
class Traced:
    mesh: Mesh
    web: WebClient
    spans: InMemorySpanExporter


@pytest.fixture(scope="module")
async def traced(database_url: str, spans: InMemorySpanExporter) -> AsyncIterator[Traced]:
    async with build_mesh(database_url, real_rag=True) as mesh:
        apps = {"auth": mesh.auth, "storage": mesh.storage, "rag": mesh.rag_app, "chat": mesh.chat}
        settings = GatewaySettings(
            port=0,
            admin_port=0,
            upstreams={name: f"127.0.0.1:{app.grpc_port}" for name, app in apps.items()},
            cors_origins=(ORIGIN,),
        )
        gateway = Gateway(settings)
        await gateway.start()
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
                yield Traced(mesh, WebClient(http, gateway.port, gateway.admin_port), spans)
        finally:
            await gateway.stop()


def _finished(spans: InMemorySpanExporter) -> list[ReadableSpan]:
    return list(spans.get_finished_spans())


async def _trace_of(spans: InMemorySpanExporter, root_name: str, *needed: str) -> Trace:
    """The trace of the gateway span `root_name`, once spans named `needed` ended in it
    and every span's parent ended (work a call started may finish after its answer)."""
    for _ in range(300):
        roots = [s for s in _finished(spans) if s.name == root_name]
        if roots and roots[-1].context is not None:
            trace = Trace(_finished(spans), roots[-1].context.trace_id)
            # Every span's parent ended too (a client span may end after its server's).
            settled = all(s is roots[-1] for s in trace.orphans())
            if settled and all(trace.named(n) for n in needed):
                return trace
        await asyncio.sleep(0.05)
    names = sorted({s.name for s in _finished(spans)})
    raise AssertionError(f"trace of {root_name} incomplete; spans seen: {names}")


def _server(trace: Trace, service: str, method: str) -> ReadableSpan:
    # Called once in these traces: one server span (the RPC wrapper opens it for the
    # methods it serves and the interceptor leaves them alone; never both).
    (span,) = trace.named(f"/{service}/{method}", SpanKind.SERVER)
    return span


async def _attach_document(t: Traced) -> tuple[User, chat_pb2.Chat]:
    mesh = t.mesh
    user = await mesh.new_user(KEY)
    chat = await mesh.stub.CreateChat(chat_pb2.CreateChatRequest(title="trace"), metadata=user.md)
    pdf = await upload(
        mesh.storage_stub, make_pdf(), "trace.pdf", storage_pb2.BUCKET_DOCUMENTS, user.md
    )
    headers = {"authorization": f"Bearer {user.token}", "traceparent": TRACEPARENT}
    result = await t.web.call(
        f"/{CHAT}/AttachFile",
        chat_pb2.AttachFileRequest(chat_id=chat.id, file_id=pdf).SerializeToString(),
        headers=headers,
    )
    assert result.grpc_status == 0, result.trailers
    for _ in range(600):
        got = await mesh.stub.GetChat(chat_pb2.GetChatRequest(id=chat.id), metadata=user.md)
        if got.attachments and got.attachments[0].status != chat_pb2.ATTACHMENT_STATUS_INGESTING:
            break
        await asyncio.sleep(0.1)
    assert got.attachments[0].status == chat_pb2.ATTACHMENT_STATUS_READY
    return user, got


async def test_attach_is_one_trace_gateway_chat_rag_storage(traced: Traced) -> None:
    await _attach_document(traced)
    trace = await _trace_of(
        traced.spans,
        f"gateway /{CHAT}/AttachFile",
        f"/{RAG}/IngestDocument",
        "rag.index",
    )
    gateway = trace.one(f"gateway /{CHAT}/AttachFile")
    # The gateway continues the browser's trace; its span is the mesh's root.
    assert format(gateway.context.trace_id, "032x") == BROWSER_TRACE
    assert gateway.parent is not None and format(gateway.parent.span_id, "016x") == BROWSER_SPAN
    assert gateway.kind == SpanKind.SERVER
    assert trace.orphans() == [gateway], [(s.name, s.kind) for s in trace.orphans()]

    chat = _server(trace, CHAT, "AttachFile")
    assert trace.parent(chat) is gateway
    ingest = _server(trace, RAG, "IngestDocument")
    client = trace.parent(ingest)
    assert client is not None and client.kind == SpanKind.CLIENT
    assert client.name == f"/{RAG}/IngestDocument"
    assert trace.descends(ingest, chat)
    # rag reads the document from storage and stores its page images there: both are
    # storage's server spans under rag's ingest, each behind a client span of rag's.
    download = _server(trace, STORAGE, "Download")
    uploads = trace.named(f"/{STORAGE}/Upload", SpanKind.SERVER)
    assert trace.descends(download, ingest)
    assert uploads and all(trace.descends(u, ingest) for u in uploads)
    assert all(trace.parent(u).kind == SpanKind.CLIENT for u in uploads)  # type: ignore[union-attr]
    assert attrs(download)["storage.bytes"] > 0
    # The ingest's stages, in the ingest.
    for stage in ("rag.parse", "rag.render_pages", "rag.chunk", "rag.embed", "rag.index"):
        assert trace.descends(trace.one(stage), ingest), stage
    transfer = trace.named("storage.upload")
    assert transfer and all(trace.descends(s, trace.one("rag.render_pages")) for s in transfer)
    # SQL statements of every service that took part are spans of the trace.
    sql = [s for s in trace.spans if s.attributes and attrs(s).get("db.system")]
    assert any(trace.descends(s, chat) for s in sql)
    assert any(trace.descends(s, ingest) for s in sql)
    assert any(trace.descends(s, download) for s in sql)


async def test_chat_turn_with_rag_is_one_trace(traced: Traced) -> None:
    user, chat = await _attach_document(traced)
    async with channel(traced.mesh.rag_app) as ch:
        detail = await rag_pb2_grpc.RagServiceStub(ch).GetDocument(
            rag_pb2.GetDocumentRequest(id=chat.attachments[0].document_id), metadata=user.md
        )
    concrete = next(b for b in detail.blocks if "B25" in b.text)
    traced.mesh.gemini.reset()
    traced.mesh.gemini.script(
        # The model asks for the page image of a block: chat fetches it from storage.
        Reply.call("request_images", {"block_ids": [concrete.id]}, prompt_tokens=20),
        Reply.text("Бетон B25.", output_tokens=4, prompt_tokens=30),
    )
    request = chat_pb2.SendMessageRequest(chat_id=chat.id, text="Beton klassa B25?")
    result = await traced.web.call(
        f"/{CHAT}/SendMessage",
        request.SerializeToString(),
        headers={"authorization": f"Bearer {user.token}"},
    )
    assert result.grpc_status == 0, result.trailers
    events = [chat_pb2.ChatEvent.FromString(m) for m in result.messages]
    assert events[-1].HasField("final"), events[-1]

    trace = await _trace_of(
        traced.spans, f"gateway /{CHAT}/SendMessage", f"/{RAG}/Search", "model gemini"
    )
    gateway = trace.one(f"gateway /{CHAT}/SendMessage")
    assert gateway.parent is None  # no browser trace this time: the gateway starts one
    assert trace.orphans() == []
    send = _server(trace, CHAT, "SendMessage")
    assert trace.parent(send) is gateway
    search = _server(trace, RAG, "Search")
    assert trace.descends(search, send)
    for stage in ("rag.embed_query", "rag.index_search", "rag.hit_context"):
        assert trace.descends(trace.one(stage), search), stage
    # The Gemini key comes from auth, inside the turn's trace too.
    assert trace.descends(
        trace.one("/aivera.auth.v1.AuthInternalService/GetProviderKey", SpanKind.SERVER), send
    )
    # The page image the model asked for, read from storage inside the turn.
    assert trace.descends(_server(trace, STORAGE, "Download"), send)
    # Two model calls (the tool call, then the answer), each with its token counts.
    first, second = sorted(trace.named("model gemini"), key=lambda s: s.start_time or 0)
    assert all(trace.descends(m, send) for m in (first, second))
    assert attrs(first)["gen_ai.usage.input_tokens"] == 20
    assert attrs(second)["gen_ai.usage.input_tokens"] == 30
    assert attrs(second)["gen_ai.usage.output_tokens"] == 4
    assert attrs(second)["gen_ai.request.model"]
    # The same call in the metrics, by provider (no user, chat or model id as a label).
    tokens = REGISTRY.get_sample_value(
        "aivera_model_tokens_total", {"provider": "gemini", "direction": "output"}
    )
    assert tokens is not None and tokens >= 4
    calls = REGISTRY.get_sample_value(
        "aivera_model_call_duration_seconds_count", {"provider": "gemini"}
    )
    assert calls is not None and calls >= 2
    assert REGISTRY.get_sample_value("aivera_service_serving", {"service": "chat"}) == 1


async def test_a_refused_call_is_a_span_with_its_code_not_an_error(traced: Traced) -> None:
    user = await traced.mesh.new_user(KEY)
    request = chat_pb2.GetChatRequest(id="00000000-0000-4000-8000-000000000000")
    result = await traced.web.call(
        f"/{CHAT}/GetChat",
        request.SerializeToString(),
        headers={"authorization": f"Bearer {user.token}"},
    )
    assert result.grpc_status == 5  # NOT_FOUND
    trace = await _trace_of(traced.spans, f"gateway /{CHAT}/GetChat", f"/{CHAT}/GetChat")
    server = _server(trace, CHAT, "GetChat")
    assert attrs(server)["rpc.grpc.status_code"] == 5
    assert server.status.status_code is StatusCode.UNSET  # the caller's mistake, not ours
    assert attrs(trace.one(f"gateway /{CHAT}/GetChat"))["rpc.grpc.status_code"] == 5


async def test_probes_and_background_work_are_not_traced(traced: Traced) -> None:
    # Health checks ran every 0.2 s in every service of the mesh, the revocation feed
    # polled auth, transactions began and committed: none of it is a span.
    names = {s.name for s in _finished(traced.spans)}
    assert not {n for n in names if n.startswith("/grpc.health.")}
    assert "/aivera.auth.v1.AuthInternalService/ListSessionRevocations" not in names
    assert not names & {"BEGIN;", "COMMIT;"}
    assert "SELECT" in names  # statements of requests are


async def test_log_lines_carry_the_trace(traced: Traced) -> None:
    from services.common import tracing

    formatter = logs.JsonFormatter("test")
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "inside", None, None)
    with tracing.span("outer") as span:
        line = json.loads(formatter.format(record))
    ctx = span.get_span_context()
    assert line["trace_id"] == format(ctx.trace_id, "032x")
    assert line["span_id"] == format(ctx.span_id, "016x")
    assert "trace_id" not in json.loads(formatter.format(record))  # outside any span
