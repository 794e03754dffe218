"""What every parser shares: options, block ids, text decoding."""

from __future__ import annotations

import codecs
from dataclasses import dataclass

from services.rag.model import ParseWarning

DEFAULT_DPI = 150
MIN_DPI = 72
MAX_DPI = 300


@dataclass(frozen=True, slots=True)
class ParseOptions:
    """How to parse.

    ``dpi``: resolution of rendered PDF page images (72–300). ``render``: render PDF pages
    to PNG at all (off for callers that only need text). ``max_pages``/``max_blocks``:
    limits (0 = none); over them the parse raises DocumentTooLargeError.
    """

    dpi: int = DEFAULT_DPI
    render: bool = True
    max_pages: int = 0
    max_blocks: int = 0

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
