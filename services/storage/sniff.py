"""Content types from the bytes, never from the client.

Binary formats by their magic bytes; text formats (json, jsonl, md, html, txt) by the file
name's extension once the whole content proved to be UTF-8 without NUL bytes. The sniffer
is fed the stream chunk by chunk, so nothing is held but the first bytes.
"""

from __future__ import annotations

import codecs
import struct

PDF = "application/pdf"
PNG = "image/png"
JPEG = "image/jpeg"
WEBP = "image/webp"
TAR = "application/x-tar"
SAFETENSORS = "application/vnd.safetensors"
JSON = "application/json"
JSONL = "application/jsonl"
MARKDOWN = "text/markdown"
HTML = "text/html"
TEXT = "text/plain"

HEAD_BYTES = 512
_MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024

_TEXT_BY_EXTENSION = {
    "json": JSON,
    "jsonl": JSONL,
    "ndjson": JSONL,
    "md": MARKDOWN,
    "markdown": MARKDOWN,
    "html": HTML,
    "htm": HTML,
    "txt": TEXT,
}


def magic_type(head: bytes, size: int) -> str | None:
    """The binary type the first bytes announce, or None."""
    if head.startswith(b"%PDF-"):
        return PDF
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return PNG
    if head.startswith(b"\xff\xd8\xff"):
        return JPEG
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return WEBP
    if len(head) >= 262 and head[257:262] == b"ustar":
        return TAR
    if len(head) >= 9:
        (header_len,) = struct.unpack("<Q", head[:8])
        if 2 <= header_len <= min(size - 8, _MAX_SAFETENSORS_HEADER) and head[8:9] == b"{":
            return SAFETENSORS
    return None


def text_type(filename: str, head: bytes) -> str:
    """The text type of a UTF-8 file by its extension (plain text when unknown)."""
    ext = filename.rsplit(".", 1)[-1].lower() if "." in filename else ""
    kind = _TEXT_BY_EXTENSION.get(ext, TEXT)
    first = head.removeprefix(codecs.BOM_UTF8).lstrip()[:1]
    if kind == JSON and first not in (b"{", b"["):
        return TEXT
    if kind == JSONL and first not in (b"{", b""):
        return TEXT
    return kind


class Sniffer:
    """Feed every chunk, then `result(filename)`."""

    def __init__(self) -> None:
        self.head = b""
        self.size = 0
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self._text = True

    def feed(self, chunk: bytes) -> None:
        if len(self.head) < HEAD_BYTES:
            self.head += chunk[: HEAD_BYTES - len(self.head)]
        self.size += len(chunk)
        if self._text:
            if b"\x00" in chunk:
                self._text = False
                return
            # A binary magic in the head makes the text check pointless.
            if len(self.head) >= 16 and magic_type(self.head, self.size + HEAD_BYTES) in (
                PDF,
                PNG,
                JPEG,
                WEBP,
            ):
                self._text = False
                return
            try:
                self._decoder.decode(chunk)
            except UnicodeDecodeError:
                self._text = False

    def result(self, filename: str) -> str | None:
        found = magic_type(self.head, self.size)
        if found is not None:
            return found
        if not self._text:
            return None
        try:
            self._decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            return None
        return text_type(filename, self.head)
