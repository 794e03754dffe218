"""The other services, as the chat domain needs them: the user's provider key (auth),
document search whose hits carry their blocks and page image, knowledge bases and
ingestion (RAG), files (storage, through the common `StorageClient`), clones and their
adapters (training). Each is a small protocol with a gRPC implementation built from the
App's channels and deadlines (`server.py`); tests may substitute doubles. Calls relay the
caller automatically (services.common.channels); failures are mapped once, by
`services.common.remote.map_rpc_error`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
from google.protobuf import json_format

from aivera.auth.v1 import auth_pb2, auth_pb2_grpc
from aivera.chat.v1 import chat_pb2
from aivera.rag.v1 import rag_pb2, rag_pb2_grpc
from aivera.storage.v1 import storage_pb2
from aivera.training.v1 import clones_pb2, clones_pb2_grpc, models_pb2, models_pb2_grpc
from services.common.errors import FailedPrecondition, Reason
from services.common.remote import Deadlines, StorageClient, map_rpc_error


def box_dict(box: Any) -> dict[str, Any] | None:
    """A BoundingBox proto as the JSON stored in the database (None when unset)."""
    if box is None or not box.ByteSize():
        return None
    return dict(json_format.MessageToDict(box))


# -- data the pipeline works with ---------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Block:
    """A document block: what the context shows and request_images crops."""

    id: str
    document_id: str
    page: int
    kind: str
    text: str
    box: dict[str, Any] | None  # BoundingBox JSON (normalized, pixels, page size)
    score: float = 0.0
    # The id the model sees in this turn when `id` alone is ambiguous (block ids are
    # unique within a document only); empty: `id`.
    key: str = ""

    @property
    def handle(self) -> str:
        """What the model calls the block (context `id`, request_images)."""
        return self.key or self.id


@dataclass(frozen=True, slots=True)
class PageInfo:
    """A page of a document with its rendered image (image_file_id '' when none)."""

    number: int
    image_file_id: str
    width: int
    height: int


@dataclass(frozen=True, slots=True)
class DocumentInfo:
    """A document's source file and one of its pages (for zoom)."""

    id: str
    file_id: str
    filename: str
    format: int  # rag DocumentFormat
    page: PageInfo | None
    knowledge_base_id: str = ""


@dataclass(frozen=True, slots=True)
class Hit:
    """A search hit with the blocks it was built from and its page image."""

    text: str
    score: float
    document_id: str
    page: int
    block_ids: list[str]
    box: dict[str, Any] | None
    filename: str = ""
    blocks: tuple[Block, ...] = ()
    page_image: PageInfo | None = None


@dataclass(frozen=True, slots=True)
class StoredImage:
    file_id: str
    size_bytes: int


@dataclass(frozen=True, slots=True)
class Clone:
    id: str
    persona: str
    active_model_id: str
    knowledge_base_id: str
    base_model: str
    status: int = clones_pb2.CLONE_STATUS_UNSPECIFIED


@dataclass(frozen=True, slots=True)
class Artifact:
    """A clone's model as chat serves it: its base model, files (name, storage file id,
    sha256) and whether the simulate executor made it (weights that change nothing)."""

    id: str
    base_model: str
    files: tuple[tuple[str, str, str], ...]
    simulated: bool = False


@dataclass(frozen=True, slots=True)
class IngestUpdate:
    """Where an attachment's ingestion stands."""

    document_id: str
    status: int  # AttachmentStatus
    error: str = ""


# -- protocols ------------------------------------------------------------------------------
class Keys(Protocol):
    async def gemini_key(self, user_id: str) -> str | None: ...


class Documents(Protocol):
    async def search(
        self, kb_ids: list[str], query: str, top_k: int, document_ids: list[str] | None = None
    ) -> list[Hit]: ...

    async def document(self, document_id: str, page: int) -> DocumentInfo: ...

    async def create_chat_kb(self, chat_id: str) -> str: ...

    async def check_kb(self, kb_id: str) -> None: ...

    async def delete_document(self, document_id: str) -> None: ...

    def ingest(self, kb_id: str, file_id: str) -> AsyncIterator[IngestUpdate]: ...


class Files(Protocol):
    async def file_info(self, file_id: str) -> tuple[str, str]: ...

    async def download(self, file_id: str) -> bytes: ...

    async def store_image(
        self, data: bytes, filename: str, labels: dict[str, str]
    ) -> StoredImage: ...

    async def signed_url(self, file_id: str, ttl: int) -> tuple[str, dt.datetime | None]: ...


