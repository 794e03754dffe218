"""All SQL of the rag service, returning typed rows and raising domain errors.

Every query on a user's data names the owner (``user_id``), so another user's knowledge
base or document is NOT_FOUND exactly like an unknown one. Lists are keyset pages
(services.common.pages): a list query takes the previous page's last key (``after``) and
a ``limit`` and orders by a unique key — knowledge bases and documents newest first by
``(created_at, id)``, blocks in reading order by ``seq`` — so rows inserted while a client
pages never shift or repeat what it sees. ``hit_context`` fetches the blocks and pages of
a whole search response in one query.

The pool comes from the App at call time (``Store(app)``), so the store is built with the
service's other parts before the database is connected.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from services.common.db import Database
from services.common.errors import FailedPrecondition, Reason, not_found
from services.rag.model import Block, BlockKind, Box, Page

Keyset = tuple[Any, ...]

_KB_COLUMNS = """k.id, k.user_id, k.name, k.description, k.clone_id, k.chat_id, k.created_at,
    k.updated_at,
    (SELECT count(*) FROM documents d WHERE d.knowledge_base_id = k.id) AS document_count,
    (SELECT coalesce(sum(d.chunk_count), 0) FROM documents d
      WHERE d.knowledge_base_id = k.id AND d.status = 'ready') AS chunk_count"""

_DOC_COLUMNS = (
    "id, user_id, knowledge_base_id, file_id, filename, format, status, error, page_count, "
    "block_count, chunk_count, ingest_token, created_at, updated_at"
)


@dataclass(frozen=True, slots=True)
class KnowledgeBaseRow:
    id: uuid.UUID
    user_id: str
    name: str
    description: str
    clone_id: str
    chat_id: str
    created_at: dt.datetime
    updated_at: dt.datetime
    document_count: int
    chunk_count: int


@dataclass(frozen=True, slots=True)
class DocumentRow:
    id: uuid.UUID
    user_id: str
    knowledge_base_id: uuid.UUID
    file_id: str
    filename: str
    format: str
    status: str
    error: str
    page_count: int
    block_count: int
    chunk_count: int
    ingest_token: uuid.UUID | None
    created_at: dt.datetime
    updated_at: dt.datetime


@dataclass(frozen=True, slots=True)
class PageRow:
    number: int
    image_file_id: str
    width_px: int
    height_px: int


@dataclass(frozen=True, slots=True)
class BlockRow:
    seq: int
    block: Block


@dataclass(frozen=True, slots=True)
class HitKey:
    """What a search hit needs from the database: its document, page and block ids."""

    document_id: uuid.UUID
    page: int
    block_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class HitContext:
    """The pages and blocks of a set of search hits, by (document id, page number) and
    (document id, block id); only the caller's documents are in it."""

    pages: Mapping[tuple[uuid.UUID, int], PageRow]
    blocks: Mapping[tuple[uuid.UUID, str], Block]

    def page(self, key: HitKey) -> PageRow | None:
        return self.pages.get((key.document_id, key.page))

    def blocks_of(self, key: HitKey) -> list[Block]:
        """The hit's blocks in the order of its block ids (reading order); ids that are
        gone (the document was deleted or re-ingested meanwhile) are left out."""
        found = (self.blocks.get((key.document_id, b)) for b in key.block_ids)
        return [b for b in found if b is not None]


def _kb(record: Any) -> KnowledgeBaseRow:
    return KnowledgeBaseRow(**dict(record))


def _doc(record: Any) -> DocumentRow:
    return DocumentRow(**dict(record))


def _block(record: Any) -> Block:
    box = record["box"]
    return Block(
        id=str(record["id"]),
        page=int(record["page"]),
        kind=BlockKind(record["kind"]),
        text=str(record["text"]),
        box=Box.from_dict(box) if isinstance(box, dict) else None,
    )


def _affected(status: Any) -> int:
    """Rows affected, from asyncpg's command status ("DELETE 1")."""
    return int(str(status).rsplit(" ", 1)[-1])


