"""The shared sign-in limiter: counted in Postgres across replicas, keyed by client
address and by token prefix; others' failures never lock out a valid token."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest

from services.auth.config import AuthSettings
from services.auth.ratelimit import PREFIX_CHARS
from services.auth.store import Store
from services.common.db import Connected
from tests.auth.conftest import Client, db, error_of, make_settings, serve
from tests.helpers.errors import reason

WINDOW = 3.0


@pytest.fixture(scope="module")
def limited(database_url: str) -> AuthSettings:
    return make_settings(
        database_url,
        exchange_failure_limit=3,
        exchange_token_failure_limit=2,
        exchange_failure_window_seconds=WINDOW,
    )


@pytest.fixture(scope="module")
async def replicas(limited: AuthSettings) -> AsyncIterator[tuple[Client, Client]]:
    """Two auth services on one database: two replicas."""
    async with serve(limited) as a, serve(limited) as b:
        yield a, b


@pytest.fixture(autouse=True)
async def fresh_counts(limited: AuthSettings) -> None:
    conn = await db(limited.dsn())
    try:
        await conn.execute("DELETE FROM sign_in_failures")
    finally:
        await conn.close()


def wrong() -> str:
    return "avs_" + uuid.uuid4().hex + uuid.uuid4().hex


async def answer(c: Client, token: str) -> str:
    err = await error_of(c.exchange(token))
    if err.code() is grpc.StatusCode.RESOURCE_EXHAUSTED:
        assert reason(err) == "TOO_MANY_FAILURES"
    else:
        assert err.code() is grpc.StatusCode.UNAUTHENTICATED
    return reason(err)


async def test_address_failures_never_refuse_a_valid_token(
    replicas: tuple[Client, Client],
) -> None:
    a, b = replicas
    _user, static, _s = await a.new_user()
    # Anyone at this address fails with other tokens: 3 per window, counted on both.
    assert [await answer(a, wrong()) for _ in range(2)] == ["BAD_STATIC_TOKEN"] * 2
    assert await answer(b, wrong()) == "BAD_STATIC_TOKEN"
    for c in (a, b, a):  # past the address limit on both replicas
        assert await answer(c, wrong()) == "TOO_MANY_FAILURES"
        assert await answer(c, "nope") == "TOO_MANY_FAILURES"
    # The valid token still signs in, on either replica.
    for c in (a, b):
        s = await c.exchange(static)
        assert s.user.id == _user.id
    await b.admin_token()


async def test_prefix_limit_is_shared_and_only_blocks_its_prefix(
    replicas: tuple[Client, Client], limited: AuthSettings
) -> None:
    a, b = replicas
    _user, static, _s = await a.new_user()
    # Failures with this token's first characters (a near miss of the real token).
    near_miss = static[:PREFIX_CHARS] + "X" * (len(static) - PREFIX_CHARS)
    assert await answer(a, near_miss) == "BAD_STATIC_TOKEN"
    assert await answer(b, near_miss) == "BAD_STATIC_TOKEN"
    # The prefix is now limited on every replica, the valid token included.
    for c in (a, b):
        assert await answer(c, static) == "TOO_MANY_FAILURES"
        assert await answer(c, near_miss) == "TOO_MANY_FAILURES"
    # Other tokens are not: another user signs in, a new wrong token is just wrong.
    _other, other_static, _ = await a.new_user()
    await b.exchange(other_static)
    assert await answer(b, wrong()) == "BAD_STATIC_TOKEN"
    # The window ends, the prefix signs in again.
    await asyncio.sleep(WINDOW + 0.2)
    assert (await b.exchange(static)).user.id == _user.id


async def test_concurrent_failures_are_all_counted(
    replicas: tuple[Client, Client], limited: AuthSettings
) -> None:
    a, b = replicas
    token = wrong()
    await asyncio.gather(
        *(error_of(c.exchange(token)) for c in (a, b) for _ in range(5)),
    )
    conn = await db(limited.dsn())
    try:
        counts = await conn.fetch("SELECT key, failures FROM sign_in_failures ORDER BY key")
    finally:
        await conn.close()
    # Address key and prefix key. The prefix rejects some attempts before the token
    # is checked (those do not count), so it stops at 2..10; the address counts all.
    assert [r["key"][:2] for r in counts] == ["a:", "p:"]
    assert counts[1]["failures"] >= 2
    assert counts[0]["failures"] == counts[1]["failures"]


async def test_ended_windows_are_purged(
    replicas: tuple[Client, Client], limited: AuthSettings
) -> None:
    a, _b = replicas
    await answer(a, wrong())
    conn = await db(limited.dsn())
    try:
        store = Store(Connected(conn))
        assert await store.purge_sign_in_failures(window=WINDOW) == 0
        await conn.execute(
            "UPDATE sign_in_failures SET window_start = now() - interval '10 seconds'"
        )
        assert await store.purge_sign_in_failures(window=WINDOW) == 2
        assert await conn.fetchval("SELECT count(*) FROM sign_in_failures") == 0
    finally:
        await conn.close()
