"""Per-user Gemini keys: set/status/delete, isolation between users, the internal-only
plaintext RPC, ciphertexts bound to their row, and master-key rotation."""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
import uuid
from pathlib import Path

import grpc

from aivera.auth.v1 import auth_pb2
from services.auth.config import AuthSettings
from tests.auth.conftest import Client, code_of, db, error_of, master_entry, serve, variant
from tests.helpers.errors import reason
from tests.helpers.services import bearer

GEMINI = auth_pb2.PROVIDER_GEMINI
ROOT = Path(__file__).resolve().parents[2]


def gemini_key() -> str:
    return "AIza" + secrets.token_urlsafe(27)[:35]


async def test_set_status_delete(client: Client) -> None:
    _u, _t, s = await client.new_user()
    md = bearer(s.access_token)
    status = await client.auth.GetProviderKeyStatus(
        auth_pb2.GetProviderKeyStatusRequest(provider=GEMINI), metadata=md
    )
    assert not status.is_set and not status.last4 and status.provider == GEMINI
    key = gemini_key()
    res = await client.auth.SetProviderKey(
        auth_pb2.SetProviderKeyRequest(provider=GEMINI, api_key=key), metadata=md
    )
    assert res.is_set and res.last4 == key[-4:] and res.HasField("update_time")
    assert key not in str(res)
    status = await client.auth.GetProviderKeyStatus(
        auth_pb2.GetProviderKeyStatusRequest(provider=GEMINI), metadata=md
    )
    assert status.is_set and status.last4 == key[-4:]
    # Replacing works.
    key2 = gemini_key()
    await client.auth.SetProviderKey(
        auth_pb2.SetProviderKeyRequest(provider=GEMINI, api_key=key2), metadata=md
    )
    chat = await client.service_md("chat", user_token=s.access_token)
    got = await client.internal.GetProviderKey(
        auth_pb2.GetProviderKeyRequest(user_id=s.user.id, provider=GEMINI), metadata=chat
    )
    assert got.api_key == key2 and got.provider == GEMINI
    await client.auth.DeleteProviderKey(
        auth_pb2.DeleteProviderKeyRequest(provider=GEMINI), metadata=md
    )
    status = await client.auth.GetProviderKeyStatus(
        auth_pb2.GetProviderKeyStatusRequest(provider=GEMINI), metadata=md
    )
    assert not status.is_set
    code = await code_of(
        client.auth.DeleteProviderKey(
            auth_pb2.DeleteProviderKeyRequest(provider=GEMINI), metadata=md
        )
    )
    assert code is grpc.StatusCode.NOT_FOUND
    code = await code_of(
        client.internal.GetProviderKey(
            auth_pb2.GetProviderKeyRequest(provider=GEMINI), metadata=chat
        )
    )
    assert code is grpc.StatusCode.NOT_FOUND


async def test_bad_input_never_echoes_the_key(client: Client) -> None:
    _u, _t, s = await client.new_user()
    md = bearer(s.access_token)
    chat = await client.service_md("chat", user_token=s.access_token)
    for bad in [
        "short_key_123",
        "AIza" + "x" * 120,
        "AIza" + "x" * 30 + "!",
        "AIza key with spaces!!!!!!!!!",
    ]:
        err = await error_of(
            client.auth.SetProviderKey(
                auth_pb2.SetProviderKeyRequest(provider=GEMINI, api_key=bad), metadata=md
            )
        )
        assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert bad not in (err.details() or "") and bad not in str(err.trailing_metadata())
    for call in (
        client.auth.SetProviderKey(
            auth_pb2.SetProviderKeyRequest(api_key=gemini_key()), metadata=md
        ),
        client.auth.GetProviderKeyStatus(auth_pb2.GetProviderKeyStatusRequest(), metadata=md),
        client.auth.DeleteProviderKey(auth_pb2.DeleteProviderKeyRequest(), metadata=md),
        client.internal.GetProviderKey(
            auth_pb2.GetProviderKeyRequest(user_id=s.user.id), metadata=chat
        ),
        client.internal.GetProviderKey(
            auth_pb2.GetProviderKeyRequest(user_id="nope", provider=GEMINI), metadata=chat
        ),
    ):
        assert await code_of(call) is grpc.StatusCode.INVALID_ARGUMENT
    # No token at all.
    code = await code_of(
        client.auth.SetProviderKey(
            auth_pb2.SetProviderKeyRequest(provider=GEMINI, api_key=gemini_key())
        )
    )
    assert code is grpc.StatusCode.UNAUTHENTICATED


