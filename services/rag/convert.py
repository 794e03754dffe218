"""Domain objects ↔ aivera.rag.v1 / aivera.common.v1 messages (pure, no I/O)."""

from __future__ import annotations

from aivera.common.v1 import common_pb2
from aivera.rag.v1 import rag_pb2
from services.rag.index import Hit, SearchMode
from services.rag.model import Block, BlockKind, Box, DocumentFormat

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


def hit_to_proto(hit: Hit) -> rag_pb2.SearchHit:
    msg = rag_pb2.SearchHit(
        chunk_id=hit.chunk_id,
        text=hit.text,
        score=hit.score,
        document_id=hit.document_id,
        knowledge_base_id=hit.knowledge_base_id,
        filename=hit.filename,
        page=hit.page,
        block_ids=list(hit.block_ids),
    )
    if hit.box is not None:
        msg.box.CopyFrom(box_to_proto(hit.box, hit.page))
    return msg
