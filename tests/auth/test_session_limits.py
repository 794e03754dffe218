"""Sessions that end: absolute lifetime and idle timeout of a refresh-token family."""

from __future__ import annotations

import asyncio
import time
import uuid

import grpc

from aivera.auth.v1 import auth_pb2
from services.auth.config import AuthSettings
from tests.auth.conftest import Client, db, error_of, serve, variant
from tests.helpers.errors import reason


async def refresh(c: Client, token: str) -> auth_pb2.RefreshTokenResponse:
    got: auth_pb2.RefreshTokenResponse = await c.auth.RefreshToken(
        auth_pb2.RefreshTokenRequest(refresh_token=token)
    )
    return got


async def refused(c: Client, token: str) -> None:
    err = await error_of(refresh(c, token))
    assert err.code() is grpc.StatusCode.UNAUTHENTICATED
    assert reason(err) == "BAD_REFRESH_TOKEN"


def test_defaults() -> None:
    s = AuthSettings()
    assert s.session_max_lifetime_seconds == 90 * 24 * 3600
    assert s.session_idle_timeout_seconds == 30 * 24 * 3600


async def test_idle_session_cannot_refresh(settings: AuthSettings) -> None:
    idle = variant(settings, session_idle_timeout_seconds=2)
    async with serve(idle) as c:
        _u, _t, s = await c.new_user()
        # The refresh token expires with the idle timeout, not the 30-day TTL.
        assert s.refresh_expire_time.seconds <= int(time.time()) + 3
        token = s.refresh_token
        for _ in range(3):  # used within the timeout: the session lives on, past 2 s
            await asyncio.sleep(0.9)
            token = (await refresh(c, token)).refresh_token
        await asyncio.sleep(2.3)
        await refused(c, token)


async def test_session_older_than_its_lifetime_cannot_refresh(settings: AuthSettings) -> None:
    short = variant(settings, session_max_lifetime_seconds=3)
    async with serve(short) as c:
        _u, static, s = await c.new_user()
        started = time.time()
        assert s.refresh_expire_time.seconds <= int(started) + 4
        token = s.refresh_token
        await asyncio.sleep(1.0)
        r = await refresh(c, token)
        # A refreshed token never outlives its session.
        assert r.refresh_expire_time.seconds <= int(started) + 4
        token = r.refresh_token
        await asyncio.sleep(1.0)
        token = (await refresh(c, token)).refresh_token
        await asyncio.sleep(1.3)  # 3.3 s since sign-in, token used 1.3 s ago
        await refused(c, token)
        # Signing in again starts a new session.
        fresh = await c.exchange(static)
        await refresh(c, fresh.refresh_token)


async def test_default_limits_on_backdated_sessions(client: Client, settings: AuthSettings) -> None:
    """The defaults (90 days absolute, 30 days idle), checked with backdated rows."""
    _u, _t, old = await client.new_user()
    _u, _t, idle = await client.new_user()
    _u, _t, ok = await client.new_user()
    conn = await db(settings.dsn())
    try:
        # 89 days of steady refreshing, then the session reaches 91 days.
        await conn.execute(
            "UPDATE sessions SET created_at = now() - interval '91 days' WHERE user_id = $1",
            uuid.UUID(old.user.id),
        )
        # Unused for 31 days (its expiry pushed out so only the idle rule can refuse it).
        await conn.execute(
            """UPDATE refresh_tokens SET created_at = now() - interval '31 days',
                      expires_at = now() + interval '1 day' WHERE user_id = $1""",
            uuid.UUID(idle.user.id),
        )
        # 89 days old and used 29 days ago: still fine.
        await conn.execute(
            "UPDATE sessions SET created_at = now() - interval '89 days' WHERE user_id = $1",
            uuid.UUID(ok.user.id),
        )
        await conn.execute(
            "UPDATE refresh_tokens SET created_at = now() - interval '29 days' WHERE user_id = $1",
            uuid.UUID(ok.user.id),
        )
    finally:
        await conn.close()
    await refused(client, old.refresh_token)
    await refused(client, idle.refresh_token)
    renewed = await refresh(client, ok.refresh_token)
    # One day left of the 90: the new token expires with the session, not in 30 days.
    assert renewed.refresh_expire_time.seconds <= int(time.time()) + 24 * 3600 + 5