async def test_users_see_only_their_own_key(client: Client) -> None:
    _a, _at, a = await client.new_user()
    _b, _bt, b = await client.new_user()
    key = gemini_key()
    await client.auth.SetProviderKey(
        auth_pb2.SetProviderKeyRequest(provider=GEMINI, api_key=key),
        metadata=bearer(a.access_token),
    )
    b_md = bearer(b.access_token)
    status = await client.auth.GetProviderKeyStatus(
        auth_pb2.GetProviderKeyStatusRequest(provider=GEMINI), metadata=b_md
    )
    assert not status.is_set
    code = await code_of(
        client.auth.DeleteProviderKey(
            auth_pb2.DeleteProviderKeyRequest(provider=GEMINI), metadata=b_md
        )
    )
    assert code is grpc.StatusCode.NOT_FOUND
    got = await client.internal.GetProviderKey(
        auth_pb2.GetProviderKeyRequest(provider=GEMINI),
        metadata=await client.service_md("chat", user_token=a.access_token),
    )
    assert got.api_key == key  # A's key survived B's attempts


async def test_only_chat_with_a_delegation_for_the_user_gets_the_key(client: Client) -> None:
    _u, _t, s = await client.new_user()
    _o, _ot, other = await client.new_user()
    key = gemini_key()
    await client.auth.SetProviderKey(
        auth_pb2.SetProviderKeyRequest(provider=GEMINI, api_key=key),
        metadata=bearer(s.access_token),
    )
    req = auth_pb2.GetProviderKeyRequest(user_id=s.user.id, provider=GEMINI)
    admin = await client.admin_token()
    rag = await client.service_md("rag")
    cases = {
        "own user token": (bearer(s.access_token), grpc.StatusCode.PERMISSION_DENIED),
        "admin token": (bearer(admin), grpc.StatusCode.PERMISSION_DENIED),
        "nothing": ((), grpc.StatusCode.UNAUTHENTICATED),
        "retired shared secret": (
            (("x-aivera-internal-token", "guess"), ("x-aivera-on-behalf-of", s.user.id)),
            grpc.StatusCode.UNAUTHENTICATED,
        ),
        "forged service token": (
            (("x-aivera-service-token", "e30.e30.sig"),),
            grpc.StatusCode.UNAUTHENTICATED,
        ),
        # RAG's own credential, even with a delegation for the user: not a declared caller.
        "rag, for the user": (
            await client.service_md("rag", user_token=s.access_token),
            grpc.StatusCode.PERMISSION_DENIED,
        ),
        "rag alone": (rag, grpc.StatusCode.PERMISSION_DENIED),
        # Chat's credential naming the user by id only: no delegation.
        "chat, bare user id": (
            await client.service_md("chat"),
            grpc.StatusCode.UNAUTHENTICATED,
        ),
        # A delegation for another user, used for this one.
        "chat, other user's delegation": (
            await client.service_md("chat", user_token=other.access_token),
            grpc.StatusCode.PERMISSION_DENIED,
        ),
        # A delegation for the user at another audience.
        "chat, delegation for storage": (
            await client.service_md("chat", user_token=s.access_token, audience="storage"),
            grpc.StatusCode.UNAUTHENTICATED,
        ),
    }
    for name, (md, expected) in cases.items():
        err = await error_of(client.internal.GetProviderKey(req, metadata=md))
        assert err.code() is expected, name
        assert key not in (err.details() or ""), name
    got = await client.internal.GetProviderKey(
        req, metadata=await client.service_md("chat", user_token=s.access_token)
    )
    assert got.api_key == key
    # RAG may not even exchange a token for a delegation addressed to auth's internal RPC
    # and present it as chat: the delegation names RAG as the actor.
    rag_for_user = await client.service_md("rag", user_token=s.access_token)
    chat = await client.service_md("chat")
    err = await error_of(client.internal.GetProviderKey(req, metadata=(chat[0], rag_for_user[1])))
    assert err.code() is grpc.StatusCode.UNAUTHENTICATED
    assert reason(err) == "DELEGATION_INVALID"


