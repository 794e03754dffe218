"""The other services, as the chat domain needs them: the user's provider key (auth),
document search and page details (RAG), files (storage), clones and their adapters
(training). Each is a small protocol with a gRPC implementation; tests may substitute
doubles. Calls relay the caller automatically (services.common.channels)."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc
from google.protobuf import json_format

from aivera.auth.v1 import auth_pb2, auth_pb2_grpc
from aivera.rag.v1 import rag_pb2, rag_pb2_grpc
from aivera.storage.v1 import storage_pb2, storage_pb2_grpc
from aivera.training.v1 import clones_pb2, clones_pb2_grpc, models_pb2, models_pb2_grpc
from services.common.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    ServiceError,
    Unavailable,
)
from services.common.server import App

CHUNK = 1024 * 1024


def box_dict(box: Any) -> dict[str, Any] | None:
    """A BoundingBox proto as the JSON stored in the database (None when unset)."""
    if box is None or not box.ByteSize():
        return None
    return dict(json_format.MessageToDict(box))


def map_rpc_error(exc: grpc.aio.AioRpcError, what: str) -> ServiceError:
    """A failed call to another service as the status this service answers with."""
    code = exc.code()
    detail = exc.details() or ""
    if code == grpc.StatusCode.NOT_FOUND:
        return NotFound(detail or f"{what} not found")
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidArgument(detail or f"{what}: invalid argument")
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return FailedPrecondition(detail or f"{what}: failed precondition")
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return ResourceExhausted(detail or f"{what}: limit reached")
    return Unavailable(f"{what} is unavailable ({code.name})")


# -- data the pipeline works with ---------------------------------------------------------
@dataclass
class Block:
    """A document block: what request_images takes and the context shows."""

    id: str
    document_id: str
    page: int
    kind: str
    text: str
    box: dict[str, Any] | None  # BoundingBox JSON (normalized, pixels, page size)
    score: float = 0.0


@dataclass
class PageInfo:
    number: int
    image_file_id: str
    width: int
    height: int


@dataclass
class DocumentInfo:
    id: str
    file_id: str
    filename: str
    format: int  # rag DocumentFormat
    pages: dict[int, PageInfo] = field(default_factory=dict)
    blocks: dict[str, Block] = field(default_factory=dict)


@dataclass
class Hit:
    text: str
    score: float
    document_id: str
    page: int
    block_ids: list[str]
    box: dict[str, Any] | None
    filename: str = ""


@dataclass
class StoredImage:
    file_id: str
    size_bytes: int


@dataclass
class Clone:
    id: str
    persona: str
    active_model_id: str
    knowledge_base_id: str
    base_model: str
    status: int = 0  # training CloneStatus


# -- protocols ------------------------------------------------------------------------------
class Keys(Protocol):
    async def gemini_key(self, user_id: str) -> str | None: ...


class Documents(Protocol):
    async def search(self, kb_ids: list[str], query: str, top_k: int) -> list[Hit]: ...

    async def document(self, document_id: str, page: int) -> DocumentInfo: ...

    async def create_chat_kb(self, chat_id: str) -> str: ...

    async def check_kb(self, kb_id: str) -> None: ...

    def ingest(self, kb_id: str, file_id: str) -> AsyncIterator[tuple[str, int, str]]: ...


class Files(Protocol):
    async def file_info(self, file_id: str) -> tuple[str, str]: ...

    async def download(self, file_id: str) -> bytes: ...

    async def store_image(
        self, data: bytes, filename: str, labels: dict[str, str]
    ) -> StoredImage: ...

    async def signed_url(self, file_id: str, ttl: int) -> tuple[str, dt.datetime | None]: ...


class Clones(Protocol):
    async def clone(self, clone_id: str) -> Clone: ...

    async def adapter_files(self, model_id: str) -> list[tuple[str, str, str]]: ...


# -- gRPC implementations -----------------------------------------------------------------
class GrpcKeys:
    def __init__(self, app: App) -> None:
        self.app = app

    async def gemini_key(self, user_id: str) -> str | None:
        stub = auth_pb2_grpc.AuthInternalServiceStub(self.app.channel(self.app.settings.auth_addr))
        try:
            reply = await stub.GetProviderKey(
                auth_pb2.GetProviderKeyRequest(user_id=user_id, provider=auth_pb2.PROVIDER_GEMINI),
                timeout=10,
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise Unavailable(f"the auth service is unavailable ({exc.code().name})") from None
        return reply.api_key or None


class GrpcDocuments:
    def __init__(self, app: App) -> None:
        self.app = app

    def _stub(self) -> rag_pb2_grpc.RagServiceStub:
        return rag_pb2_grpc.RagServiceStub(self.app.channel(self.app.settings.rag_addr))

    async def search(self, kb_ids: list[str], query: str, top_k: int) -> list[Hit]:
        try:
            reply = await self._stub().Search(
                rag_pb2.SearchRequest(knowledge_base_ids=kb_ids, query=query[:2000], top_k=top_k),
                timeout=30,
            )
        except grpc.aio.AioRpcError as exc:
            raise map_rpc_error(exc, "document search") from None
        return [
            Hit(
                text=h.text,
                score=h.score,
                document_id=h.document_id,
                page=h.page,
                block_ids=list(h.block_ids),
                box=box_dict(h.box) if h.HasField("box") else None,
                filename=h.filename,
            )
            for h in reply.hits
        ]

    async def document(self, document_id: str, page: int) -> DocumentInfo:
        """The document with the pages list and the blocks of `page` (0: every page)."""
        token = ""
        info: DocumentInfo | None = None
        try:
            while True:
                reply = await self._stub().GetDocument(
                    rag_pb2.GetDocumentRequest(
                        id=document_id,
                        first_page=page,
                        last_page=page,
                        block_page_size=200,
                        block_page_token=token,
                    ),
                    timeout=30,
                )
                if info is None:
                    doc = reply.document
                    info = DocumentInfo(
                        id=doc.id, file_id=doc.file_id, filename=doc.filename, format=doc.format
                    )
                for p in reply.pages:
                    info.pages[p.number] = PageInfo(
                        p.number, p.image_file_id, p.width_px, p.height_px
                    )
                for b in reply.blocks:
                    info.blocks[b.id] = Block(
                        id=b.id,
                        document_id=document_id,
                        page=b.page,
                        kind=rag_pb2.BlockKind.Name(b.kind).removeprefix("BLOCK_KIND_").lower(),
                        text=b.text,
                        box=box_dict(b.box) if b.HasField("box") else None,
                    )
                token = reply.next_block_page_token
                if not token:
                    return info
        except grpc.aio.AioRpcError as exc:
            raise map_rpc_error(exc, "document") from None

    async def check_kb(self, kb_id: str) -> None:
        """NOT_FOUND unless the knowledge base is the caller's."""
        try:
            await self._stub().GetKnowledgeBase(
                rag_pb2.GetKnowledgeBaseRequest(id=kb_id), timeout=10
            )
        except grpc.aio.AioRpcError as exc:
            raise map_rpc_error(exc, "knowledge base") from None

    async def create_chat_kb(self, chat_id: str) -> str:
        try:
            kb = await self._stub().CreateKnowledgeBase(
                rag_pb2.CreateKnowledgeBaseRequest(
                    name=f"chat-{chat_id}", description="Вложения чата", chat_id=chat_id
                ),
                timeout=30,
            )
        except grpc.aio.AioRpcError as exc:
            raise map_rpc_error(exc, "knowledge base") from None
        return str(kb.id)

    async def ingest(self, kb_id: str, file_id: str) -> AsyncIterator[tuple[str, int, str]]:
        """(document_id, status, error) updates: status is an AttachmentStatus value."""
        call = self._stub().IngestDocument(
            rag_pb2.IngestDocumentRequest(knowledge_base_id=kb_id, file_id=file_id),
        )
        document_id = ""
        try:
            async for event in call:
                document_id = event.document_id or document_id
                if event.HasField("done"):
                    doc = event.done.document
                    if doc.status == rag_pb2.DOCUMENT_STATUS_FAILED:
                        yield doc.id or document_id, 3, doc.error or "ingestion failed"
                    else:
                        yield doc.id or document_id, 2, ""
                    return
                yield document_id, 1, ""
        except grpc.aio.AioRpcError as exc:
            yield document_id, 3, exc.details() or exc.code().name
            return
        yield document_id, 3, "ingestion ended without a result"


