"""Every SQL statement of the auth service (tables in migrations/, schema `auth`).

`Store` is built once in `server.Wiring.build` from the service's `App` and reads
`app.pool` at call time (the pool connects after the servicers are built; one-shot
commands pass `Connected(pool)`). It returns frozen dataclass rows and raises domain
errors (`AlreadyExists` for a taken username): nothing above this module sees SQL or an
asyncpg exception.

Token operations are single statements (data-modifying CTEs): one round trip each, and
the row lock taken by `UPDATE ... WHERE used_at IS NULL` is what makes concurrent
refreshes of one token serialise with exactly one winner.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any, Literal

import asyncpg

from services.common.db import Database
from services.common.errors import AlreadyExists, Reason
from services.common.pages import PageRequest

_USER_COLS = "id, username, role, status, created_at, last_seen_at, session_epoch"
_USERS_USER_COLS = ", ".join("users." + c for c in _USER_COLS.split(", "))

# The two hot statements (ExchangeStaticToken, RefreshToken), built once: one round trip
# each, prepared once per connection by asyncpg's statement cache.
_EXCHANGE_SQL = f"""WITH lim AS (
        SELECT coalesce(max(failures) FILTER (WHERE key = $6), 0) AS address_failures,
               coalesce(max(failures) FILTER (WHERE key = $7), 0) AS prefix_failures
        FROM sign_in_failures
        WHERE key IN ($6, $7) AND window_start > now() - make_interval(secs => $8)),
    u AS (
        UPDATE users SET last_seen_at = now()
        WHERE static_token_hash = $1 AND status = 'active'
          AND (SELECT prefix_failures FROM lim) < $9
        RETURNING {_USER_COLS}),
    s AS (
        INSERT INTO sessions (id, user_id) SELECT $2, id FROM u
        RETURNING id, user_id),
    t AS (
        INSERT INTO refresh_tokens (id, session_id, user_id, token_hash, expires_at)
        SELECT $3, s.id, s.user_id, $4, now() + make_interval(secs => $5) FROM s
        RETURNING expires_at)
    SELECT lim.address_failures, lim.prefix_failures, u.*, t.expires_at AS refresh_expires_at
    FROM lim LEFT JOIN (u CROSS JOIN t) ON true"""
_FAILURES_SQL = """SELECT
        coalesce(max(failures) FILTER (WHERE key = $1), 0) AS address_failures,
        coalesce(max(failures) FILTER (WHERE key = $2), 0) AS prefix_failures
    FROM sign_in_failures
    WHERE key IN ($1, $2) AND window_start > now() - make_interval(secs => $3)"""
_ROTATE_SQL = f"""WITH old AS (
        UPDATE refresh_tokens t SET used_at = now()
        FROM sessions s, users u
        WHERE t.token_hash = $1 AND t.used_at IS NULL AND t.expires_at > now()
          AND t.created_at > now() - make_interval(secs => $6)
          AND s.id = t.session_id AND s.revoked_at IS NULL
          AND s.created_at > now() - make_interval(secs => $5)
          AND u.id = t.user_id AND u.status = 'active'
        RETURNING t.session_id, t.user_id, s.created_at AS session_created_at),
    n AS (
        INSERT INTO refresh_tokens (id, session_id, user_id, token_hash, expires_at)
        SELECT $2, session_id, user_id, $3,
               least(now() + make_interval(secs => $4),
                     session_created_at + make_interval(secs => $5))
        FROM old
        RETURNING user_id, expires_at),
    u AS (
        UPDATE users SET last_seen_at = now() FROM n WHERE users.id = n.user_id
        RETURNING {_USERS_USER_COLS})
    SELECT u.*, n.expires_at AS refresh_expires_at FROM u, n"""


@dataclass(frozen=True, slots=True)
class UserRow:
    id: uuid.UUID
    username: str
    role: str
    status: str
    created_at: dt.datetime
    last_seen_at: dt.datetime | None
    # Carried in access tokens as `sep`; bumped whenever the user's sessions end.
    session_epoch: int = 0

    @classmethod
    def of(cls, row: Any) -> UserRow:
        return cls(
            id=row["id"],
            username=row["username"],
            role=row["role"],
            status=row["status"],
            created_at=row["created_at"],
            last_seen_at=row["last_seen_at"],
            session_epoch=row["session_epoch"],
        )

    @property
    def page_key(self) -> tuple[dt.datetime, uuid.UUID]:
        """The unique keyset ListUsers pages by (oldest first)."""
        return (self.created_at, self.id)


@dataclass(frozen=True, slots=True)
class Issued:
    """A user and the expiry of the refresh token just issued for them."""

    user: UserRow
    refresh_expires_at: dt.datetime


@dataclass(frozen=True, slots=True)
class RevokedSession:
    """A session revoked because one of its retired refresh tokens came back."""

    session_id: uuid.UUID
    user_id: uuid.UUID


@dataclass(frozen=True, slots=True)
class LimitQuery:
    """The sign-in limiter's keys of one exchange (built by ratelimit.SignInLimiter)."""

    address_key: str
    prefix_key: str
    window: float
    prefix_limit: int  # the exchange statement issues nothing at or past this


