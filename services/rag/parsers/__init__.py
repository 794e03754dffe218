"""Parsers by format, and the registry that picks one.

``parse_document(data, filename=..., content_type=..., format=None, options=...)`` sniffs the
format unless one is forced, runs its parser, applies the block limit and returns a
ParsedDocument. Errors (all subclasses of the shared service errors):
UnsupportedFormatError / FormatMismatchError / CorruptPdfError → INVALID_ARGUMENT,
EncryptedPdfError → FAILED_PRECONDITION,
DocumentTooLargeError → RESOURCE_EXHAUSTED, InputLimitError (over an input budget of
ParseOptions: page or document pixels, text size, JSON depth) → INVALID_ARGUMENT.

Detection, first match wins: the PDF header; a JSON body in the annotation schema (by
content, or a .json name / application/json type, which then must parse as the schema);
HTML by type, extension or a leading tag; Markdown by type or extension; plain text by
type or extension; then content heuristics for text without a name (Markdown when it has
ATX headings or pipe tables, else text). Binary data (NUL bytes, invalid UTF-8 that is
not Cyrillic Windows-1251 text) and known non-document types are unsupported.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

from services.rag.model import (
    DocumentFormat,
    DocumentTooLargeError,
    FormatMismatchError,
    ParsedDocument,
    UnsupportedFormatError,
)
from services.rag.parsers.base import ParseOptions, check_text_size, json_depth
from services.rag.parsers.html import parse_html
from services.rag.parsers.json_annotation import looks_like_annotation, parse_json_annotation
from services.rag.parsers.markdown import parse_markdown
from services.rag.parsers.pdf import PdfRenderer, looks_like_pdf, parse_pdf
from services.rag.parsers.text import parse_text

__all__ = [
    "ParseOptions",
    "PdfRenderer",
    "detect_format",
    "parse_document",
]

_EXT = {
    ".pdf": DocumentFormat.PDF,
    ".md": DocumentFormat.MARKDOWN,
    ".markdown": DocumentFormat.MARKDOWN,
    ".html": DocumentFormat.HTML,
    ".htm": DocumentFormat.HTML,
    ".xhtml": DocumentFormat.HTML,
    ".json": DocumentFormat.JSON_ANNOTATION,
    ".txt": DocumentFormat.TEXT,
    ".text": DocumentFormat.TEXT,
}
_TYPES = {
    "application/pdf": DocumentFormat.PDF,
    "text/markdown": DocumentFormat.MARKDOWN,
    "text/x-markdown": DocumentFormat.MARKDOWN,
    "text/html": DocumentFormat.HTML,
    "application/xhtml+xml": DocumentFormat.HTML,
    "application/json": DocumentFormat.JSON_ANNOTATION,
    "text/plain": DocumentFormat.TEXT,
}
_HTML_START = re.compile(
    rb"^\s*(<\?xml[^>]*>\s*)?(<!--.*?-->\s*)*<(!doctype\s+html|html|head|body|table|div|p|h[1-6])\b",
    re.IGNORECASE | re.DOTALL,
)
_MD_HINT = re.compile(r"^(#{1,6}\s+\S|\s*\|.*\|\s*$)", re.MULTILINE)

_PARSERS: dict[DocumentFormat, Callable[[bytes], ParsedDocument]] = {
    DocumentFormat.MARKDOWN: parse_markdown,
    DocumentFormat.HTML: parse_html,
    DocumentFormat.JSON_ANNOTATION: parse_json_annotation,
    DocumentFormat.TEXT: parse_text,
}


def _suffix(filename: str) -> str:
    name = filename.rsplit("/", 1)[-1].lower()
    return name[name.rfind(".") :] if "." in name else ""


def _is_text(data: bytes) -> bool:
    head = data[:65536]
    if b"\x00" in head and not head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return False
    try:
        head.decode("utf-8")
        return True
    except UnicodeDecodeError as exc:
        if exc.start >= len(head) - 4:  # a character cut at the sniffing window
            return True
    # Legacy Russian text: mostly Cyrillic letters in Windows-1251.
    decoded = head.decode("cp1251", errors="replace")
    letters = sum(ch.isalpha() or ch.isspace() or ch.isdigit() for ch in decoded)
    return letters >= 0.8 * len(decoded)


def _sniff_json(data: bytes, opts: ParseOptions) -> bool:
    """Whether the body parses as a JSON annotation; bodies over the size or depth budget
    are not parsed here (parse_document refuses them once the format is known)."""
    if opts.max_text_bytes and len(data) > opts.max_text_bytes:
        return False
    if opts.max_json_depth and json_depth(data.decode("utf-8", "replace")) > opts.max_json_depth:
        return False
    try:
        return looks_like_annotation(json.loads(data))
    except (ValueError, RecursionError):
        return False  # not valid JSON: text of some other kind


def detect_format(
    data: bytes,
    filename: str = "",
    content_type: str = "",
    options: ParseOptions | None = None,
) -> DocumentFormat:
    """The format of a file from its content, name and content type (``options`` bound the
    JSON sniffing).

    Raises UnsupportedFormatError when it is none of the supported formats.
    """
    if looks_like_pdf(data):
        return DocumentFormat.PDF
    ctype = content_type.split(";", 1)[0].strip().lower()
    by_name = _EXT.get(_suffix(filename)) or _TYPES.get(ctype)
    if by_name is DocumentFormat.PDF:
        # Named a PDF but without the header: a damaged PDF, reported as such.
        return DocumentFormat.PDF
    if not _is_text(data):
        shown = filename or ctype or "the file"
        raise UnsupportedFormatError(
            f"unsupported document type: {shown} is not PDF, Markdown, HTML, "
            "JSON annotation or plain text"
        )
    stripped = data.lstrip()[:1]
    if stripped in (b"{", b"[") and _sniff_json(data, options or ParseOptions()):
        return DocumentFormat.JSON_ANNOTATION
    if by_name is not None:
        return by_name
    if _HTML_START.match(data[:4096]):
        return DocumentFormat.HTML
    if ctype and not ctype.startswith("text/") and ctype != "application/octet-stream":
        raise UnsupportedFormatError(f"unsupported document type: {ctype}")
    if _MD_HINT.search(data[:65536].decode("utf-8", errors="replace")):
        return DocumentFormat.MARKDOWN
    return DocumentFormat.TEXT


def parse_document(
    data: bytes,
    *,
    filename: str = "",
    content_type: str = "",
    format: DocumentFormat | None = None,
    options: ParseOptions | None = None,
) -> ParsedDocument:
    """Parse a file. ``format`` forces a parser (FormatMismatchError if the file is not of
    it); otherwise the format is detected. See the module docstring for the errors."""
    opts = options or ParseOptions()
    fmt = format or detect_format(data, filename, content_type, opts)
    if fmt is DocumentFormat.PDF:
        if format is not None and not looks_like_pdf(data):
            raise FormatMismatchError("the file is not a PDF (no PDF header)")
        doc = parse_pdf(data, opts)
    else:
        if format is not None and looks_like_pdf(data):
            raise FormatMismatchError(f"the file is a PDF, not {fmt.value}")
        if format is not None and not _is_text(data):
            raise FormatMismatchError(f"the file is binary, not {fmt.value}")
        check_text_size(data, opts.max_text_bytes)
        if fmt is DocumentFormat.JSON_ANNOTATION:
            doc = parse_json_annotation(data, opts.max_json_depth)
        else:
            doc = _PARSERS[fmt](data)
        if opts.max_pages and doc.page_count > opts.max_pages:
            raise DocumentTooLargeError(
                f"the document has {doc.page_count} pages; at most {opts.max_pages} are allowed",
                limit="pages",
                maximum=opts.max_pages,
            )
    if opts.max_blocks and len(doc.blocks) > opts.max_blocks:
        raise DocumentTooLargeError(
            f"the document has {len(doc.blocks)} blocks; at most {opts.max_blocks} are allowed",
            limit="blocks",
            maximum=opts.max_blocks,
        )
    return doc
