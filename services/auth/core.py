"""The auth service's domain logic: sessions, users, provider keys.

Handlers (servicer.py) validate requests and convert protos; `Auth` decides, and reads
and writes only through its `store.Store` (built with the service's `App` in
`server.Wiring.build`). Every failure a program may branch on carries its contract
reason: BAD_STATIC_TOKEN, BAD_REFRESH_TOKEN, TOO_MANY_FAILURES (the shared sign-in
limiter, see ratelimit.py),
ADMIN_REQUIRED, ALREADY_EXISTS (username taken, from the store), PROVIDER_KEY_MISSING.
ListUsers pages with the mesh's signed keyset page tokens (`services.common.pages`).

Every secret that passes through here (static token, refresh token, access token,
provider key) is hashed, signed or encrypted and never logged: log lines carry ids only.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import uuid
from dataclasses import dataclass

from services.auth import tokens
from services.auth.config import AuthSettings
from services.auth.crypto import DecryptError, Sealed, SecretBox
from services.auth.keys import Keyring
from services.auth.ratelimit import SignInLimiter, client_of, parse_networks
from services.auth.store import ProviderKeyRow, Store, UserRow
from services.common import pages
from services.common.errors import (
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Reason,
    ResourceExhausted,
    Unauthenticated,
    not_found,
)
from services.common.logs import fields
from services.common.revocations import Revoked

log = logging.getLogger("aivera.auth")

USERNAME = re.compile(r"^[A-Za-z0-9._-]{3,64}$")
GEMINI_KEY = re.compile(r"^[A-Za-z0-9_-]{30,100}$")
# Replicate API tokens are `r8_` and 37 more characters today; allow some growth.
REPLICATE_KEY = re.compile(r"^r8_[A-Za-z0-9_-]{20,100}$")
PROVIDER_KEY_SHAPES = {"gemini": GEMINI_KEY, "replicate": REPLICATE_KEY}

# One message for every failed sign-in: wrong, unknown, disabled (no user enumeration).
BAD_STATIC_TOKEN = "static token is not valid"
BAD_REFRESH_TOKEN = "refresh token is not valid"
TOO_MANY_FAILURES = "too many failed sign-ins; retry later"
ADMIN_REQUIRED = "this RPC needs the admin role"
# A revoking transaction that started before a poll can commit after it: each poll
# re-reads this much before its `since` (applying a revocation twice is harmless).
REVOCATION_OVERLAP_SECONDS = 30.0


@dataclass(frozen=True, slots=True)
class Session:
    access_token: str
    refresh_token: str
    expires_in: int
    user: UserRow
    refresh_expires_at: dt.datetime


class Auth:
    def __init__(
        self,
        settings: AuthSettings,
        *,
        store: Store,
        keyring: Keyring,
        box: SecretBox,
        hasher: tokens.TokenHasher,
    ) -> None:
        self.settings = settings
        self.store = store
        self.keyring = keyring
        self.box = box
        self.hasher = hasher
        self.limiter = SignInLimiter(
            store,
            hasher,
            address_limit=settings.exchange_failure_limit,
            prefix_limit=settings.exchange_token_failure_limit,
            window=settings.exchange_failure_window_seconds,
        )
        self.trusted_proxies = parse_networks(settings.auth_trusted_proxies)

    def client(self, peer: str | None, forwarded_for: str | None) -> str:
        """The rate-limit key of a call (see ratelimit.client_of)."""
        return client_of(peer, forwarded_for, self.trusted_proxies)

    def _access_token(self, user: UserRow) -> str:
        return self.keyring.sign(
            user_id=str(user.id),
            role=user.role,
            ttl=self.settings.access_token_ttl_seconds,
            epoch=user.session_epoch,
        )

    def _first_refresh_ttl(self) -> float:
        """A refresh token lives no longer than the idle timeout or the session."""
        s = self.settings
        return min(
            s.refresh_token_ttl_seconds,
            s.session_idle_timeout_seconds,
            s.session_max_lifetime_seconds,
        )

    # -- sessions ---------------------------------------------------------------------
    async def exchange(self, static_token: str, *, client: str) -> Session:
        limit = self.limiter.query(client, static_token)
        refresh = tokens.new_refresh_token()
        if tokens.plausible(static_token, tokens.STATIC_PREFIX):
            # One statement: the limiter's read, and the session unless the prefix is
            # limited (see ratelimit.py).
            outcome = await self.store.exchange(
                static_hash=self.hasher.hash(static_token),
                session_id=uuid.uuid4(),
                token_id=uuid.uuid4(),
                refresh_hash=self.hasher.hash(refresh),
                refresh_ttl=self._first_refresh_ttl(),
                limit=limit,
            )
            counts, issued = outcome.counts, outcome.issued
        else:
            counts, issued = await self.limiter.counts(limit), None
        if issued is None:
            if self.limiter.prefix_blocked(counts):  # refused unchecked: not a new failure
                raise ResourceExhausted(TOO_MANY_FAILURES, reason=Reason.TOO_MANY_FAILURES)
            await self.limiter.record_failure(limit)
            if self.limiter.address_over(counts):  # not logged one by one: it floods
                raise ResourceExhausted(TOO_MANY_FAILURES, reason=Reason.TOO_MANY_FAILURES)
            log.info("static token exchange refused", extra=fields(client=client))
            raise Unauthenticated(BAD_STATIC_TOKEN, reason=Reason.BAD_STATIC_TOKEN)
        log.info("session started", extra=fields(subject=str(issued.user.id)))
        return Session(
            access_token=self._access_token(issued.user),
            refresh_token=refresh,
            expires_in=self.settings.access_token_ttl_seconds,
            user=issued.user,
            refresh_expires_at=issued.refresh_expires_at,
        )

    async def refresh(self, refresh_token: str) -> Session:
        if not tokens.plausible(refresh_token, tokens.REFRESH_PREFIX):
            raise Unauthenticated(BAD_REFRESH_TOKEN, reason=Reason.BAD_REFRESH_TOKEN)
        old_hash = self.hasher.hash(refresh_token)
        new = tokens.new_refresh_token()
        issued = await self.store.rotate_refresh(
            old_hash=old_hash,
            token_id=uuid.uuid4(),
            new_hash=self.hasher.hash(new),
            refresh_ttl=min(
                self.settings.refresh_token_ttl_seconds, self.settings.session_idle_timeout_seconds
            ),
            session_lifetime=self.settings.session_max_lifetime_seconds,
            idle_timeout=self.settings.session_idle_timeout_seconds,
        )
        if issued is None:
            revoked = await self.store.revoke_on_reuse(
                token_hash=old_hash, grace=self.settings.refresh_reuse_grace_seconds
            )
            if revoked is not None:
                log.warning(
                    "retired refresh token presented again: session revoked",
                    extra=fields(session_id=str(revoked.session_id), subject=str(revoked.user_id)),
                )
            raise Unauthenticated(BAD_REFRESH_TOKEN, reason=Reason.BAD_REFRESH_TOKEN)
        return Session(
            access_token=self._access_token(issued.user),
            refresh_token=new,
            expires_in=self.settings.access_token_ttl_seconds,
            user=issued.user,
            refresh_expires_at=issued.refresh_expires_at,
        )

    async def logout(self, user_id: uuid.UUID, refresh_token: str, all_sessions: bool) -> None:
        if all_sessions:
            n = await self.store.revoke_user_sessions(user_id, "logout (all sessions)")
            log.info("signed out of all sessions", extra=fields(sessions=n))
            return
        if not refresh_token:
            raise InvalidArgument(
                "refresh_token is required unless all_sessions is set", field="refresh_token"
            )
        found = tokens.plausible(refresh_token, tokens.REFRESH_PREFIX) and (
            await self.store.revoke_session_of(
                token_hash=self.hasher.hash(refresh_token), user_id=user_id
            )
        )
        if not found:  # unknown, or another user's: the same answer
            raise NotFound("session not found", metadata={"resource": "session"})
        log.info("signed out")

    # -- users ------------------------------------------------------------------------
    async def current_user(self, user_id: uuid.UUID) -> UserRow:
        user = await self.store.get_user(user_id)
        if user is None:
            raise NotFound("user not found", metadata={"resource": "user"})
        return user

    async def require_admin(self, user_id: str | None) -> None:
        """Admin RPCs re-check the database: a demoted or disabled admin's access token
        (valid up to its TTL) no longer administers."""
        denied = PermissionDenied(ADMIN_REQUIRED, reason=Reason.ADMIN_REQUIRED)
        if user_id is None:
            raise denied
        try:
            uid = uuid.UUID(user_id)
        except ValueError:
            raise denied from None
        if not await self.store.is_active_admin(uid):
            raise denied

    async def list_users(self, page: pages.PageRequest) -> tuple[list[UserRow], str]:
        """One page of users, oldest first, and the next page token."""
        rows = await self.store.list_users(page)
        return pages.take(rows, page, key=lambda u: u.page_key)

    async def create_user(self, username: str, role: str) -> tuple[UserRow, str]:
        if not USERNAME.match(username):
            raise InvalidArgument(
                "username must be 3-64 characters of latin letters, digits, '.', '_' and '-'",
                field="username",
            )
        token = tokens.new_static_token()
        user = await self.store.create_user(
            username=username, role=role, token_hash=self.hasher.hash(token)
        )
        log.info("user created", extra=fields(subject=str(user.id), role=role))
        return user, token

    async def update_user(
        self, actor: str | None, user_id: uuid.UUID, *, role: str | None, status: str | None
    ) -> UserRow:
        if actor == str(user_id) and (status == "disabled" or role == "user"):
            raise InvalidArgument("an admin cannot disable or demote themselves", field="user.id")
        user = await self.store.update_user(user_id, role=role, status=status)
        if user is None:
            raise not_found("user", str(user_id))
        log.info(
            "user updated", extra=fields(subject=str(user_id), role=user.role, status=user.status)
        )
        return user

    async def rotate_static_token(self, user_id: uuid.UUID) -> tuple[UserRow, str]:
        token = tokens.new_static_token()
        user = await self.store.set_static_token(user_id, self.hasher.hash(token))
        if user is None:
            raise not_found("user", str(user_id))
        log.info("static token rotated", extra=fields(subject=str(user_id)))
        return user, token

    async def revoke_sessions(self, user_id: uuid.UUID) -> int:
        if await self.store.get_user(user_id) is None:
            raise not_found("user", str(user_id))
        n = await self.store.revoke_user_sessions(user_id, "revoked by an admin")
        log.info("sessions revoked", extra=fields(subject=str(user_id), sessions=n))
        return n

    async def session_revocations(
        self, since: dt.datetime | None
    ) -> tuple[list[Revoked], dt.datetime]:
        """The feed every service polls (services.common.revocations)."""
        rows, now = await self.store.session_revocations(
            since=since,
            window=2.0 * self.settings.access_token_ttl_seconds,
            overlap=REVOCATION_OVERLAP_SECONDS,
        )
        return [Revoked(str(r.user_id), r.epoch, r.revoked_at) for r in rows], now

    async def bootstrap_admin(self) -> None:
        token = self.settings.aivera_bootstrap_admin_token.get_secret_value()
        if not token:
            return
        if not tokens.plausible(token, tokens.STATIC_PREFIX):
            log.error(
                "AIVERA_BOOTSTRAP_ADMIN_TOKEN ignored: it must start with %r and be 16-512 "
                "characters",
                tokens.STATIC_PREFIX,
            )
            return
        outcome = await self.store.bootstrap_admin(self.hasher.hash(token))
        if outcome == "created":
            log.info("bootstrap admin user 'admin' created")
        elif outcome == "name-taken":
            log.warning("no admin exists but username 'admin' is taken: bootstrap skipped")

    # -- provider keys ----------------------------------------------------------------
    def _check_shape(self, provider: str, api_key: str) -> None:
        shape = PROVIDER_KEY_SHAPES[provider]
        if not shape.match(api_key):
            # Never echo the key: only its length.
            raise InvalidArgument(
                f"api_key is not a {provider} key: expected 30-100 letters, digits, '-' "
                f"or '_' (got {len(api_key)} characters)",
                field="api_key",
            )

    async def set_provider_key(
        self, user_id: uuid.UUID, provider: str, api_key: str
    ) -> ProviderKeyRow:
        self._check_shape(provider, api_key)
        sealed = self.box.seal(api_key, user_id=str(user_id), provider=provider)
        row = await self.store.put_provider_key(
            user_id=user_id,
            provider=provider,
            version=sealed.version,
            ciphertext=sealed.blob,
            last4=api_key[-4:],
        )
        log.info("provider key set", extra=fields(provider=provider))
        return row

    async def provider_key_status(self, user_id: uuid.UUID, provider: str) -> ProviderKeyRow | None:
        return await self.store.get_provider_key(user_id, provider)

    async def delete_provider_key(self, user_id: uuid.UUID, provider: str) -> None:
        if not await self.store.delete_provider_key(user_id, provider):
            raise _key_missing(f"no {provider} key is set", provider)
        log.info("provider key deleted", extra=fields(provider=provider))

    async def provider_key_plaintext(self, user_id: uuid.UUID, provider: str) -> str:
        row = await self.store.get_provider_key(user_id, provider)
        if row is None:
            raise _key_missing(f"user has no {provider} key", provider)
        try:
            return self.box.open(
                Sealed(row.key_version, row.ciphertext), user_id=str(user_id), provider=provider
            )
        except DecryptError:
            log.error(
                "stored provider key does not decrypt",
                extra=fields(subject=str(user_id), provider=provider, version=row.key_version),
            )
            raise _key_missing(
                f"user has no usable {provider} key; set it again", provider
            ) from None


def _key_missing(message: str, provider: str) -> NotFound:
    """No (usable) provider key stored: NOT_FOUND, reason PROVIDER_KEY_MISSING."""
    return NotFound(message, reason=Reason.PROVIDER_KEY_MISSING, metadata={"provider": provider})


@dataclass
class RotationReport:
    reencrypted: int = 0
    skipped_changed: int = 0
    failed: int = 0


async def rotate_master_key(store: Store, box: SecretBox) -> RotationReport:
    """Re-encrypt every provider key not under the current master-key version."""
    report = RotationReport()
    for row in await store.provider_keys_not_at(box.current_version):
        uid = str(row.user_id)
        try:
            plain = box.open(
                Sealed(row.key_version, row.ciphertext), user_id=uid, provider=row.provider
            )
        except DecryptError:
            report.failed += 1
            log.error(
                "provider key does not decrypt; left as is",
                extra=fields(subject=uid, provider=row.provider, version=row.key_version),
            )
            continue
        sealed = box.seal(plain, user_id=uid, provider=row.provider)
        if await store.replace_ciphertext(row, version=sealed.version, ciphertext=sealed.blob):
            report.reencrypted += 1
        else:
            report.skipped_changed += 1
    return report
