"""Page tokens and page sizes (AIP-158), shared by every List RPC.

A page token is an opaque base64 of the keyset position where the next page starts
(e.g. the last row's sort key and id), so pages stay stable while rows are added. Clients
must not build or edit tokens; a token that does not decode is INVALID_ARGUMENT.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from services.common.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200


def page_size(
    requested: int, *, default: int = DEFAULT_PAGE_SIZE, maximum: int = MAX_PAGE_SIZE
) -> int:
    if requested < 0:
        raise InvalidArgument("page_size must not be negative", field="page_size")
    if requested == 0:
        return default
    return min(requested, maximum)


def encode_token(position: dict[str, Any]) -> str:
    raw = json.dumps(position, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str) -> dict[str, Any] | None:
    """None for an empty token (the first page)."""
    if not token:
        return None
    try:
        padded = token + "=" * (-len(token) % 4)
        value = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise InvalidArgument("page_token is not valid", field="page_token") from None
    if not isinstance(value, dict):
        raise InvalidArgument("page_token is not valid", field="page_token")
    return value
