"""Domain objects to protobuf messages."""

from __future__ import annotations

from aivera.rag.v1 import rag_pb2
from services.rag.convert import block_to_proto, format_from_proto, hit_to_proto
from services.rag.index import Hit
from services.rag.model import Block, BlockKind, Box, DocumentFormat
from services.rag.store import PageRow


def test_block_and_hit_boxes() -> None:
    box = Box.from_normalized(0.1, 0.2, 0.8, 0.5, 1000, 1000)
    msg = block_to_proto(Block("b1", 5, BlockKind.TABLE, "| a |", box))
    assert (msg.id, msg.page, msg.kind) == ("b1", 5, rag_pb2.BLOCK_KIND_TABLE)
    assert msg.box.page == 5 and (msg.box.page_width, msg.box.page_height) == (1000, 1000)
    assert abs(msg.box.normalized.right - 0.8) < 1e-6
    assert (msg.box.pixels.left, msg.box.pixels.top, msg.box.pixels.right) == (100, 200, 800)
    assert not block_to_proto(Block("b2", 1, BlockKind.TEXT, "x")).HasField("box")
    hit = Hit("c", 0.5, "t", "d", "kb", "f.pdf", 5, ("b1",), box, 0)
    h = hit_to_proto(hit)
    assert h.box.pixels.bottom == 500 and list(h.block_ids) == ["b1"]
    assert format_from_proto(rag_pb2.DOCUMENT_FORMAT_UNSPECIFIED) is None
    assert format_from_proto(rag_pb2.DOCUMENT_FORMAT_PDF) is DocumentFormat.PDF


def test_hit_with_blocks_and_page() -> None:
    box = Box.from_normalized(0.1, 0.2, 0.8, 0.5, 1000, 1400)
    blocks = [Block("b1", 3, BlockKind.HEADING, "Title", box), Block("b2", 3, BlockKind.TEXT, "x")]
    hit = Hit("c", 0.5, "Title\n\nx", "d", "kb", "f.pdf", 3, ("b1", "b2"), box, 0)
    h = hit_to_proto(hit, blocks, PageRow(3, "img-3", 1000, 1400))
    assert [b.id for b in h.blocks] == ["b1", "b2"]
    assert h.blocks[0] == block_to_proto(blocks[0]) and h.blocks[0].box.pixels.bottom == 700
    assert h.page_image == rag_pb2.Page(
        number=3, image_file_id="img-3", width_px=1000, height_px=1400
    )
    bare = hit_to_proto(hit)
    assert not bare.blocks and not bare.HasField("page_image")