@dataclass(frozen=True, slots=True)
class FailureCounts:
    """Failed sign-ins in the current window of a client address and of a token prefix."""

    address: int
    prefix: int

    @classmethod
    def of(cls, row: Any) -> FailureCounts:
        return cls(address=row["address_failures"], prefix=row["prefix_failures"])


@dataclass(frozen=True, slots=True)
class Exchanged:
    """An exchange's outcome: the limiter's counts as read, and the session if issued."""

    counts: FailureCounts
    issued: Issued | None


@dataclass(frozen=True, slots=True)
class ProviderKeyRow:
    user_id: uuid.UUID
    provider: str
    key_version: str
    ciphertext: bytes
    last4: str
    updated_at: dt.datetime


BootstrapOutcome = Literal["created", "exists", "name-taken"]
_PK_COLS = "user_id, provider, key_version, ciphertext, last4, updated_at"


def _pk(row: Any) -> ProviderKeyRow:
    return ProviderKeyRow(
        user_id=row["user_id"],
        provider=row["provider"],
        key_version=row["key_version"],
        ciphertext=bytes(row["ciphertext"]),
        last4=row["last4"],
        updated_at=row["updated_at"],
    )


def _count(result: str) -> int:
    """The row count of an asyncpg status string ('UPDATE 3')."""
    return int(result.split()[-1])


async def _revoke_user_sessions(conn: Any, user_id: uuid.UUID, reason: str) -> int:
    """Revoke every session and bump the user's session epoch, which voids their access
    tokens everywhere (the services poll `session_revocations`). The bump happens even
    when no session is live: an access token outlives the session it came from."""
    result: str = await conn.execute(
        """UPDATE sessions SET revoked_at = now(), revoke_reason = $2
           WHERE user_id = $1 AND revoked_at IS NULL""",
        user_id,
        reason,
    )
    await conn.execute(
        """WITH u AS (
               UPDATE users SET session_epoch = session_epoch + 1 WHERE id = $1
               RETURNING id, session_epoch)
           INSERT INTO session_revocations (user_id, epoch) SELECT id, session_epoch FROM u""",
        user_id,
    )
    return _count(result)


@dataclass(frozen=True, slots=True)
class Revocation:
    user_id: uuid.UUID
    epoch: int
    revoked_at: dt.datetime


