"""Plain text: paragraphs (separated by blank lines) become text blocks on page 1, no boxes."""

from __future__ import annotations

import re

from services.rag.model import Block, BlockKind, DocumentFormat, Page, ParsedDocument
from services.rag.parsers.base import block_id, decode_text

_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n+")


def parse_text(data: bytes) -> ParsedDocument:
    """Split into paragraphs at blank lines; each non-empty one is a block."""
    text, warnings = decode_text(data)
    paragraphs = [p.strip() for p in _PARAGRAPH_BREAK.split(text)]
    blocks = [
        Block(block_id(1, n), 1, BlockKind.TEXT, p)
        for n, p in enumerate((p for p in paragraphs if p), start=1)
    ]
    return ParsedDocument(DocumentFormat.TEXT, [Page(1)], blocks, warnings)
