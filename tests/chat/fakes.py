"""Test doubles for the chat tests: a RAG service double (served over real gRPC, so the
chat's gRPC client is exercised) whose documents come from a real generated PDF page: the
PDF and its rendered page image live in the real storage service, blocks carry real
boxes. Search answers like the real service: each hit carries its blocks and its page
(with the rendered image), and every RPC is counted so tests can check a turn's RAG round
trips. Used while the RAG service is not wired into the chat tests."""

from __future__ import annotations

import asyncio
import hashlib
import io
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pypdfium2 as pdfium
from fpdf import FPDF
from PIL import Image

from aivera.common.v1 import common_pb2
from aivera.rag.v1 import rag_pb2
from aivera.storage.v1 import storage_pb2, storage_pb2_grpc
from services.common.context import require_user_id
from services.common.errors import NotFound

RENDER_DPI = 100
# Blocks of the generated page: id → (kind, text, normalized box).
RED_BOX = (0.20, 0.45, 0.60, 0.70)  # the «drawing»: a red rectangle
BLOCKS: dict[str, tuple[int, str, tuple[float, float, float, float]]] = {
    "b-title": (rag_pb2.BLOCK_KIND_HEADING, "Spetsifikatsiya KZh-1", (0.1, 0.05, 0.9, 0.1)),
    "b-text": (
        rag_pb2.BLOCK_KIND_TEXT,
        "Beton klassa B25, armatura A500C, shag 200 mm.",
        (0.1, 0.15, 0.9, 0.2),
    ),
    "b-drawing": (rag_pb2.BLOCK_KIND_IMAGE, "Chertezh uzla 1", RED_BOX),
}


def make_pdf() -> bytes:
    """A one-page A4 PDF: a title, a paragraph and a red rectangle (a «drawing») with a
    small blue mark in its corner (visible only in a zoom)."""
    pdf = FPDF(unit="pt", format="A4")
    pdf.add_page()
    w, h = pdf.w, pdf.h
    pdf.set_font("helvetica", size=18)
    pdf.text(0.1 * w, 0.09 * h, BLOCKS["b-title"][1])
    pdf.set_font("helvetica", size=11)
    pdf.text(0.1 * w, 0.18 * h, BLOCKS["b-text"][1])
    left, top, right, bottom = RED_BOX
    pdf.set_fill_color(220, 0, 0)
    pdf.rect(left * w, top * h, (right - left) * w, (bottom - top) * h, style="F")
    pdf.set_fill_color(0, 0, 255)
    pdf.rect(left * w + 4, top * h + 4, 6, 6, style="F")
    return bytes(pdf.output())


def render_page(pdf: bytes, dpi: int = RENDER_DPI) -> bytes:
    doc = pdfium.PdfDocument(pdf)
    try:
        image = doc[0].render(scale=dpi / 72).to_pil().convert("RGB")
    finally:
        doc.close()
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


async def upload(
    stub: storage_pb2_grpc.StorageServiceStub, data: bytes, filename: str, bucket: int, md: Any
) -> str:
    async def requests() -> AsyncIterator[storage_pb2.UploadRequest]:
        yield storage_pb2.UploadRequest(
            header=storage_pb2.UploadHeader(
                bucket=bucket,  # type: ignore[arg-type]
                filename=filename,
                size_bytes=len(data),
                sha256=hashlib.sha256(data).hexdigest(),
            )
        )
        for i in range(0, len(data), 1 << 20):
            yield storage_pb2.UploadRequest(chunk=data[i : i + (1 << 20)])

    f = await stub.Upload(requests(), metadata=md)
    return str(f.id)


@dataclass
class FakeDoc:
    id: str
    owner: str
    kb_id: str
    file_id: str
    page_image_file_id: str
    width: int
    height: int