class Clones(Protocol):
    async def clone(self, clone_id: str) -> Clone: ...

    async def artifact(self, model_id: str) -> Artifact: ...


# -- gRPC implementations -----------------------------------------------------------------
class GrpcKeys:
    def __init__(self, channel: grpc.aio.Channel, deadlines: Deadlines) -> None:
        self.stub = auth_pb2_grpc.AuthInternalServiceStub(channel)
        self.deadlines = deadlines

    async def gemini_key(self, user_id: str) -> str | None:
        """The user's Gemini key; None when the user has none."""
        try:
            reply = await self.stub.GetProviderKey(
                auth_pb2.GetProviderKeyRequest(user_id=user_id, provider=auth_pb2.PROVIDER_GEMINI),
                timeout=self.deadlines.lookup,
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise map_rpc_error(exc, "provider key") from None
        return reply.api_key or None


def _kind(kind: int) -> str:
    return rag_pb2.BlockKind.Name(kind).removeprefix("BLOCK_KIND_").lower()  # type: ignore[arg-type]


def _page(page: rag_pb2.Page) -> PageInfo:
    return PageInfo(page.number, page.image_file_id, page.width_px, page.height_px)


def _hit(h: rag_pb2.SearchHit) -> Hit:
    return Hit(
        text=h.text,
        score=h.score,
        document_id=h.document_id,
        page=h.page,
        block_ids=list(h.block_ids),
        box=box_dict(h.box) if h.HasField("box") else None,
        filename=h.filename,
        blocks=tuple(
            Block(
                id=b.id,
                document_id=h.document_id,
                page=b.page or h.page,
                kind=_kind(b.kind),
                text=b.text,
                box=box_dict(b.box) if b.HasField("box") else None,
                score=h.score,
            )
            for b in h.blocks
        ),
        page_image=_page(h.page_image) if h.HasField("page_image") else None,
    )


class GrpcDocuments:
    def __init__(self, channel: grpc.aio.Channel, deadlines: Deadlines) -> None:
        self.stub = rag_pb2_grpc.RagServiceStub(channel)
        self.deadlines = deadlines

    async def search(
        self, kb_ids: list[str], query: str, top_k: int, document_ids: list[str] | None = None
    ) -> list[Hit]:
        """One Search (only `document_ids` when given): the hits with their blocks and
        page images."""
        try:
            reply = await self.stub.Search(
                rag_pb2.SearchRequest(
                    knowledge_base_ids=kb_ids,
                    query=query[:2000],
                    top_k=top_k,
                    document_ids=document_ids or [],
                ),
                timeout=self.deadlines.work,
            )
        except grpc.aio.AioRpcError as exc:
            raise map_rpc_error(exc, "document search") from None
        return [_hit(h) for h in reply.hits]

    async def document(self, document_id: str, page: int) -> DocumentInfo:
        """The document's source file and format with page `page` (one call: blocks are
        not needed, the hits carry them)."""
        try:
            reply = await self.stub.GetDocument(
                rag_pb2.GetDocumentRequest(
                    id=document_id, first_page=page, last_page=page, block_page_size=1
                ),
                timeout=self.deadlines.lookup,
            )
        except grpc.aio.AioRpcError as exc:
            raise map_rpc_error(exc, "document") from None
        doc = reply.document
        found = next((p for p in reply.pages if p.number == page), None)
        return DocumentInfo(
            id=doc.id,
            file_id=doc.file_id,
            filename=doc.filename,
            format=doc.format,
            page=None if found is None else _page(found),
            knowledge_base_id=doc.knowledge_base_id,
        )

    async def check_kb(self, kb_id: str) -> None:
        """NOT_FOUND unless the knowledge base is the caller's."""
        try:
            await self.stub.GetKnowledgeBase(
                rag_pb2.GetKnowledgeBaseRequest(id=kb_id), timeout=self.deadlines.lookup
            )
        except grpc.aio.AioRpcError as exc:
            raise map_rpc_error(exc, "knowledge base") from None

    async def delete_document(self, document_id: str) -> None:
        """Deletes a document of the caller; one already gone is not an error."""
        try:
            await self.stub.DeleteDocument(
                rag_pb2.DeleteDocumentRequest(id=document_id), timeout=self.deadlines.work
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise map_rpc_error(exc, "document") from None

    async def create_chat_kb(self, chat_id: str) -> str:
        try:
            kb = await self.stub.CreateKnowledgeBase(
                rag_pb2.CreateKnowledgeBaseRequest(
                    name=f"chat-{chat_id}", description="Вложения чата", chat_id=chat_id
                ),
                timeout=self.deadlines.work,
            )
        except grpc.aio.AioRpcError as exc:
            raise map_rpc_error(exc, "knowledge base") from None
        return str(kb.id)

    async def ingest(self, kb_id: str, file_id: str) -> AsyncIterator[IngestUpdate]:
        """Updates until the document is READY or FAILED (the last update)."""
        call = self.stub.IngestDocument(
            rag_pb2.IngestDocumentRequest(knowledge_base_id=kb_id, file_id=file_id),
            timeout=self.deadlines.transfer,
        )
        document_id = ""
        try:
            async for event in call:
                document_id = event.document_id or document_id
                if event.HasField("done"):
                    doc = event.done.document
                    if doc.status == rag_pb2.DOCUMENT_STATUS_FAILED:
                        yield IngestUpdate(
                            doc.id or document_id,
                            chat_pb2.ATTACHMENT_STATUS_FAILED,
                            doc.error or "ingestion failed",
                        )
                    else:
                        yield IngestUpdate(doc.id or document_id, chat_pb2.ATTACHMENT_STATUS_READY)
                    return
                yield IngestUpdate(document_id, chat_pb2.ATTACHMENT_STATUS_INGESTING)
        except grpc.aio.AioRpcError as exc:
            yield IngestUpdate(
                document_id, chat_pb2.ATTACHMENT_STATUS_FAILED, exc.details() or exc.code().name
            )
            return
        yield IngestUpdate(
            document_id, chat_pb2.ATTACHMENT_STATUS_FAILED, "ingestion ended without a result"
        )


class GrpcFiles:
    """Files through the common storage client (one chunk size, settings' deadlines)."""

    def __init__(self, storage: StorageClient) -> None:
        self.storage = storage

    async def file_info(self, file_id: str) -> tuple[str, str]:
        """(filename, content type); NOT_FOUND for a missing or another user's file."""
        f = await self.storage.get_file(file_id)
        if f.status != storage_pb2.FILE_STATUS_READY:
            raise FailedPrecondition(f"file {file_id!r} is not ready", reason=Reason.FILE_NOT_READY)
        return f.filename, f.content_type

    async def download(self, file_id: str) -> bytes:
        return await self.storage.download(file_id)

    async def store_image(self, data: bytes, filename: str, labels: dict[str, str]) -> StoredImage:
        f = await self.storage.upload(storage_pb2.BUCKET_IMAGES, filename, data, labels)
        return StoredImage(file_id=f.id, size_bytes=f.size_bytes)

    async def signed_url(self, file_id: str, ttl: int) -> tuple[str, dt.datetime | None]:
        return await self.storage.download_url(file_id, ttl)


class GrpcClones:
    def __init__(self, channel: grpc.aio.Channel, deadlines: Deadlines) -> None:
        self.clones = clones_pb2_grpc.CloneServiceStub(channel)
        self.models = models_pb2_grpc.ModelServiceStub(channel)
        self.deadlines = deadlines

    async def clone(self, clone_id: str) -> Clone:
        try:
            c = await self.clones.GetClone(
                clones_pb2.GetCloneRequest(id=clone_id), timeout=self.deadlines.lookup
            )
        except grpc.aio.AioRpcError as exc:
            raise map_rpc_error(exc, "clone") from None
        return Clone(
            id=c.id,
            persona=c.persona_prompt,
            active_model_id=c.active_model_id,
            knowledge_base_id=c.knowledge_base_id,
            base_model=c.base_model,
            status=c.status,
        )

    async def artifact(self, model_id: str) -> Artifact:
        """The model's base model, files and `simulated` flag."""
        try:
            m = await self.models.GetModel(
                models_pb2.GetModelRequest(id=model_id), timeout=self.deadlines.lookup
            )
        except grpc.aio.AioRpcError as exc:
            raise map_rpc_error(exc, "model") from None
        return Artifact(
            id=m.id or model_id,
            base_model=m.base_model,
            files=tuple((f.name, f.file_id, f.sha256) for f in m.files),
            simulated=m.simulated,
        )
