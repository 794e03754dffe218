"""Sign-in, refresh rotation with reuse detection, logout, access tokens, signing keys."""

from __future__ import annotations

import asyncio
import time
import uuid

import aiohttp
import grpc
import jwt
import pytest
from google.protobuf import field_mask_pb2

from aivera.auth.v1 import auth_pb2
from services.auth.config import AuthSettings
from services.auth.keys import KeyConfigError, parse_pems, thumbprint
from services.auth.server import make_spec
from services.common.jwks import JwksVerifier
from tests.auth.conftest import (
    Client,
    code_of,
    db,
    ed25519_pem,
    error_of,
    make_settings,
    p256_pem,
    serve,
    variant,
)
from tests.helpers.services import bearer

ME = auth_pb2.GetCurrentUserRequest()


async def refresh(c: Client, token: str) -> auth_pb2.RefreshTokenResponse:
    got: auth_pb2.RefreshTokenResponse = await c.auth.RefreshToken(
        auth_pb2.RefreshTokenRequest(refresh_token=token)
    )
    return got


async def refresh_code(c: Client, token: str) -> grpc.StatusCode:
    return await code_of(refresh(c, token))


async def test_bootstrap_admin_exchange_and_claims(client: Client, settings: AuthSettings) -> None:
    token = settings.aivera_bootstrap_admin_token.get_secret_value()
    before = int(time.time())
    s = await client.exchange(token)
    assert s.user.username == "admin" and s.user.role == auth_pb2.ROLE_ADMIN
    assert s.user.status == auth_pb2.USER_STATUS_ACTIVE
    assert s.expires_in == 3600
    assert s.refresh_token.startswith("avr_") and len(s.refresh_token) > 40
    assert s.refresh_expire_time.seconds >= before + 30 * 24 * 3600 - 5
    header = jwt.get_unverified_header(s.access_token)
    assert header["alg"] == "EdDSA"
    assert header["kid"] == parse_pems(settings.jwt_private_keys.get_secret_value())[0].kid
    claims = jwt.decode(s.access_token, options={"verify_signature": False})
    assert claims["iss"] == "aivera-auth" and claims["aud"] == "aivera"
    assert claims["sub"] == s.user.id and claims["role"] == "admin"
    assert claims["exp"] - claims["iat"] == 3600 and claims["jti"]
    me = await client.auth.GetCurrentUser(ME, metadata=bearer(s.access_token))
    assert me.id == s.user.id and me.HasField("last_seen_time")


async def test_bootstrap_is_idempotent(client: Client, settings: AuthSettings) -> None:
    # A restart (or a second replica), also with another bootstrap token, changes nothing.
    other = variant(settings, aivera_bootstrap_admin_token="avs_" + "x" * 40)
    async with serve(other) as c2:
        assert await code_of(c2.exchange("avs_" + "x" * 40)) is grpc.StatusCode.UNAUTHENTICATED
        await c2.exchange(settings.aivera_bootstrap_admin_token.get_secret_value())
    conn = await db(settings.dsn())
    try:
        assert await conn.fetchval("SELECT count(*) FROM users WHERE role = 'admin'") == 1
    finally:
        await conn.close()


async def test_bad_static_tokens_answer_the_same(client: Client) -> None:
    await client.new_user()
    admin = await client.admin_token()
    disabled, disabled_token, _ = await client.new_user()
    await client.admin.UpdateUser(
        auth_pb2.UpdateUserRequest(
            user=auth_pb2.User(id=disabled.id, status=auth_pb2.USER_STATUS_DISABLED),
            update_mask=field_mask_pb2.FieldMask(paths=["status"]),
        ),
        metadata=bearer(admin),
    )
    messages = set()
    for bad in [
        "",
        "nope",
        "avs_" + "A" * 43,
        "avr_" + "A" * 43,
        "avs_" + "x" * 600,
        disabled_token,
    ]:
        err = await error_of(client.exchange(bad))
        assert err.code() is grpc.StatusCode.UNAUTHENTICATED
        messages.add(err.details())
    assert len(messages) == 1  # no user enumeration


async def test_refresh_rotates_and_grace_retry_keeps_session(client: Client) -> None:
    _u, _t, s = await client.new_user()
    r1 = s.refresh_token
    s2 = await refresh(client, r1)
    assert s2.refresh_token != r1 and s2.user.id == s.user.id
    assert s2.access_token != s.access_token
    await client.auth.GetCurrentUser(ME, metadata=bearer(s2.access_token))
    # Within the grace window a retired token fails but does not kill the session.
    assert await refresh_code(client, r1) is grpc.StatusCode.UNAUTHENTICATED
    s3 = await refresh(client, s2.refresh_token)
    s4 = await refresh(client, s3.refresh_token)
    assert s4.user.id == s.user.id