@dataclass
class FakeRag:
    """RagService double: knowledge bases and one-page documents of the generated PDF."""

    kbs: dict[str, str] = field(default_factory=dict)  # kb id → owner
    docs: dict[str, FakeDoc] = field(default_factory=dict)
    searches: list[tuple[list[str], str]] = field(default_factory=list)
    search_documents: list[list[str]] = field(default_factory=list)  # document_ids of each
    # Every RPC served, by name (Search, GetDocument, …), in order.
    calls: list[str] = field(default_factory=list)
    ingest_fail: set[str] = field(default_factory=set)  # file ids whose ingest fails
    ingested: dict[str, str] = field(default_factory=dict)  # document id → owner
    deleted: list[str] = field(default_factory=list)  # document ids, in order
    # While set and not released, ingestion stops after its first event (still INGESTING).
    ingest_hold: asyncio.Event | None = None

    def add_kb(self, owner: str) -> str:
        kb_id = str(uuid.uuid4())
        self.kbs[kb_id] = owner
        return kb_id

    async def add_document(
        self, owner: str, kb_id: str, storage: storage_pb2_grpc.StorageServiceStub, md: Any
    ) -> FakeDoc:
        pdf = make_pdf()
        page = render_page(pdf)
        width, height = Image.open(io.BytesIO(page)).size
        doc = FakeDoc(
            id=str(uuid.uuid4()),
            owner=owner,
            kb_id=kb_id,
            file_id=await upload(storage, pdf, "kzh-1.pdf", storage_pb2.BUCKET_DOCUMENTS, md),
            page_image_file_id=await upload(
                storage, page, "page-1.png", storage_pb2.BUCKET_IMAGES, md
            ),
            width=width,
            height=height,
        )
        self.docs[doc.id] = doc
        return doc

    def count(self, name: str) -> int:
        return self.calls.count(name)

    def _page(self, doc: FakeDoc) -> rag_pb2.Page:
        return rag_pb2.Page(
            number=1, image_file_id=doc.page_image_file_id, width_px=doc.width, height_px=doc.height
        )

    def _block(self, doc: FakeDoc, block_id: str) -> rag_pb2.Block:
        kind, text, (left, top, right, bottom) = BLOCKS[block_id]
        return rag_pb2.Block(
            id=block_id,
            page=1,
            kind=kind,  # type: ignore[arg-type]
            text=text,
            box=common_pb2.BoundingBox(
                page=1,
                normalized=common_pb2.NormalizedBox(left=left, top=top, right=right, bottom=bottom),
                pixels=common_pb2.PixelBox(
                    left=int(left * doc.width),
                    top=int(top * doc.height),
                    right=int(right * doc.width),
                    bottom=int(bottom * doc.height),
                ),
                page_width=doc.width,
                page_height=doc.height,
            ),
        )

    # -- RPCs -------------------------------------------------------------------------
    async def Search(self, request: rag_pb2.SearchRequest, context: Any) -> rag_pb2.SearchResponse:
        self.calls.append("Search")
        user = require_user_id()
        for kb_id in request.knowledge_base_ids:
            if self.kbs.get(kb_id) != user:
                raise NotFound(f"knowledge base {kb_id!r} not found")
        self.searches.append((list(request.knowledge_base_ids), request.query))
        self.search_documents.append(list(request.document_ids))
        hits = []
        for doc in self.docs.values():
            wanted = not request.document_ids or doc.id in request.document_ids
            if doc.kb_id in request.knowledge_base_ids and wanted:
                for n, block_id in enumerate(BLOCKS):
                    block = self._block(doc, block_id)
                    hits.append(
                        rag_pb2.SearchHit(
                            chunk_id=f"{doc.id}:{n}",
                            text=block.text,
                            score=1.0 - n * 0.1,
                            document_id=doc.id,
                            knowledge_base_id=doc.kb_id,
                            filename="kzh-1.pdf",
                            page=1,
                            block_ids=[block_id],
                            box=block.box,
                            blocks=[block],
                            page_image=self._page(doc),
                        )
                    )
        return rag_pb2.SearchResponse(hits=hits[: request.top_k or 10])

    async def GetDocument(
        self, request: rag_pb2.GetDocumentRequest, context: Any
    ) -> rag_pb2.DocumentDetail:
        self.calls.append("GetDocument")
        doc = self.docs.get(request.id)
        if doc is None or doc.owner != require_user_id():
            raise NotFound(f"document {request.id!r} not found")
        return rag_pb2.DocumentDetail(
            document=rag_pb2.Document(
                id=doc.id,
                knowledge_base_id=doc.kb_id,
                file_id=doc.file_id,
                filename="kzh-1.pdf",
                format=rag_pb2.DOCUMENT_FORMAT_PDF,
                status=rag_pb2.DOCUMENT_STATUS_READY,
                page_count=1,
            ),
            pages=[self._page(doc)],
            blocks=[self._block(doc, b) for b in BLOCKS][: request.block_page_size or None],
        )

    async def DeleteDocument(self, request: rag_pb2.DeleteDocumentRequest, context: Any) -> Any:
        from google.protobuf import empty_pb2

        self.calls.append("DeleteDocument")
        owner = self.ingested.get(request.id) or getattr(self.docs.get(request.id), "owner", None)
        if owner != require_user_id() or request.id in self.deleted:
            raise NotFound(f"document {request.id!r} not found")
        self.deleted.append(request.id)
        return empty_pb2.Empty()

    async def GetKnowledgeBase(
        self, request: rag_pb2.GetKnowledgeBaseRequest, context: Any
    ) -> rag_pb2.KnowledgeBase:
        self.calls.append("GetKnowledgeBase")
        if self.kbs.get(request.id) != require_user_id():
            raise NotFound(f"knowledge base {request.id!r} not found")
        return rag_pb2.KnowledgeBase(id=request.id, name="kb")

    async def CreateKnowledgeBase(
        self, request: rag_pb2.CreateKnowledgeBaseRequest, context: Any
    ) -> rag_pb2.KnowledgeBase:
        self.calls.append("CreateKnowledgeBase")
        kb_id = self.add_kb(require_user_id())
        return rag_pb2.KnowledgeBase(id=kb_id, name=request.name, chat_id=request.chat_id)

    async def IngestDocument(
        self, request: rag_pb2.IngestDocumentRequest, context: Any
    ) -> AsyncIterator[rag_pb2.IngestEvent]:
        self.calls.append("IngestDocument")
        user = require_user_id()
        if self.kbs.get(request.knowledge_base_id) != user:
            raise NotFound("knowledge base not found")
        doc_id = str(uuid.uuid4())
        self.ingested[doc_id] = user
        yield rag_pb2.IngestEvent(
            document_id=doc_id,
            phase=rag_pb2.IngestPhase(stage=rag_pb2.INGEST_STAGE_PARSING),
        )
        if self.ingest_hold is not None:
            await self.ingest_hold.wait()
        failed = request.file_id in self.ingest_fail
        yield rag_pb2.IngestEvent(
            document_id=doc_id,
            done=rag_pb2.IngestDone(
                document=rag_pb2.Document(
                    id=doc_id,
                    knowledge_base_id=request.knowledge_base_id,
                    file_id=request.file_id,
                    status=rag_pb2.DOCUMENT_STATUS_FAILED
                    if failed
                    else rag_pb2.DOCUMENT_STATUS_READY,
                    error="encrypted PDF" if failed else "",
                )
            ),
        )


@dataclass
class FakeTraining:
    """CloneService + ModelService doubles: clones with an adapter stored in the real
    storage service."""

    clones: dict[str, tuple[str, Any]] = field(default_factory=dict)  # id → (owner, Clone)
    models: dict[str, Any] = field(default_factory=dict)  # id → ModelArtifact

    async def GetClone(self, request: Any, context: Any) -> Any:
        found = self.clones.get(request.id)
        if found is None or found[0] != require_user_id():
            raise NotFound(f"clone {request.id!r} not found")
        return found[1]

    async def GetModel(self, request: Any, context: Any) -> Any:
        found = self.models.get(request.id)
        if found is None:
            raise NotFound(f"model {request.id!r} not found")
        return found
