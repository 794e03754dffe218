"""Handlers of aivera.rag.v1.RagService: validate the request, call the store or a domain
object (``Ingestor``, ``Searcher``), convert the result.

Every handler acts for ``require_user_id()`` and passes it to every query, so another
user's knowledge base or document answers NOT_FOUND like an unknown one (the store raises
it). Lists page with the mesh's signed keyset tokens (services.common.pages), scoped to
the RPC, the caller and the request's other fields: ListKnowledgeBases by its clone and
chat filters, ListDocuments by knowledge base, GetDocument's block pages by document and
page range. Search answers each hit with its blocks and page image (``Searcher``).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from google.protobuf import empty_pb2

from aivera.rag.v1 import rag_pb2
from services.common import pages
from services.common.context import require_user_id
from services.common.errors import InvalidArgument
from services.common.protoutil import parse_uuid
from services.rag import convert
from services.rag.chunking import MAX_CHUNK_SIZE, MIN_CHUNK_SIZE
from services.rag.config import RagSettings
from services.rag.ingest import Ingestor, IngestParams
from services.rag.parsers.base import MAX_DPI, MIN_DPI
from services.rag.search import Searcher, SearchRequest
from services.rag.store import Store

MAX_NAME = 200
MAX_DESCRIPTION = 2000
MAX_REF = 200  # clone_id / chat_id
MAX_QUERY = 2000
MAX_SEARCH_KBS = 20
DEFAULT_TOP_K = 10
MAX_TOP_K = 100
DEFAULT_BLOCK_PAGE = 1000
MAX_BLOCK_PAGE = 5000


def _text(value: str, *, field: str, maximum: int, required: bool = False) -> str:
    if required and not value.strip():
        raise InvalidArgument(f"{field} must not be empty", field=field)
    if len(value) > maximum:
        raise InvalidArgument(f"{field} is longer than {maximum} characters", field=field)
    return value


def _filter(**values: object) -> str:
    """A request's other fields as a page-token scope (order-independent)."""
    return json.dumps(values, sort_keys=True, separators=(",", ":"))