async def test_reuse_after_grace_revokes_family(client: Client, settings: AuthSettings) -> None:
    _u, static, s = await client.new_user()
    other_session = await client.exchange(static)  # another family of the same user
    r1 = s.refresh_token
    r2 = (await refresh(client, r1)).refresh_token
    s3 = await refresh(client, r2)
    await asyncio.sleep(settings.refresh_reuse_grace_seconds + 0.2)
    assert await refresh_code(client, r1) is grpc.StatusCode.UNAUTHENTICATED  # reuse
    assert await refresh_code(client, s3.refresh_token) is grpc.StatusCode.UNAUTHENTICATED
    assert await refresh_code(client, r2) is grpc.StatusCode.UNAUTHENTICATED
    # Access tokens stay valid until they expire (verified offline, documented).
    await client.auth.GetCurrentUser(ME, metadata=bearer(s3.access_token))
    # The user's other session is untouched.
    await refresh(client, other_session.refresh_token)


async def test_fifty_concurrent_refreshes_exactly_one_wins(client: Client) -> None:
    _u, _t, s = await client.new_user()
    results = await asyncio.gather(
        *(refresh(client, s.refresh_token) for _ in range(50)), return_exceptions=True
    )
    wins = [r for r in results if isinstance(r, auth_pb2.RefreshTokenResponse)]
    losses = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(wins) == 1 and len(losses) == 49
    assert all(e.code() is grpc.StatusCode.UNAUTHENTICATED for e in losses)
    await refresh(client, wins[0].refresh_token)  # the winner's session lives on


async def test_expired_and_unknown_refresh_tokens(client: Client, settings: AuthSettings) -> None:
    user, _t, s = await client.new_user()
    for bad in ["", "garbage", "avr_" + "Q" * 43, s.access_token]:
        assert await refresh_code(client, bad) is grpc.StatusCode.UNAUTHENTICATED
    conn = await db(settings.dsn())
    try:
        await conn.execute(
            "UPDATE refresh_tokens SET expires_at = now() - interval '1 second' WHERE user_id = $1",
            uuid.UUID(user.id),
        )
    finally:
        await conn.close()
    assert await refresh_code(client, s.refresh_token) is grpc.StatusCode.UNAUTHENTICATED


async def test_disabled_user_stops_at_once(client: Client) -> None:
    user, static, s = await client.new_user()
    admin = await client.admin_token()

    async def set_status(status: auth_pb2.UserStatus.ValueType) -> None:
        await client.admin.UpdateUser(
            auth_pb2.UpdateUserRequest(
                user=auth_pb2.User(id=user.id, status=status),
                update_mask=field_mask_pb2.FieldMask(paths=["status"]),
            ),
            metadata=bearer(admin),
        )

    await set_status(auth_pb2.USER_STATUS_DISABLED)
    assert await refresh_code(client, s.refresh_token) is grpc.StatusCode.UNAUTHENTICATED
    assert await code_of(client.exchange(static)) is grpc.StatusCode.UNAUTHENTICATED
    await set_status(auth_pb2.USER_STATUS_ACTIVE)
    # Sessions revoked by the disable stay revoked; a new sign-in works.
    assert await refresh_code(client, s.refresh_token) is grpc.StatusCode.UNAUTHENTICATED
    again = await client.exchange(static)
    await refresh(client, again.refresh_token)


async def test_logout(client: Client) -> None:
    _u, static, s1 = await client.new_user()
    s2 = await client.exchange(static)
    s3 = await client.exchange(static)
    md = bearer(s1.access_token)
    await client.auth.Logout(auth_pb2.LogoutRequest(refresh_token=s1.refresh_token), metadata=md)
    assert await refresh_code(client, s1.refresh_token) is grpc.StatusCode.UNAUTHENTICATED
    # Idempotent for the caller's own (already revoked) session.
    await client.auth.Logout(auth_pb2.LogoutRequest(refresh_token=s1.refresh_token), metadata=md)
    s2b = await refresh(client, s2.refresh_token)  # other sessions live on
    # Access tokens stay valid until they expire.
    await client.auth.GetCurrentUser(ME, metadata=md)

    # Another user's refresh token: NOT_FOUND and it keeps working.
    _o, _ot, other = await client.new_user()
    err = await error_of(
        client.auth.Logout(auth_pb2.LogoutRequest(refresh_token=other.refresh_token), metadata=md)
    )
    assert err.code() is grpc.StatusCode.NOT_FOUND
    await refresh(client, other.refresh_token)
    # Bad input and no token.
    assert (
        await code_of(client.auth.Logout(auth_pb2.LogoutRequest(), metadata=md))
        is grpc.StatusCode.INVALID_ARGUMENT
    )
    assert (
        await code_of(
            client.auth.Logout(
                auth_pb2.LogoutRequest(refresh_token="avr_nope_nope_nope"), metadata=md
            )
        )
        is grpc.StatusCode.NOT_FOUND
    )
    assert (
        await code_of(client.auth.Logout(auth_pb2.LogoutRequest(all_sessions=True)))
        is grpc.StatusCode.UNAUTHENTICATED
    )

    await client.auth.Logout(auth_pb2.LogoutRequest(all_sessions=True), metadata=md)
    for token in (s2b.refresh_token, s3.refresh_token):
        assert await refresh_code(client, token) is grpc.StatusCode.UNAUTHENTICATED


