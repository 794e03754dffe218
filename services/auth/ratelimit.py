"""Sign-in limiter shared by every replica: failed static-token exchanges counted in
Postgres (table `sign_in_failures`, SQL in store.py), under two keys per failure.

- **Token prefix** (`exchange_token_failure_limit`, default 5 per window): the first
  `PREFIX_CHARS` characters of the presented token (`avs_` + 12 random characters, 72
  bits), stored only as an HMAC. Past the limit every exchange with that prefix, valid
  or not, answers RESOURCE_EXHAUSTED TOO_MANY_FAILURES until the window ends: this is
  the limit that refuses. Only failures with the same prefix count, and another token's
  prefix is unguessable and never shown, so failures of other tokens (from any address)
  never lock a valid token out.
- **Client address** (`exchange_failure_limit`, default 10 per window; the address from
  `client_of`). Past it, *failing* exchanges from the address answer TOO_MANY_FAILURES
  and are no longer logged one by one, but every token is still checked and a valid one
  signs in. Refusing before the check would save nothing (the check is one indexed
  lookup, the same cost as the limiter's read) and would lock out every client behind
  that address: without AUTH_TRUSTED_PROXIES that is every client of a gateway or of
  the machine. Guessing is no threat here (static tokens are 256-bit); the address count
  tells a misbehaving client to back off and keeps it out of the logs.

A check is one statement, folded into the exchange statement itself (a sign-in stays one
round trip; a token of the wrong shape costs one read of both keys instead), and a
failure one upsert of both keys. Windows are fixed, starting at a key's first failure, so
a key allows at most `limit` failures per `window` seconds (up to twice that across a
window boundary). Ended windows are purged by the service's purge loop.
"""

from __future__ import annotations

import ipaddress
import urllib.parse
from collections.abc import Sequence

from services.auth.store import FailureCounts, LimitQuery, Store
from services.auth.tokens import TokenHasher

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Characters of a presented token that key its failures: the 4-character kind prefix and
# 12 random characters (72 bits; a guess never lands on another user's prefix).
PREFIX_CHARS = 16


class SignInLimiter:
    def __init__(
        self,
        store: Store,
        hasher: TokenHasher,
        *,
        address_limit: int,
        prefix_limit: int,
        window: float,
    ) -> None:
        self.store = store
        self.hasher = hasher
        self.address_limit = address_limit
        self.prefix_limit = prefix_limit
        self.window = window

    def prefix_key(self, token: str) -> str:
        digest = self.hasher.hash("sign-in-limit:" + token[:PREFIX_CHARS])
        return "p:" + digest.hex()[:32]

    def query(self, client: str, token: str) -> LimitQuery:
        """The keys of an exchange by `client` presenting `token` (no I/O)."""
        return LimitQuery(
            address_key="a:" + client,
            prefix_key=self.prefix_key(token),
            window=self.window,
            prefix_limit=self.prefix_limit,
        )

    def prefix_blocked(self, counts: FailureCounts) -> bool:
        """Refuse without checking the token."""
        return counts.prefix >= self.prefix_limit

    def address_over(self, counts: FailureCounts) -> bool:
        """The token was checked; if it failed, answer TOO_MANY_FAILURES."""
        return counts.address >= self.address_limit

    async def counts(self, query: LimitQuery) -> FailureCounts:
        return await self.store.sign_in_failures(query)

    async def record_failure(self, query: LimitQuery) -> None:
        await self.store.record_sign_in_failure(query)

    async def purge(self) -> int:
        return await self.store.purge_sign_in_failures(window=self.window)


def client_address(peer: str | None) -> str:
    """The ip part of grpc's peer string: 'ipv4:1.2.3.4:5678', 'ipv6:[::1]:5678'."""
    if not peer:
        return "unknown"
    kind, _, rest = urllib.parse.unquote(peer).partition(":")
    if kind == "ipv4":
        return rest.rsplit(":", 1)[0]
    if kind == "ipv6":
        host = rest.rsplit(":", 1)[0]
        return host.strip("[]")
    return kind or "unknown"  # unix sockets and the like share one bucket


def parse_networks(value: str) -> list[Network]:
    """Comma-separated CIDRs (or single addresses) of trusted proxies."""
    return [ipaddress.ip_network(p.strip(), strict=False) for p in value.split(",") if p.strip()]


def _trusted(address: str, proxies: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in proxies)


def client_of(peer: str | None, forwarded_for: str | None, proxies: Sequence[Network]) -> str:
    """The rate-limit key of a call. Behind a gateway every peer is the gateway, so when
    the direct peer is a trusted proxy, `x-forwarded-for` is walked from the right
    (the part our own proxies appended) to the first address that is not a trusted proxy.
    A client cannot dodge the limit by sending its own header: entries left of the first
    untrusted address are never read, and without trusted proxies the header is ignored."""
    address = client_address(peer)
    if not proxies or not forwarded_for or not _trusted(address, proxies):
        return address
    for hop in reversed([h.strip() for h in forwarded_for.split(",") if h.strip()]):
        if not _trusted(hop, proxies):
            return hop
    return address
