"""Test JWTs: a key pair made in the test and a minting helper, so services can be tested
without the auth service (the auth service's own tests use its real signer)."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from services.common.identity import SERVICE_TOKEN_HEADER
from services.common.jwks import (
    KIND_DELEGATION,
    KIND_SERVICE,
    MESH_AUDIENCE,
    JwksVerifier,
    delegation_audience,
)


@dataclass
class SigningKey:
    kid: str
    alg: str
    private: Any

    def jwk(self) -> dict[str, Any]:
        data = jwt.algorithms.get_default_algorithms()[self.alg].to_jwk(
            self.private.public_key(), as_dict=True
        )
        data.update(kid=self.kid, alg=self.alg, use="sig")
        return dict(data)


def ed25519_key(kid: str = "test-ed") -> SigningKey:
    return SigningKey(kid=kid, alg="EdDSA", private=ed25519.Ed25519PrivateKey.generate())


def es256_key(kid: str = "test-es") -> SigningKey:
    return SigningKey(kid=kid, alg="ES256", private=ec.generate_private_key(ec.SECP256R1()))


@dataclass
class Keyring:
    """The keys a test's fake JWKS serves; tests add and remove keys to rotate."""

    keys: list[SigningKey] = field(default_factory=lambda: [ed25519_key()])
    issuer: str = "aivera-auth"
    audience: str = "aivera"

    def mint(
        self,
        user_id: str | None = None,
        *,
        role: str = "user",
        ttl: int = 600,
        key: SigningKey | None = None,
        **overrides: Any,
    ) -> str:
        key = key or self.keys[0]
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": user_id or str(uuid.uuid4()),
            "role": role,
            "iat": now,
            "exp": now + ttl,
            "jti": uuid.uuid4().hex,
        }
        claims.update(overrides)
        return jwt.encode(claims, key.private, algorithm=key.alg, headers={"kid": key.kid})

    def mint_service(self, service: str, *, ttl: int = 600) -> str:
        """A service token, as auth's ServiceIdentityService issues them."""
        return self.mint(
            f"service:{service}", aud=MESH_AUDIENCE, svc=service, tok=KIND_SERVICE, ttl=ttl
        )

    def mint_delegation(
        self, user_id: str, *, audience: str, actor: str, ttl: int = 300, **overrides: Any
    ) -> str:
        """A delegation for `actor` to act for the user at `audience`."""
        claims: dict[str, Any] = {
            "aud": delegation_audience(audience),
            "act": {"sub": f"service:{actor}", "svc": actor},
            "tok": KIND_DELEGATION,
            "sep": 0,
            **overrides,
        }
        return self.mint(user_id, ttl=ttl, **claims)

    def service_md(
        self, service: str, user_id: str | None = None, *, audience: str
    ) -> tuple[tuple[str, str], ...]:
        """Metadata of a call from mesh service `service`, for `user_id` if given."""
        md: tuple[tuple[str, str], ...] = ((SERVICE_TOKEN_HEADER, self.mint_service(service)),)
        if user_id is not None:
            delegation = self.mint_delegation(user_id, audience=audience, actor=service)
            md += (("authorization", f"Bearer {delegation}"),)
        return md

    async def fetch(self) -> list[dict[str, Any]]:
        return [k.jwk() for k in self.keys]

    def verifier(self) -> JwksVerifier:
        return JwksVerifier(
            self.fetch, issuer=self.issuer, audience=self.audience, min_refresh_seconds=0
        )
