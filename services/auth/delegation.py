"""Service credentials and token exchange: how mesh services prove who they are and act
for users (the other half is services.common.identity).

- `issue_service_token`: a service's own secret (auth stores only SHA-256s, two per
  service during a rotation) → a service token, a JWT for the mesh audience.
- `exchange`: RFC 8693. The calling service presents proof of a user — the user's access
  token, a delegation addressed to that service, or a grant that service holds — and gets a
  delegation for one target service, or a grant for work that outlives the proof. Every
  exchange re-reads the user: a disabled user or an ended session (session epoch moved on)
  is refused, which is what stops background work started before the revocation.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import hmac
import secrets
import time
import uuid
from dataclasses import dataclass

from services.auth.config import AuthSettings
from services.auth.keys import Keyring
from services.auth.store import Store, UserRow
from services.auth.tokens import TokenHasher
from services.common.errors import InvalidArgument, Reason, Unauthenticated
from services.common.jwks import SERVICE_NAMES, AccessClaims, JwksVerifier

GRANT_PREFIX = "avg_"
_SHA256_HEX = 64


class ClientConfigError(ValueError):
    """AUTH_SERVICE_CLIENTS cannot be used (the message never holds a hash)."""


def parse_clients(value: str) -> dict[str, tuple[bytes, ...]]:
    """`chat:<sha256 hex>,rag:<sha256 hex>,...` → service → accepted digests."""
    clients: dict[str, list[bytes]] = {}
    for entry in (e.strip() for e in value.split(",")):
        if not entry:
            continue
        name, _, digest = entry.partition(":")
        name, digest = name.strip(), digest.strip().lower()
        if name not in SERVICE_NAMES:
            raise ClientConfigError(f"AUTH_SERVICE_CLIENTS: unknown service {name!r}")
        if len(digest) != _SHA256_HEX:
            raise ClientConfigError(f"AUTH_SERVICE_CLIENTS: {name}: not a SHA-256 hex digest")
        clients.setdefault(name, []).append(bytes.fromhex(digest))
    return {name: tuple(digests) for name, digests in clients.items()}


def secret_digest(secret: str) -> str:
    """What AUTH_SERVICE_CLIENTS lists for a secret (`sha256sum` of it, no newline)."""
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Issued:
    token: str
    expires_at: dt.datetime
    grant: bool


class Delegation:
    def __init__(
        self, settings: AuthSettings, *, store: Store, keyring: Keyring, hasher: TokenHasher
    ) -> None:
        self.settings = settings
        self.store = store
        self.keyring = keyring
        self.hasher = hasher
        self.clients = parse_clients(settings.auth_service_clients)
        self.verifier: JwksVerifier = keyring.verifier()

    # -- service tokens -----------------------------------------------------------------
    def issue_service_token(self, service: str, secret: str) -> Issued:
        digests = self.clients.get(service, ())
        presented = hashlib.sha256(secret.encode()).digest()
        # Compare against every digest (no early exit), in constant time each.
        matched = False
        for digest in digests:
            matched |= hmac.compare_digest(presented, digest)
        if not secret or not matched:
            raise Unauthenticated(
                "service credential not valid", reason=Reason.BAD_SERVICE_CREDENTIAL
            )
        ttl = self.settings.service_token_ttl_seconds
        token = self.keyring.sign_service(service=service, ttl=ttl)
        return Issued(token, _after(ttl), grant=False)

    # -- token exchange -----------------------------------------------------------------
    async def exchange(
        self, *, caller: str, subject: str, audience: str, grant: bool, grant_ttl: int
    ) -> Issued:
        if not grant and audience not in SERVICE_NAMES:
            raise InvalidArgument(
                f"audience must be one of {', '.join(sorted(SERVICE_NAMES))}", field="audience"
            )
        if grant_ttl < 0:
            raise InvalidArgument(
                "grant_ttl_seconds must not be negative", field="grant_ttl_seconds"
            )
        user, epoch = await self._subject(caller, subject)
        if user.status != "active" or epoch < user.session_epoch:
            raise Unauthenticated("the user's session has ended", reason=Reason.SESSION_REVOKED)
        if grant:
            limit = self.settings.auth_grant_max_ttl_seconds
            ttl = min(grant_ttl or limit, limit)
            token = GRANT_PREFIX + secrets.token_urlsafe(32)
            expires = await self.store.create_grant(
                token_hash=self.hasher.hash(token),
                user_id=user.id,
                holder=caller,
                epoch=user.session_epoch,
                ttl=ttl,
            )
            return Issued(token, expires, grant=True)
        ttl = self.settings.delegation_ttl_seconds
        token = self.keyring.sign_delegation(
            user_id=str(user.id),
            role=user.role,
            epoch=user.session_epoch,
            audience=audience,
            actor=caller,
            ttl=ttl,
        )
        return Issued(token, _after(ttl), grant=False)

    async def _subject(self, caller: str, subject: str) -> tuple[UserRow, int]:
        """The user the subject token proves, and the session epoch it carries."""
        invalid = Unauthenticated(
            "subject_token is not a valid proof of a user", reason=Reason.DELEGATION_INVALID
        )
        if subject.startswith(GRANT_PREFIX):
            found = await self.store.live_grant(self.hasher.hash(subject), caller)
            if found is None:
                raise invalid
            return found
        claims = await self._verified(subject, caller)
        if claims is None:
            raise invalid
        user = await self.store.get_user(uuid.UUID(claims.user_id))
        if user is None:
            raise invalid
        return user, claims.epoch

    async def _verified(self, subject: str, caller: str) -> AccessClaims | None:
        """A user's access token, or a delegation addressed to the calling service."""
        with contextlib.suppress(Unauthenticated):
            return await self.verifier.verify(subject)
        with contextlib.suppress(Unauthenticated):
            return await self.verifier.verify_delegation(subject, service=caller)
        return None


def _after(seconds: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(time.time() + seconds, dt.UTC)
