"""JWT signing keys: loaded from PEM, published as a JWK set, used to sign access tokens.

`JWT_PRIVATE_KEYS` holds one or more PEM private keys, concatenated. The first is the
current signer; the others still verify (keep the previous key listed for one access TTL
after a rotation, then remove it: tokens it signed stop verifying everywhere as soon as
the services refetch the JWKS). Ed25519 keys sign with EdDSA, P-256 keys with ES256.
The `kid` is the RFC 7638 thumbprint of the public key, so it is stable across restarts
and replicas without configuration.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from services.common.jwks import (
    KIND_DELEGATION,
    KIND_SERVICE,
    MESH_AUDIENCE,
    JwksVerifier,
    delegation_audience,
)

log = logging.getLogger("aivera.auth.keys")

_PEM = re.compile(r"-----BEGIN ([A-Z ]*PRIVATE KEY)-----\s.*?-----END \1-----", re.DOTALL)


class KeyConfigError(ValueError):
    """The configured keys cannot be used (message never contains key material)."""


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


@dataclass(frozen=True)
class SigningKey:
    kid: str
    alg: str  # "EdDSA" | "ES256"
    private: Any
    public_jwk: Mapping[str, str]  # kid, kty, alg, use, crv, x[, y]

    @cached_property
    def header_segment(self) -> bytes:
        """The JWS protected header of every token this key signs, encoded once (the same
        JSON PyJWT writes: sorted keys, no whitespace)."""
        header = {"alg": self.alg, "kid": self.kid, "typ": "JWT"}
        return _b64url(json.dumps(header, separators=(",", ":"), sort_keys=True).encode()).encode()

    @cached_property
    def _algorithm(self) -> Any:
        # PyJWT's algorithm object: for ES256 it turns the DER signature into JWS's r||s.
        return jwt.get_algorithm_by_name(self.alg)

    def sign_jwt(self, claims: Mapping[str, Any]) -> str:
        """A compact JWS of `claims`: what `jwt.encode` makes, without re-encoding the
        header or re-checking the key on every call (this is the exchange hot path)."""
        payload = json.dumps(claims, separators=(",", ":")).encode()
        signing_input = self.header_segment + b"." + _b64url(payload).encode()
        signature = self._algorithm.sign(signing_input, self.private)
        return (signing_input + b"." + _b64url(signature).encode()).decode()


def _public_members(private: Any) -> dict[str, str]:
    if isinstance(private, ed25519.Ed25519PrivateKey):
        raw = private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return {"crv": "Ed25519", "kty": "OKP", "x": _b64url(raw)}
    if isinstance(private, ec.EllipticCurvePrivateKey):
        if not isinstance(private.curve, ec.SECP256R1):
            raise KeyConfigError(f"EC keys must be P-256, not {private.curve.name}")
        numbers = private.public_key().public_numbers()
        return {
            "crv": "P-256",
            "kty": "EC",
            "x": _b64url(numbers.x.to_bytes(32, "big")),
            "y": _b64url(numbers.y.to_bytes(32, "big")),
        }
    raise KeyConfigError(
        f"unsupported signing key type {type(private).__name__}; use Ed25519 or P-256"
    )


def thumbprint(members: Mapping[str, str]) -> str:
    """RFC 7638: SHA-256 of the required members, lexicographic, no whitespace."""
    required = ("crv", "kty", "x", "y") if members["kty"] == "EC" else ("crv", "kty", "x")
    canonical = json.dumps({k: members[k] for k in required}, separators=(",", ":"), sort_keys=True)
    return _b64url(hashlib.sha256(canonical.encode()).digest())


def signing_key(private: Any) -> SigningKey:
    members = _public_members(private)
    kid = thumbprint(members)
    alg = "EdDSA" if members["kty"] == "OKP" else "ES256"
    jwk = {"kid": kid, "alg": alg, "use": "sig", **members}
    return SigningKey(kid=kid, alg=alg, private=private, public_jwk=jwk)


def parse_pems(text: str) -> list[SigningKey]:
    keys: list[SigningKey] = []
    for n, match in enumerate(_PEM.finditer(text), start=1):
        try:
            private = serialization.load_pem_private_key(match.group(0).encode(), password=None)
        except (ValueError, TypeError):
            raise KeyConfigError(
                f"JWT_PRIVATE_KEYS: key #{n} is not a readable PEM private key"
            ) from None
        keys.append(signing_key(private))
    if text.strip() and not keys:
        raise KeyConfigError("JWT_PRIVATE_KEYS holds no PEM private key")
    kids = [k.kid for k in keys]
    if len(set(kids)) != len(kids):
        raise KeyConfigError("JWT_PRIVATE_KEYS lists the same key twice")
    return keys


class Keyring:
    """The current signer plus older keys that still verify."""

    def __init__(self, keys: list[SigningKey], *, issuer: str, audience: str) -> None:
        if not keys:
            raise KeyConfigError("no signing key")
        self.keys = keys
        self.issuer = issuer
        self.audience = audience

    @classmethod
    def from_env(cls, pems: str, *, env: str, issuer: str, audience: str) -> Keyring:
        keys = parse_pems(pems)
        if not keys:
            if env not in ("dev", "test"):
                raise KeyConfigError(
                    "JWT_PRIVATE_KEYS is not set: refusing to start outside dev/test "
                    "(set AIVERA_ENV=dev for a throw-away key)"
                )
            log.warning(
                "JWT_PRIVATE_KEYS is not set: signing with an ephemeral key "
                "(every access token dies with this process; dev/test only)"
            )
            keys = [signing_key(ed25519.Ed25519PrivateKey.generate())]
        return cls(keys, issuer=issuer, audience=audience)

    @property
    def current(self) -> SigningKey:
        return self.keys[0]

    def jwks(self) -> list[dict[str, str]]:
        return [dict(k.public_jwk) for k in self.keys]

    def sign(
        self, *, user_id: str, role: str, ttl: int, epoch: int = 0, now: float | None = None
    ) -> str:
        issued = int(time.time() if now is None else now)
        key = self.current
        claims = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": user_id,
            "role": role,
            "iat": issued,
            "exp": issued + ttl,
            "jti": uuid.uuid4().hex,
            # The user's session epoch: every service refuses tokens below the current one
            # (services.common.revocations).
            "sep": epoch,
        }
        return key.sign_jwt(claims)

    def sign_service(self, *, service: str, ttl: int, now: float | None = None) -> str:
        """A service token: the mesh's audience, the service's name in `svc`."""
        issued = int(time.time() if now is None else now)
        return self.current.sign_jwt(
            {
                "iss": self.issuer,
                "aud": MESH_AUDIENCE,
                "sub": f"service:{service}",
                "svc": service,
                "tok": KIND_SERVICE,
                "iat": issued,
                "exp": issued + ttl,
                "jti": uuid.uuid4().hex,
            }
        )

    def sign_delegation(
        self, *, user_id: str, role: str, epoch: int, audience: str, actor: str, ttl: int
    ) -> str:
        """A delegation (RFC 8693): `actor` may act for the user at `audience` only."""
        issued = int(time.time())
        return self.current.sign_jwt(
            {
                "iss": self.issuer,
                "aud": delegation_audience(audience),
                "sub": user_id,
                "role": role,
                "sep": epoch,
                "act": {"sub": f"service:{actor}", "svc": actor},
                "tok": KIND_DELEGATION,
                "iat": issued,
                "exp": issued + ttl,
                "jti": uuid.uuid4().hex,
            }
        )

    def verifier(self, *, min_refresh_seconds: float = 2.0) -> JwksVerifier:
        """A verifier reading these keys directly (the auth service must not call itself)."""

        async def fetch() -> list[dict[str, str]]:
            return self.jwks()

        return JwksVerifier(
            fetch,
            issuer=self.issuer,
            audience=self.audience,
            min_refresh_seconds=min_refresh_seconds,
        )