class Store:
    def __init__(self, db: Database) -> None:
        self._db = db

    @property
    def pool(self) -> Any:
        return self._db.pool

    # -- users --------------------------------------------------------------------------
    async def create_user(self, *, username: str, role: str, token_hash: bytes) -> UserRow:
        try:
            row = await self.pool.fetchrow(
                f"""INSERT INTO users (id, username, role, static_token_hash)
                    VALUES ($1, $2, $3, $4) RETURNING {_USER_COLS}""",
                uuid.uuid4(),
                username,
                role,
                token_hash,
            )
        except asyncpg.UniqueViolationError as exc:
            if exc.constraint_name == "users_username_key":
                raise AlreadyExists(
                    f"username {username!r} is taken",
                    field="username",
                    reason=Reason.ALREADY_EXISTS,
                    metadata={"resource": "user"},
                ) from None
            raise
        return UserRow.of(row)

    async def get_user(self, user_id: uuid.UUID) -> UserRow | None:
        row = await self.pool.fetchrow(f"SELECT {_USER_COLS} FROM users WHERE id = $1", user_id)
        return None if row is None else UserRow.of(row)

    async def is_active_admin(self, user_id: uuid.UUID) -> bool:
        found = await self.pool.fetchval(
            "SELECT true FROM users WHERE id = $1 AND role = 'admin' AND status = 'active'",
            user_id,
        )
        return bool(found)

    async def list_users(self, page: PageRequest) -> list[UserRow]:
        """`page.limit` users after `page.after`, oldest first by (created_at, id)."""
        if page.after is None:
            rows = await self.pool.fetch(
                f"SELECT {_USER_COLS} FROM users ORDER BY created_at, id LIMIT $1", page.limit
            )
        else:
            created_at, user_id = page.after
            rows = await self.pool.fetch(
                f"""SELECT {_USER_COLS} FROM users WHERE (created_at, id) > ($1, $2)
                    ORDER BY created_at, id LIMIT $3""",
                created_at,
                user_id,
                page.limit,
            )
        return [UserRow.of(r) for r in rows]

    async def update_user(
        self, user_id: uuid.UUID, *, role: str | None, status: str | None
    ) -> UserRow | None:
        """Disabling also revokes every session, in the same transaction."""
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                f"""UPDATE users SET role = coalesce($2, role), status = coalesce($3, status)
                    WHERE id = $1 RETURNING {_USER_COLS}""",
                user_id,
                role,
                status,
            )
            if row is None:
                return None
            if status == "disabled":
                await _revoke_user_sessions(conn, user_id, "user disabled")
        return UserRow.of(row)

    async def set_static_token(self, user_id: uuid.UUID, token_hash: bytes) -> UserRow | None:
        """Replace the static token and revoke every session of the user, in the same
        transaction: whoever held the old token keeps no refresh token either."""
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                f"UPDATE users SET static_token_hash = $2 WHERE id = $1 RETURNING {_USER_COLS}",
                user_id,
                token_hash,
            )
            if row is None:
                return None
            await _revoke_user_sessions(conn, user_id, "static token rotated")
        return UserRow.of(row)

    async def bootstrap_admin(self, token_hash: bytes) -> BootstrapOutcome:
        """Create user `admin` with the given token hash unless an admin exists."""
        async with self.pool.acquire() as conn, conn.transaction():
            # Replicas starting together: one creates, the others then see the admin.
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('aivera.auth.bootstrap'))")
            if await conn.fetchval("SELECT true FROM users WHERE role = 'admin' LIMIT 1"):
                return "exists"
            if await conn.fetchval("SELECT true FROM users WHERE lower(username) = 'admin'"):
                return "name-taken"
            await conn.execute(
                """INSERT INTO users (id, username, role, static_token_hash)
                   VALUES ($1, 'admin', 'admin', $2)""",
                uuid.uuid4(),
                token_hash,
            )
            return "created"

    # -- sessions and refresh tokens ----------------------------------------------------
    async def exchange(
        self,
        *,
        static_hash: bytes,
        session_id: uuid.UUID,
        token_id: uuid.UUID,
        refresh_hash: bytes,
        refresh_ttl: float,
        limit: LimitQuery,
    ) -> Exchanged:
        """A new session for the active user holding the static token, unless the
        token's prefix is at its failure limit; in the same statement, the limiter's
        counts (one round trip for a sign-in, limiter included)."""
        row = await self.pool.fetchrow(
            _EXCHANGE_SQL,
            static_hash,
            session_id,
            token_id,
            refresh_hash,
            float(refresh_ttl),
            limit.address_key,
            limit.prefix_key,
            float(limit.window),
            limit.prefix_limit,
        )
        issued = None
        if row["id"] is not None:
            issued = Issued(user=UserRow.of(row), refresh_expires_at=row["refresh_expires_at"])
        return Exchanged(counts=FailureCounts.of(row), issued=issued)

    async def rotate_refresh(
        self,
        *,
        old_hash: bytes,
        token_id: uuid.UUID,
        new_hash: bytes,
        refresh_ttl: float,
        session_lifetime: float,
        idle_timeout: float,
    ) -> Issued | None:
        """Retire a live refresh token and issue its successor in the same session.

        None when the token is unknown, expired, already retired, its session revoked,
        older than `session_lifetime` or unused for `idle_timeout` (the live token of a
        family was issued at its last use), or its user disabled. The successor expires
        no later than the session's end. Of concurrent calls with one token exactly one
        gets a row: the others wait on the row lock, then see `used_at` set and match
        nothing."""
        row = await self.pool.fetchrow(
            _ROTATE_SQL,
            old_hash,
            token_id,
            new_hash,
            float(refresh_ttl),
            float(session_lifetime),
            float(idle_timeout),
        )
        if row is None:
            return None
        return Issued(user=UserRow.of(row), refresh_expires_at=row["refresh_expires_at"])

    async def revoke_on_reuse(self, *, token_hash: bytes, grace: float) -> RevokedSession | None:
        """If the token was retired more than `grace` seconds ago and its session is still
        live, revoke the session (reuse detection) and return it."""
        row = await self.pool.fetchrow(
            """UPDATE sessions s SET revoked_at = now(), revoke_reason = 'refresh token reuse'
               FROM refresh_tokens t
               WHERE t.token_hash = $1 AND s.id = t.session_id AND s.revoked_at IS NULL
                 AND t.used_at IS NOT NULL AND t.used_at < now() - make_interval(secs => $2)
               RETURNING s.id, s.user_id""",
            token_hash,
            float(grace),
        )
        return None if row is None else RevokedSession(row["id"], row["user_id"])

    async def revoke_session_of(self, *, token_hash: bytes, user_id: uuid.UUID) -> bool:
        """Revoke the session of one of the user's refresh tokens (idempotent). False when
        the token is not the user's."""
        row = await self.pool.fetchrow(
            """UPDATE sessions s SET revoked_at = coalesce(s.revoked_at, now()),
                                     revoke_reason = coalesce(s.revoke_reason, 'logout')
               FROM refresh_tokens t
               WHERE t.token_hash = $1 AND t.user_id = $2 AND s.id = t.session_id
               RETURNING s.id""",
            token_hash,
            user_id,
        )
        return row is not None

    async def session_revocations(
        self, *, since: dt.datetime | None, window: float, overlap: float
    ) -> tuple[list[Revocation], dt.datetime]:
        """Revocations after `since` less `overlap` (a revoking transaction that began
        before `since` may commit after it), or within `window` seconds when `since` is
        None; with the database's clock, the next poll's `since`."""
        async with self.pool.acquire() as conn:
            now: dt.datetime = await conn.fetchval("SELECT now()")
            start = (
                now - dt.timedelta(seconds=window)
                if since is None
                else since - dt.timedelta(seconds=overlap)
            )
            rows = await conn.fetch(
                """SELECT user_id, epoch, revoked_at FROM session_revocations
                   WHERE revoked_at > $1 ORDER BY revoked_at""",
                start,
            )
        return [Revocation(r["user_id"], r["epoch"], r["revoked_at"]) for r in rows], now

    # -- grants (delegation.py) ---------------------------------------------------------
    async def create_grant(
        self, *, token_hash: bytes, user_id: uuid.UUID, holder: str, epoch: int, ttl: float
    ) -> dt.datetime:
        """Store a grant; its expiry."""
        expires: dt.datetime = await self.pool.fetchval(
            """INSERT INTO grants (id, token_hash, user_id, holder, epoch, expires_at)
               VALUES ($1, $2, $3, $4, $5, now() + make_interval(secs => $6))
               RETURNING expires_at""",
            uuid.uuid4(),
            token_hash,
            user_id,
            holder,
            epoch,
            float(ttl),
        )
        return expires

    async def live_grant(self, token_hash: bytes, holder: str) -> tuple[UserRow, int] | None:
        """The grant's user and the epoch it was taken at, if it exists, is the holder's
        and has not expired."""
        row = await self.pool.fetchrow(
            f"""SELECT {_USERS_USER_COLS}, g.epoch AS grant_epoch
                FROM grants g JOIN users ON users.id = g.user_id
                WHERE g.token_hash = $1 AND g.holder = $2 AND g.expires_at > now()""",
            token_hash,
            holder,
        )
        return None if row is None else (UserRow.of(row), int(row["grant_epoch"]))

    async def purge_grants(self) -> int:
        result: str = await self.pool.execute("DELETE FROM grants WHERE expires_at < now()")
        return _count(result)

    async def purge_session_revocations(self, *, keep_seconds: float) -> int:
        result: str = await self.pool.execute(
            "DELETE FROM session_revocations WHERE revoked_at < now() - make_interval(secs => $1)",
            float(keep_seconds),
        )
        return _count(result)

    async def revoke_user_sessions(self, user_id: uuid.UUID, reason: str) -> int:
        async with self.pool.acquire() as conn, conn.transaction():
            return await _revoke_user_sessions(conn, user_id, reason)

    async def purge_expired(self, *, keep_seconds: float) -> int:
        """Delete refresh tokens expired more than `keep_seconds` ago, and sessions left
        without tokens. Keeps the table small; reuse detection only needs live sessions."""
        result: str = await self.pool.execute(
            "DELETE FROM refresh_tokens WHERE expires_at < now() - make_interval(secs => $1)",
            float(keep_seconds),
        )
        await self.pool.execute(
            """DELETE FROM sessions s WHERE s.created_at < now() - make_interval(secs => $1)
               AND NOT EXISTS (SELECT 1 FROM refresh_tokens t WHERE t.session_id = s.id)""",
            float(keep_seconds),
        )
        return _count(result)

    # -- sign-in failures (ratelimit.SignInLimiter) ------------------------------------
    async def sign_in_failures(self, limit: LimitQuery) -> FailureCounts:
        """Both keys' failures in their current window: one indexed read."""
        row = await self.pool.fetchrow(
            _FAILURES_SQL, limit.address_key, limit.prefix_key, float(limit.window)
        )
        return FailureCounts.of(row)

    async def record_sign_in_failure(self, limit: LimitQuery) -> None:
        """Count one failure for each key: a window that ended starts again at 1. Keys
        are upserted in sorted order, so concurrent failures lock rows in one order."""
        await self.pool.execute(
            """INSERT INTO sign_in_failures AS f (key, window_start, failures)
               SELECT k, now(), 1 FROM unnest($1::text[]) AS k ORDER BY k
               ON CONFLICT (key) DO UPDATE SET
                 failures = CASE WHEN f.window_start > now() - make_interval(secs => $2)
                                 THEN f.failures + 1 ELSE 1 END,
                 window_start = CASE WHEN f.window_start > now() - make_interval(secs => $2)
                                     THEN f.window_start ELSE now() END""",
            sorted({limit.address_key, limit.prefix_key}),
            float(limit.window),
        )

    async def purge_sign_in_failures(self, *, window: float) -> int:
        """Forget keys whose window ended (they count as 0 already)."""
        result: str = await self.pool.execute(
            "DELETE FROM sign_in_failures WHERE window_start <= now() - make_interval(secs => $1)",
            float(window),
        )
        return _count(result)

    # -- provider keys ------------------------------------------------------------------
    async def put_provider_key(
        self, *, user_id: uuid.UUID, provider: str, version: str, ciphertext: bytes, last4: str
    ) -> ProviderKeyRow:
        row = await self.pool.fetchrow(
            f"""INSERT INTO provider_keys (user_id, provider, key_version, ciphertext, last4)
                VALUES ($1, $2, $3, $4, $5)
                ON CONFLICT (user_id, provider) DO UPDATE
                  SET key_version = EXCLUDED.key_version, ciphertext = EXCLUDED.ciphertext,
                      last4 = EXCLUDED.last4, updated_at = now()
                RETURNING {_PK_COLS}""",
            user_id,
            provider,
            version,
            ciphertext,
            last4,
        )
        return _pk(row)

    async def get_provider_key(self, user_id: uuid.UUID, provider: str) -> ProviderKeyRow | None:
        row = await self.pool.fetchrow(
            f"SELECT {_PK_COLS} FROM provider_keys WHERE user_id = $1 AND provider = $2",
            user_id,
            provider,
        )
        return None if row is None else _pk(row)

    async def delete_provider_key(self, user_id: uuid.UUID, provider: str) -> bool:
        result: str = await self.pool.execute(
            "DELETE FROM provider_keys WHERE user_id = $1 AND provider = $2", user_id, provider
        )
        return _count(result) == 1

    async def provider_keys_not_at(self, version: str) -> list[ProviderKeyRow]:
        rows = await self.pool.fetch(
            f"""SELECT {_PK_COLS} FROM provider_keys WHERE key_version <> $1
                ORDER BY user_id, provider""",
            version,
        )
        return [_pk(r) for r in rows]

    async def replace_ciphertext(
        self, old: ProviderKeyRow, *, version: str, ciphertext: bytes
    ) -> bool:
        """Swap in a re-encrypted ciphertext unless the row changed meanwhile (a concurrent
        SetProviderKey already wrote under the current version)."""
        result: str = await self.pool.execute(
            """UPDATE provider_keys SET key_version = $3, ciphertext = $4
               WHERE user_id = $1 AND provider = $2 AND key_version = $5 AND ciphertext = $6""",
            old.user_id,
            old.provider,
            version,
            ciphertext,
            old.key_version,
            old.ciphertext,
        )
        return _count(result) == 1
