"""Handlers of aivera.rag.v1.RagService: validate, call the store/index/ingest, convert.

Every handler acts for ``require_user_id()`` and passes it to every query, so another
user's knowledge base or document answers NOT_FOUND like an unknown one.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from google.protobuf import empty_pb2

from aivera.rag.v1 import rag_pb2
from services.common import pages as paging
from services.common.context import require_user_id
from services.common.errors import InvalidArgument, not_found
from services.common.protoutil import parse_uuid, timestamp
from services.rag import convert
from services.rag.chunking import MAX_CHUNK_SIZE, MIN_CHUNK_SIZE
from services.rag.index import SearchMode
from services.rag.ingest import IngestParams
from services.rag.model import DocumentFormat
from services.rag.parsers.base import MAX_DPI, MIN_DPI
from services.rag.sparse import Bm25Encoder
from services.rag.store import DocumentRow, KnowledgeBaseRow

if TYPE_CHECKING:
    from services.rag.server import RagState

MAX_NAME = 200
MAX_DESCRIPTION = 2000
MAX_REF = 200  # clone_id / chat_id
MAX_QUERY = 2000
MAX_SEARCH_KBS = 20
DEFAULT_TOP_K = 10
MAX_TOP_K = 100
DEFAULT_BLOCK_PAGE = 1000
MAX_BLOCK_PAGE = 5000

_STATUS = {
    "processing": rag_pb2.DOCUMENT_STATUS_PROCESSING,
    "ready": rag_pb2.DOCUMENT_STATUS_READY,
    "failed": rag_pb2.DOCUMENT_STATUS_FAILED,
}


def kb_proto(row: KnowledgeBaseRow) -> rag_pb2.KnowledgeBase:
    return rag_pb2.KnowledgeBase(
        id=str(row.id),
        name=row.name,
        description=row.description,
        clone_id=row.clone_id,
        chat_id=row.chat_id,
        document_count=row.document_count,
        chunk_count=row.chunk_count,
        create_time=timestamp(row.created_at),
        update_time=timestamp(row.updated_at),
    )


def document_proto(row: DocumentRow) -> rag_pb2.Document:
    fmt = (
        convert.FORMAT_TO_PROTO[DocumentFormat(row.format)]
        if row.format
        else rag_pb2.DOCUMENT_FORMAT_UNSPECIFIED
    )
    return rag_pb2.Document(
        id=str(row.id),
        knowledge_base_id=str(row.knowledge_base_id),
        file_id=row.file_id,
        filename=row.filename,
        format=fmt,
        status=_STATUS[row.status],
        error=row.error,
        page_count=row.page_count,
        block_count=row.block_count,
        chunk_count=row.chunk_count,
        create_time=timestamp(row.created_at),
        update_time=timestamp(row.updated_at),
    )


def _keyset(token: str) -> tuple[dt.datetime, uuid.UUID] | None:
    position = paging.decode_token(token)
    if position is None:
        return None
    try:
        return dt.datetime.fromisoformat(str(position["t"])), uuid.UUID(str(position["i"]))
    except (KeyError, ValueError):
        raise InvalidArgument("page_token is not valid", field="page_token") from None


def _next_token(rows: list[Any], limit: int) -> str:
    if len(rows) < limit:
        return ""
    last = rows[-1]
    return paging.encode_token({"t": last.created_at.isoformat(), "i": str(last.id)})


def _text(value: str, *, field: str, maximum: int, required: bool = False) -> str:
    if required and not value.strip():
        raise InvalidArgument(f"{field} must not be empty", field=field)
    if len(value) > maximum:
        raise InvalidArgument(f"{field} is longer than {maximum} characters", field=field)
    return value


class RagServiceServicer:
    def __init__(self, state: RagState) -> None:
        self.state = state

    # --- knowledge bases ----------------------------------------------------------------

    async def CreateKnowledgeBase(
        self, request: rag_pb2.CreateKnowledgeBaseRequest, context: Any
    ) -> rag_pb2.KnowledgeBase:
        user = require_user_id()
        row = await self.state.store().create_kb(
            user_id=user,
            name=_text(request.name.strip(), field="name", maximum=MAX_NAME, required=True),
            description=_text(request.description, field="description", maximum=MAX_DESCRIPTION),
            clone_id=_text(request.clone_id, field="clone_id", maximum=MAX_REF),
            chat_id=_text(request.chat_id, field="chat_id", maximum=MAX_REF),
        )
        return kb_proto(row)

    async def GetKnowledgeBase(
        self, request: rag_pb2.GetKnowledgeBaseRequest, context: Any
    ) -> rag_pb2.KnowledgeBase:
        user = require_user_id()
        kb_id = parse_uuid(request.id, field="id")
        row = await self.state.store().get_kb(user, kb_id)
        if row is None:
            raise not_found("knowledge base", request.id)
        return kb_proto(row)

    async def ListKnowledgeBases(
        self, request: rag_pb2.ListKnowledgeBasesRequest, context: Any
    ) -> rag_pb2.ListKnowledgeBasesResponse:
        user = require_user_id()
        limit = paging.page_size(request.page_size)
        rows = await self.state.store().list_kbs(
            user,
            limit=limit,
            after=_keyset(request.page_token),
            clone_id=request.clone_id,
            chat_id=request.chat_id,
        )
        return rag_pb2.ListKnowledgeBasesResponse(
            knowledge_bases=[kb_proto(r) for r in rows], next_page_token=_next_token(rows, limit)
        )

    async def DeleteKnowledgeBase(
        self, request: rag_pb2.DeleteKnowledgeBaseRequest, context: Any
    ) -> empty_pb2.Empty:
        user = require_user_id()
        kb_id = parse_uuid(request.id, field="id")
        store = self.state.store()
        if await store.get_kb(user, kb_id) is None:
            raise not_found("knowledge base", request.id)
        await self.state.ingestor.stop(await store.kb_document_ids(user, kb_id))
        images = await store.kb_page_images(user, kb_id)
        # Vectors first: once they are gone no search can return them, whatever happens
        # to the rows; a failure here leaves the rows, so a retry finishes the job.
        await self.state.get_index().delete_knowledge_base(
            user_id=user, knowledge_base_id=str(kb_id)
        )
        if not await store.delete_kb(user, kb_id):
            raise not_found("knowledge base", request.id)
        self.state.ingestor.delete_images_later(user, images)
        return empty_pb2.Empty()

    # --- documents ----------------------------------------------------------------------

    async def IngestDocument(
        self, request: rag_pb2.IngestDocumentRequest, context: Any
    ) -> AsyncIterator[rag_pb2.IngestEvent]:
        user = require_user_id()
        params = self._ingest_params(request)
        async for event in self.state.ingestor.ingest(user, params):
            yield event

    def _ingest_params(self, request: rag_pb2.IngestDocumentRequest) -> IngestParams:
        settings = self.state.settings
        kb_id = parse_uuid(request.knowledge_base_id, field="knowledge_base_id")
        file_id = str(parse_uuid(request.file_id, field="file_id"))
        opts = request.options
        size = opts.chunk_size_chars or settings.rag_chunk_size
        if not MIN_CHUNK_SIZE <= size <= MAX_CHUNK_SIZE:
            raise InvalidArgument(
                f"options.chunk_size_chars must be 0 or {MIN_CHUNK_SIZE}–{MAX_CHUNK_SIZE}",
                field="options.chunk_size_chars",
            )
        if opts.chunk_overlap_chars < 0:
            raise InvalidArgument(
                "options.chunk_overlap_chars must not be negative",
                field="options.chunk_overlap_chars",
            )
        if opts.chunk_overlap_chars:
            overlap = opts.chunk_overlap_chars
            if 2 * overlap >= size:
                raise InvalidArgument(
                    "options.chunk_overlap_chars must be less than half the chunk size",
                    field="options.chunk_overlap_chars",
                )
        else:  # the default, shrunk to fit a small chunk size
            overlap = min(settings.rag_chunk_overlap, (size - 1) // 2)
        dpi = opts.render_dpi or settings.rag_render_dpi
        if not MIN_DPI <= dpi <= MAX_DPI:
            raise InvalidArgument(
                f"options.render_dpi must be 0 or {MIN_DPI}–{MAX_DPI}", field="options.render_dpi"
            )
        try:
            fmt = convert.format_from_proto(opts.format)
        except KeyError:
            raise InvalidArgument(
                "options.format is not a known format", field="options.format"
            ) from None
        return IngestParams(kb_id, file_id, size, overlap, dpi, fmt)

    async def ListDocuments(
        self, request: rag_pb2.ListDocumentsRequest, context: Any
    ) -> rag_pb2.ListDocumentsResponse:
        user = require_user_id()
        kb_id = parse_uuid(request.knowledge_base_id, field="knowledge_base_id")
        limit = paging.page_size(request.page_size)
        after = _keyset(request.page_token)
        store = self.state.store()
        if await store.get_kb(user, kb_id) is None:
            raise not_found("knowledge base", request.knowledge_base_id)
        rows = await store.list_documents(user, kb_id, limit=limit, after=after)
        return rag_pb2.ListDocumentsResponse(
            documents=[document_proto(r) for r in rows], next_page_token=_next_token(rows, limit)
        )

    async def GetDocument(
        self, request: rag_pb2.GetDocumentRequest, context: Any
    ) -> rag_pb2.DocumentDetail:
        user = require_user_id()
        doc_id = parse_uuid(request.id, field="id")
        if request.first_page < 0:
            raise InvalidArgument("first_page must not be negative", field="first_page")
        if request.last_page < 0:
            raise InvalidArgument("last_page must not be negative", field="last_page")
        first = request.first_page or 1
        if request.last_page and request.last_page < first:
            raise InvalidArgument("last_page is before first_page", field="last_page")
        if request.block_page_size < 0:
            raise InvalidArgument("block_page_size must not be negative", field="block_page_size")
        size = paging.page_size(
            request.block_page_size, default=DEFAULT_BLOCK_PAGE, maximum=MAX_BLOCK_PAGE
        )
        store = self.state.store()
        row = await store.get_document(user, doc_id)
        if row is None:
            raise not_found("document", request.id)
        last = min(request.last_page or row.page_count, row.page_count)
        after = -1
        position = paging.decode_token(request.block_page_token)
        if position is not None:
            if position.get("f") != first or position.get("l") != last:
                raise InvalidArgument(
                    "block_page_token belongs to another page range", field="block_page_token"
                )
            seq = position.get("s")
            if not isinstance(seq, int):
                raise InvalidArgument("block_page_token is not valid", field="block_page_token")
            after = seq
        detail = rag_pb2.DocumentDetail(document=document_proto(row))
        if last < first:
            return detail
        pages = await store.pages(doc_id, first, last)
        blocks = await store.blocks(doc_id, first, last, after_seq=after, limit=size + 1)
        more = len(blocks) > size
        blocks = blocks[:size]
        detail.pages.extend(
            rag_pb2.Page(
                number=p.number,
                image_file_id=p.image_file_id,
                width_px=p.width_px,
                height_px=p.height_px,
            )
            for p in pages
        )
        detail.blocks.extend(convert.block_to_proto(b.block) for b in blocks)
        if more:
            detail.next_block_page_token = paging.encode_token(
                {"f": first, "l": last, "s": blocks[-1].seq}
            )
        return detail

    async def DeleteDocument(
        self, request: rag_pb2.DeleteDocumentRequest, context: Any
    ) -> empty_pb2.Empty:
        user = require_user_id()
        doc_id = parse_uuid(request.id, field="id")
        store = self.state.store()
        row = await store.get_document(user, doc_id)
        if row is None:
            raise not_found("document", request.id)
        await self.state.ingestor.stop([doc_id])
        images = await store.page_images(user, doc_id)
        await self.state.get_index().delete_document(user_id=user, document_id=str(doc_id))
        if not await store.delete_document(user, doc_id):
            raise not_found("document", request.id)
        await store.touch_kb(row.knowledge_base_id)
        self.state.ingestor.delete_images_later(user, images)
        return empty_pb2.Empty()

    # --- search -------------------------------------------------------------------------

    async def Search(self, request: rag_pb2.SearchRequest, context: Any) -> rag_pb2.SearchResponse:
        user = require_user_id()
        ids = list(dict.fromkeys(request.knowledge_base_ids))
        if not ids:
            raise InvalidArgument(
                "knowledge_base_ids must name at least one knowledge base",
                field="knowledge_base_ids",
            )
        if len(ids) > MAX_SEARCH_KBS:
            raise InvalidArgument(
                f"at most {MAX_SEARCH_KBS} knowledge bases can be searched at once",
                field="knowledge_base_ids",
            )
        kb_ids = [parse_uuid(i, field="knowledge_base_ids") for i in ids]
        query = request.query
        if not query.strip():
            raise InvalidArgument("query must not be empty", field="query")
        if len(query) > MAX_QUERY:
            raise InvalidArgument(f"query is longer than {MAX_QUERY} characters", field="query")
        if request.top_k < 0:
            raise InvalidArgument("top_k must not be negative", field="top_k")
        top_k = min(request.top_k or DEFAULT_TOP_K, MAX_TOP_K)
        mode = convert.MODE_FROM_PROTO.get(request.mode)
        if mode is None:
            raise InvalidArgument("mode is not a known search mode", field="mode")
        owned = await self.state.store().owned_kbs(user, kb_ids)
        for raw, kb_id in zip(ids, kb_ids, strict=True):
            if kb_id not in owned:
                raise not_found("knowledge base", raw)
        dense = None
        if mode is not SearchMode.SPARSE:
            embedder = self.state.get_embedder()
            dense = await asyncio.to_thread(embedder.embed_query, query)
        sparse = Bm25Encoder().encode_query(query) if mode is not SearchMode.DENSE else None
        hits = await self.state.get_index().search(
            user_id=user,
            knowledge_base_ids=[str(k) for k in kb_ids],
            dense=dense,
            sparse=sparse,
            top_k=top_k,
            document_ids=list(request.document_ids) or None,
            pages=list(request.pages) or None,
            mode=mode,
        )
        return rag_pb2.SearchResponse(hits=[convert.hit_to_proto(h) for h in hits])