async def test_expired_and_tampered_access_tokens(client: Client, settings: AuthSettings) -> None:
    _u, _t, s = await client.new_user()
    key = parse_pems(settings.jwt_private_keys.get_secret_value())[0]
    claims = jwt.decode(s.access_token, options={"verify_signature": False})
    expired = jwt.encode(
        dict(claims, iat=int(time.time()) - 7200, exp=int(time.time()) - 10),
        key.private,
        algorithm="EdDSA",
        headers={"kid": key.kid},
    )
    head, _body, sig = s.access_token.split(".")
    forged_admin = jwt.encode(dict(claims, role="admin"), key.private, algorithm="EdDSA")
    _h, forged_body, _s = forged_admin.split(".")
    tampered = f"{head}.{forged_body}.{sig}"
    for bad in (expired, tampered, s.access_token[:-4] + "AAAA", s.refresh_token):
        code = await code_of(client.auth.GetCurrentUser(ME, metadata=bearer(bad)))
        assert code is grpc.StatusCode.UNAUTHENTICATED
    code = await code_of(
        client.admin.ListUsers(auth_pb2.ListUsersRequest(), metadata=bearer(tampered))
    )
    assert code is grpc.StatusCode.UNAUTHENTICATED


async def test_jwks_grpc_and_http(client: Client, settings: AuthSettings) -> None:
    jwks = await client.auth.GetJwks(auth_pb2.GetJwksRequest())
    assert len(jwks.keys) == 1
    k = jwks.keys[0]
    assert (k.kty, k.crv, k.alg, k.use) == ("OKP", "Ed25519", "EdDSA", "sig") and not k.y
    assert k.kid == thumbprint({"kty": k.kty, "crv": k.crv, "x": k.x})
    url = f"http://127.0.0.1:{client.app.http_port}/.well-known/jwks.json"
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        assert resp.status == 200
        doc = await resp.json()
    assert doc == {
        "keys": [
            {"kid": k.kid, "kty": "OKP", "alg": "EdDSA", "use": "sig", "crv": "Ed25519", "x": k.x}
        ]
    }
    # The JWKS verifies the service's tokens the way every other service does.
    verifier = JwksVerifier(lambda: _const(doc["keys"]), issuer="aivera-auth", audience="aivera")
    s = await client.exchange(settings.aivera_bootstrap_admin_token.get_secret_value())
    claims = await verifier.verify(s.access_token)
    assert claims.user_id == s.user.id and claims.role == "admin"


async def _const(value: list[dict[str, str]]) -> list[dict[str, str]]:
    return value


def test_rfc7638_thumbprint() -> None:
    # RFC 8037 appendix A.3.
    assert (
        thumbprint(
            {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}
        )
        == "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
    )


async def test_signing_key_rotation_and_removal(settings: AuthSettings) -> None:
    old, new = ed25519_pem(), p256_pem()
    base = variant(settings, jwt_private_keys=old)
    async with serve(base) as c:
        admin_static = base.aivera_bootstrap_admin_token.get_secret_value()
        old_token = (await c.exchange(admin_static)).access_token
    rotated = variant(base, jwt_private_keys=new + old)
    async with serve(rotated) as c:
        jwks = await c.auth.GetJwks(auth_pb2.GetJwksRequest())
        assert [k.alg for k in jwks.keys] == ["ES256", "EdDSA"]
        assert jwks.keys[0].crv == "P-256" and jwks.keys[0].y
        s = await c.exchange(admin_static)
        assert jwt.get_unverified_header(s.access_token)["alg"] == "ES256"
        for token in (old_token, s.access_token):  # previous key still verifies
            await c.auth.GetCurrentUser(ME, metadata=bearer(token))
        new_token = s.access_token
    retired = variant(base, jwt_private_keys=new)
    async with serve(retired) as c:
        assert (
            await code_of(c.auth.GetCurrentUser(ME, metadata=bearer(old_token)))
            is grpc.StatusCode.UNAUTHENTICATED
        )
        await c.auth.GetCurrentUser(ME, metadata=bearer(new_token))


