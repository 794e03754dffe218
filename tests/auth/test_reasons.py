"""What a program branches on when an auth call fails: the google.rpc.ErrorInfo reason
(and domain) of each failure a client handles, and the LocalizedMessage a user reads, in
Russian by default and in English for `accept-language: en`."""

from __future__ import annotations

import asyncio
import uuid

import grpc
from google.protobuf import field_mask_pb2

from aivera.auth.v1 import auth_pb2
from services.auth.config import AuthSettings
from tests.auth.conftest import Client, error_of, serve, variant
from tests.helpers.errors import bad_field, error_info, localized, reason
from tests.helpers.services import bearer

GEMINI = auth_pb2.PROVIDER_GEMINI
WRONG_STATIC = "avs_wrong_" + "x" * 40


def _cyrillic(text: str) -> bool:
    return any("а" <= ch.lower() <= "я" for ch in text)


async def test_wrong_static_token_is_bad_static_token_in_russian_by_default(
    client: Client,
) -> None:
    err = await error_of(client.exchange(WRONG_STATIC))
    assert err.code() is grpc.StatusCode.UNAUTHENTICATED
    info = error_info(err)
    assert info.reason == "BAD_STATIC_TOKEN" and info.domain == "auth.aivera.dev"
    text = localized(err)
    assert text.locale == "ru-RU" and _cyrillic(text.message), text
    # A token of the wrong shape answers the same reason (no database work, same answer).
    assert reason(await error_of(client.exchange("nope"))) == "BAD_STATIC_TOKEN"


async def test_wrong_static_token_in_english_on_request(client: Client) -> None:
    err = await error_of(
        client.auth.ExchangeStaticToken(
            auth_pb2.ExchangeStaticTokenRequest(static_token=WRONG_STATIC),
            metadata=(("accept-language", "en"),),
        )
    )
    assert err.code() is grpc.StatusCode.UNAUTHENTICATED
    assert reason(err) == "BAD_STATIC_TOKEN"
    text = localized(err)
    assert text.locale == "en-US" and text.message and not _cyrillic(text.message), text


async def test_reused_refresh_token_is_bad_refresh_token(
    client: Client, settings: AuthSettings
) -> None:
    _u, _t, s = await client.new_user()
    rotated = await client.auth.RefreshToken(
        auth_pb2.RefreshTokenRequest(refresh_token=s.refresh_token)
    )
    # Within the grace window, and after it (when the reuse revokes the session).
    for _ in range(2):
        err = await error_of(
            client.auth.RefreshToken(auth_pb2.RefreshTokenRequest(refresh_token=s.refresh_token))
        )
        assert err.code() is grpc.StatusCode.UNAUTHENTICATED
        assert reason(err) == "BAD_REFRESH_TOKEN"
        await asyncio.sleep(settings.refresh_reuse_grace_seconds + 0.2)
    # The successor died with its session; a made-up token reads the same.
    for token in (rotated.refresh_token, "avr_" + "A" * 43, "junk"):
        err = await error_of(
            client.auth.RefreshToken(auth_pb2.RefreshTokenRequest(refresh_token=token))
        )
        assert reason(err) == "BAD_REFRESH_TOKEN", token


async def test_sign_in_rate_limit_is_too_many_failures(settings: AuthSettings) -> None:
    limited = variant(
        settings, exchange_token_failure_limit=2, exchange_failure_window_seconds=30.0
    )
    wrong = "avs_" + uuid.uuid4().hex  # a prefix no other test presented
    async with serve(limited) as c:
        for _ in range(2):
            assert reason(await error_of(c.exchange(wrong))) == "BAD_STATIC_TOKEN"
        err = await error_of(c.exchange(wrong))
        assert err.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert reason(err) == "TOO_MANY_FAILURES"


async def test_taken_username_is_already_exists(client: Client) -> None:
    md = bearer(await client.admin_token())
    name = "taken-" + uuid.uuid4().hex[:8]
    await client.admin.CreateUser(auth_pb2.CreateUserRequest(username=name), metadata=md)
    err = await error_of(
        client.admin.CreateUser(auth_pb2.CreateUserRequest(username=name.upper()), metadata=md)
    )
    assert err.code() is grpc.StatusCode.ALREADY_EXISTS
    assert reason(err) == "ALREADY_EXISTS" and bad_field(err) == "username"


async def test_missing_provider_key_is_provider_key_missing(client: Client) -> None:
    _u, _t, s = await client.new_user()
    err = await error_of(
        client.internal.GetProviderKey(
            auth_pb2.GetProviderKeyRequest(user_id=s.user.id, provider=GEMINI),
            metadata=await client.service_md("chat", user_token=s.access_token),
        )
    )
    assert err.code() is grpc.StatusCode.NOT_FOUND
    assert reason(err) == "PROVIDER_KEY_MISSING"
    assert error_info(err).metadata["provider"] == "gemini"
    err = await error_of(
        client.auth.DeleteProviderKey(
            auth_pb2.DeleteProviderKeyRequest(provider=GEMINI), metadata=bearer(s.access_token)
        )
    )
    assert err.code() is grpc.StatusCode.NOT_FOUND
    assert reason(err) == "PROVIDER_KEY_MISSING"


async def test_demoted_admin_is_admin_required(client: Client) -> None:
    md = bearer(await client.admin_token())
    user, static, _ = await client.new_user(role=auth_pb2.ROLE_ADMIN)
    stale = (await client.exchange(static)).access_token  # role admin in its claims
    await client.admin.UpdateUser(
        auth_pb2.UpdateUserRequest(
            user=auth_pb2.User(id=user.id, role=auth_pb2.ROLE_USER),
            update_mask=field_mask_pb2.FieldMask(paths=["role"]),
        ),
        metadata=md,
    )
    err = await error_of(
        client.admin.ListUsers(auth_pb2.ListUsersRequest(), metadata=bearer(stale))
    )
    assert err.code() is grpc.StatusCode.PERMISSION_DENIED
    assert reason(err) == "ADMIN_REQUIRED"
