"""What every parser shares: options, block ids, text decoding."""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass
from itertools import accumulate

from services.rag.model import InputLimitError, ParseWarning

DEFAULT_DPI = 150
MIN_DPI = 72
MAX_DPI = 300

# Input budgets (0 = none). A page image is at most DEFAULT_MAX_PAGE_PIXELS pixels (about
# 100 MB as a bitmap); all page images of one PDF together DEFAULT_MAX_DOCUMENT_PIXELS
# (2000 A4 pages at 150 dpi); a text format (HTML, Markdown, text, JSON) is at most
# DEFAULT_MAX_TEXT_BYTES; JSON nests at most DEFAULT_MAX_JSON_DEPTH arrays/objects deep.
DEFAULT_MAX_PAGE_PIXELS = 25_000_000
DEFAULT_MAX_DOCUMENT_PIXELS = 5_000_000_000
DEFAULT_MAX_TEXT_BYTES = 16 * 1024 * 1024
DEFAULT_MAX_JSON_DEPTH = 64
# Pixels of one image embedded in a PDF (from its dictionary, before PDFium decodes it to
# render the page): a 600 dpi A4 scan is 35 Mpx.
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000


@dataclass(frozen=True, slots=True)
class ParseOptions:
    """How to parse.

    ``dpi``: resolution of rendered PDF page images (72–300). ``render``: render PDF pages
    to PNG at all (off for callers that only need text). ``max_pages``/``max_blocks``:
    limits (0 = none); over them the parse raises DocumentTooLargeError.

    Input budgets (0 = none), checked before the work they bound; over them the parse
    raises InputLimitError (INVALID_ARGUMENT naming the limit): ``max_page_pixels`` (a
    page image; a larger page is rendered at a lower dpi, down to 72, else refused),
    ``max_document_pixels`` (all page images of a PDF), ``max_text_bytes`` (a text
    format's file), ``max_json_depth`` (nesting of a JSON annotation),
    ``max_image_pixels`` (one image in a PDF, from its declared size, before decoding).
    """

    dpi: int = DEFAULT_DPI
    render: bool = True
    max_pages: int = 0
    max_blocks: int = 0
    max_page_pixels: int = DEFAULT_MAX_PAGE_PIXELS
    max_document_pixels: int = DEFAULT_MAX_DOCUMENT_PIXELS
    max_text_bytes: int = DEFAULT_MAX_TEXT_BYTES
    max_json_depth: int = DEFAULT_MAX_JSON_DEPTH
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS

    def __post_init__(self) -> None:
        if not MIN_DPI <= self.dpi <= MAX_DPI:
            raise ValueError(f"dpi must be within {MIN_DPI}–{MAX_DPI}, got {self.dpi}")


def block_id(page: int, n: int) -> str:
    """The generated id of the n-th (1-based) block of a page: stable for the same content."""
    return f"p{page}-b{n}"


def decode_text(data: bytes) -> tuple[str, list[ParseWarning]]:
    """Bytes of a text format to str: UTF-8 (BOM allowed), UTF-16 with a BOM, else
    Windows-1251 (legacy Russian files) with a warning. Newlines are normalised to \\n."""
    warnings: list[ParseWarning] = []
    if data.startswith(codecs.BOM_UTF8):
        text = data[len(codecs.BOM_UTF8) :].decode("utf-8", errors="replace")
    elif data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        text = data.decode("utf-16", errors="replace")
    else:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = data.decode("cp1251", errors="replace")
            warnings.append(ParseWarning("the file is not UTF-8; read it as Windows-1251"))
    return text.replace("\r\n", "\n").replace("\r", "\n"), warnings


def check_text_size(data: bytes, max_bytes: int) -> None:
    """InputLimitError when a text format's file is over ``max_bytes`` (0 = none)."""
    if max_bytes and len(data) > max_bytes:
        raise InputLimitError(
            f"the file is {len(data)} bytes; a text document (HTML, Markdown, text, JSON) "
            f"may have at most {max_bytes}",
            limit="text_bytes",
            maximum=max_bytes,
        )


# A JSON string, or an unterminated one running to the end (so the match never fails and
# the scan stays linear whatever the input).
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*(?:"|\\?\Z)', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


def json_depth(text: str) -> int:
    """How deep arrays and objects nest in ``text`` (brackets inside strings do not
    count; an unclosed one does), without parsing it: linear time, no recursion."""
    brackets = _NOT_BRACKET.sub("", _JSON_STRING.sub("", text))
    return max(accumulate(map(_STEP.__getitem__, brackets)), default=0)


def check_json_depth(text: str, max_depth: int) -> None:
    """InputLimitError when ``text`` nests deeper than ``max_depth`` (0 = none)."""
    if max_depth and (depth := json_depth(text)) > max_depth:
        raise InputLimitError(
            f"the JSON nests {depth} levels deep; at most {max_depth} are allowed",
            limit="json_depth",
            maximum=max_depth,
        )
