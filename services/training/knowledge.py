"""The RAG calls clones need (a knowledge base per clone, documents in and out), with
failures mapped once by `services.common.remote.map_rpc_error` and deadlines from the
settings. The caller is relayed by the channel, so RAG checks the user's ownership."""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

import grpc

from aivera.rag.v1 import rag_pb2, rag_pb2_grpc
from services.common.errors import Unavailable, not_found
from services.common.remote import Deadlines, map_rpc_error

log = logging.getLogger("aivera.training.knowledge")
Spawn = Callable[[Coroutine[Any, Any, None], str], object]


class KnowledgeClient:
    def __init__(self, channel: grpc.aio.Channel, deadlines: Deadlines, spawn: Spawn) -> None:
        self.stub = rag_pb2_grpc.RagServiceStub(channel)
        self.deadlines = deadlines
        self.spawn = spawn

    async def create_kb(self, name: str, clone_id: str) -> str:
        """A knowledge base for the clone; its id."""
        try:
            kb = await self.stub.CreateKnowledgeBase(
                rag_pb2.CreateKnowledgeBaseRequest(name=name, clone_id=clone_id),
                timeout=self.deadlines.work,
            )
        except grpc.aio.AioRpcError as exc:
            raise map_rpc_error(exc, "knowledge base") from None
        return str(kb.id)

    async def delete_kb(self, kb_id: str) -> None:
        """Delete a knowledge base with its documents; one that is gone already is fine."""
        try:
            await self.stub.DeleteKnowledgeBase(
                rag_pb2.DeleteKnowledgeBaseRequest(id=kb_id), timeout=self.deadlines.work
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise map_rpc_error(exc, "knowledge base") from None

    async def ingest(self, kb_id: str, file_id: str) -> str:
        """Start ingesting a file; the document's id once RAG has made it. Ingestion goes
        on in RAG while this service drains the stream in the background (a stream
        closed early would cancel it)."""
        call = self.stub.IngestDocument(
            rag_pb2.IngestDocumentRequest(knowledge_base_id=kb_id, file_id=file_id),
            timeout=self.deadlines.transfer,
        )
        try:
            first = await call.read()
        except grpc.aio.AioRpcError as exc:
            raise map_rpc_error(exc, "document ingest") from None
        if first is grpc.aio.EOF:
            raise Unavailable("the RAG service ended the ingest without a document")

        async def drain() -> None:
            try:
                while await call.read() is not grpc.aio.EOF:
                    continue  # progress events are not needed here, only the end
            except grpc.aio.AioRpcError as exc:
                log.warning("knowledge ingest of %s ended: %s", file_id, exc.details())

        self.spawn(drain(), f"ingest-{first.document_id}")
        return str(first.document_id)

    async def remove(self, kb_id: str, document_id: str) -> None:
        """Delete a document of this knowledge base (NOT_FOUND for any other)."""
        try:
            doc = await self.stub.GetDocument(
                rag_pb2.GetDocumentRequest(id=document_id, block_page_size=1),
                timeout=self.deadlines.lookup,
            )
            if doc.document.knowledge_base_id != kb_id:
                raise not_found("document", document_id)
            await self.stub.DeleteDocument(
                rag_pb2.DeleteDocumentRequest(id=document_id), timeout=self.deadlines.work
            )
        except grpc.aio.AioRpcError as exc:
            raise map_rpc_error(exc, "document") from None
