"""Domain objects and store rows ↔ aivera.rag.v1 / aivera.common.v1 messages (pure, no
I/O): knowledge bases, documents, pages, blocks with their boxes, and search hits with
their blocks and page image."""

from __future__ import annotations

from collections.abc import Iterable

from aivera.common.v1 import common_pb2
from aivera.rag.v1 import rag_pb2
from services.common.protoutil import timestamp
from services.rag.index import Hit, SearchMode
from services.rag.model import Block, BlockKind, Box, DocumentFormat
from services.rag.store import DocumentRow, KnowledgeBaseRow, PageRow

FORMAT_TO_PROTO: dict[DocumentFormat, rag_pb2.DocumentFormat.ValueType] = {
    DocumentFormat.PDF: rag_pb2.DOCUMENT_FORMAT_PDF,
    DocumentFormat.MARKDOWN: rag_pb2.DOCUMENT_FORMAT_MARKDOWN,
    DocumentFormat.HTML: rag_pb2.DOCUMENT_FORMAT_HTML,
    DocumentFormat.JSON_ANNOTATION: rag_pb2.DOCUMENT_FORMAT_JSON_ANNOTATION,
    DocumentFormat.TEXT: rag_pb2.DOCUMENT_FORMAT_TEXT,
}
FORMAT_FROM_PROTO = {v: k for k, v in FORMAT_TO_PROTO.items()}

KIND_TO_PROTO: dict[BlockKind, rag_pb2.BlockKind.ValueType] = {
    BlockKind.TEXT: rag_pb2.BLOCK_KIND_TEXT,
    BlockKind.HEADING: rag_pb2.BLOCK_KIND_HEADING,
    BlockKind.TABLE: rag_pb2.BLOCK_KIND_TABLE,
    BlockKind.IMAGE: rag_pb2.BLOCK_KIND_IMAGE,
}

STATUS_TO_PROTO: dict[str, rag_pb2.DocumentStatus.ValueType] = {
    "processing": rag_pb2.DOCUMENT_STATUS_PROCESSING,
    "ready": rag_pb2.DOCUMENT_STATUS_READY,
    "failed": rag_pb2.DOCUMENT_STATUS_FAILED,
}

MODE_FROM_PROTO: dict[rag_pb2.SearchMode.ValueType, SearchMode] = {
    rag_pb2.SEARCH_MODE_UNSPECIFIED: SearchMode.HYBRID,
    rag_pb2.SEARCH_MODE_HYBRID: SearchMode.HYBRID,
    rag_pb2.SEARCH_MODE_DENSE: SearchMode.DENSE,
    rag_pb2.SEARCH_MODE_SPARSE: SearchMode.SPARSE,
}


def format_from_proto(value: rag_pb2.DocumentFormat.ValueType) -> DocumentFormat | None:
    """None for UNSPECIFIED (detect); KeyError for an unknown number."""
    if value == rag_pb2.DOCUMENT_FORMAT_UNSPECIFIED:
        return None
    return FORMAT_FROM_PROTO[value]


def box_to_proto(box: Box, page: int) -> common_pb2.BoundingBox:
    msg = common_pb2.BoundingBox(
        page=page,
        normalized=common_pb2.NormalizedBox(
            left=box.left, top=box.top, right=box.right, bottom=box.bottom
        ),
        page_width=box.page_width,
        page_height=box.page_height,
    )
    if box.pixels is not None:
        msg.pixels.CopyFrom(
            common_pb2.PixelBox(
                left=box.pixels.left,
                top=box.pixels.top,
                right=box.pixels.right,
                bottom=box.pixels.bottom,
            )
        )
    return msg


def block_to_proto(block: Block) -> rag_pb2.Block:
    msg = rag_pb2.Block(
        id=block.id, page=block.page, kind=KIND_TO_PROTO[block.kind], text=block.text
    )
    if block.box is not None:
        msg.box.CopyFrom(box_to_proto(block.box, block.page))
    return msg


def kb_to_proto(row: KnowledgeBaseRow) -> rag_pb2.KnowledgeBase:
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


def document_to_proto(row: DocumentRow) -> rag_pb2.Document:
    fmt = (
        FORMAT_TO_PROTO[DocumentFormat(row.format)]
        if row.format
        else rag_pb2.DOCUMENT_FORMAT_UNSPECIFIED
    )
    return rag_pb2.Document(
        id=str(row.id),
        knowledge_base_id=str(row.knowledge_base_id),
        file_id=row.file_id,
        filename=row.filename,
        format=fmt,
        status=STATUS_TO_PROTO[row.status],
        error=row.error,
        page_count=row.page_count,
        block_count=row.block_count,
        chunk_count=row.chunk_count,
        create_time=timestamp(row.created_at),
        update_time=timestamp(row.updated_at),
    )


def page_to_proto(page: PageRow) -> rag_pb2.Page:
    return rag_pb2.Page(
        number=page.number,
        image_file_id=page.image_file_id,
        width_px=page.width_px,
        height_px=page.height_px,
    )


def hit_to_proto(
    hit: Hit, blocks: Iterable[Block] = (), page: PageRow | None = None
) -> rag_pb2.SearchHit:
    """A search hit with its blocks (reading order) and its page (number, image)."""
    msg = rag_pb2.SearchHit(
        chunk_id=hit.chunk_id,
        text=hit.text,
        score=hit.score,
        document_id=hit.document_id,
        knowledge_base_id=hit.knowledge_base_id,
        filename=hit.filename,
        page=hit.page,
        block_ids=list(hit.block_ids),
        blocks=[block_to_proto(b) for b in blocks],
    )
    if hit.box is not None:
        msg.box.CopyFrom(box_to_proto(hit.box, hit.page))
    if page is not None:
        msg.page_image.CopyFrom(page_to_proto(page))
    return msg
