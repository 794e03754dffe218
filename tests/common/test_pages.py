"""The page-token model every List RPC uses: opaque, tamper-evident, scoped to the RPC,
the caller and the filter; keyset positions that round-trip their types."""

from __future__ import annotations

import base64
import datetime as dt
import uuid
from collections.abc import Iterator

import grpc
import pytest

from services.common import context as ctx
from services.common import pages
from services.common.errors import InvalidArgument, Reason


@pytest.fixture
def call() -> Iterator[None]:
    ctx.bind(
        caller=ctx.Caller(user_id="alice"), request_id="r", method="/svc/ListThings", timeout=None
    )
    yield
    ctx.bind(caller=ctx.ANONYMOUS, request_id="", method="", timeout=None)


def as_caller(user: str, method: str = "/svc/ListThings") -> None:
    ctx.bind(caller=ctx.Caller(user_id=user), request_id="r", method=method, timeout=None)


ROWS = [
    (dt.datetime(2026, 1, 1, 12, 0, i, tzinfo=dt.UTC), uuid.UUID(int=i)) for i in range(10, 0, -1)
]


def key(row: tuple[dt.datetime, uuid.UUID]) -> tuple[dt.datetime, uuid.UUID]:
    return row


def test_round_trip_keeps_types(call: None) -> None:
    page = pages.request(3, "")
    assert page.after is None and page.limit == 4
    items, token = pages.take(ROWS[:4], page, key)
    assert items == ROWS[:3] and token
    again = pages.request(3, token)
    assert again.after == ROWS[2]
    assert isinstance(again.after[0], dt.datetime) and isinstance(again.after[1], uuid.UUID)


def test_last_page_has_no_token(call: None) -> None:
    page = pages.request(5, "")
    assert pages.take(ROWS[:3], page, key) == (ROWS[:3], "")
    assert pages.take([], page, key) == ([], "")


def _invalid(fn: object) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as info:
        fn()  # type: ignore[operator]
    assert info.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.reason == Reason.INVALID_PAGE_TOKEN
    assert info.value.field == "page_token"
    return info.value


def test_tampered_and_made_up_tokens_are_invalid_argument(call: None) -> None:
    _, token = pages.take(ROWS[:4], pages.request(3, ""), key)
    raw = bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    raw[-3] ^= 0x01  # one bit of the position changed
    edited = base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("=")
    _invalid(lambda: pages.request(3, edited))
    for junk in ("not a token", "AAAA", "eyJvIjogNX0", "%%%", token[:10]):
        _invalid(lambda junk=junk: pages.request(3, junk))
    # An unsigned token of the old shape ({"o": 5}) is refused too.
    legacy = base64.urlsafe_b64encode(b'{"o":5}').decode()
    _invalid(lambda: pages.request(3, legacy))


def test_foreign_tokens_are_invalid_argument(call: None) -> None:
    _, token = pages.take(ROWS[:4], pages.request(3, "", filter="status=1"), key)
    # The same caller and RPC with another filter,
    _invalid(lambda: pages.request(3, token, filter="status=2"))
    # another user,
    as_caller("bob")
    _invalid(lambda: pages.request(3, token, filter="status=1"))
    # another List RPC.
    as_caller("alice", "/svc/ListOtherThings")
    _invalid(lambda: pages.request(3, token, filter="status=1"))
    as_caller("alice")
    assert pages.request(3, token, filter="status=1").after == ROWS[2]


def test_another_deployment_key_refuses_tokens(call: None) -> None:
    _, token = pages.take(ROWS[:4], pages.request(3, ""), key)
    pages.configure("another-key")
    try:
        _invalid(lambda: pages.request(3, token))
    finally:
        pages.configure("")


def test_page_size_bounds(call: None) -> None:
    assert pages.request(0, "").size == pages.DEFAULT_PAGE_SIZE
    assert pages.request(10_000, "").size == pages.MAX_PAGE_SIZE
    with pytest.raises(InvalidArgument) as info:
        pages.request(-1, "")
    assert info.value.field == "page_size"


def test_custom_token_field(call: None) -> None:
    with pytest.raises(InvalidArgument) as info:
        pages.request(3, "junk", field="block_page_token")
    assert info.value.field == "block_page_token"
