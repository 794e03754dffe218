"""Markdown: headings, paragraphs, lists, code and pipe tables become blocks on page 1.

Markdown has no layout, so blocks carry no box (the contract leaves Block.box unset for
it) and all sit on page 1. A line-oriented reader, enough for documents (not a full
CommonMark implementation): ATX (``# h``) and setext (``h`` over ``===``/``---``) headings;
fenced code kept verbatim in one text block; a pipe table (header row, ``|---|`` separator,
rows) is one table block in normalised pipe form; other lines join paragraphs, which blank
lines, headings, fences and tables end. Inline markup is kept as written.
"""

from __future__ import annotations

import re

from services.rag.model import Block, BlockKind, DocumentFormat, Page, ParsedDocument
from services.rag.parsers.base import block_id, decode_text

_ATX = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)[ \t]*#*[ \t]*$")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_BREAK = re.compile(r"^ {0,3}([-*_])([ \t]*\1){2,}[ \t]*$")
_TABLE_SEP = re.compile(r"^ {0,3}\|?[ \t]*:?-+:?[ \t]*(\|[ \t]*:?-+:?[ \t]*)*\|?[ \t]*$")


def split_row(line: str) -> list[str]:
    """Cells of a pipe-table row (escaped pipes kept)."""
    s = line.strip()
    if s.startswith("|"):
        s = s[1:]
    if s.endswith("|") and not s.endswith("\\|"):
        s = s[:-1]
    return [c.strip() for c in re.split(r"(?<!\\)\|", s)]


def pipe_table(rows: list[list[str]]) -> str:
    """Rows of cells as a Markdown pipe table; the first row is the header."""
    if not rows:
        return ""
    width = max(len(r) for r in rows)
    norm = [[c.replace("\n", " ").replace("|", "\\|") for c in r] for r in rows]
    norm = [r + [""] * (width - len(r)) for r in norm]
    out = ["| " + " | ".join(norm[0]) + " |", "|" + "---|" * width]
    out += ["| " + " | ".join(r) + " |" for r in norm[1:]]
    return "\n".join(out)


def parse_markdown(data: bytes) -> ParsedDocument:
    text, warnings = decode_text(data)
    lines = text.split("\n")
    items: list[tuple[BlockKind, str]] = []
    para: list[str] = []

    def flush() -> None:
        if para:
            joined = "\n".join(para).strip()
            if joined:
                items.append((BlockKind.TEXT, joined))
            para.clear()

    i = 0
    while i < len(lines):
        line = lines[i]
        fence = _FENCE.match(line)
        if fence:
            flush()
            marker = fence.group(1)
            body: list[str] = []
            i += 1
            while i < len(lines) and not lines[i].strip().startswith(marker):
                body.append(lines[i])
                i += 1
            i += 1
            code = "\n".join(body).strip("\n")
            if code.strip():
                items.append((BlockKind.TEXT, code))
            continue
        atx = _ATX.match(line)
        if atx:
            flush()
            if atx.group(2).strip():
                items.append((BlockKind.HEADING, atx.group(2).strip()))
            i += 1
            continue
        if (
            "|" in line
            and i + 1 < len(lines)
            and "-" in lines[i + 1]
            and _TABLE_SEP.match(lines[i + 1])
        ):
            flush()
            rows = [split_row(line)]
            i += 2
            while i < len(lines) and "|" in lines[i] and lines[i].strip():
                rows.append(split_row(lines[i]))
                i += 1
            items.append((BlockKind.TABLE, pipe_table(rows)))
            continue
        if para and len(para) == 1 and _SETEXT.match(line) and line.strip():
            items.append((BlockKind.HEADING, para[0].strip()))
            para.clear()
            i += 1
            continue
        if not para and _BREAK.match(line):
            i += 1  # a thematic break
            continue
        if not line.strip():
            flush()
        else:
            para.append(line.rstrip())
        i += 1
    flush()
    blocks = [Block(block_id(1, n), 1, kind, body) for n, (kind, body) in enumerate(items, start=1)]
    return ParsedDocument(DocumentFormat.MARKDOWN, [Page(1)], blocks, warnings)