class Store:
    def __init__(self, db: Database) -> None:
        self._db = db

    @property
    def pool(self) -> Any:
        return self._db.pool

    # --- knowledge bases ----------------------------------------------------------------

    async def create_kb(
        self, *, user_id: str, name: str, description: str, clone_id: str, chat_id: str
    ) -> KnowledgeBaseRow:
        record = await self.pool.fetchrow(
            f"""WITH k AS (
                    INSERT INTO knowledge_bases (id, user_id, name, description, clone_id,
                                                 chat_id)
                    VALUES ($1, $2, $3, $4, $5, $6)
                    RETURNING *)
                SELECT {_KB_COLUMNS} FROM k""",
            uuid.uuid4(),
            user_id,
            name,
            description,
            clone_id,
            chat_id,
        )
        return _kb(record)

    async def get_kb(self, user_id: str, kb_id: uuid.UUID) -> KnowledgeBaseRow:
        """The user's knowledge base; NOT_FOUND for an unknown or another user's one."""
        record = await self.pool.fetchrow(
            f"SELECT {_KB_COLUMNS} FROM knowledge_bases k WHERE k.user_id = $1 AND k.id = $2",
            user_id,
            kb_id,
        )
        if record is None:
            raise not_found("knowledge base", str(kb_id))
        return _kb(record)

    async def owned_kbs(self, user_id: str, kb_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
        """Which of these knowledge bases are the user's."""
        rows = await self.pool.fetch(
            "SELECT id FROM knowledge_bases WHERE user_id = $1 AND id = ANY($2::uuid[])",
            user_id,
            list(kb_ids),
        )
        return {r["id"] for r in rows}

    async def list_kbs(
        self,
        user_id: str,
        *,
        clone_id: str,
        chat_id: str,
        after: Keyset | None,
        limit: int,
    ) -> list[KnowledgeBaseRow]:
        """Newest first; ``after`` is the (created_at, id) of the previous page's last."""
        rows = await self.pool.fetch(
            f"""SELECT {_KB_COLUMNS} FROM knowledge_bases k
                WHERE k.user_id = $1
                  AND ($2::text = '' OR k.clone_id = $2)
                  AND ($3::text = '' OR k.chat_id = $3)
                  AND ($4::timestamptz IS NULL OR (k.created_at, k.id) < ($4, $5::uuid))
                ORDER BY k.created_at DESC, k.id DESC
                LIMIT $6""",
            user_id,
            clone_id,
            chat_id,
            after[0] if after else None,
            after[1] if after else None,
            limit,
        )
        return [_kb(r) for r in rows]

    async def kb_page_images(self, user_id: str, kb_id: uuid.UUID) -> list[str]:
        rows = await self.pool.fetch(
            """SELECT p.image_file_id FROM pages p JOIN documents d ON d.id = p.document_id
               WHERE d.user_id = $1 AND d.knowledge_base_id = $2 AND p.image_file_id <> ''""",
            user_id,
            kb_id,
        )
        return [str(r["image_file_id"]) for r in rows]

    async def kb_document_ids(self, user_id: str, kb_id: uuid.UUID) -> list[uuid.UUID]:
        rows = await self.pool.fetch(
            "SELECT id FROM documents WHERE user_id = $1 AND knowledge_base_id = $2",
            user_id,
            kb_id,
        )
        return [r["id"] for r in rows]

    async def delete_kb(self, user_id: str, kb_id: uuid.UUID) -> None:
        """Delete the knowledge base with its documents, pages and blocks; NOT_FOUND when
        it is not (or no longer) the user's."""
        status = await self.pool.execute(
            "DELETE FROM knowledge_bases WHERE user_id = $1 AND id = $2", user_id, kb_id
        )
        if _affected(status) == 0:
            raise not_found("knowledge base", str(kb_id))

    # --- documents ----------------------------------------------------------------------

    async def get_document(self, user_id: str, doc_id: uuid.UUID) -> DocumentRow:
        """The user's document; NOT_FOUND for an unknown or another user's one."""
        record = await self.pool.fetchrow(
            f"SELECT {_DOC_COLUMNS} FROM documents WHERE user_id = $1 AND id = $2",
            user_id,
            doc_id,
        )
        if record is None:
            raise not_found("document", str(doc_id))
        return _doc(record)

    async def list_documents(
        self,
        user_id: str,
        kb_id: uuid.UUID,
        *,
        after: Keyset | None,
        limit: int,
    ) -> list[DocumentRow]:
        """Newest first; ``after`` is the (created_at, id) of the previous page's last."""
        rows = await self.pool.fetch(
            f"""SELECT {_DOC_COLUMNS} FROM documents
                WHERE user_id = $1 AND knowledge_base_id = $2
                  AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4::uuid))
                ORDER BY created_at DESC, id DESC
                LIMIT $5""",
            user_id,
            kb_id,
            after[0] if after else None,
            after[1] if after else None,
            limit,
        )
        return [_doc(r) for r in rows]

    async def begin_ingest(
        self,
        *,
        user_id: str,
        kb_id: uuid.UUID,
        file_id: str,
        filename: str,
        format: str,
        token: uuid.UUID,
        stale_seconds: float,
    ) -> DocumentRow:
        """Create the document of (kb, file) or claim the existing one for a new ingest
        (status PROCESSING, this ``token``). NOT_FOUND when the knowledge base is not the
        user's; FAILED_PRECONDITION (DOCUMENT_NOT_READY) when an ingest of it is already
        running (PROCESSING and heard from within ``stale_seconds``)."""
        async with self.pool.acquire() as conn, conn.transaction():
            record = await conn.fetchrow(
                f"""INSERT INTO documents (id, user_id, knowledge_base_id, file_id, filename,
                                           format, status, ingest_token)
                    SELECT $1, $2, k.id, $4, $5, $6, 'processing', $7
                      FROM knowledge_bases k WHERE k.id = $3 AND k.user_id = $2
                    ON CONFLICT (knowledge_base_id, file_id) DO UPDATE
                       SET status = 'processing', error = '', filename = EXCLUDED.filename,
                           format = EXCLUDED.format, ingest_token = EXCLUDED.ingest_token,
                           heartbeat_at = clock_timestamp(), updated_at = clock_timestamp()
                     WHERE documents.user_id = $2
                       AND (documents.status <> 'processing'
                            OR documents.heartbeat_at
                               < clock_timestamp() - make_interval(secs => $8))
                    RETURNING {_DOC_COLUMNS}""",
                uuid.uuid4(),
                user_id,
                kb_id,
                file_id,
                filename,
                format,
                token,
                stale_seconds,
            )
            if record is None:
                owned = await conn.fetchval(
                    "SELECT true FROM knowledge_bases WHERE id = $1 AND user_id = $2",
                    kb_id,
                    user_id,
                )
                if not owned:
                    raise not_found("knowledge base", str(kb_id))
                raise FailedPrecondition(
                    f"an ingest of file {file_id!r} into this knowledge base is already running",
                    reason=Reason.DOCUMENT_NOT_READY,
                    metadata={"file_id": file_id},
                )
            await conn.execute(
                "UPDATE knowledge_bases SET updated_at = clock_timestamp() WHERE id = $1", kb_id
            )
        return _doc(record)

    async def heartbeat(self, doc_id: uuid.UUID, token: uuid.UUID) -> bool:
        """Renew the ingest's claim; False when it lost the document."""
        status = await self.pool.execute(
            """UPDATE documents SET heartbeat_at = clock_timestamp()
               WHERE id = $1 AND ingest_token = $2 AND status = 'processing'""",
            doc_id,
            token,
        )
        return _affected(status) == 1

    async def page_images(self, user_id: str, doc_id: uuid.UUID) -> list[str]:
        rows = await self.pool.fetch(
            """SELECT p.image_file_id FROM pages p JOIN documents d ON d.id = p.document_id
               WHERE d.user_id = $1 AND d.id = $2 AND p.image_file_id <> ''""",
            user_id,
            doc_id,
        )
        return [str(r["image_file_id"]) for r in rows]

    async def finish_ingest(
        self,
        *,
        doc_id: uuid.UUID,
        token: uuid.UUID,
        pages: Sequence[tuple[Page, str]],
        blocks: Sequence[Block],
        chunk_count: int,
    ) -> tuple[DocumentRow, list[str]] | None:
        """Replace the document's pages and blocks and mark it READY, in one transaction,
        if this ingest still owns it. Returns the row and the image file ids of the
        replaced pages (to delete from storage); None when the ingest lost the document
        (deleted, or claimed by another ingest)."""
        async with self.pool.acquire() as conn, conn.transaction():
            owner = await conn.fetchval(
                """SELECT ingest_token FROM documents
                   WHERE id = $1 AND status = 'processing' FOR UPDATE""",
                doc_id,
            )
            if owner != token:
                return None
            old = await conn.fetch(
                "SELECT image_file_id FROM pages WHERE document_id = $1 AND image_file_id <> ''",
                doc_id,
            )
            await conn.execute("DELETE FROM pages WHERE document_id = $1", doc_id)
            await conn.execute("DELETE FROM blocks WHERE document_id = $1", doc_id)
            await conn.executemany(
                """INSERT INTO pages (document_id, number, image_file_id, width_px, height_px)
                   VALUES ($1, $2, $3, $4, $5)""",
                [(doc_id, p.number, image, p.width_px, p.height_px) for p, image in pages],
            )
            if blocks:
                await conn.executemany(
                    """INSERT INTO blocks (document_id, seq, id, page, kind, text, box)
                       VALUES ($1, $2, $3, $4, $5, $6, $7)""",
                    [
                        (
                            doc_id,
                            seq,
                            b.id,
                            b.page,
                            b.kind.value,
                            b.text,
                            None if b.box is None else b.box.to_dict(),
                        )
                        for seq, b in enumerate(blocks)
                    ],
                )
            record = await conn.fetchrow(
                f"""UPDATE documents
                    SET status = 'ready', error = '', ingest_token = NULL,
                        page_count = $2, block_count = $3, chunk_count = $4,
                        updated_at = clock_timestamp()
                    WHERE id = $1
                    RETURNING {_DOC_COLUMNS}""",
                doc_id,
                len(pages),
                len(blocks),
                chunk_count,
            )
            await conn.execute(
                "UPDATE knowledge_bases SET updated_at = clock_timestamp() WHERE id = $1",
                record["knowledge_base_id"],
            )
        current = {image for _, image in pages}
        return _doc(record), [str(r["image_file_id"]) for r in old if r[0] not in current]

    async def fail_ingest(
        self, *, doc_id: uuid.UUID, token: uuid.UUID, error: str
    ) -> list[str] | None:
        """Mark the document FAILED without pages, blocks or chunks, if this ingest still
        owns it; returns the image file ids of the removed pages (None if not owned)."""
        async with self.pool.acquire() as conn, conn.transaction():
            owner = await conn.fetchval(
                "SELECT ingest_token FROM documents WHERE id = $1 FOR UPDATE", doc_id
            )
            if owner != token:
                return None
            old = await conn.fetch(
                "SELECT image_file_id FROM pages WHERE document_id = $1 AND image_file_id <> ''",
                doc_id,
            )
            await conn.execute("DELETE FROM pages WHERE document_id = $1", doc_id)
            await conn.execute("DELETE FROM blocks WHERE document_id = $1", doc_id)
            await conn.execute(
                """UPDATE documents
                   SET status = 'failed', error = $2, ingest_token = NULL, page_count = 0,
                       block_count = 0, chunk_count = 0, updated_at = clock_timestamp()
                   WHERE id = $1""",
                doc_id,
                error[:2000],
            )
        return [str(r["image_file_id"]) for r in old]

    async def delete_document(self, user_id: str, doc_id: uuid.UUID) -> None:
        """Delete the document with its pages and blocks (its knowledge base counts as
        updated); NOT_FOUND when it is not (or no longer) the user's."""
        async with self.pool.acquire() as conn, conn.transaction():
            kb_id = await conn.fetchval(
                """DELETE FROM documents WHERE user_id = $1 AND id = $2
                   RETURNING knowledge_base_id""",
                user_id,
                doc_id,
            )
            if kb_id is None:
                raise not_found("document", str(doc_id))
            await conn.execute(
                "UPDATE knowledge_bases SET updated_at = clock_timestamp() WHERE id = $1", kb_id
            )

    # --- pages and blocks ---------------------------------------------------------------

    async def pages(self, doc_id: uuid.UUID, first: int, last: int) -> list[PageRow]:
        rows = await self.pool.fetch(
            """SELECT number, image_file_id, width_px, height_px FROM pages
               WHERE document_id = $1 AND number BETWEEN $2 AND $3 ORDER BY number""",
            doc_id,
            first,
            last,
        )
        return [PageRow(**dict(r)) for r in rows]

    async def blocks(
        self, doc_id: uuid.UUID, first: int, last: int, *, after: Keyset | None, limit: int
    ) -> list[BlockRow]:
        """Blocks of pages first..last in reading order; ``after`` is the (seq,) of the
        previous page's last block."""
        rows = await self.pool.fetch(
            """SELECT seq, id, page, kind, text, box FROM blocks
               WHERE document_id = $1 AND page BETWEEN $2 AND $3 AND seq > $4
               ORDER BY seq LIMIT $5""",
            doc_id,
            first,
            last,
            after[0] if after else -1,
            limit,
        )
        return [BlockRow(seq=int(r["seq"]), block=_block(r)) for r in rows]

    async def hit_context(self, user_id: str, hits: Sequence[HitKey]) -> HitContext:
        """The pages and blocks of every hit, in ONE query: a row per wanted (document,
        page) of the user's documents, joined with its page and with the wanted blocks
        on it (found through the (document_id, id) index)."""
        if not hits:
            return HitContext({}, {})
        page_keys = list(dict.fromkeys((h.document_id, h.page) for h in hits))
        block_keys = list(dict.fromkeys((h.document_id, b) for h in hits for b in h.block_ids))
        rows = await self.pool.fetch(
            """WITH wanted_pages AS (
                   SELECT DISTINCT w.document_id, w.number
                     FROM unnest($2::uuid[], $3::int[]) AS w(document_id, number)
                     JOIN documents d ON d.id = w.document_id AND d.user_id = $1
               ),
               wanted_blocks AS (
                   SELECT DISTINCT w.document_id, w.id
                     FROM unnest($4::uuid[], $5::text[]) AS w(document_id, id)
               )
               SELECT wp.document_id, wp.number, p.image_file_id, p.width_px, p.height_px,
                      b.seq, b.id, b.page, b.kind, b.text, b.box
                 FROM wanted_pages wp
                 LEFT JOIN pages p ON p.document_id = wp.document_id AND p.number = wp.number
                 LEFT JOIN LATERAL (
                     SELECT b.seq, b.id, b.page, b.kind, b.text, b.box
                       FROM blocks b
                      WHERE b.document_id = wp.document_id AND b.page = wp.number
                        AND b.id = ANY (ARRAY(SELECT wb.id FROM wanted_blocks wb
                                               WHERE wb.document_id = wp.document_id))
                 ) b ON true
                ORDER BY wp.document_id, wp.number, b.seq""",
            user_id,
            [d for d, _ in page_keys],
            [n for _, n in page_keys],
            [d for d, _ in block_keys],
            [b for _, b in block_keys],
        )
        pages: dict[tuple[uuid.UUID, int], PageRow] = {}
        blocks: dict[tuple[uuid.UUID, str], Block] = {}
        for r in rows:
            doc_id: uuid.UUID = r["document_id"]
            if r["image_file_id"] is not None:
                pages[(doc_id, int(r["number"]))] = PageRow(
                    number=int(r["number"]),
                    image_file_id=str(r["image_file_id"]),
                    width_px=int(r["width_px"]),
                    height_px=int(r["height_px"]),
                )
            if r["seq"] is not None:
                blocks.setdefault((doc_id, str(r["id"])), _block(r))
        return HitContext(pages, blocks)
