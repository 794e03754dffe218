"""Ended sessions, as every service sees them: a user's access tokens issued before their
current session epoch are refused here, not only at auth.

Auth bumps a user's session epoch whenever their sessions end (static token rotated, user
disabled, sessions revoked, signed out everywhere) and writes the bump to a feed. Each
service polls the feed (`ListSessionRevocations`, every `SESSION_REVOCATION_POLL_SECONDS`,
2 s by default) into a map user → lowest valid epoch, so a revoked token stops working
everywhere within one poll. A poll is one small query however many users there are;
revocations are rare, so the map holds only the users revoked within two access-token
lifetimes (older tokens have expired anyway).

While auth cannot be reached the map keeps what it knew (fail open, logged): refusing every
token during an auth outage would take the whole mesh down with it, and auth being down
already stops sign-ins and refreshes.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from services.common.errors import Reason, Unauthenticated

log = logging.getLogger("aivera.revocations")


@dataclass(frozen=True, slots=True)
class Revoked:
    user_id: str
    epoch: int
    at: dt.datetime


# since (None: the start) → (revocations, the next poll's since)
RevocationFetcher = Callable[[dt.datetime | None], Awaitable[tuple[Sequence[Revoked], dt.datetime]]]


class RevocationFeed:
    def __init__(
        self,
        fetch: RevocationFetcher,
        *,
        poll_seconds: float = 2.0,
        keep_seconds: float = 7200.0,
        warn_every_seconds: float = 60.0,
    ) -> None:
        self._fetch = fetch
        self._poll = poll_seconds
        self._keep = dt.timedelta(seconds=keep_seconds)
        self._warn_every = warn_every_seconds
        self._epochs: dict[str, tuple[int, dt.datetime]] = {}
        self._since: dt.datetime | None = None
        self._last_warning = float("-inf")
        self.polls = 0  # successful polls, for health and tests

    def check(self, user_id: str, epoch: int) -> None:
        """Refuse a token whose session epoch is below the user's current one."""
        known = self._epochs.get(user_id)
        if known is not None and epoch < known[0]:
            raise Unauthenticated(
                "the session of this access token has ended", reason=Reason.SESSION_REVOKED
            )

    def apply(self, revoked: Sequence[Revoked]) -> None:
        for r in revoked:
            known = self._epochs.get(r.user_id)
            if known is None or r.epoch > known[0]:
                self._epochs[r.user_id] = (r.epoch, r.at)

    async def poll_once(self) -> None:
        revoked, since = await self._fetch(self._since)
        self.apply(revoked)
        self._since = since
        horizon = since - self._keep
        for user_id in [u for u, (_, at) in self._epochs.items() if at < horizon]:
            del self._epochs[user_id]
        self.polls += 1

    async def run(self) -> None:
        """Poll until cancelled (an App background task)."""
        while True:
            try:
                await self.poll_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # auth unreachable: keep what we knew, retry
                now = time.monotonic()
                if now - self._last_warning >= self._warn_every:
                    self._last_warning = now
                    log.warning("session revocation feed unavailable: %s", type(exc).__name__)
            await asyncio.sleep(self._poll)
