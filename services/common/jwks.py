"""Access-token verification against the auth service's public keys (JWKS).

Every service verifies access JWTs locally: the auth service is asked only for its public
keys, cached here and refetched when a token names a `kid` we have not seen (a key
rotation). Only asymmetric algorithms are accepted, and the algorithm is taken from the
key, never from the token, so `alg: none` and HS256-with-the-public-key tricks fail.

A token that verified is remembered for its lifetime (a client sends the same access
token on every call for up to an hour): a bounded LRU keyed by the token's SHA-256 (the
cache holds no usable token) maps it to its claims and the key object that verified it.
A hit is accepted only while `now < exp` (the check `jwt.decode` makes) and while that
same key object is still in the key set: a refetch that drops or changes the key makes
every token it signed go through full verification again, and fail. Nothing that failed
is cached, and `iat`/`nbf`, checked when the token was first seen, only get more true.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jwt

from services.common.errors import Reason, Unauthenticated

ALLOWED_ALGORITHMS = frozenset({"EdDSA", "ES256"})

JwksFetcher = Callable[[], Awaitable[Sequence[Mapping[str, Any]]]]


# Audiences: user access tokens carry the configured one (`aivera`); service tokens are
# for the mesh as a whole; a delegation names the one service it may be presented to.
MESH_AUDIENCE = "aivera-mesh"
SERVICE_NAMES = frozenset({"auth", "chat", "rag", "storage", "training"})


def delegation_audience(service: str) -> str:
    return f"aivera.svc.{service}"


# The `tok` claim: what a token is for, so one kind can never pass as another.
KIND_ACCESS = "access"  # absent in access tokens (they predate the claim)
KIND_DELEGATION = "delegation"
KIND_SERVICE = "service"


@dataclass(frozen=True, slots=True)
class AccessClaims:
    user_id: str
    role: str
    jti: str
    exp: int
    # The user's session epoch when the token was issued (0 in tokens that predate it).
    epoch: int = 0
    kind: str = KIND_ACCESS
    # A delegation: the service acting for the user. A service token: the service itself.
    service: str | None = None


@dataclass(frozen=True, slots=True)
class _Key:
    algorithm: str
    key: Any
    jwk: tuple[tuple[str, str], ...]  # the published members, to tell a changed key apart


@dataclass(frozen=True, slots=True)
class _Verified:
    """A cache entry: the claims of a token that verified, and the key that verified it."""

    claims: AccessClaims
    kid: str
    key: _Key


DEFAULT_CACHE_SIZE = 10_000
_MAX_HEADER_SEGMENT = 4096  # a real one is ~100 characters


def _unverified_header(token: str) -> dict[str, Any]:
    """The JOSE header, read only to pick the key: `jwt.decode` parses and checks the whole
    token again (a header it would refuse fails there, with the same reason). This is the
    header segment alone; `jwt.get_unverified_header` decodes payload and signature too."""
    head, dot, _ = token.partition(".")
    try:
        if not dot or len(head) > _MAX_HEADER_SEGMENT:
            raise ValueError("no header segment")
        header = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
        if not isinstance(header, dict):
            raise ValueError("header is not an object")
    except (ValueError, TypeError):  # binascii.Error and JSONDecodeError are ValueErrors
        raise Unauthenticated("malformed access token", reason=Reason.TOKEN_INVALID) from None
    return header


class JwksVerifier:
    def __init__(
        self,
        fetch: JwksFetcher,
        *,
        issuer: str,
        audience: str,
        min_refresh_seconds: float = 2.0,
        cache_size: int = DEFAULT_CACHE_SIZE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._fetch = fetch
        self._issuer = issuer
        self._audience = audience
        self._min_refresh = min_refresh_seconds
        self._keys: dict[str, _Key] = {}
        self._last_fetch = float("-inf")
        self._lock = asyncio.Lock()
        self._cache: OrderedDict[bytes, _Verified] = OrderedDict()
        self._cache_size = cache_size
        self._clock = clock  # wall clock, as `exp` is; jwt.decode reads the same one

    @property
    def cached_tokens(self) -> int:
        """How many verified tokens are remembered (at most `cache_size`)."""
        return len(self._cache)

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
                members = tuple(sorted((str(k), str(v)) for k, v in jwk.items()))
                known = self._keys.get(str(kid))
                if known is not None and known.jwk == members:
                    keys[str(kid)] = known  # unchanged: tokens it verified stay cached
                    continue
                keys[str(kid)] = _Key(algorithm=str(alg), key=jwt.PyJWK(dict(jwk)).key, jwk=members)
            # A removed (or changed) key stops verifying from now on: cache hits check
            # that their key object is still the one in the set.
            self._keys = keys
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
        """A user's access token."""
        return await self._verified(token, self._audience, KIND_ACCESS)

    async def verify_service(self, token: str) -> str:
        """A service token; the service's name."""
        claims = await self._verified(token, MESH_AUDIENCE, KIND_SERVICE)
        assert claims.service is not None  # _decode requires it for service tokens
        return claims.service

    async def verify_delegation(self, token: str, *, service: str) -> AccessClaims:
        """A delegation addressed to `service`; `claims.service` is the service it was
        issued to (who must be the one presenting it)."""
        return await self._verified(token, delegation_audience(service), KIND_DELEGATION)

    async def _verified(self, token: str, audience: str, kind: str) -> AccessClaims:
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        key_ = digest + audience.encode()
        hit = self._cache.get(key_)
        if hit is not None:
            if self._clock() < hit.claims.exp and self._keys.get(hit.kid) is hit.key:
                self._cache.move_to_end(key_)
                return hit.claims
            del self._cache[key_]  # expired or its key is gone: verify (and fail) anew
        claims, kid, key = await self._verify_uncached(token, audience, kind)
        self._cache[key_] = _Verified(claims, kid, key)
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return claims

    async def _verify_uncached(
        self, token: str, audience: str, kind: str
    ) -> tuple[AccessClaims, str, _Key]:
        header = _unverified_header(token)
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
                audience=audience,
                issuer=self._issuer,
                options={"require": ["exp", "iat", "sub", "jti"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated(f"{kind} token expired", reason=Reason.TOKEN_EXPIRED) from None
        except jwt.PyJWTError:
            raise Unauthenticated(f"invalid {kind} token", reason=Reason.TOKEN_INVALID) from None
        return _claims_of(claims, kind), kid, key


def _claims_of(claims: Mapping[str, Any], kind: str) -> AccessClaims:
    """The claims of a verified token, if it is the kind asked for."""
    invalid = Unauthenticated(f"invalid {kind} token", reason=Reason.TOKEN_INVALID)
    if claims.get("tok", KIND_ACCESS) != kind:
        raise invalid
    jti, exp = str(claims["jti"]), int(claims["exp"])
    if kind == KIND_SERVICE:
        name = claims.get("svc")
        if name not in SERVICE_NAMES:
            raise invalid
        return AccessClaims(user_id="", role="", jti=jti, exp=exp, kind=kind, service=str(name))
    role, epoch = claims.get("role"), claims.get("sep", 0)
    if role not in ("user", "admin") or type(epoch) is not int or epoch < 0:
        raise invalid
    actor = None
    if kind == KIND_DELEGATION:
        act = claims.get("act")
        actor = act.get("svc") if isinstance(act, dict) else None
        if actor not in SERVICE_NAMES:
            raise invalid
    return AccessClaims(
        user_id=str(claims["sub"]),
        role=str(role),
        jti=jti,
        exp=exp,
        epoch=epoch,
        kind=kind,
        service=None if actor is None else str(actor),
    )
