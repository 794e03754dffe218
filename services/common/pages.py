"""Page tokens and page sizes (AIP-158): the one model of every List RPC in the mesh.

Pages are keyset pages: a store orders rows by a unique key (e.g. `(created_at, id)`),
fetches `size + 1` rows after the previous page's last key, and `take` cuts the page
and makes the next token from its last row. Rows inserted while a client pages never
shift or repeat what it sees.

A token is opaque and tamper-evident: base64url of the keyset position and an HMAC tag
over it and the token's *scope* — the RPC, the calling user and the request's filter.
A token that was edited, made up, issued by another List RPC, to another user, or for
another filter is INVALID_ARGUMENT with reason INVALID_PAGE_TOKEN. The key
(`PAGE_TOKEN_KEY`) only needs to be the same on every replica; it guards the shape of
tokens, not data: every store query is scoped by owner whatever the token says.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from services.common import context as ctx
from services.common.errors import InvalidArgument, Reason

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200

_TAG_BYTES = 16
_DEV_KEY = b"aivera-page-tokens-v1"
_key = _DEV_KEY

T = TypeVar("T")
Keyset = tuple[Any, ...]


def configure(key: str) -> None:
    """Set the HMAC key (every replica of the mesh must use the same one)."""
    global _key
    _key = key.encode() if key else _DEV_KEY


def page_size(
    requested: int, *, default: int = DEFAULT_PAGE_SIZE, maximum: int = MAX_PAGE_SIZE
) -> int:
    if requested < 0:
        raise InvalidArgument("page_size must not be negative", field="page_size")
    if requested == 0:
        return default
    return min(requested, maximum)


@dataclass(frozen=True, slots=True)
class PageRequest:
    """What a store needs for one page: fetch `size + 1` rows after `after`."""

    size: int
    after: Keyset | None
    scope: str

    @property
    def limit(self) -> int:
        return self.size + 1


def request(
    size: int,
    token: str,
    *,
    filter: str = "",
    default: int = DEFAULT_PAGE_SIZE,
    maximum: int = MAX_PAGE_SIZE,
    field: str = "page_token",
) -> PageRequest:
    """Validate a List request's page size and token. `filter` is everything else the
    request narrows the list by (a status, a parent id): a token is valid only with it."""
    scope = _scope(filter)
    return PageRequest(
        size=page_size(size, default=default, maximum=maximum),
        after=decode(token, scope=scope, field=field),
        scope=scope,
    )


def take(rows: Sequence[T], page: PageRequest, key: Callable[[T], Keyset]) -> tuple[list[T], str]:
    """The page's rows and the next page token ('' on the last page), from the
    `page.limit` rows a store fetched."""
    items = list(rows[: page.size])
    if len(rows) <= page.size or not items:
        return items, ""
    return items, encode(key(items[-1]), scope=page.scope)


# -- the token format ---------------------------------------------------------------------
def _scope(filter: str) -> str:
    return "\x1f".join((ctx.current_method(), ctx.current_caller().user_id or "", filter))


def _tag(body: bytes, scope: str) -> bytes:
    mac = hmac.new(_key, body + b"\x1e" + scope.encode(), hashlib.sha256)
    return mac.digest()[:_TAG_BYTES]


def _pack(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return {"d": value.isoformat()}
    if isinstance(value, uuid.UUID):
        return {"u": str(value)}
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(f"cannot put a {type(value).__name__} in a page token")


def _unpack(value: Any) -> Any:
    if isinstance(value, dict):
        if "d" in value:
            return dt.datetime.fromisoformat(value["d"])
        if "u" in value:
            return uuid.UUID(value["u"])
        raise ValueError("unknown keyset value")
    return value


def encode(keyset: Keyset, *, scope: str) -> str:
    body = json.dumps([_pack(v) for v in keyset], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(_tag(body, scope) + body).decode().rstrip("=")


def decode(token: str, *, scope: str, field: str = "page_token") -> Keyset | None:
    """The keyset position in `token`; None for an empty token (the first page)."""
    if not token:
        return None
    invalid = InvalidArgument(
        f"{field} is not valid for this request", field=field, reason=Reason.INVALID_PAGE_TOKEN
    )
    try:
        raw = base64.urlsafe_b64decode((token + "=" * (-len(token) % 4)).encode())
    except (binascii.Error, ValueError):
        raise invalid from None
    tag, body = raw[:_TAG_BYTES], raw[_TAG_BYTES:]
    if len(tag) < _TAG_BYTES or not hmac.compare_digest(tag, _tag(body, scope)):
        raise invalid
    try:
        values = json.loads(body)
        if not isinstance(values, list):
            raise ValueError("not a list")
        return tuple(_unpack(v) for v in values)
    except (ValueError, TypeError, UnicodeDecodeError):
        raise invalid from None
