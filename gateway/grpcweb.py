"""The gRPC-web wire format: frames, text (base64) mode, trailers, timeouts, metadata.

Pure functions, no I/O. The spec is
https://github.com/grpc/grpc/blob/master/doc/PROTOCOL-WEB.md: a body is a sequence of
frames `flag(1) length(4, big-endian) payload`; flag 0x00 carries a message, flag 0x80
the trailers (`name: value\\r\\n` lines). Text mode base64-encodes the body; a sender may
encode it in several padded chunks, so decoding goes chunk by chunk.
"""

from __future__ import annotations

import base64
import binascii
import re
import struct
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass

MESSAGE_FLAG = 0x00
COMPRESSED_FLAG = 0x01
TRAILERS_FLAG = 0x80
_HEADER = struct.Struct(">BI")

CONTENT_TYPE_BINARY = "application/grpc-web+proto"
CONTENT_TYPE_TEXT = "application/grpc-web-text+proto"

# HTTP headers that are transport details, never gRPC metadata.
_NOT_METADATA = frozenset(
    {
        "host",
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
        "te",
        "trailer",
        "content-type",
        "content-length",
        "content-encoding",
        "accept",
        "accept-encoding",
        # (accept-language is forwarded: the services localize error texts by it)
        "user-agent",
        "origin",
        "referer",
        "cookie",
        "pragma",
        "cache-control",
        "priority",
        "dnt",
        "x-grpc-web",
        "x-user-agent",
        "x-accept-content-transfer-encoding",
        "x-accept-response-streaming",
        "grpc-timeout",
        "grpc-encoding",
        "grpc-accept-encoding",
    }
)
_NOT_METADATA_PREFIXES = ("sec-", "access-control-", ":")
_METADATA_KEY = re.compile(r"^[0-9a-z_.\-]+$")
# Metadata an upstream may send that is not passed on as response headers.
_RESERVED_RESPONSE = frozenset({"content-type", "content-length", "grpc-status", "grpc-message"})

_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


class FrameError(ValueError):
    """A malformed gRPC-web request body."""


@dataclass(frozen=True, slots=True)
class Mode:
    """Binary or text (base64) gRPC-web, as chosen by the request's content type."""

    text: bool
    content_type: str

    def encode(self, chunk: bytes) -> bytes:
        return base64.b64encode(chunk) if self.text else chunk

    def decode(self, body: bytes) -> bytes:
        return decode_text(body) if self.text else body


def mode_for(content_type: str | None) -> Mode | None:
    """The mode for a request content type, or None when it is not gRPC-web."""
    if not content_type:
        return None
    ctype = content_type.split(";", 1)[0].strip().lower()
    if ctype in ("application/grpc-web", "application/grpc-web+proto"):
        return Mode(text=False, content_type=CONTENT_TYPE_BINARY)
    if ctype in ("application/grpc-web-text", "application/grpc-web-text+proto"):
        return Mode(text=True, content_type=CONTENT_TYPE_TEXT)
    return None


def response_mode(request: Mode, accept: str | None) -> Mode:
    """Text responses for text requests, and (as Envoy does) whenever the client accepts
    `application/grpc-web-text` — what grpc-web clients send in text mode."""
    if request.text or "application/grpc-web-text" in (accept or "").lower():
        return Mode(text=True, content_type=CONTENT_TYPE_TEXT)
    return request


