"""HTML (including OCR output): headings, paragraphs, list items and tables as blocks.

HTML has no page geometry here, so blocks sit on page 1 without a box. Tables are kept as
tables: each ``<table>`` becomes one table block whose text is a Markdown pipe table (the
first row is the header; ``colspan`` repeats a cell so columns line up). Text outside
block elements joins paragraphs; ``<br>`` is a line break; ``script``, ``style``,
``head`` and ``template`` are skipped; entities are decoded.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

from services.rag.model import Block, BlockKind, DocumentFormat, Page, ParsedDocument
from services.rag.parsers.base import block_id, decode_text
from services.rag.parsers.markdown import pipe_table

_SKIP = {"script", "style", "head", "template", "noscript", "svg"}
_HEADINGS = {"h1", "h2", "h3", "h4", "h5", "h6"}
_BLOCKS = {
    "p", "div", "section", "article", "main", "header", "footer", "aside", "nav",
    "li", "ul", "ol", "dl", "dt", "dd", "pre", "blockquote", "figure", "figcaption",
    "form", "fieldset", "address", "hr", "body", "html", "caption",
}  # fmt: skip
_SPACES = re.compile(r"[ \t\r\f\v]+")


class _Reader(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.items: list[tuple[BlockKind, str]] = []
        self.buf: list[str] = []
        self.skip = 0
        self.heading = False
        self.pre = 0
        # Table state: a stack for nested tables (an inner table becomes cell text).
        self.tables: list[list[list[str]]] = []
        self.cell: list[str] | None = None
        self.cell_span = 1
        self.nested = 0  # tables inside a cell: their text joins the cell

    # text -----------------------------------------------------------------------------
    def _flush(self) -> None:
        raw = "".join(self.buf)
        self.buf.clear()
        if self.pre:
            text = raw.strip("\n")
        else:
            text = "\n".join(_SPACES.sub(" ", ln).strip() for ln in raw.split("\n"))
            text = re.sub(r"\n{2,}", "\n", text).strip()
        if text.strip():
            self.items.append((BlockKind.HEADING if self.heading else BlockKind.TEXT, text))

    def handle_data(self, data: str) -> None:
        if self.skip:
            return
        if self.cell is not None:
            self.cell.append(data)
        elif self.tables:
            return  # stray text between rows
        else:
            self.buf.append(data if self.pre else data.replace("\n", " "))

    # tags -------------------------------------------------------------------------------
    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP:
            self.skip += 1
            return
        if self.skip:
            return
        if self.cell is not None and tag in ("table", "tr", "td", "th"):
            if tag == "table" or self.nested:
                self.nested += tag == "table"
                self.cell.append(" ")
                return
            self.handle_endtag("td")  # an unclosed cell ends at the next cell or row
        if tag == "table":
            self._flush()
            self.tables.append([])
        elif tag == "tr" and self.tables:
            self.tables[-1].append([])
        elif tag in ("td", "th") and self.tables:
            if not self.tables[-1]:
                self.tables[-1].append([])
            self.cell = []
            span = dict(attrs).get("colspan") or "1"
            self.cell_span = max(1, min(int(span), 50)) if span.isdigit() else 1
        elif tag == "br":
            if self.cell is not None:
                self.cell.append(" ")
            else:
                self.buf.append("\n")
        elif self.cell is not None:
            return
        elif tag in _HEADINGS:
            self._flush()
            self.heading = True
        elif tag in _BLOCKS:
            self._flush()
            if tag == "pre":
                self.pre += 1

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP:
            self.skip = max(0, self.skip - 1)
            return
        if self.skip:
            return
        if self.nested and self.cell is not None and tag in ("table", "tr", "td", "th"):
            self.nested -= tag == "table"
            self.cell.append(" ")
            return
        if tag in ("td", "th") and self.cell is not None and self.tables:
            text = _SPACES.sub(" ", "".join(self.cell).replace("\n", " ")).strip()
            self.tables[-1][-1].extend([text] * self.cell_span)
            self.cell = None
        elif tag == "table" and self.tables and self.cell is None:
            rows = [r for r in self.tables.pop() if any(c for c in r)]
            if rows:
                self.items.append((BlockKind.TABLE, pipe_table(rows)))
        elif self.cell is not None:
            return
        elif tag in _HEADINGS:
            self._flush()
            self.heading = False
        elif tag in _BLOCKS:
            self._flush()
            if tag == "pre":
                self.pre = max(0, self.pre - 1)

    def close(self) -> None:
        super().close()
        # Tables still open inside a cell end with the document; left counted, they would
        # swallow every end tag below and the loop would never pop the outer tables.
        self.nested = 0
        if self.cell is not None and self.tables:
            self.handle_endtag("td")
        while self.tables:
            self.handle_endtag("table")
        self._flush()


def parse_html(data: bytes) -> ParsedDocument:
    text, warnings = decode_text(data)
    reader = _Reader()
    reader.feed(text)
    reader.close()
    blocks = [
        Block(block_id(1, n), 1, kind, body) for n, (kind, body) in enumerate(reader.items, start=1)
    ]
    return ParsedDocument(DocumentFormat.HTML, [Page(1)], blocks, warnings)
