"""What a reference image is, read from its first bytes: the format (JPEG, PNG, WebP,
sniffed from magic numbers, never from a name or a declared type) and the decoded width
and height from the image header. Nothing is decoded: a decompression bomb is refused on
its header's numbers before any pixel buffer exists."""

from __future__ import annotations

import struct
from dataclasses import dataclass

JPEG = "jpeg"
PNG = "png"
WEBP = "webp"

# JPEG start-of-frame markers (the frame header holds the size); C4, C8 and CC are not.
_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
# Markers without a length field.
_STANDALONE = frozenset({0x01, 0xD8, *range(0xD0, 0xD8)})


class NotAnImage(ValueError):
    """Not a JPEG, PNG or WebP, or its header is broken or beyond the bytes given."""


@dataclass(frozen=True, slots=True)
class ImageHeader:
    format: str
    width: int
    height: int


def sniff(head: bytes) -> str | None:
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return PNG
    if head.startswith(b"\xff\xd8\xff"):
        return JPEG
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return WEBP
    return None


def read_header(head: bytes) -> ImageHeader:
    """The format and size from the first bytes of a file. NotAnImage when it is none of
    the three formats or its header is malformed or not within `head`."""
    fmt = sniff(head)
    try:
        if fmt == PNG:
            width, height = _png(head)
        elif fmt == JPEG:
            width, height = _jpeg(head)
        elif fmt == WEBP:
            width, height = _webp(head)
        else:
            raise NotAnImage("not a JPEG, PNG or WebP image")
    except (struct.error, IndexError):
        raise NotAnImage(f"the {fmt} header is truncated") from None
    return ImageHeader(fmt, width, height)


def _png(b: bytes) -> tuple[int, int]:
    length, kind = struct.unpack(">I4s", b[8:16])
    if kind != b"IHDR" or length != 13:
        raise NotAnImage("the PNG has no IHDR header")
    width, height = struct.unpack(">II", b[16:24])
    return int(width), int(height)


def _jpeg(b: bytes) -> tuple[int, int]:
    i = 2
    while True:
        if b[i] != 0xFF:
            raise NotAnImage("the JPEG segments are malformed")
        while b[i] == 0xFF:  # fill bytes before a marker
            i += 1
        marker = b[i]
        i += 1
        if marker in _STANDALONE:
            continue
        if marker in (0xD9, 0xDA):  # end of image or scan data before any frame header
            raise NotAnImage("the JPEG has no frame header")
        (length,) = struct.unpack(">H", b[i : i + 2])
        if length < 2:
            raise NotAnImage("the JPEG segments are malformed")
        if marker in _SOF:
            height, width = struct.unpack(">HH", b[i + 3 : i + 7])
            return int(width), int(height)
        i += length


def _webp(b: bytes) -> tuple[int, int]:
    chunk = b[12:16]
    if chunk == b"VP8 ":  # lossy: a key frame's start code, then 14-bit sizes
        if b[23:26] != b"\x9d\x01\x2a":
            raise NotAnImage("the WebP VP8 frame header is malformed")
        width, height = struct.unpack("<HH", b[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L":  # lossless: signature byte, then 14-bit sizes minus one
        if b[20] != 0x2F:
            raise NotAnImage("the WebP VP8L header is malformed")
        (bits,) = struct.unpack("<I", b[21:25])
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":  # extended: the canvas size, 24-bit values minus one
        if len(b) < 30:
            raise IndexError
        width = int.from_bytes(b[24:27], "little") + 1
        height = int.from_bytes(b[27:30], "little") + 1
        return width, height
    raise NotAnImage("the WebP has no VP8, VP8L or VP8X chunk")
