"""All SQL of the rag service. Every query on a user's data names the owner (user_id),
so another user's knowledge base or document is simply not found."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from services.rag.model import Block, BlockKind, Box, Page

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


def _kb(record: Any) -> KnowledgeBaseRow:
    return KnowledgeBaseRow(**dict(record))


def _doc(record: Any) -> DocumentRow:
    return DocumentRow(**dict(record))


class Store:
    def __init__(self, pool: Any) -> None:
        self.pool = pool

    # --- knowledge bases ----------------------------------------------------------------

    async def create_kb(
        self, *, user_id: str, name: str, description: str, clone_id: str, chat_id: str
    ) -> KnowledgeBaseRow:
        kb_id = uuid.uuid4()
        await self.pool.execute(
            """INSERT INTO knowledge_bases (id, user_id, name, description, clone_id, chat_id)
               VALUES ($1, $2, $3, $4, $5, $6)""",
            kb_id,
            user_id,
            name,
            description,
            clone_id,
            chat_id,
        )
        row = await self.get_kb(user_id, kb_id)
        assert row is not None
        return row

    async def get_kb(self, user_id: str, kb_id: uuid.UUID) -> KnowledgeBaseRow | None:
        record = await self.pool.fetchrow(
            f"SELECT {_KB_COLUMNS} FROM knowledge_bases k WHERE k.user_id = $1 AND k.id = $2",
            user_id,
            kb_id,
        )
        return None if record is None else _kb(record)

    async def owned_kbs(self, user_id: str, kb_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
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
        limit: int,
        after: tuple[dt.datetime, uuid.UUID] | None,
        clone_id: str,
        chat_id: str,
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

    async def delete_kb(self, user_id: str, kb_id: uuid.UUID) -> bool:
        """Deletes the knowledge base with its documents, pages and blocks."""
        result = await self.pool.execute(
            "DELETE FROM knowledge_bases WHERE user_id = $1 AND id = $2", user_id, kb_id
        )
        return str(result).endswith(" 1")

    # --- documents ----------------------------------------------------------------------

    async def get_document(self, user_id: str, doc_id: uuid.UUID) -> DocumentRow | None:
        record = await self.pool.fetchrow(
            f"SELECT {_DOC_COLUMNS} FROM documents WHERE user_id = $1 AND id = $2",
            user_id,
            doc_id,
        )
        return None if record is None else _doc(record)

    async def list_documents(
        self,
        user_id: str,
        kb_id: uuid.UUID,
        *,
        limit: int,
        after: tuple[dt.datetime, uuid.UUID] | None,
    ) -> list[DocumentRow]:
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
    ) -> DocumentRow | None:
        """Create the document of (kb, file) or claim the existing one for a new ingest
        (status PROCESSING, this ``token``). None when an ingest of it is already running
        (PROCESSING and heard from within ``stale_seconds``) or the knowledge base is not
        the user's."""
        record = await self.pool.fetchrow(
            f"""INSERT INTO documents (id, user_id, knowledge_base_id, file_id, filename, format,
                                       status, ingest_token)
                SELECT $1, $2, k.id, $4, $5, $6, 'processing', $7
                  FROM knowledge_bases k WHERE k.id = $3 AND k.user_id = $2
                ON CONFLICT (knowledge_base_id, file_id) DO UPDATE
                   SET status = 'processing', error = '', filename = EXCLUDED.filename,
                       format = EXCLUDED.format, ingest_token = EXCLUDED.ingest_token,
                       heartbeat_at = clock_timestamp(), updated_at = clock_timestamp()
                 WHERE documents.user_id = $2
                   AND (documents.status <> 'processing'
                        OR documents.heartbeat_at < clock_timestamp() - make_interval(secs => $8))
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
        if record is not None:
            await self.touch_kb(kb_id)
        return None if record is None else _doc(record)

    async def touch_kb(self, kb_id: uuid.UUID) -> None:
        await self.pool.execute(
            "UPDATE knowledge_bases SET updated_at = clock_timestamp() WHERE id = $1", kb_id
        )

    async def heartbeat(self, doc_id: uuid.UUID, token: uuid.UUID) -> bool:
        result = await self.pool.execute(
            """UPDATE documents SET heartbeat_at = clock_timestamp()
               WHERE id = $1 AND ingest_token = $2 AND status = 'processing'""",
            doc_id,
            token,
        )
        return str(result).endswith(" 1")

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

    async def delete_document(self, user_id: str, doc_id: uuid.UUID) -> bool:
        result = await self.pool.execute(
            "DELETE FROM documents WHERE user_id = $1 AND id = $2", user_id, doc_id
        )
        return str(result).endswith(" 1")

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
        self, doc_id: uuid.UUID, first: int, last: int, *, after_seq: int, limit: int
    ) -> list[BlockRow]:
        rows = await self.pool.fetch(
            """SELECT seq, id, page, kind, text, box FROM blocks
               WHERE document_id = $1 AND page BETWEEN $2 AND $3 AND seq > $4
               ORDER BY seq LIMIT $5""",
            doc_id,
            first,
            last,
            after_seq,
            limit,
        )
        return [_block_row(r) for r in rows]


def _block_row(record: Any) -> BlockRow:
    box = record["box"]
    return BlockRow(
        seq=int(record["seq"]),
        block=Block(
            id=str(record["id"]),
            page=int(record["page"]),
            kind=BlockKind(record["kind"]),
            text=str(record["text"]),
            box=Box.from_dict(box) if isinstance(box, dict) else None,
        ),
    )