async def test_ciphertext_swapped_between_users_fails(
    client: Client, settings: AuthSettings
) -> None:
    _a, _at, a = await client.new_user()
    _b, _bt, b = await client.new_user()
    key_a, key_b = gemini_key(), gemini_key()
    for session, key in ((a, key_a), (b, key_b)):
        await client.auth.SetProviderKey(
            auth_pb2.SetProviderKeyRequest(provider=GEMINI, api_key=key),
            metadata=bearer(session.access_token),
        )
    conn = await db(settings.dsn())
    try:
        ciphertext = await conn.fetchval(
            "SELECT ciphertext FROM provider_keys WHERE user_id = $1", uuid.UUID(a.user.id)
        )
        assert key_a.encode() not in ciphertext
        await conn.execute(
            "UPDATE provider_keys SET ciphertext = $2 WHERE user_id = $1",
            uuid.UUID(b.user.id),
            ciphertext,
        )
    finally:
        await conn.close()
    err = await error_of(
        client.internal.GetProviderKey(
            auth_pb2.GetProviderKeyRequest(user_id=b.user.id, provider=GEMINI),
            metadata=await client.service_md("chat", user_token=b.access_token),
        )
    )
    assert err.code() is grpc.StatusCode.NOT_FOUND
    assert key_a not in (err.details() or "")


async def test_master_key_rotation(settings: AuthSettings) -> None:
    v1 = settings.master_encryption_key.get_secret_value()
    v2 = master_entry("v2")
    keys: dict[str, str] = {}
    tokens: dict[str, str] = {}
    async with serve(settings) as c:
        for _ in range(3):
            _u, _t, s = await c.new_user()
            key = gemini_key()
            await c.auth.SetProviderKey(
                auth_pb2.SetProviderKeyRequest(provider=GEMINI, api_key=key),
                metadata=bearer(s.access_token),
            )
            keys[s.user.id] = key
            tokens[s.user.id] = s.access_token
    conn = await db(settings.dsn())
    try:  # earlier tests of this module left rows (one deliberately corrupted)
        await conn.execute(
            "DELETE FROM provider_keys WHERE NOT user_id = ANY($1::uuid[])",
            [uuid.UUID(k) for k in keys],
        )
    finally:
        await conn.close()

    async def read_all(c: Client) -> dict[str, str]:
        out = {}
        for uid in keys:
            got = await c.internal.GetProviderKey(
                auth_pb2.GetProviderKeyRequest(user_id=uid, provider=GEMINI),
                metadata=await c.service_md("chat", user_token=tokens[uid]),
            )
            out[uid] = got.api_key
        return out

    # Only the new key: old rows cannot be read yet.
    async with serve(variant(settings, master_encryption_key=v2)) as c:
        uid = next(iter(keys))
        code = await code_of(
            c.internal.GetProviderKey(
                auth_pb2.GetProviderKeyRequest(user_id=uid, provider=GEMINI),
                metadata=await c.service_md("chat", user_token=tokens[uid]),
            )
        )
        assert code is grpc.StatusCode.NOT_FOUND
    # New first, old still listed: everything reads; then the command re-encrypts.
    both = variant(settings, master_encryption_key=f"{v2},{v1}")
    async with serve(both) as c:
        assert await read_all(c) == keys
    env = {
        **os.environ,
        "AIVERA_ENV": "test",
        "DATABASE_URL": settings.dsn(),
        "MASTER_ENCRYPTION_KEY": f"{v2},{v1}",
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "gen")]),
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.auth",
        "rotate-master-key",
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out_b, err_b = await asyncio.wait_for(proc.communicate(), 60)
    stdout, stderr = out_b.decode(), err_b.decode()
    assert proc.returncode == 0, stderr + stdout
    assert "re-encrypted" in stdout
    for secret in (*keys.values(), v1, v2):
        assert secret.split(":")[-1] not in stdout + stderr
    conn = await db(settings.dsn())
    try:
        versions = await conn.fetch("SELECT DISTINCT key_version FROM provider_keys")
    finally:
        await conn.close()
    assert [r["key_version"] for r in versions] == ["v2"]
    # The old version can now be removed.
    async with serve(variant(settings, master_encryption_key=v2)) as c:
        assert await read_all(c) == keys
