"""The rag service through real gRPC, next to the real storage service (local backend):
PDFs uploaded to storage are ingested with progress events, page images land in storage
at the right sizes, blocks come back where they were drawn, every format ingests, deletes
stick, exact codes are found by hybrid search, users are isolated, bad input is refused."""

from __future__ import annotations

import asyncio
import io
import json
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from fpdf import FPDF
from PIL import Image
from pydantic import SecretStr

from aivera.rag.v1 import rag_pb2, rag_pb2_grpc
from aivera.storage.v1 import storage_pb2, storage_pb2_grpc
from services.common.server import App
from services.rag.config import RagSettings
from services.rag.embedder import MiniLmEmbedder
from services.rag.index import Index, SearchMode
from services.rag.parsers.base import DEFAULT_MAX_PAGE_PIXELS
from services.rag.search import Searcher, SearchRequest
from services.rag.server import RagSpec
from services.rag.server import make_spec as rag_spec
from services.rag.store import HitKey, Store
from services.storage.config import StorageSettings
from services.storage.server import make_spec as storage_spec
from tests.helpers.errors import bad_field, error_info, localized, reason
from tests.helpers.services import bearer, channel, running
from tests.helpers.tokens import Keyring
from tests.rag.test_budgets import giant_page_pdf

A4_W, A4_H = 595.28, 841.89
DPI = 100
MiB = 1024 * 1024
P = rag_pb2


@dataclass
class Env:
    keyring: Keyring
    storage_app: App
    rag_app: App
    storage: storage_pb2_grpc.StorageServiceStub
    rag: rag_pb2_grpc.RagServiceStub

    def md(self, user: str) -> tuple[tuple[str, str], ...]:
        return bearer(self.keyring.mint(user))

    @property
    def index(self) -> Index:
        spec = self.rag_app.spec
        assert isinstance(spec, RagSpec) and spec.rag is not None
        return spec.rag.index

    async def upload(
        self,
        user: str,
        data: bytes,
        filename: str,
        bucket: storage_pb2.Bucket.ValueType = storage_pb2.BUCKET_DOCUMENTS,
    ) -> str:
        def reqs() -> Iterator[storage_pb2.UploadRequest]:
            yield storage_pb2.UploadRequest(
                header=storage_pb2.UploadHeader(
                    bucket=bucket, filename=filename, size_bytes=len(data)
                )
            )
            for i in range(0, len(data), MiB):
                yield storage_pb2.UploadRequest(chunk=data[i : i + MiB])

        f = await self.storage.Upload(reqs(), metadata=self.md(user))
        return str(f.id)

    async def download(self, user: str, file_id: str) -> bytes:
        parts = []
        async for msg in self.storage.Download(
            storage_pb2.DownloadRequest(id=file_id), metadata=self.md(user)
        ):
            if msg.WhichOneof("payload") == "chunk":
                parts.append(msg.chunk)
        return b"".join(parts)

    async def kb(self, user: str, name: str = "kb", **kw: Any) -> str:
        kb = await self.rag.CreateKnowledgeBase(
            P.CreateKnowledgeBaseRequest(name=name, **kw), metadata=self.md(user)
        )
        return str(kb.id)

    async def ingest(
        self, user: str, kb_id: str, file_id: str, **options: Any
    ) -> tuple[list[rag_pb2.IngestEvent], grpc.aio.AioRpcError | None]:
        events: list[rag_pb2.IngestEvent] = []
        call = self.rag.IngestDocument(
            P.IngestDocumentRequest(
                knowledge_base_id=kb_id, file_id=file_id, options=P.IngestOptions(**options)
            ),
            metadata=self.md(user),
        )
        try:
            async for ev in call:
                events.append(ev)
        except grpc.aio.AioRpcError as exc:
            return events, exc
        return events, None

    async def ingest_ok(self, user: str, kb_id: str, file_id: str, **options: Any) -> Any:
        events, error = await self.ingest(user, kb_id, file_id, **options)
        assert error is None, error
        assert events[-1].WhichOneof("event") == "done"
        return events, events[-1].done.document

    async def search(self, user: str, kb_ids: list[str], query: str, **kw: Any) -> list[Any]:
        resp = await self.rag.Search(
            P.SearchRequest(knowledge_base_ids=kb_ids, query=query, **kw), metadata=self.md(user)
        )
        return list(resp.hits)


@pytest.fixture(scope="module")
async def env(database_url: str, embedder: MiniLmEmbedder) -> AsyncIterator[Env]:
    keyring = Keyring()
    with tempfile.TemporaryDirectory(prefix="aivera-rag-") as tmp:
        s_settings = StorageSettings(
            database_url=SecretStr(database_url),
            data_dir=Path(tmp) / "storage",
            storage_backend="local",
            storage_purge_interval_seconds=3600,
        )
        async with running(
            storage_spec(s_settings), s_settings, verifier=keyring.verifier()
        ) as s_app:
            r_settings = RagSettings(
                database_url=SecretStr(database_url),
                data_dir=Path(tmp) / "rag",
                storage_addr=f"127.0.0.1:{s_app.grpc_port}",
                rag_render_dpi=DPI,
                rag_max_pages=20,
                rag_max_text_bytes=1_000_000,
            )
            async with (
                running(
                    rag_spec(r_settings, embedder=embedder), r_settings, verifier=keyring.verifier()
                ) as r_app,
                channel(s_app) as s_ch,
                channel(r_app) as r_ch,
            ):
                yield Env(
                    keyring,
                    s_app,
                    r_app,
                    storage_pb2_grpc.StorageServiceStub(s_ch),
                    rag_pb2_grpc.RagServiceStub(r_ch),
                )


