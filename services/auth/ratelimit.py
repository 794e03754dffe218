"""Failed-exchange limiter: a sliding window of failures per client address.

In process memory, so each replica counts its own (N replicas allow N× the limit); that
is enough to make guessing 256-bit static tokens pointless and to stop log flooding. A
shared limiter (Postgres or Envoy's rate-limit service) is the step up if needed.
"""

from __future__ import annotations

import ipaddress
import time
import urllib.parse
from collections import deque
from collections.abc import Callable, Sequence

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class FailureLimiter:
    def __init__(
        self,
        limit: int,
        window: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_clients: int = 100_000,
    ) -> None:
        self.limit = limit
        self.window = window
        self._clock = clock
        self._max_clients = max_clients
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, client: str) -> deque[float] | None:
        q = self._failures.get(client)
        if q is None:
            return None
        cutoff = self._clock() - self.window
        while q and q[0] <= cutoff:
            q.popleft()
        if not q:
            del self._failures[client]
            return None
        return q

    def blocked(self, client: str) -> bool:
        q = self._recent(client)
        return q is not None and len(q) >= self.limit

    def record_failure(self, client: str) -> None:
        if client not in self._failures and len(self._failures) >= self._max_clients:
            self._sweep()
        q = self._failures.setdefault(client, deque())
        q.append(self._clock())
        while len(q) > self.limit:  # only the last `limit` failures matter
            q.popleft()

    def _sweep(self) -> None:
        for client in list(self._failures):
            self._recent(client)
        if len(self._failures) >= self._max_clients:  # still full: forget the oldest
            oldest = min(self._failures, key=lambda c: self._failures[c][-1])
            del self._failures[oldest]


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