class RagServiceServicer:
    def __init__(
        self, *, settings: RagSettings, store: Store, ingestor: Ingestor, searcher: Searcher
    ) -> None:
        self.settings = settings
        self.store = store
        self.ingestor = ingestor
        self.searcher = searcher

    # --- knowledge bases ----------------------------------------------------------------

    async def CreateKnowledgeBase(
        self, request: rag_pb2.CreateKnowledgeBaseRequest, context: Any
    ) -> rag_pb2.KnowledgeBase:
        user = require_user_id()
        row = await self.store.create_kb(
            user_id=user,
            name=_text(request.name.strip(), field="name", maximum=MAX_NAME, required=True),
            description=_text(request.description, field="description", maximum=MAX_DESCRIPTION),
            clone_id=_text(request.clone_id, field="clone_id", maximum=MAX_REF),
            chat_id=_text(request.chat_id, field="chat_id", maximum=MAX_REF),
        )
        return convert.kb_to_proto(row)

    async def GetKnowledgeBase(
        self, request: rag_pb2.GetKnowledgeBaseRequest, context: Any
    ) -> rag_pb2.KnowledgeBase:
        user = require_user_id()
        row = await self.store.get_kb(user, parse_uuid(request.id, field="id"))
        return convert.kb_to_proto(row)

    async def ListKnowledgeBases(
        self, request: rag_pb2.ListKnowledgeBasesRequest, context: Any
    ) -> rag_pb2.ListKnowledgeBasesResponse:
        user = require_user_id()
        page = pages.request(
            request.page_size,
            request.page_token,
            filter=_filter(clone_id=request.clone_id, chat_id=request.chat_id),
        )
        rows = await self.store.list_kbs(
            user,
            clone_id=request.clone_id,
            chat_id=request.chat_id,
            after=page.after,
            limit=page.limit,
        )
        items, token = pages.take(rows, page, key=lambda r: (r.created_at, r.id))
        return rag_pb2.ListKnowledgeBasesResponse(
            knowledge_bases=[convert.kb_to_proto(r) for r in items], next_page_token=token
        )

    async def DeleteKnowledgeBase(
        self, request: rag_pb2.DeleteKnowledgeBaseRequest, context: Any
    ) -> empty_pb2.Empty:
        user = require_user_id()
        await self.ingestor.delete_knowledge_base(user, parse_uuid(request.id, field="id"))
        return empty_pb2.Empty()

    # --- documents ----------------------------------------------------------------------

    async def IngestDocument(
        self, request: rag_pb2.IngestDocumentRequest, context: Any
    ) -> AsyncIterator[rag_pb2.IngestEvent]:
        user = require_user_id()
        params = self._ingest_params(request)
        async for event in self.ingestor.ingest(user, params):
            yield event

    def _ingest_params(self, request: rag_pb2.IngestDocumentRequest) -> IngestParams:
        settings = self.settings
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
        page = pages.request(
            request.page_size, request.page_token, filter=_filter(knowledge_base_id=str(kb_id))
        )
        await self.store.get_kb(user, kb_id)
        rows = await self.store.list_documents(user, kb_id, after=page.after, limit=page.limit)
        items, token = pages.take(rows, page, key=lambda r: (r.created_at, r.id))
        return rag_pb2.ListDocumentsResponse(
            documents=[convert.document_to_proto(r) for r in items], next_page_token=token
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
        page = pages.request(
            request.block_page_size,
            request.block_page_token,
            # A token continues the same document and page range (last_page 0 = the end).
            filter=_filter(document_id=str(doc_id), first_page=first, last_page=request.last_page),
            default=DEFAULT_BLOCK_PAGE,
            maximum=MAX_BLOCK_PAGE,
            field="block_page_token",
        )
        row = await self.store.get_document(user, doc_id)
        detail = rag_pb2.DocumentDetail(document=convert.document_to_proto(row))
        last = min(request.last_page or row.page_count, row.page_count)
        if last < first:
            return detail
        page_rows = await self.store.pages(doc_id, first, last)
        blocks = await self.store.blocks(doc_id, first, last, after=page.after, limit=page.limit)
        items, token = pages.take(blocks, page, key=lambda b: (b.seq,))
        detail.pages.extend(convert.page_to_proto(p) for p in page_rows)
        detail.blocks.extend(convert.block_to_proto(b.block) for b in items)
        detail.next_block_page_token = token
        return detail

    async def DeleteDocument(
        self, request: rag_pb2.DeleteDocumentRequest, context: Any
    ) -> empty_pb2.Empty:
        user = require_user_id()
        await self.ingestor.delete_document(user, parse_uuid(request.id, field="id"))
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
        kbs = [(i, parse_uuid(i, field="knowledge_base_ids")) for i in ids]
        query = request.query
        if not query.strip():
            raise InvalidArgument("query must not be empty", field="query")
        if len(query) > MAX_QUERY:
            raise InvalidArgument(f"query is longer than {MAX_QUERY} characters", field="query")
        if request.top_k < 0:
            raise InvalidArgument("top_k must not be negative", field="top_k")
        mode = convert.MODE_FROM_PROTO.get(request.mode)
        if mode is None:
            raise InvalidArgument("mode is not a known search mode", field="mode")
        found = await self.searcher.search(
            user,
            SearchRequest(
                knowledge_bases=kbs,
                query=query,
                top_k=min(request.top_k or DEFAULT_TOP_K, MAX_TOP_K),
                mode=mode,
                document_ids=list(request.document_ids),
                pages=list(request.pages),
            ),
        )
        return rag_pb2.SearchResponse(
            hits=[convert.hit_to_proto(f.hit, f.blocks, f.page) for f in found]
        )