class GrpcFiles:
    def __init__(self, app: App) -> None:
        self.app = app

    def _stub(self) -> storage_pb2_grpc.StorageServiceStub:
        return storage_pb2_grpc.StorageServiceStub(self.app.channel(self.app.settings.storage_addr))

    async def file_info(self, file_id: str) -> tuple[str, str]:
        """(filename, content type); NOT_FOUND for a missing or another user's file."""
        try:
            f = await self._stub().GetFile(storage_pb2.GetFileRequest(id=file_id), timeout=10)
        except grpc.aio.AioRpcError as exc:
            raise map_rpc_error(exc, "file") from None
        if f.status != storage_pb2.FILE_STATUS_READY:
            raise FailedPrecondition(f"file {file_id!r} is not ready")
        return f.filename, f.content_type

    async def download(self, file_id: str) -> bytes:
        parts: list[bytes] = []
        try:
            async for msg in self._stub().Download(
                storage_pb2.DownloadRequest(id=file_id),
                timeout=60,
            ):
                if msg.HasField("chunk"):
                    parts.append(msg.chunk)
        except grpc.aio.AioRpcError as exc:
            raise map_rpc_error(exc, "file download") from None
        return b"".join(parts)

    async def store_image(self, data: bytes, filename: str, labels: dict[str, str]) -> StoredImage:
        async def requests() -> AsyncIterator[storage_pb2.UploadRequest]:
            yield storage_pb2.UploadRequest(
                header=storage_pb2.UploadHeader(
                    bucket=storage_pb2.BUCKET_IMAGES,
                    filename=filename,
                    size_bytes=len(data),
                    sha256=hashlib.sha256(data).hexdigest(),
                    labels=labels,
                )
            )
            for i in range(0, len(data), CHUNK):
                yield storage_pb2.UploadRequest(chunk=data[i : i + CHUNK])

        try:
            f = await self._stub().Upload(
                requests(),
                timeout=60,
            )
        except grpc.aio.AioRpcError as exc:
            raise map_rpc_error(exc, "image upload") from None
        return StoredImage(file_id=f.id, size_bytes=f.size_bytes)

    async def signed_url(self, file_id: str, ttl: int) -> tuple[str, dt.datetime | None]:
        try:
            reply = await self._stub().CreateDownloadUrl(
                storage_pb2.CreateDownloadUrlRequest(id=file_id, ttl_seconds=ttl), timeout=10
            )
        except grpc.aio.AioRpcError as exc:
            raise map_rpc_error(exc, "download URL") from None
        expire = reply.expire_time.ToDatetime(dt.UTC) if reply.HasField("expire_time") else None
        return reply.url, expire


class GrpcClones:
    def __init__(self, app: App) -> None:
        self.app = app

    async def clone(self, clone_id: str) -> Clone:
        stub = clones_pb2_grpc.CloneServiceStub(self.app.channel(self.app.settings.training_addr))
        try:
            c = await stub.GetClone(clones_pb2.GetCloneRequest(id=clone_id), timeout=10)
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

    async def adapter_files(self, model_id: str) -> list[tuple[str, str, str]]:
        """(name, storage file id, sha256) of the adapter's files."""
        stub = models_pb2_grpc.ModelServiceStub(self.app.channel(self.app.settings.training_addr))
        try:
            m = await stub.GetModel(models_pb2.GetModelRequest(id=model_id), timeout=10)
        except grpc.aio.AioRpcError as exc:
            raise map_rpc_error(exc, "model") from None
        return [(f.name, f.file_id, f.sha256) for f in m.files]