def test_keys_required_outside_dev(database_url: str) -> None:
    prod = make_settings(database_url, aivera_env="prod", jwt_private_keys="")
    with pytest.raises(KeyConfigError):
        make_spec(prod)
    with pytest.raises(ValueError):
        make_spec(make_settings(database_url, aivera_env="prod", master_encryption_key=""))
    with pytest.raises(KeyConfigError):
        make_spec(
            make_settings(
                database_url,
                jwt_private_keys="-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            )
        )
    # dev/test: an ephemeral key, with a warning.
    make_spec(make_settings(database_url, jwt_private_keys="", master_encryption_key=""))


async def test_failed_exchanges_are_rate_limited(settings: AuthSettings) -> None:
    # More in test_sign_in_limit.py (two replicas, address vs prefix).
    limited = variant(
        settings,
        exchange_token_failure_limit=3,
        exchange_failure_limit=3,
        exchange_failure_window_seconds=1.0,
    )
    good = limited.aivera_bootstrap_admin_token.get_secret_value()
    bad = "avs_" + uuid.uuid4().hex + "x" * 30
    async with serve(limited) as c:
        await c.exchange(good)  # successes do not count
        for _ in range(3):
            assert await code_of(c.exchange(bad)) is grpc.StatusCode.UNAUTHENTICATED
        err = await error_of(c.exchange(bad))  # that token (prefix) is limited now
        assert err.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        await c.exchange(good)  # the other failures never lock out a valid token
        await asyncio.sleep(1.1)
        assert await code_of(c.exchange(bad)) is grpc.StatusCode.UNAUTHENTICATED


async def test_get_current_user_is_the_callers_own(client: Client) -> None:
    a, _at, sa = await client.new_user()
    b, _bt, sb = await client.new_user()
    assert (await client.auth.GetCurrentUser(ME, metadata=bearer(sa.access_token))).id == a.id
    assert (await client.auth.GetCurrentUser(ME, metadata=bearer(sb.access_token))).id == b.id
    assert await code_of(client.auth.GetCurrentUser(ME)) is grpc.StatusCode.UNAUTHENTICATED
    # A mesh service acting for a user: with a delegation for that user, the user is B;
    # naming a user by id (the retired on-behalf-of header) acts for no one.
    md = await client.service_md("chat", user_token=sb.access_token)
    assert (await client.auth.GetCurrentUser(ME, metadata=md)).id == b.id
    md = (*await client.service_md("chat"), ("x-aivera-on-behalf-of", a.id))
    assert await code_of(client.auth.GetCurrentUser(ME, metadata=md)) is (
        grpc.StatusCode.UNAUTHENTICATED
    )


async def test_rate_limit_behind_a_trusted_gateway(settings: AuthSettings) -> None:
    behind = variant(
        settings,
        exchange_failure_limit=2,
        exchange_failure_window_seconds=30.0,
        auth_trusted_proxies="127.0.0.0/8",
    )
    good = behind.aivera_bootstrap_admin_token.get_secret_value()

    def via(address: str) -> tuple[tuple[str, str], ...]:
        return (("x-forwarded-for", address),)

    async with serve(behind) as c:

        async def exchange(token: str, address: str) -> grpc.StatusCode:
            req = auth_pb2.ExchangeStaticTokenRequest(static_token=token)
            return await code_of(c.auth.ExchangeStaticToken(req, metadata=via(address)))

        for _ in range(2):
            code = await exchange("avs_bad_" + uuid.uuid4().hex, "203.0.113.1")
            assert code is grpc.StatusCode.UNAUTHENTICATED
        # That client's failures are limited now (its address, from x-forwarded-for) ...
        code = await exchange("avs_bad_" + uuid.uuid4().hex, "203.0.113.1")
        assert code is grpc.StatusCode.RESOURCE_EXHAUSTED
        # ... other clients behind the same gateway are not ...
        code = await exchange("avs_bad_" + uuid.uuid4().hex, "203.0.113.2")
        assert code is grpc.StatusCode.UNAUTHENTICATED
        # ... and a valid token signs in from anywhere, the limited client included.
        req = auth_pb2.ExchangeStaticTokenRequest(static_token=good)
        await c.auth.ExchangeStaticToken(req, metadata=via("203.0.113.1"))
        await c.auth.ExchangeStaticToken(req, metadata=via("203.0.113.2"))
        await c.auth.ExchangeStaticToken(req)
