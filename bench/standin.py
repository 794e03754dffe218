"""A stand-in for the auth service in benchmarks that run one service alone: a key pair
made in the bench, the JWK the service verifies against (passed in BENCH_JWK), and access
tokens minted for throw-away users."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ed25519

from services.common.jwks import JwksVerifier
from services.common.server import App

ISSUER, AUDIENCE, KID = "aivera-auth", "aivera", "bench"
JWK_ENV = "BENCH_JWK"


def keypair() -> tuple[ed25519.Ed25519PrivateKey, str]:
    """A signing key and its public JWK as JSON (the value of BENCH_JWK)."""
    key = ed25519.Ed25519PrivateKey.generate()
    jwk = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(key.public_key()))
    jwk.update(kid=KID, alg="EdDSA", use="sig")
    return key, json.dumps(jwk)


def bearer(key: ed25519.Ed25519PrivateKey, user_id: str | None = None) -> tuple[tuple[str, str]]:
    """Metadata with an access token for `user_id` (a new user when None), valid an hour."""
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": user_id or str(uuid.uuid4()),
        "role": "user",
        "iat": now,
        "exp": now + 3600,
        "jti": uuid.uuid4().hex,
    }
    token = jwt.encode(claims, key, algorithm="EdDSA", headers={"kid": KID})
    return (("authorization", f"Bearer {token}"),)


def verifier_from_env() -> Callable[[App], JwksVerifier]:
    """A ServiceSpec.verifier that trusts the JWK in BENCH_JWK (set by the bench)."""
    jwk = json.loads(os.environ[JWK_ENV])

    async def fetch() -> list[dict[str, Any]]:
        return [jwk]

    return lambda app: JwksVerifier(fetch, issuer=ISSUER, audience=AUDIENCE)
