"""The ingest pipeline (storage file → parse → page images → chunks → vectors → index)
and the deletes that undo it.

``Ingestor.ingest`` checks the request before it changes anything — the knowledge base
is the caller's, the storage file is in the documents bucket and READY (else
FAILED_PRECONDITION, reason FILE_NOT_READY), the format is supported (reason
UNSUPPORTED_FORMAT) and within the limits (RESOURCE_EXHAUSTED) — then claims the
document row of (knowledge base, file) for this ingest (a fresh ``ingest_token``; an
ingest already running answers FAILED_PRECONDITION, reason DOCUMENT_NOT_READY), runs the
stages in a task of its own and streams their events. The task is separate from the RPC
so that ``delete_document``/``delete_knowledge_base`` can stop it (``stop``) and wait for
its clean-up, and so that a client that goes away cancels it (the RPC wrapper closes the
event generator, whose ``finally`` cancels the task and waits).

Files move through the mesh's shared storage client (services.common.remote, the App's
deadlines; storage's own errors are passed on, an outage is UNAVAILABLE with reason
DEPENDENCY_UNAVAILABLE, as is an embedder or vector index that fails). CPU work (parsing,
rendering, tokenising, embedding) runs in worker threads; the loop only moves bytes and
events. Page images are rendered one page at a time (bounded memory) and uploaded to the
storage `images` bucket as they come.

Failure and cancellation: the document ends FAILED with the reason, without pages,
blocks or chunks (its vectors are deleted), and the page images this ingest uploaded are
deleted from storage (best effort, in the background). Success: pages and blocks are
replaced and the document marked READY in one transaction that first checks the ingest
still owns the row; if the document was deleted meanwhile (e.g. by another replica), the
vectors just written are deleted again and the ingest answers ABORTED.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from aivera.common.v1 import common_pb2
from aivera.rag.v1 import rag_pb2
from aivera.storage.v1 import storage_pb2
from services.common import context as ctx
from services.common import tracing
from services.common.errors import (
    Aborted,
    FailedPrecondition,
    InvalidArgument,
    Reason,
    ServiceError,
    Unavailable,
)
from services.common.identity import ServiceIdentity, grant_now
from services.common.remote import StorageClient
from services.rag import convert
from services.rag.chunking import Chunk
from services.rag.embedder import Embedder
from services.rag.index import Index
from services.rag.model import DocumentFormat, FormatMismatchError, Page, ParsedDocument
from services.rag.parsers import ParseOptions, PdfRenderer, detect_format, parse_document
from services.rag.parsers.base import (
    DEFAULT_MAX_DOCUMENT_PIXELS,
    DEFAULT_MAX_IMAGE_PIXELS,
    DEFAULT_MAX_JSON_DEPTH,
    DEFAULT_MAX_PAGE_PIXELS,
    DEFAULT_MAX_TEXT_BYTES,
)
from services.rag.parsers.pdf import looks_like_pdf
from services.rag.sparse import SparseVector
from services.rag.store import DocumentRow, Store
from services.rag.vectorize import make_chunks, vectorize

log = logging.getLogger("aivera.rag.ingest")

HEARTBEAT_SECONDS = 15.0
# The grant an ingest runs on: far longer than any ingest within the limits.
INGEST_GRANT_SECONDS = 6 * 3600

Emit = Callable[[rag_pb2.IngestEvent], None]
Spawn = Callable[[Coroutine[Any, Any, Any]], "asyncio.Task[Any]"]


# --- the pipeline ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IngestParams:
    """A validated IngestDocument request."""

    knowledge_base_id: uuid.UUID
    file_id: str
    chunk_size: int
    chunk_overlap: int
    dpi: int
    format: DocumentFormat | None


@dataclass(frozen=True, slots=True)
class Limits:
    max_pages: int
    max_blocks: int
    embed_batch: int
    stale_seconds: float
    # Input budgets of the parsers (ParseOptions; over them INVALID_ARGUMENT).
    max_page_pixels: int = DEFAULT_MAX_PAGE_PIXELS
    max_document_pixels: int = DEFAULT_MAX_DOCUMENT_PIXELS
    max_text_bytes: int = DEFAULT_MAX_TEXT_BYTES
    max_json_depth: int = DEFAULT_MAX_JSON_DEPTH
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS


def phase(
    doc_id: str, stage: rag_pb2.IngestStage.ValueType, done: int, total: int, unit: str
) -> rag_pb2.IngestEvent:
    return rag_pb2.IngestEvent(
        document_id=doc_id,
        phase=rag_pb2.IngestPhase(
            stage=stage, progress=common_pb2.Progress(done=done, total=total, unit=unit)
        ),
    )


def warning(doc_id: str, message: str, page: int = 0) -> rag_pb2.IngestEvent:
    return rag_pb2.IngestEvent(
        document_id=doc_id, warning=rag_pb2.IngestWarning(message=message, page=page)
    )


@dataclass
class _Run:
    """State of one running ingest (for clean-up)."""

    user_id: str
    doc: DocumentRow
    token: uuid.UUID
    uploaded: list[str] = field(default_factory=list)
    last_beat: float = field(default_factory=time.monotonic)

    @property
    def doc_id(self) -> str:
        return str(self.doc.id)


class Ingestor:
    """Runs ingests and owns what a document leaves outside the database (vectors, page
    images), so deletes go through it too."""

    def __init__(
        self,
        *,
        store: Store,
        index: Index,
        embedder: Embedder,
        storage: StorageClient,
        spawn: Spawn,
        limits: Limits,
        identity: ServiceIdentity | None = None,
    ) -> None:
        # An ingest can outlive the token it was called with (a delegation lasts minutes):
        # with a mesh identity it runs on a grant taken when it starts.
        self._identity = identity
        self.store = store
        self.index = index
        self.embedder = embedder
        self.storage = storage
        self._spawn = spawn
        self.limits = limits
        self._running: dict[uuid.UUID, asyncio.Task[Any]] = {}

    # -- control ------------------------------------------------------------------------

    async def stop(self, doc_ids: list[uuid.UUID]) -> None:
        """Cancel this replica's running ingests of these documents and wait for their
        clean-up (other replicas' ingests notice at their next step or at the end)."""
        tasks = [t for d in doc_ids if (t := self._running.get(d)) is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task

    def delete_images_later(self, user_id: str, file_ids: list[str]) -> None:
        """Delete page images from storage in the background, for the user (the task
        inherits the call's context: its token, or the grant of the ingest it ends)."""
        if not file_ids:
            return
        self._spawn(self._delete_files(list(file_ids)))

    async def _delete_files(self, file_ids: list[str]) -> None:
        """Best effort: failures are logged, not raised (used after the fact)."""
        for file_id in file_ids:
            try:
                await self.storage.delete_file(file_id)
            except ServiceError as exc:
                log.warning("could not delete page image %s: %s", file_id, exc.message)

    async def delete_document(self, user_id: str, doc_id: uuid.UUID) -> None:
        """Stop its ingest, delete its vectors, then its rows, then its page images.
        Vectors first: once they are gone no search returns them, whatever happens to the
        rows; a failure there leaves the rows, so a retry finishes the job."""
        await self.store.get_document(user_id, doc_id)
        await self.stop([doc_id])
        images = await self.store.page_images(user_id, doc_id)
        await self.index.delete_document(user_id=user_id, document_id=str(doc_id))
        await self.store.delete_document(user_id, doc_id)
        self.delete_images_later(user_id, images)

    async def delete_knowledge_base(self, user_id: str, kb_id: uuid.UUID) -> None:
        """The same for every document of a knowledge base, then the knowledge base."""
        await self.store.get_kb(user_id, kb_id)
        await self.stop(await self.store.kb_document_ids(user_id, kb_id))
        images = await self.store.kb_page_images(user_id, kb_id)
        await self.index.delete_knowledge_base(user_id=user_id, knowledge_base_id=str(kb_id))
        await self.store.delete_kb(user_id, kb_id)
        self.delete_images_later(user_id, images)

    # -- the RPC ------------------------------------------------------------------------

    async def ingest(
        self, user_id: str, params: IngestParams
    ) -> AsyncIterator[rag_pb2.IngestEvent]:
        await self.store.get_kb(user_id, params.knowledge_base_id)
        file = await self.storage.get_file(params.file_id)
        if file.bucket != storage_pb2.BUCKET_DOCUMENTS:
            raise InvalidArgument(
                f"file {params.file_id!r} is not in the documents bucket", field="file_id"
            )
        if file.status != storage_pb2.FILE_STATUS_READY:
            raise FailedPrecondition(
                f"file {params.file_id!r} is not READY",
                reason=Reason.FILE_NOT_READY,
                metadata={"file_id": params.file_id},
            )
        data = await self.storage.download(params.file_id)
        opts = self._parse_options(params)
        fmt = params.format
        if fmt is None:
            fmt = await asyncio.to_thread(
                detect_format, data, file.filename, file.content_type, opts
            )
        # Text formats parse fast: parse them before anything changes, so a file that is
        # not what it claims (or over the limits) is refused without leaving a document.
        # PDFs parse (and render) as the first stage of the run; a PDF over a pixel budget
        # ends FAILED with the INVALID_ARGUMENT in the stream, before any page is rendered.
        parsed: ParsedDocument | None = None
        if fmt is not DocumentFormat.PDF:
            parsed = await asyncio.to_thread(
                parse_document,
                data,
                filename=file.filename,
                content_type=file.content_type,
                format=params.format,
                options=opts,
            )
        elif params.format is DocumentFormat.PDF and not looks_like_pdf(data):
            raise FormatMismatchError("the file is not a PDF (no PDF header)")
        # Before the document row changes: without a grant (auth down) nothing starts.
        grant = await grant_now(self._identity, INGEST_GRANT_SECONDS)
        token = uuid.uuid4()
        # NOT_FOUND if the knowledge base went meanwhile; FAILED_PRECONDITION
        # (DOCUMENT_NOT_READY) while another ingest of the same file runs.
        doc = await self.store.begin_ingest(
            user_id=user_id,
            kb_id=params.knowledge_base_id,
            file_id=params.file_id,
            filename=file.filename,
            format=fmt.value,
            token=token,
            stale_seconds=self.limits.stale_seconds,
        )
        run = _Run(user_id, doc, token)
        queue: asyncio.Queue[rag_pb2.IngestEvent | None] = asyncio.Queue()
        with contextlib.ExitStack() as scope:
            if grant is not None:
                scope.enter_context(
                    ctx.acting_for(user_id, grant=grant, request_id=ctx.request_id() or None)
                )
            task = self._spawn(self._guarded(run, params, data, parsed, file, queue.put_nowait))
        self._running[doc.id] = task

        def finished(t: asyncio.Task[Any]) -> None:
            if self._running.get(doc.id) is t:
                del self._running[doc.id]
            queue.put_nowait(None)

        task.add_done_callback(finished)
        try:
            while (event := await queue.get()) is not None:
                yield event
            if task.cancelled():
                raise Aborted("the ingest was stopped: its document was deleted")
            error = task.result()
            if error is not None:
                raise error
        finally:
            if not task.done():  # the client went away
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task

    async def _guarded(
        self,
        run: _Run,
        params: IngestParams,
        data: bytes,
        parsed: ParsedDocument | None,
        file: storage_pb2.File,
        emit: Emit,
    ) -> Exception | None:
        """Runs the stages; returns the error that stopped them (after cleaning up) rather
        than raising it, so a refused document is not logged as a crashed task."""
        beating = asyncio.create_task(self._heartbeats(run))
        try:
            await self._stages(run, params, data, parsed, file, emit)
        except BaseException as exc:
            if isinstance(exc, ServiceError):
                reason = exc.message
            elif isinstance(exc, asyncio.CancelledError):
                reason = "the ingest was cancelled"
            else:
                log.exception("ingest of document %s failed", run.doc_id)
                reason = f"internal error (request id {ctx.request_id()})"
            await asyncio.shield(self._cleanup(run, reason))
            if isinstance(exc, Exception):
                return exc
            raise
        finally:
            beating.cancel()
        return None

    async def _heartbeats(self, run: _Run) -> None:
        """Keep the claim alive while a long stage (a big parse, a slow batch) runs, so
        another replica does not take the document over as abandoned."""
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            try:
                await self.store.heartbeat(run.doc.id, run.token)
            except Exception as exc:
                log.warning("heartbeat of ingest %s failed: %s", run.doc_id, exc)

    async def _cleanup(self, run: _Run, reason: str) -> None:
        """No chunks, no pages, status FAILED, this run's images gone (best effort)."""
        try:
            await self.index.delete_document(user_id=run.user_id, document_id=run.doc_id)
        except Exception:
            log.exception("could not delete the chunks of failed document %s", run.doc_id)
        old: list[str] | None = None
        try:
            old = await self.store.fail_ingest(doc_id=run.doc.id, token=run.token, error=reason)
        except Exception:
            log.exception("could not mark document %s FAILED", run.doc_id)
        self.delete_images_later(run.user_id, run.uploaded + (old or []))

    def _parse_options(self, params: IngestParams) -> ParseOptions:
        # Pages are rendered one at a time later (bounded memory), not by the parser.
        return ParseOptions(
            dpi=params.dpi,
            render=False,
            max_pages=self.limits.max_pages,
            max_blocks=self.limits.max_blocks,
            max_page_pixels=self.limits.max_page_pixels,
            max_document_pixels=self.limits.max_document_pixels,
            max_text_bytes=self.limits.max_text_bytes,
            max_json_depth=self.limits.max_json_depth,
            max_image_pixels=self.limits.max_image_pixels,
        )

    async def _beat(self, run: _Run, *, force: bool = False) -> None:
        """Keep the claim on the document alive; stop if it was lost (deleted)."""
        now = time.monotonic()
        if not force and now - run.last_beat < HEARTBEAT_SECONDS:
            return
        run.last_beat = now
        if not await self.store.heartbeat(run.doc.id, run.token):
            raise Aborted("the ingest was stopped: its document was deleted or re-ingested")

    async def _stages(
        self,
        run: _Run,
        params: IngestParams,
        data: bytes,
        preparsed: ParsedDocument | None,
        file: storage_pb2.File,
        emit: Emit,
    ) -> None:
        doc_id = run.doc_id
        P = rag_pb2
        emit(phase(doc_id, P.INGEST_STAGE_PARSING, 0, 0, "pages"))
        parsed = preparsed
        if parsed is None:
            parsed = await tracing.within(
                "rag.parse",
                asyncio.to_thread(
                    parse_document,
                    data,
                    filename=file.filename,
                    content_type=file.content_type,
                    format=DocumentFormat(run.doc.format),
                    options=self._parse_options(params),
                ),
            )
        n_pages = parsed.page_count
        emit(phase(doc_id, P.INGEST_STAGE_PARSING, n_pages, n_pages, "pages"))
        for w in parsed.warnings:
            emit(warning(doc_id, w.message, w.page))
        if not parsed.has_text:
            emit(warning(doc_id, "the document has no text"))
        await self._beat(run)

        pages = await tracing.within(
            "rag.render_pages",
            self._render_pages(run, parsed, data, params, file, emit),
            {"rag.pages": parsed.page_count},
        )

        embedder = self.embedder
        emit(phase(doc_id, P.INGEST_STAGE_CHUNKING, 0, 0, "chunks"))
        chunks: list[Chunk] = await tracing.within(
            "rag.chunk",
            asyncio.to_thread(
                make_chunks,
                doc_id,
                parsed.blocks,
                embedder,
                size=params.chunk_size,
                overlap=params.chunk_overlap,
            ),
        )
        total = len(chunks)
        emit(phase(doc_id, P.INGEST_STAGE_CHUNKING, total, total, "chunks"))
        await self._beat(run)

        dense: list[list[float]] = []
        sparse: list[SparseVector] = []
        if total:
            emit(phase(doc_id, P.INGEST_STAGE_EMBEDDING, 0, total, "chunks"))
            with tracing.span("rag.embed", {"rag.chunks": total}):
                try:
                    async for batch in vectorize(
                        chunks, embedder, batch_size=self.limits.embed_batch
                    ):
                        dense.extend(batch.dense)
                        sparse.extend(batch.sparse)
                        emit(phase(doc_id, P.INGEST_STAGE_EMBEDDING, batch.done, total, "chunks"))
                        await self._beat(run)
                except (OSError, RuntimeError) as exc:
                    raise Unavailable(
                        f"the embedder is unavailable: {type(exc).__name__}",
                        reason=Reason.DEPENDENCY_UNAVAILABLE,
                        metadata={"dependency": "embedder"},
                    ) from exc
            emit(phase(doc_id, P.INGEST_STAGE_INDEXING, 0, total, "chunks"))
        indexed = self.index.replace_document(
            user_id=run.user_id,
            knowledge_base_id=str(run.doc.knowledge_base_id),
            document_id=doc_id,
            filename=file.filename,
            chunks=chunks,
            dense=dense,
            sparse=sparse,
        )
        await tracing.within("rag.index", indexed, {"rag.chunks": total})
        if total:
            emit(phase(doc_id, P.INGEST_STAGE_INDEXING, total, total, "chunks"))

        finished = await self.store.finish_ingest(
            doc_id=run.doc.id,
            token=run.token,
            pages=pages,
            blocks=parsed.blocks,
            chunk_count=total,
        )
        if finished is None:
            raise Aborted("the ingest was stopped: its document was deleted or re-ingested")
        row, replaced = finished
        run.uploaded = []  # owned by the document now
        self.delete_images_later(run.user_id, replaced)
        emit(
            rag_pb2.IngestEvent(
                document_id=doc_id,
                done=rag_pb2.IngestDone(document=convert.document_to_proto(row)),
            )
        )

    async def _render_pages(
        self,
        run: _Run,
        parsed: ParsedDocument,
        data: bytes,
        params: IngestParams,
        file: storage_pb2.File,
        emit: Emit,
    ) -> list[tuple[Page, str]]:
        """PDF pages rendered one at a time and stored in the `images` bucket."""
        if parsed.format is not DocumentFormat.PDF:
            return [(p, "") for p in parsed.pages]
        doc_id = run.doc_id
        total = parsed.page_count
        stem = PurePosixPath(file.filename).stem or "document"
        labels = {
            "purpose": "page-image",
            "document_id": doc_id,
            "kb_id": str(run.doc.knowledge_base_id),
        }
        out: list[tuple[Page, str]] = []
        emit(phase(doc_id, rag_pb2.INGEST_STAGE_RENDERING_PAGES, 0, total, "pages"))
        renderer = await asyncio.to_thread(PdfRenderer, data)
        try:
            for page in parsed.pages:
                image = await asyncio.to_thread(
                    renderer.render,
                    page.number,
                    params.dpi,
                    self.limits.max_page_pixels,
                    self.limits.max_image_pixels,
                )
                assert image.png is not None
                name = f"{stem[:180]}.page-{page.number:04d}.png"
                stored = await self.storage.upload(
                    storage_pb2.BUCKET_IMAGES, name, image.png, labels
                )
                file_id = stored.id
                run.uploaded.append(file_id)
                out.append((Page(page.number, image.width_px, image.height_px), file_id))
                emit(
                    phase(doc_id, rag_pb2.INGEST_STAGE_RENDERING_PAGES, page.number, total, "pages")
                )
                await self._beat(run)
        finally:
            await asyncio.to_thread(renderer.close)
        return out
