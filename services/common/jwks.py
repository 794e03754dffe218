"""Access-token verification against the auth service's public keys (JWKS).

Every service verifies access JWTs locally: the auth service is asked only for its public
keys, cached here and refetched when a token names a `kid` we have not seen (a key
rotation). Only asymmetric algorithms are accepted, and the algorithm is taken from the
key, never from the token, so `alg: none` and HS256-with-the-public-key tricks fail.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jwt

from services.common.errors import Reason, Unauthenticated

ALLOWED_ALGORITHMS = frozenset({"EdDSA", "ES256"})

JwksFetcher = Callable[[], Awaitable[Sequence[Mapping[str, Any]]]]


@dataclass(frozen=True, slots=True)
class AccessClaims:
    user_id: str
    role: str
    jti: str
    exp: int


@dataclass(frozen=True, slots=True)
class _Key:
    algorithm: str
    key: Any


class JwksVerifier:
    def __init__(
        self,
        fetch: JwksFetcher,
        *,
        issuer: str,
        audience: str,
        min_refresh_seconds: float = 2.0,
    ) -> None:
        self._fetch = fetch
        self._issuer = issuer
        self._audience = audience
        self._min_refresh = min_refresh_seconds
        self._keys: dict[str, _Key] = {}
        self._last_fetch = float("-inf")
        self._lock = asyncio.Lock()

    async def refresh(self, *, force: bool = False) -> None:
        """Reload the key set (at most once per min_refresh_seconds unless forced)."""
        async with self._lock:
            if not force and time.monotonic() - self._last_fetch < self._min_refresh:
                return
            jwks = await self._fetch()
            keys: dict[str, _Key] = {}
            for jwk in jwks:
                kid, alg = jwk.get("kid"), jwk.get("alg")
                if not kid or alg not in ALLOWED_ALGORITHMS:
                    continue
                keys[str(kid)] = _Key(algorithm=str(alg), key=jwt.PyJWK(dict(jwk)).key)
            self._keys = keys  # a removed key stops verifying from now on
            self._last_fetch = time.monotonic()

    async def _key_for(self, kid: str) -> _Key | None:
        key = self._keys.get(kid)
        if key is None:
            try:
                await self.refresh()
            except Exception as exc:  # auth unreachable: the caller retries later
                raise Unauthenticated("cannot verify access token right now") from exc
            key = self._keys.get(kid)
        return key

    async def verify(self, token: str) -> AccessClaims:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthenticated("malformed access token", reason=Reason.TOKEN_INVALID) from None
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in ALLOWED_ALGORITHMS:
            raise Unauthenticated(
                "access token algorithm not accepted", reason=Reason.TOKEN_INVALID
            )
        if not isinstance(kid, str) or not kid:
            raise Unauthenticated("access token has no key id", reason=Reason.TOKEN_INVALID)
        key = await self._key_for(kid)
        if key is None:
            raise Unauthenticated(
                "access token signed by an unknown key", reason=Reason.TOKEN_INVALID
            )
        if key.algorithm != alg:
            raise Unauthenticated(
                "access token algorithm does not match its key", reason=Reason.TOKEN_INVALID
            )
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[key.algorithm],
                audience=self._audience,
                issuer=self._issuer,
                options={"require": ["exp", "iat", "sub", "jti"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("access token expired", reason=Reason.TOKEN_EXPIRED) from None
        except jwt.PyJWTError:
            raise Unauthenticated("invalid access token", reason=Reason.TOKEN_INVALID) from None
        role = claims.get("role")
        if role not in ("user", "admin"):
            raise Unauthenticated("invalid access token", reason=Reason.TOKEN_INVALID)
        return AccessClaims(
            user_id=str(claims["sub"]),
            role=str(role),
            jti=str(claims["jti"]),
            exp=int(claims["exp"]),
        )