def decode_text(body: bytes) -> bytes:
    """Base64 that may be several padded chunks back to back."""
    data = b"".join(body.split())
    out = bytearray()
    try:
        for chunk in re.findall(rb"[^=]+=*|=+", data):
            if chunk.strip(b"="):
                chunk += b"=" * (-len(chunk) % 4)
                out += base64.b64decode(chunk, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise FrameError(f"invalid base64 in a grpc-web-text body: {exc}") from None
    return bytes(out)


def encode_message(payload: bytes) -> bytes:
    return _HEADER.pack(MESSAGE_FLAG, len(payload)) + payload


def encode_trailers(trailers: Iterable[tuple[str, str]]) -> bytes:
    block = "".join(f"{key}: {value}\r\n" for key, value in trailers).encode()
    return _HEADER.pack(TRAILERS_FLAG, len(block)) + block


def parse_frames(body: bytes) -> list[tuple[int, bytes]]:
    """Every (flag, payload) of a body; the body must end on a frame boundary."""
    frames: list[tuple[int, bytes]] = []
    pos = 0
    while pos < len(body):
        if len(body) - pos < _HEADER.size:
            raise FrameError("truncated frame header")
        flag, length = _HEADER.unpack_from(body, pos)
        pos += _HEADER.size
        if len(body) - pos < length:
            raise FrameError("truncated frame")
        frames.append((flag, body[pos : pos + length]))
        pos += length
    return frames


def request_messages(body: bytes) -> list[bytes]:
    """The messages of a request body (a unary or server-streaming call sends one)."""
    messages = []
    for flag, payload in parse_frames(body):
        if flag & TRAILERS_FLAG:
            continue  # a client has no trailers to send; tolerated and ignored
        if flag & COMPRESSED_FLAG:
            raise FrameError("compressed grpc-web frames are not supported")
        messages.append(payload)
    return messages


def parse_trailers(block: bytes) -> dict[str, str]:
    """The trailers frame's payload as a dict (lower-cased names)."""
    out: dict[str, str] = {}
    for line in block.decode("latin-1").split("\r\n"):
        if ":" in line:
            key, value = line.split(":", 1)
            out[key.strip().lower()] = value.strip()
    return out


def parse_timeout(value: str | None) -> float | None:
    """`grpc-timeout` (digits + unit H/M/S/m/u/n) in seconds; None when absent."""
    if not value:
        return None
    value = value.strip()
    if len(value) < 2 or len(value) > 9 or not value[:-1].isdigit() or value[-1] not in _UNITS:
        raise FrameError(f"invalid grpc-timeout {value!r}")
    return int(value[:-1]) * _UNITS[value[-1]]


def encode_grpc_message(message: str) -> str:
    """Percent-encode a status message as gRPC requires for `grpc-message`."""
    return urllib.parse.quote(message, safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~")


def request_metadata(
    headers: Iterable[tuple[str, str]], stripped: Iterable[str]
) -> list[tuple[str, str | bytes]]:
    """gRPC metadata to forward from the HTTP request headers.

    Transport and browser headers are dropped, so are the `stripped` ones (the internal
    credential, which only the mesh itself may set). `-bin` values arrive base64-encoded.
    """
    drop = {name.lower() for name in stripped}
    out: list[tuple[str, str | bytes]] = []
    for name, value in headers:
        key = name.lower()
        if key in _NOT_METADATA or key in drop or key.startswith(_NOT_METADATA_PREFIXES):
            continue
        if key.startswith("grpc-") or not _METADATA_KEY.match(key):
            continue
        if key.endswith("-bin"):
            try:
                out.append((key, base64.b64decode(value + "=" * (-len(value) % 4))))
            except (binascii.Error, ValueError):
                continue
        elif value.isascii() and value.isprintable():
            out.append((key, value))
    return out


def response_metadata(metadata: Iterable[tuple[str, str | bytes]]) -> list[tuple[str, str]]:
    """gRPC metadata as HTTP header / trailer lines (`-bin` values base64-encoded)."""
    out = []
    for key, value in metadata:
        if key in _RESERVED_RESPONSE:
            continue
        if isinstance(value, bytes):
            out.append((key, base64.b64encode(value).decode()))
        else:
            out.append((key, value))
    return out


def status_lines(
    code: int, message: str, trailing: Iterable[tuple[str, str | bytes]] = ()
) -> list[tuple[str, str]]:
    """The `grpc-status`/`grpc-message` lines followed by the trailing metadata."""
    lines = [("grpc-status", str(code))]
    if message:
        lines.append(("grpc-message", encode_grpc_message(message)))
    lines.extend(response_metadata(trailing))
    return lines


def header_names(lines: Iterable[tuple[str, str]]) -> list[str]:
    seen: dict[str, None] = {}
    for key, _ in lines:
        seen[key] = None
    return list(seen)
