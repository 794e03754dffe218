"""A full session's captured logs (records before redaction, and stdout/stderr) contain
none of the secrets that went through the service."""

from __future__ import annotations

import asyncio
import base64
import logging

import grpc
import pytest

from aivera.auth.v1 import auth_pb2
from services.auth.config import AuthSettings
from services.auth.tokens import TokenHasher
from services.common import logs
from tests.auth.conftest import code_of, serve
from tests.auth.test_provider_keys import gemini_key
from tests.helpers.identity import SECRETS
from tests.helpers.services import bearer


def _record_text(record: logging.LogRecord) -> str:
    parts = [record.getMessage(), repr(record.args), repr(getattr(record, "fields", None))]
    if record.exc_info:
        parts.append(logging.Formatter().formatException(record.exc_info))
    parts.append(logs.JsonFormatter("auth").format(record))
    return "\n".join(parts)


async def test_full_session_logs_no_secrets(
    settings: AuthSettings, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    root = logging.getLogger()
    level = root.level
    logs.configure("auth", "DEBUG")  # the JSON handler on stdout, as in production
    try:
        secrets = await _session(settings)
    finally:
        root.setLevel(level)
        for handler in list(root.handlers):
            if getattr(handler, "_aivera", False):
                root.removeHandler(handler)
    captured = capsys.readouterr()
    texts = [_record_text(r) for r in caplog.records] + [captured.out, captured.err]
    assert len(caplog.records) > 20  # the flow was logged
    assert any("session revoked" in t for t in texts)
    hasher = TokenHasher(settings.token_hash_key.get_secret_value())
    for secret in list(secrets):
        if secret.startswith(("avs_", "avr_")):
            secrets.append(secret[4:])  # the random part alone is the secret too
        digest = hasher.hash(secret)
        secrets += [digest.hex(), base64.b64encode(digest).decode(), repr(digest)]
    secrets += [
        *SECRETS.values(),
        settings.master_encryption_key.get_secret_value().split(":", 1)[1],
        *settings.jwt_private_keys.get_secret_value().splitlines()[1:-1],
    ]
    for secret in secrets:
        for text in texts:
            assert secret not in text, "a secret reached the logs"


async def _session(settings: AuthSettings) -> list[str]:
    """Every flow once; returns the secrets it handled."""
    secrets: list[str] = []
    async with serve(settings) as c:
        bootstrap = settings.aivera_bootstrap_admin_token.get_secret_value()
        admin = await c.exchange(bootstrap)
        secrets += [bootstrap, admin.access_token, admin.refresh_token]
        md_admin = bearer(admin.access_token)
        created = await c.admin.CreateUser(
            auth_pb2.CreateUserRequest(username="logcheck"), metadata=md_admin
        )
        secrets.append(created.static_token)
        s = await c.exchange(created.static_token)
        r = await c.auth.RefreshToken(auth_pb2.RefreshTokenRequest(refresh_token=s.refresh_token))
        secrets += [s.access_token, s.refresh_token, r.access_token, r.refresh_token]
        md = bearer(r.access_token)
        await c.auth.GetCurrentUser(auth_pb2.GetCurrentUserRequest(), metadata=md)
        key = gemini_key()
        bad_key = "AIza" + "k" * 20 + "!"
        secrets += [key, bad_key]
        await c.auth.SetProviderKey(
            auth_pb2.SetProviderKeyRequest(provider=auth_pb2.PROVIDER_GEMINI, api_key=key),
            metadata=md,
        )
        await code_of(
            c.auth.SetProviderKey(
                auth_pb2.SetProviderKeyRequest(provider=auth_pb2.PROVIDER_GEMINI, api_key=bad_key),
                metadata=md,
            )
        )
        await c.auth.GetProviderKeyStatus(
            auth_pb2.GetProviderKeyStatusRequest(provider=auth_pb2.PROVIDER_GEMINI), metadata=md
        )
        got = await c.internal.GetProviderKey(
            auth_pb2.GetProviderKeyRequest(user_id=s.user.id, provider=auth_pb2.PROVIDER_GEMINI),
            metadata=await c.service_md("chat", user_token=s.access_token),
        )
        assert got.api_key == key
        wrong = "avs_wrong_" + "w" * 40
        secrets.append(wrong)
        assert await code_of(c.exchange(wrong)) is grpc.StatusCode.UNAUTHENTICATED
        # Tokens in the wrong places.
        await code_of(
            c.auth.GetCurrentUser(auth_pb2.GetCurrentUserRequest(), metadata=bearer(wrong))
        )
        await code_of(c.exchange(r.refresh_token))
        # Reuse after the grace window: the warning is logged, without the token.
        await asyncio.sleep(settings.refresh_reuse_grace_seconds + 0.2)
        await code_of(
            c.auth.RefreshToken(auth_pb2.RefreshTokenRequest(refresh_token=s.refresh_token))
        )
        s2 = await c.exchange(created.static_token)
        secrets += [s2.access_token, s2.refresh_token]
        await c.auth.Logout(
            auth_pb2.LogoutRequest(refresh_token=s2.refresh_token), metadata=bearer(s2.access_token)
        )
        rotated = await c.admin.RotateStaticToken(
            auth_pb2.RotateStaticTokenRequest(user_id=s.user.id), metadata=md_admin
        )
        secrets.append(rotated.static_token)
        await c.admin.RevokeSessions(
            auth_pb2.RevokeSessionsRequest(user_id=s.user.id), metadata=md_admin
        )
        await c.auth.DeleteProviderKey(
            auth_pb2.DeleteProviderKeyRequest(provider=auth_pb2.PROVIDER_GEMINI), metadata=md
        )
    return secrets