def user() -> str:
    return str(uuid.uuid4())


async def code_of(aw: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await aw
    return info.value.code()


# --- generated documents ----------------------------------------------------------------


@dataclass(frozen=True)
class Drawn:
    page: int
    text: str
    x: float
    y: float
    w: float
    line_h: float = 14


RU = Drawn(
    1,
    "Система вентиляции ПВ-1 обслуживает офисные помещения первого этажа здания.",
    72,
    150,
    300,
)
EN = Drawn(1, "The architectural drawings AR-12 show the facades of the building.", 320, 420, 220)
PAGE2 = Drawn(2, "Вторая страница: спецификация оборудования насосной станции.", 100, 500, 380)


def make_pdf(font: Path, *, pages: int = 2, encrypt: bool = False) -> bytes:
    pdf = FPDF(unit="pt", format="A4")
    pdf.set_auto_page_break(False)
    pdf.c_margin = 0
    pdf.add_font("DejaVu", "", str(font))
    pdf.set_font("DejaVu", size=11)
    pdf.add_page()
    for d in (RU, EN):
        pdf.set_xy(d.x, d.y)
        pdf.multi_cell(d.w, d.line_h, d.text)
    for n in range(2, pages + 1):
        pdf.add_page()
        pdf.set_xy(PAGE2.x, PAGE2.y)
        text = PAGE2.text if n == 2 else f"Страница {n}: журнал испытаний оборудования."
        pdf.multi_cell(PAGE2.w, PAGE2.line_h, text)
    if encrypt:
        pdf.set_encryption(owner_password="owner-secret", user_password="user-secret")
    return bytes(pdf.output())


@pytest.fixture(scope="module")
def pdf_bytes(cyrillic_font: Path) -> bytes:
    return make_pdf(cyrillic_font)


def stages(events: list[rag_pb2.IngestEvent]) -> list[int]:
    return [e.phase.stage for e in events if e.WhichOneof("event") == "phase"]


def last_progress(events: list[rag_pb2.IngestEvent], stage: int) -> tuple[int, int, str]:
    p = [e.phase.progress for e in events if e.HasField("phase") and e.phase.stage == stage][-1]
    return p.done, p.total, p.unit


async def eventually(check: Any, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        if await check():
            return
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


# --- tests ------------------------------------------------------------------------------


async def test_pdf_ingest_pages_blocks_and_search(env: Env, pdf_bytes: bytes) -> None:
    u = user()
    kb_id = await env.kb(u)
    file_id = await env.upload(u, pdf_bytes, "проект.pdf")
    events, doc = await env.ingest_ok(u, kb_id, file_id)

    assert {e.document_id for e in events} == {doc.id}
    order = stages(events)
    assert order == sorted(order)
    assert set(order) == {
        P.INGEST_STAGE_PARSING,
        P.INGEST_STAGE_RENDERING_PAGES,
        P.INGEST_STAGE_CHUNKING,
        P.INGEST_STAGE_EMBEDDING,
        P.INGEST_STAGE_INDEXING,
    }
    assert last_progress(events, P.INGEST_STAGE_PARSING) == (2, 2, "pages")
    assert last_progress(events, P.INGEST_STAGE_RENDERING_PAGES) == (2, 2, "pages")
    n = doc.chunk_count
    assert n >= 2
    assert last_progress(events, P.INGEST_STAGE_EMBEDDING) == (n, n, "chunks")
    assert last_progress(events, P.INGEST_STAGE_INDEXING) == (n, n, "chunks")
    assert doc.status == P.DOCUMENT_STATUS_READY and doc.format == P.DOCUMENT_FORMAT_PDF
    assert (doc.page_count, doc.filename, doc.file_id) == (2, "проект.pdf", file_id)

    detail = await env.rag.GetDocument(P.GetDocumentRequest(id=doc.id), metadata=env.md(u))
    assert [p.number for p in detail.pages] == [1, 2]
    for page in detail.pages:
        png = await env.download(u, page.image_file_id)
        image = Image.open(io.BytesIO(png))
        assert image.format == "PNG"
        assert image.size == (page.width_px, page.height_px)
        assert abs(page.width_px - A4_W * DPI / 72) <= 2
        meta = await env.storage.GetFile(
            storage_pb2.GetFileRequest(id=page.image_file_id), metadata=env.md(u)
        )
        assert meta.bucket == storage_pb2.BUCKET_IMAGES
    assert len(detail.blocks) == doc.block_count
    for drawn in (RU, EN, PAGE2):
        (block,) = [b for b in detail.blocks if drawn.text[:20] in b.text.replace("\n", " ")]
        assert block.page == drawn.page
        box = block.box
        assert abs(box.normalized.left * A4_W - drawn.x) <= 4
        assert abs(box.normalized.top * A4_H - drawn.y) <= 6
        assert box.normalized.right * A4_W <= drawn.x + drawn.w + 4
        page = detail.pages[drawn.page - 1]
        assert (box.page_width, box.page_height) == (page.width_px, page.height_px)
        assert abs(box.pixels.left - drawn.x * DPI / 72) <= 6
        assert abs(box.pixels.top - drawn.y * DPI / 72) <= 9

    # Page range and block paging.
    only2 = await env.rag.GetDocument(
        P.GetDocumentRequest(id=doc.id, first_page=2, last_page=9), metadata=env.md(u)
    )
    assert [p.number for p in only2.pages] == [2]
    assert {b.page for b in only2.blocks} == {2}
    paged, token = [], ""
    while True:
        part = await env.rag.GetDocument(
            P.GetDocumentRequest(id=doc.id, block_page_size=1, block_page_token=token),
            metadata=env.md(u),
        )
        paged += list(part.blocks)
        token = part.next_block_page_token
        if not token:
            break
    assert [b.id for b in paged] == [b.id for b in detail.blocks]
    for bad in (
        P.GetDocumentRequest(id=doc.id, first_page=2, last_page=1),
        P.GetDocumentRequest(id=doc.id, block_page_size=-1),
        P.GetDocumentRequest(id=doc.id, block_page_token="nonsense"),
    ):
        assert await code_of(env.rag.GetDocument(bad, metadata=env.md(u))) == (
            grpc.StatusCode.INVALID_ARGUMENT
        )

    hits = await env.search(u, [kb_id], "вентиляция офисных помещений")
    assert hits[0].document_id == doc.id and hits[0].page == 1
    assert hits[0].filename == "проект.pdf" and hits[0].knowledge_base_id == kb_id
    assert hits[0].HasField("box") and hits[0].block_ids
    paged_hits = await env.search(u, [kb_id], "оборудование", pages=[2])
    assert paged_hits and {h.page for h in paged_hits} == {2}

    kb = await env.rag.GetKnowledgeBase(P.GetKnowledgeBaseRequest(id=kb_id), metadata=env.md(u))
    assert (kb.document_count, kb.chunk_count) == (1, n)

    # Re-ingest: same document id, chunks replaced (not doubled), old page images deleted.
    old_images = [p.image_file_id for p in detail.pages]
    _, again = await env.ingest_ok(u, kb_id, file_id)
    assert again.id == doc.id and again.chunk_count == n
    assert await env.index.count(user_id=u, knowledge_base_ids=[kb_id]) == n

    async def old_images_deleted() -> bool:
        for fid in old_images:
            f = await env.storage.GetFile(storage_pb2.GetFileRequest(id=fid), metadata=env.md(u))
            if f.status != storage_pb2.FILE_STATUS_DELETED:
                return False
        return True

    await eventually(old_images_deleted)


ANNOTATION = {
    "pages": [{"number": 1, "width": 1000, "height": 2000}, {"number": 2}],
    "blocks": [
        {"id": "b1", "page": 1, "text": "Узел крепления ПВ-1", "coords_norm": [0.1, 0.2, 0.8, 0.3]},
        {"id": "b2", "page": 2, "text": "Second page text", "coords_norm": [0, 0, 1, 0.5]},
    ],
}


@pytest.mark.parametrize(
    ("filename", "data", "fmt", "needle"),
    [
        (
            "notes.md",
            "# Заголовок\n\nАбзац про насосы.\n\n| a | b |\n|---|---|\n| 1 | 2 |\n",
            P.DOCUMENT_FORMAT_MARKDOWN,
            "|",
        ),
        (
            "page.html",
            "<html><body><h1>Отчёт</h1><p>Текст отчёта.</p></body></html>",
            P.DOCUMENT_FORMAT_HTML,
            "Отчёт",
        ),
        (
            "blocks.json",
            json.dumps(ANNOTATION, ensure_ascii=False),
            P.DOCUMENT_FORMAT_JSON_ANNOTATION,
            "ПВ-1",
        ),
        ("plain.txt", "Первый абзац.\n\nВторой абзац текста.", P.DOCUMENT_FORMAT_TEXT, "Второй"),
    ],
    ids=["markdown", "html", "json_annotation", "text"],
)
async def test_each_format_ingests(
    env: Env, filename: str, data: str, fmt: int, needle: str
) -> None:
    u = user()
    kb_id = await env.kb(u)
    file_id = await env.upload(u, data.encode(), filename)
    events, doc = await env.ingest_ok(u, kb_id, file_id)
    assert doc.format == fmt and doc.chunk_count >= 1
    assert P.INGEST_STAGE_RENDERING_PAGES not in stages(events)
    detail = await env.rag.GetDocument(P.GetDocumentRequest(id=doc.id), metadata=env.md(u))
    assert all(not p.image_file_id for p in detail.pages)
    assert any(needle in b.text for b in detail.blocks)
    if filename.endswith(".json"):
        assert [b.id for b in detail.blocks] == ["b1", "b2"]
        assert detail.blocks[0].box.pixels.top == 400  # 0.2 x 2000 px
        assert [p.number for p in detail.pages] == [1, 2]
    else:
        assert not any(b.HasField("box") for b in detail.blocks)
    hits = await env.search(u, [kb_id], needle if needle != "|" else "насосы")
    assert hits and hits[0].document_id == doc.id


CODES = {
    "ar1": "Раздел АР-1.",
    "ar2": "Раздел АР-2.",
    "ar13": "Раздел АР-13.",
    "ar21": "Раздел АР-21.",
    "ar120": "Раздел АР-120.",
    "pv2": "Установка ПВ-2.",
    "pv3": "Установка ПВ-3.",
    "pv10": "Установка ПВ-10.",
    "pv11": "Установка ПВ-11.",
    "p1": "Установка П-1.",
    "ar12": "Комплект чертежей выпущен повторно после замечаний экспертизы; изменения "
    "согласованы с заказчиком, см. АР-12, лист 4.",
    "pv1": "Оборудование смонтировано в подвале рядом с насосной, щит автоматики и датчики "
    "подключены; система ПВ-1 испытана.",
    "en1": "The supply air handling unit serves the office floors.",
}


async def test_hybrid_search_finds_exact_codes_where_dense_misses(env: Env) -> None:
    u = user()
    kb_id = await env.kb(u)
    # One block per page, so every line is a chunk of its own.
    annotation = {
        "blocks": [
            {"id": key, "page": n, "text": text}
            for n, (key, text) in enumerate(CODES.items(), start=1)
        ]
    }
    file_id = await env.upload(u, json.dumps(annotation, ensure_ascii=False).encode(), "reg.json")
    _, doc = await env.ingest_ok(u, kb_id, file_id)
    assert doc.chunk_count == len(CODES)
    for query, target in (("ПВ-1", "pv1"), ("АР-12", "ar12")):
        dense = await env.search(u, [kb_id], query, mode=P.SEARCH_MODE_DENSE, top_k=3)
        assert target not in [h.block_ids[0] for h in dense]
        sparse = await env.search(u, [kb_id], query, mode=P.SEARCH_MODE_SPARSE)
        assert [h.block_ids[0] for h in sparse] == [target]
        hybrid = await env.search(u, [kb_id], query)  # unset mode = hybrid
        assert hybrid[0].block_ids[0] == target
        assert len(hybrid) == 10


async def test_deletes_stick(env: Env, pdf_bytes: bytes) -> None:
    u = user()
    kb_id = await env.kb(u)
    other_kb = await env.kb(u, "other")
    pdf_id = await env.upload(u, pdf_bytes, "a.pdf")
    md_id = await env.upload(u, "# ПВ-1\n\nСистема ПВ-1 вентиляции.".encode(), "b.md")
    _, doc_a = await env.ingest_ok(u, kb_id, pdf_id)
    _, doc_b = await env.ingest_ok(u, kb_id, md_id)
    _, doc_c = await env.ingest_ok(u, other_kb, md_id)
    detail = await env.rag.GetDocument(P.GetDocumentRequest(id=doc_a.id), metadata=env.md(u))
    images = [p.image_file_id for p in detail.pages]

    await env.rag.DeleteDocument(P.DeleteDocumentRequest(id=doc_a.id), metadata=env.md(u))
    for mode in (P.SEARCH_MODE_HYBRID, P.SEARCH_MODE_DENSE, P.SEARCH_MODE_SPARSE):
        for q in ("ПВ-1", "вентиляции", "architectural drawings"):
            hits = await env.search(u, [kb_id], q, mode=mode, top_k=100)
            assert doc_a.id not in {h.document_id for h in hits}
    assert {h.document_id for h in await env.search(u, [kb_id], "ПВ-1")} == {doc_b.id}
    for call in (
        env.rag.GetDocument(P.GetDocumentRequest(id=doc_a.id), metadata=env.md(u)),
        env.rag.DeleteDocument(P.DeleteDocumentRequest(id=doc_a.id), metadata=env.md(u)),
    ):
        assert await code_of(call) == grpc.StatusCode.NOT_FOUND
    docs = await env.rag.ListDocuments(
        P.ListDocumentsRequest(knowledge_base_id=kb_id), metadata=env.md(u)
    )
    assert [d.id for d in docs.documents] == [doc_b.id]
    # The source file stays; the page images go.
    src = await env.storage.GetFile(storage_pb2.GetFileRequest(id=pdf_id), metadata=env.md(u))
    assert src.status == storage_pb2.FILE_STATUS_READY

    async def images_deleted() -> bool:
        for fid in images:
            f = await env.storage.GetFile(storage_pb2.GetFileRequest(id=fid), metadata=env.md(u))
            if f.status != storage_pb2.FILE_STATUS_DELETED:
                return False
        return True

    await eventually(images_deleted)

    await env.rag.DeleteKnowledgeBase(P.DeleteKnowledgeBaseRequest(id=kb_id), metadata=env.md(u))
    assert await env.index.count(user_id=u, knowledge_base_ids=[kb_id]) == 0
    assert await code_of(env.search(u, [kb_id], "ПВ-1")) == grpc.StatusCode.NOT_FOUND
    for call in (
        env.rag.GetKnowledgeBase(P.GetKnowledgeBaseRequest(id=kb_id), metadata=env.md(u)),
        env.rag.DeleteKnowledgeBase(P.DeleteKnowledgeBaseRequest(id=kb_id), metadata=env.md(u)),
        env.rag.GetDocument(P.GetDocumentRequest(id=doc_b.id), metadata=env.md(u)),
    ):
        assert await code_of(call) == grpc.StatusCode.NOT_FOUND
    # The other knowledge base (same source file) is untouched.
    assert [h.document_id for h in await env.search(u, [other_kb], "ПВ-1")] == [doc_c.id]


async def test_users_are_isolated(env: Env) -> None:
    alice, bob = user(), user()
    kb_a = await env.kb(alice, "secret")
    kb_b = await env.kb(bob, "mine")
    file_a = await env.upload(alice, "Секретный отчёт АР-12.".encode(), "secret.txt")
    file_b = await env.upload(bob, "Отчёт Боба.".encode(), "bob.txt")
    _, doc_a = await env.ingest_ok(alice, kb_a, file_a)
    md = env.md(bob)
    r = env.rag
    calls = [
        r.GetKnowledgeBase(P.GetKnowledgeBaseRequest(id=kb_a), metadata=md),
        r.ListDocuments(P.ListDocumentsRequest(knowledge_base_id=kb_a), metadata=md),
        r.GetDocument(P.GetDocumentRequest(id=doc_a.id), metadata=md),
        r.DeleteDocument(P.DeleteDocumentRequest(id=doc_a.id), metadata=md),
        r.DeleteKnowledgeBase(P.DeleteKnowledgeBaseRequest(id=kb_a), metadata=md),
        env.search(bob, [kb_a], "АР-12"),
        env.search(bob, [kb_b, kb_a], "АР-12"),
    ]
    for call in calls:
        assert await code_of(call) == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await env.search(bob, [kb_b, kb_a], "АР-12")
    assert kb_a in (info.value.details() or "")
    assert reason(info.value) == "NOT_FOUND"
    assert error_info(info.value).metadata["resource"] == "knowledge base"
    for kb_id, file_id in ((kb_a, file_b), (kb_b, file_a)):  # A's kb; A's file
        events, error = await env.ingest(bob, kb_id, file_id)
        assert error is not None and error.code() == grpc.StatusCode.NOT_FOUND and not events
    listed = await r.ListKnowledgeBases(P.ListKnowledgeBasesRequest(), metadata=md)
    assert [k.id for k in listed.knowledge_bases] == [kb_b]
    # Alice's data is intact.
    assert [h.document_id for h in await env.search(alice, [kb_a], "АР-12")] == [doc_a.id]


async def test_corrupt_and_encrypted_pdfs(env: Env, cyrillic_font: Path, pdf_bytes: bytes) -> None:
    u = user()
    kb_id = await env.kb(u)
    # A corrupt file is the caller's bad input; an encrypted one is readable once unlocked.
    cases = {
        "corrupt": (b"%PDF-1.7\n" + bytes(range(256)) * 20, grpc.StatusCode.INVALID_ARGUMENT),
        "encrypted": (make_pdf(cyrillic_font, encrypt=True), grpc.StatusCode.FAILED_PRECONDITION),
    }
    for kind, (data, code) in cases.items():
        file_id = await env.upload(u, data, f"{kind}.pdf")
        events, error = await env.ingest(u, kb_id, file_id)
        assert error is not None and error.code() == code
        assert kind in (error.details() or "")
        assert all(e.WhichOneof("event") != "done" for e in events)
        doc_id = events[0].document_id
        detail = await env.rag.GetDocument(P.GetDocumentRequest(id=doc_id), metadata=env.md(u))
        assert detail.document.status == P.DOCUMENT_STATUS_FAILED
        assert kind in detail.document.error and detail.document.chunk_count == 0
        assert not detail.pages and not detail.blocks
        assert await env.index.count(user_id=u, knowledge_base_ids=[kb_id]) == 0
    # A good document that later fails on re-ingest loses its chunks too: here the
    # same (kb, file) cannot change content, so check a fresh good file still works.
    good = await env.upload(u, pdf_bytes, "good.pdf")
    _, doc = await env.ingest_ok(u, kb_id, good)
    assert await env.index.count(user_id=u, knowledge_base_ids=[kb_id]) == doc.chunk_count


async def test_empty_unsupported_and_bad_requests(env: Env) -> None:
    u = user()
    kb_id = await env.kb(u)
    empty = await env.upload(u, b"  \n\n ", "empty.md")
    events, doc = await env.ingest_ok(u, kb_id, empty)
    assert doc.chunk_count == 0 and doc.status == P.DOCUMENT_STATUS_READY
    assert any(e.WhichOneof("event") == "warning" for e in events)

    not_annotation = await env.upload(u, b'{"rows": [1, 2, 3]}', "data.json")
    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, format="PNG")
    image = await env.upload(u, png.getvalue(), "x.png", bucket=storage_pb2.BUCKET_IMAGES)
    md_file = await env.upload(u, b"# Title\n\ntext", "t.md")
    invalid: list[tuple[str, str, dict[str, Any]]] = [
        (kb_id, not_annotation, {}),
        (kb_id, image, {}),
        (kb_id, md_file, {"format": P.DOCUMENT_FORMAT_PDF}),
        (kb_id, md_file, {"chunk_size_chars": 50}),
        (kb_id, md_file, {"chunk_size_chars": 400, "chunk_overlap_chars": 200}),
        (kb_id, md_file, {"render_dpi": 1000}),
        ("not-a-uuid", md_file, {}),
        (kb_id, "", {}),
    ]
    for kb, file_id, options in invalid:
        events, error = await env.ingest(u, kb, file_id, **options)
        assert error is not None and error.code() == grpc.StatusCode.INVALID_ARGUMENT, (
            options,
            error,
        )
        assert not events
    docs = await env.rag.ListDocuments(
        P.ListDocumentsRequest(knowledge_base_id=kb_id), metadata=env.md(u)
    )
    assert [d.id for d in docs.documents] == [doc.id]  # refused requests changed nothing
    _, error = await env.ingest(u, kb_id, str(uuid.uuid4()))
    assert error is not None and error.code() == grpc.StatusCode.NOT_FOUND
    _, error = await env.ingest(u, str(uuid.uuid4()), md_file)
    assert error is not None and error.code() == grpc.StatusCode.NOT_FOUND

    md = env.md(u)
    for req in (
        P.SearchRequest(knowledge_base_ids=[], query="x"),
        P.SearchRequest(knowledge_base_ids=[kb_id], query="  "),
        P.SearchRequest(knowledge_base_ids=[kb_id], query="x" * 2001),
        P.SearchRequest(knowledge_base_ids=[kb_id], query="x", top_k=-1),
        P.SearchRequest(knowledge_base_ids=[str(uuid.uuid4()) for _ in range(21)], query="x"),
    ):
        assert await code_of(env.rag.Search(req, metadata=md)) == grpc.StatusCode.INVALID_ARGUMENT
    for kb_req in (
        P.CreateKnowledgeBaseRequest(name=""),
        P.CreateKnowledgeBaseRequest(name="x" * 201),
        P.CreateKnowledgeBaseRequest(name="ok", description="x" * 2001),
    ):
        assert await code_of(env.rag.CreateKnowledgeBase(kb_req, metadata=md)) == (
            grpc.StatusCode.INVALID_ARGUMENT
        )


async def test_knowledge_base_listing(env: Env) -> None:
    u = user()
    ids = [await env.kb(u, f"kb{i}", clone_id="clone-1" if i % 2 else "") for i in range(3)]
    md = env.md(u)
    seen, token = [], ""
    while True:
        page = await env.rag.ListKnowledgeBases(
            P.ListKnowledgeBasesRequest(page_size=2, page_token=token), metadata=md
        )
        seen += [k.id for k in page.knowledge_bases]
        token = page.next_page_token
        if not token:
            break
    assert seen == ids[::-1]
    bound = await env.rag.ListKnowledgeBases(
        P.ListKnowledgeBasesRequest(clone_id="clone-1"), metadata=md
    )
    assert [k.id for k in bound.knowledge_bases] == [ids[1]]
    kb = await env.rag.GetKnowledgeBase(P.GetKnowledgeBaseRequest(id=ids[1]), metadata=md)
    assert (kb.name, kb.clone_id, kb.document_count, kb.chunk_count) == ("kb1", "clone-1", 0, 0)
    for req in (
        P.ListKnowledgeBasesRequest(page_size=-1),
        P.ListKnowledgeBasesRequest(page_token="garbage!"),
    ):
        assert await code_of(env.rag.ListKnowledgeBases(req, metadata=md)) == (
            grpc.StatusCode.INVALID_ARGUMENT
        )


async def test_cancelled_and_concurrent_ingests(env: Env, cyrillic_font: Path) -> None:
    u = user()
    kb_id = await env.kb(u)
    data = make_pdf(cyrillic_font, pages=12)
    file_id = await env.upload(u, data, "long.pdf")
    request = P.IngestDocumentRequest(knowledge_base_id=kb_id, file_id=file_id)

    call = env.rag.IngestDocument(request, metadata=env.md(u))
    first = await call.read()
    doc_id = first.document_id
    # The same (kb, file) while it runs: FAILED_PRECONDITION, the document is not ready.
    _, error = await env.ingest(u, kb_id, file_id)
    assert error is not None and error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert reason(error) == "DOCUMENT_NOT_READY"
    call.cancel()

    async def failed() -> bool:
        d = await env.rag.GetDocument(P.GetDocumentRequest(id=doc_id), metadata=env.md(u))
        return bool(d.document.status == P.DOCUMENT_STATUS_FAILED)

    await eventually(failed, timeout=15)
    assert await env.index.count(user_id=u, knowledge_base_ids=[kb_id]) == 0
    # Afterwards it ingests normally, under the same document id.
    _, doc = await env.ingest_ok(u, kb_id, file_id)
    assert doc.id == doc_id and doc.page_count == 12

    # Deleting a document while it is being ingested stops the ingest; nothing remains.
    call = env.rag.IngestDocument(request, metadata=env.md(u))
    await call.read()
    await env.rag.DeleteDocument(P.DeleteDocumentRequest(id=doc_id), metadata=env.md(u))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        while await call.read() is not grpc.aio.EOF:
            pass
    assert info.value.code() == grpc.StatusCode.ABORTED
    assert await env.index.count(user_id=u, knowledge_base_ids=[kb_id]) == 0
    hits = await env.search(u, [kb_id], "журнал испытаний")
    assert hits == []


# --- search hits carry their blocks and page ----------------------------------------------


class CountingPool:
    """The App's pool, counting the queries made through it."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.queries: list[str] = []

    @property
    def pool(self) -> CountingPool:
        return self

    async def fetch(self, sql: str, *args: Any) -> Any:
        self.queries.append(sql)
        return await self.app.pool.fetch(sql, *args)


async def test_search_hits_carry_blocks_and_page_image(env: Env, pdf_bytes: bytes) -> None:
    u = user()
    kb_id = await env.kb(u)
    pdf_id = await env.upload(u, pdf_bytes, "план.pdf")
    md_id = await env.upload(
        u, "# Насосы\n\nНасосная станция оборудования.\n\nВторой абзац.".encode(), "n.md"
    )
    _, pdf_doc = await env.ingest_ok(u, kb_id, pdf_id)
    _, md_doc = await env.ingest_ok(u, kb_id, md_id)
    details = {
        d.id: await env.rag.GetDocument(P.GetDocumentRequest(id=d.id), metadata=env.md(u))
        for d in (pdf_doc, md_doc)
    }

    hits = await env.search(u, [kb_id], "оборудование насосной станции", top_k=20)
    assert {h.document_id for h in hits} == {pdf_doc.id, md_doc.id}
    for hit in hits:
        detail = details[hit.document_id]
        by_id = {b.id: b for b in detail.blocks}
        # The blocks themselves, in the hit's (reading) order, exactly as GetDocument has them.
        assert [b.id for b in hit.blocks] == list(hit.block_ids) and hit.blocks
        assert list(hit.blocks) == [by_id[i] for i in hit.block_ids]
        assert all(b.page == hit.page for b in hit.blocks)
        page = detail.pages[hit.page - 1]
        assert hit.page_image == page and hit.page_image.number == hit.page
        if hit.document_id == pdf_doc.id:
            assert hit.page_image.image_file_id and hit.page_image.width_px > 0
            for block in hit.blocks:  # normalised and pixel boxes on the page image
                assert block.HasField("box") and block.box.HasField("pixels")
                assert (block.box.page_width, block.box.page_height) == (
                    page.width_px,
                    page.height_px,
                )
        else:
            assert hit.page_image == P.Page(number=1)  # Markdown: no image, no size
            assert not any(b.HasField("box") for b in hit.blocks)
    pdf_hits = [h for h in hits if h.document_id == pdf_doc.id]
    assert {h.page for h in pdf_hits} == {1, 2}

    # One query for all hits' blocks and pages, however many hits and documents.
    spec = env.rag_app.spec
    assert isinstance(spec, RagSpec) and spec.rag is not None
    counting = CountingPool(env.rag_app)
    searcher = Searcher(store=Store(counting), index=spec.rag.index, embedder=spec.rag.embedder)
    found = await searcher.search(
        u,
        SearchRequest(
            knowledge_bases=[(kb_id, uuid.UUID(kb_id))],
            query="оборудование насосной станции",
            top_k=20,
            mode=SearchMode.HYBRID,
        ),
    )
    assert len(found) == len(hits) >= 3
    assert [f.hit.chunk_id for f in found] == [h.chunk_id for h in hits]
    assert len(counting.queries) == 2  # the knowledge bases' owner, then every hit's context
    assert "unnest" in counting.queries[1]
    # Another user's search context is empty even for the same document ids.
    other = await Store(env.rag_app).hit_context(
        user(), [HitKey(uuid.UUID(h.document_id), h.page, tuple(h.block_ids)) for h in hits]
    )
    assert not other.pages and not other.blocks


# --- error reasons ------------------------------------------------------------------------


async def test_error_reasons(env: Env, cyrillic_font: Path) -> None:
    alice, bob = user(), user()
    kb_a = await env.kb(alice)
    # Another user's knowledge base: NOT_FOUND with its reason and a localized message.
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await env.rag.GetKnowledgeBase(P.GetKnowledgeBaseRequest(id=kb_a), metadata=env.md(bob))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert reason(info.value) == "NOT_FOUND"
    assert error_info(info.value).domain
    assert localized(info.value).message

    # Over the page limit (20 in this module): RESOURCE_EXHAUSTED naming the limit.
    big = await env.upload(alice, make_pdf(cyrillic_font, pages=21), "big.pdf")
    _, error = await env.ingest(alice, kb_a, big)
    assert error is not None and error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert reason(error) == "RESOURCE_EXHAUSTED"
    assert dict(error_info(error).metadata) == {"limit": "pages", "maximum": "20"}

    # A file that is not what it is named: INVALID_ARGUMENT, UNSUPPORTED_FORMAT.
    not_annotation = await env.upload(alice, b'{"rows": [1, 2, 3]}', "data.json")
    _, error = await env.ingest(alice, kb_a, not_annotation)
    assert error is not None and error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason(error) == "UNSUPPORTED_FORMAT"
    docs = await env.rag.ListDocuments(
        P.ListDocumentsRequest(knowledge_base_id=kb_a), metadata=env.md(alice)
    )
    # The PDF failed in its run (PDFs parse as its first stage); the JSON file was refused
    # before anything changed.
    assert [(d.file_id, d.status) for d in docs.documents] == [(big, P.DOCUMENT_STATUS_FAILED)]


async def test_hostile_inputs_are_invalid_argument(env: Env) -> None:
    u = user()
    kb_id = await env.kb(u)

    def limit(error: grpc.aio.AioRpcError) -> tuple[str, str]:
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
        meta = dict(error_info(error).metadata)
        return meta["limit"], meta["maximum"]

    # A ~550-byte PDF with one 14400 x 14400 pt page: refused from its size in points,
    # before any render; the document ends FAILED with the reason, no page images.
    giant = await env.upload(u, giant_page_pdf(), "poster.pdf")
    events, error = await env.ingest(u, kb_id, giant)
    assert error is not None and limit(error) == ("page_pixels", str(DEFAULT_MAX_PAGE_PIXELS))
    assert all(e.WhichOneof("event") != "done" for e in events)
    detail = await env.rag.GetDocument(
        P.GetDocumentRequest(id=events[0].document_id), metadata=env.md(u)
    )
    assert detail.document.status == P.DOCUMENT_STATUS_FAILED
    assert "pixels" in detail.document.error and not detail.pages

    # 100k nested brackets in a JSON annotation: INVALID_ARGUMENT, not INTERNAL.
    deep = await env.upload(u, b"[" * 100_000 + b"]" * 100_000, "deep.json")
    _, error = await env.ingest(u, kb_id, deep)
    assert error is not None and limit(error) == ("json_depth", "64")

    # HTML or Markdown over the size budget (1 MB in this module).
    for name, body in (
        ("big.html", b"<html><body>" + b"<p>text</p>" * 100_000 + b"</body></html>"),
        ("big.md", b"# Big\n\n" + b"text " * 250_000),
    ):
        file_id = await env.upload(u, body, name)
        _, error = await env.ingest(u, kb_id, file_id)
        assert error is not None and limit(error) == ("text_bytes", "1000000")
    # Refused before anything changed: only the PDF left a (FAILED) document.
    docs = await env.rag.ListDocuments(
        P.ListDocumentsRequest(knowledge_base_id=kb_id), metadata=env.md(u)
    )
    assert [(d.file_id, d.status) for d in docs.documents] == [(giant, P.DOCUMENT_STATUS_FAILED)]


# --- page tokens --------------------------------------------------------------------------


async def test_page_tokens_are_scoped_and_checked(env: Env) -> None:
    u = user()
    md = env.md(u)
    kb_1, kb_2 = await env.kb(u, "one"), await env.kb(u, "two")
    for kb_id in (kb_1, kb_2):
        for n in range(2):
            text = f"Документ {n}.\n\nВторой абзац.\n\nТретий абзац."
            f = await env.upload(u, text.encode(), f"d{n}.txt")
            await env.ingest_ok(u, kb_id, f)
    first = await env.rag.ListDocuments(
        P.ListDocumentsRequest(knowledge_base_id=kb_1, page_size=1), metadata=md
    )
    assert first.next_page_token
    # The token of kb_1's list, reused for kb_2: refused, not silently applied.
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await env.rag.ListDocuments(
            P.ListDocumentsRequest(
                knowledge_base_id=kb_2, page_size=1, page_token=first.next_page_token
            ),
            metadata=md,
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (reason(info.value), bad_field(info.value)) == ("INVALID_PAGE_TOKEN", "page_token")
    # ... by another user, or by another List RPC: refused too.
    foreign = [
        env.rag.ListDocuments(
            P.ListDocumentsRequest(knowledge_base_id=kb_1, page_token=first.next_page_token),
            metadata=env.md(user()),
        ),
        env.rag.ListKnowledgeBases(
            P.ListKnowledgeBasesRequest(page_token=first.next_page_token), metadata=md
        ),
        env.rag.ListKnowledgeBases(P.ListKnowledgeBasesRequest(page_token="garbage!"), metadata=md),
    ]
    for call in foreign:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert reason(info.value) == "INVALID_PAGE_TOKEN"
    # Its own continuation still works.
    rest = await env.rag.ListDocuments(
        P.ListDocumentsRequest(knowledge_base_id=kb_1, page_token=first.next_page_token),
        metadata=md,
    )
    assert len(rest.documents) == 1 and not rest.next_page_token
    assert rest.documents[0].id != first.documents[0].id

    # ListKnowledgeBases: a token is bound to its clone/chat filter.
    bound = [await env.kb(u, f"c{n}", clone_id="clone-x") for n in range(2)]
    page = await env.rag.ListKnowledgeBases(
        P.ListKnowledgeBasesRequest(clone_id="clone-x", page_size=1), metadata=md
    )
    assert [k.id for k in page.knowledge_bases] == [bound[1]]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await env.rag.ListKnowledgeBases(
            P.ListKnowledgeBasesRequest(clone_id="clone-y", page_token=page.next_page_token),
            metadata=md,
        )
    assert reason(info.value) == "INVALID_PAGE_TOKEN"

    # GetDocument's block pages: bound to the document and the page range.
    doc_id = first.documents[0].id
    other_doc = rest.documents[0].id
    blocks = await env.rag.GetDocument(
        P.GetDocumentRequest(id=doc_id, block_page_size=1, first_page=1, last_page=1),
        metadata=md,
    )
    token = blocks.next_block_page_token
    assert len(blocks.blocks) == 1 and token
    for bad in (
        P.GetDocumentRequest(id=doc_id, block_page_size=1, block_page_token=token),  # range
        P.GetDocumentRequest(
            id=other_doc, block_page_size=1, first_page=1, last_page=1, block_page_token=token
        ),
        P.GetDocumentRequest(id=doc_id, block_page_token="nonsense"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await env.rag.GetDocument(bad, metadata=md)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (reason(info.value), bad_field(info.value)) == (
            "INVALID_PAGE_TOKEN",
            "block_page_token",
        )


async def test_paging_is_stable_under_inserts(env: Env) -> None:
    u = user()
    md = env.md(u)
    before = [await env.kb(u, f"kb{i}") for i in range(5)]
    seen: list[str] = []
    page = await env.rag.ListKnowledgeBases(P.ListKnowledgeBasesRequest(page_size=2), metadata=md)
    seen += [k.id for k in page.knowledge_bases]
    token = page.next_page_token
    added: list[str] = []
    while token:
        # New knowledge bases arrive between pages: they neither shift nor repeat the rest.
        added.append(await env.kb(u, f"new{len(added)}"))
        page = await env.rag.ListKnowledgeBases(
            P.ListKnowledgeBasesRequest(page_size=2, page_token=token), metadata=md
        )
        seen += [k.id for k in page.knowledge_bases]
        token = page.next_page_token
    assert seen == before[::-1]
    assert len(added) == 2
    everything = await env.rag.ListKnowledgeBases(P.ListKnowledgeBasesRequest(), metadata=md)
    assert [k.id for k in everything.knowledge_bases] == added[::-1] + before[::-1]

    # Documents: the same with ingests between pages.
    kb_id = await env.kb(u)
    docs = []
    for n in range(3):
        f = await env.upload(u, f"Текст {n}.".encode(), f"t{n}.txt")
        docs.append((await env.ingest_ok(u, kb_id, f))[1].id)
    listed: list[str] = []
    token = ""
    n = 0
    while True:
        part = await env.rag.ListDocuments(
            P.ListDocumentsRequest(knowledge_base_id=kb_id, page_size=1, page_token=token),
            metadata=md,
        )
        listed += [d.id for d in part.documents]
        token = part.next_page_token
        if not token:
            break
        f = await env.upload(u, f"Новый {n}.".encode(), f"new{n}.txt")
        await env.ingest_ok(u, kb_id, f)
        n += 1
    assert listed == docs[::-1]
