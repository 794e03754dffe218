"""The signed-in session: hands out a valid access token and refreshes it.

Refresh happens before the access token expires (within `skew` seconds) or when a call is
answered UNAUTHENTICATED. Concurrent calls share one refresh: they queue on one
`asyncio.Lock`, and whoever gets it second sees the new token and does not refresh again.
Between processes the credentials file's `flock` does the same (see `credentials`). A
refused refresh (revoked, expired or reused refresh token, disabled user) ends the local
session and raises `AuthRequired`, which the CLI turns into «run `aivera login`».
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc

from aivera.auth.v1 import auth_pb2
from client.credentials import Credentials, CredentialStore
from client.errors import AuthRequired, from_rpc
from client.messages import t

RefreshCall = Callable[[auth_pb2.RefreshTokenRequest], Awaitable[auth_pb2.RefreshTokenResponse]]


class Session:
    def __init__(
        self,
        creds: Credentials,
        store: CredentialStore | None,
        refresh_call: RefreshCall,
        *,
        skew: float = 30.0,
    ) -> None:
        self.creds = creds
        self.store = store
        self._refresh_call = refresh_call
        self.skew = skew
        self._lock: asyncio.Lock | None = None
        self.refresh_count = 0  # refreshes this session performed (tests, diagnostics)

    def _get_lock(self) -> asyncio.Lock:
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

    def save(self) -> None:
        if self.store is not None:
            self.store.save(self.creds)

    def set_tokens(
        self,
        access: str,
        expires_in: int,
        refresh: str,
        refresh_expires_at: float,
        user: auth_pb2.User | None = None,
    ) -> None:
        c = self.creds
        c.access_token = access
        c.access_expires_at = time.time() + expires_in
        c.access_ttl = float(expires_in)
        c.refresh_token = refresh
        c.refresh_expires_at = refresh_expires_at
        if user is not None:
            if c.user_id and c.user_id != user.id:
                c.active_chat_id = ""
            c.user_id = user.id
            c.username = user.username
            c.role = auth_pb2.Role.Name(user.role).removeprefix("ROLE_").lower()

    def _skew(self) -> float:
        """Refresh this long before expiry: `skew`, but at most a quarter of the token's
        lifetime (a server with short-lived tokens is not asked for one on every call)."""
        ttl = self.creds.access_ttl
        return min(self.skew, ttl / 4) if ttl > 0 else self.skew

    async def access_token(self) -> str:
        if not self.creds.signed_in:
            raise AuthRequired(t("auth.login_required"))
        if not self.creds.access_valid(self._skew()):
            await self.refresh(stale=self.creds.access_token)
        return self.creds.access_token

    async def refresh(self, *, stale: str) -> None:
        """Replace the access token `stale` (the one a caller saw fail or expire). Does
        nothing if another caller already replaced it."""
        async with self._get_lock():
            if self.creds.access_token != stale and self.creds.access_valid(self._skew()):
                return
            async with self._file_lock():
                if self.store is not None:
                    disk = self.store.load()
                    if disk.access_token != stale and disk.access_valid(self._skew()):
                        self._adopt(disk)  # another process refreshed meanwhile
                        return
                    if disk.refresh_token:
                        self.creds.refresh_token = disk.refresh_token
                        self.creds.refresh_expires_at = disk.refresh_expires_at
                if not self.creds.refresh_token:
                    raise AuthRequired(t("auth.login_required"))
                try:
                    resp = await self._refresh_call(
                        auth_pb2.RefreshTokenRequest(refresh_token=self.creds.refresh_token)
                    )
                except grpc.aio.AioRpcError as e:
                    if e.code() in (
                        grpc.StatusCode.UNAUTHENTICATED,
                        grpc.StatusCode.PERMISSION_DENIED,
                    ):
                        self.creds.end_session()
                        self.save()
                        raise AuthRequired(t("auth.session_ended"), e.code()) from None
                    raise from_rpc(e) from None
                self.refresh_count += 1
                self.set_tokens(
                    resp.access_token,
                    resp.expires_in,
                    resp.refresh_token,
                    float(resp.refresh_expire_time.seconds),
                    resp.user,
                )
                self.save()

    def _adopt(self, disk: Credentials) -> None:
        c = self.creds
        c.access_token, c.access_expires_at = disk.access_token, disk.access_expires_at
        c.access_ttl = disk.access_ttl
        c.refresh_token, c.refresh_expires_at = disk.refresh_token, disk.refresh_expires_at

    @contextlib.asynccontextmanager
    async def _file_lock(self) -> AsyncIterator[None]:
        if self.store is None:
            yield
            return
        async with self.store.locked():
            yield
