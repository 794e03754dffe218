"""Pure parts: the sign-in limiter's keys, client addresses, master-key and PEM parsing."""

from __future__ import annotations

import base64
import os
from collections.abc import Callable
from typing import cast

import jwt
import pytest

from services.auth.crypto import (
    DecryptError,
    MasterKeyError,
    Sealed,
    SecretBox,
    parse_master_keys,
)
from services.auth.keys import KeyConfigError, Keyring, parse_pems
from services.auth.ratelimit import (
    PREFIX_CHARS,
    SignInLimiter,
    client_address,
    client_of,
    parse_networks,
)
from services.auth.store import Store
from services.auth.tokens import TokenHasher
from tests.auth.conftest import ed25519_pem, p256_pem


def test_limiter_prefix_key() -> None:
    lim = SignInLimiter(
        cast(Store, None), TokenHasher("k"), address_limit=10, prefix_limit=5, window=60.0
    )
    token = "avs_" + "a1B2c3D4e5F6" + "x" * 31
    key = lim.prefix_key(token)
    assert key.startswith("p:") and len(key) == 34
    assert "a1B2c3D4e5F6" not in key  # stored only as an HMAC
    # Only the first PREFIX_CHARS characters count: a token and its typo'd tail share a key.
    assert lim.prefix_key(token[:PREFIX_CHARS] + "y" * 31) == key
    assert lim.prefix_key("avs_" + "a1B2c3D4e5F7" + "x" * 31) != key
    other = SignInLimiter(
        cast(Store, None), TokenHasher("k2"), address_limit=10, prefix_limit=5, window=60.0
    )
    assert other.prefix_key(token) != key  # keyed by TOKEN_HASH_KEY
    assert lim.prefix_key("") != lim.prefix_key("nope")


@pytest.mark.parametrize(
    ("peer", "address"),
    [
        ("ipv4:10.1.2.3:5555", "10.1.2.3"),
        ("ipv6:[::1]:5555", "::1"),
        ("ipv6:%5B2001:db8::1%5D:443", "2001:db8::1"),
        ("unix:/tmp/sock", "unix"),
        ("", "unknown"),
        (None, "unknown"),
    ],
)
def test_client_address(peer: str | None, address: str) -> None:
    assert client_address(peer) == address


def test_forwarded_for_only_from_trusted_proxies() -> None:
    proxies = parse_networks("10.0.0.0/8, 192.168.1.5")
    gw = "ipv4:10.0.0.7:4000"
    assert client_of(gw, "203.0.113.9", proxies) == "203.0.113.9"
    # A client's own header left of the real address is not believed.
    assert client_of(gw, "1.1.1.1, 203.0.113.9, 192.168.1.5", proxies) == "203.0.113.9"
    assert client_of(gw, None, proxies) == "10.0.0.7"
    assert client_of(gw, "10.0.0.8", proxies) == "10.0.0.7"
    # Direct clients cannot pick their bucket; without trusted proxies the header is ignored.
    assert client_of("ipv4:203.0.113.9:1", "1.1.1.1", proxies) == "203.0.113.9"
    assert client_of(gw, "1.1.1.1", []) == "10.0.0.7"


def _entry(version: str) -> str:
    return f"{version}:" + base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("=")


def test_master_key_parsing() -> None:
    keys = parse_master_keys(f"{_entry('v2')}, {_entry('v1')}")
    assert [v for v, _ in keys] == ["v2", "v1"]
    for bad in ["v1", "v1:abc", f"{_entry('v1')},{_entry('v1')}", "v 1:" + "A" * 43, "v1:!!!"]:
        with pytest.raises(MasterKeyError) as info:
            parse_master_keys(bad)
        assert "A" * 20 not in str(info.value)


def test_ciphertext_is_bound_to_row_and_version() -> None:
    box = SecretBox(parse_master_keys(_entry("v1")))
    sealed = box.seal("secret-key-value", user_id="u1", provider="gemini")
    assert box.open(sealed, user_id="u1", provider="gemini") == "secret-key-value"
    for user, provider, version in (("u2", "gemini", "v1"), ("u1", "other", "v1")):
        with pytest.raises(DecryptError):
            box.open(Sealed(version, sealed.blob), user_id=user, provider=provider)
    with pytest.raises(DecryptError):
        box.open(Sealed("v9", sealed.blob), user_id="u1", provider="gemini")
    flipped = bytearray(sealed.blob)
    flipped[-1] ^= 1
    with pytest.raises(DecryptError):
        box.open(Sealed("v1", bytes(flipped)), user_id="u1", provider="gemini")


def test_pem_parsing() -> None:
    keys = parse_pems(ed25519_pem() + "\n" + p256_pem())
    assert [k.alg for k in keys] == ["EdDSA", "ES256"]
    assert len({k.kid for k in keys}) == 2
    assert parse_pems("") == []
    one = ed25519_pem()
    with pytest.raises(KeyConfigError):
        parse_pems(one + one)
    with pytest.raises(KeyConfigError):
        parse_pems("not a pem")


@pytest.mark.parametrize("make_pem", [ed25519_pem, p256_pem])
def test_fast_signer_makes_what_jwt_encode_makes(make_pem: Callable[[], str]) -> None:
    # Keyring.sign encodes the header once per key and signs directly: the tokens must be
    # the ones jwt.encode makes (byte for byte where the signature is deterministic) and
    # verify with the public key alone.
    key = parse_pems(make_pem())[0]
    keyring = Keyring([key], issuer="aivera-auth", audience="aivera")
    token = keyring.sign(user_id="u1", role="admin", ttl=60)
    assert jwt.get_unverified_header(token) == {"alg": key.alg, "kid": key.kid, "typ": "JWT"}
    claims = jwt.decode(
        token,
        key.private.public_key(),
        algorithms=[key.alg],
        audience="aivera",
        issuer="aivera-auth",
        options={"require": ["exp", "iat", "sub", "jti"]},
    )
    assert claims["sub"] == "u1" and claims["role"] == "admin"
    assert claims["exp"] - claims["iat"] == 60
    reference = jwt.encode(claims, key.private, algorithm=key.alg, headers={"kid": key.kid})
    ours = key.sign_jwt(claims)
    assert ours.rsplit(".", 1)[0] == reference.rsplit(".", 1)[0]
    if key.alg == "EdDSA":  # Ed25519 signatures are deterministic; ECDSA ones are not
        assert ours == reference
    other = parse_pems(make_pem())[0]  # another key of the same type does not verify it
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(ours, other.private.public_key(), algorithms=[key.alg], audience="aivera")
