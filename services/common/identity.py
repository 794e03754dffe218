"""Who this service is to the rest of the mesh, and how it acts for a user.

Each workload has its own credential (`AIVERA_SERVICE_SECRET`; auth keeps only its
SHA-256 in `AUTH_SERVICE_CLIENTS`). The credential is exchanged at auth for a service token
— a JWT for the audience `aivera-mesh`, signed with auth's keys and verified by every
service through the same JWKS as access tokens — sent on every call in
`x-aivera-service-token`. No signing key leaves auth, and a stolen credential is one
service's, not the mesh's: the runtime checks each RPC's declared callers.

A service never names a user by id. To act for one it exchanges the user's proof (RFC 8693)
for a delegation: a JWT addressed to one target service, naming the acting service, minutes
long. The proof is the user's access token on a live request, the delegation this service
was called with when it passes a request on, or, for work that outlives them (a training
job, a long ingest), a grant the service obtained while the request was live. Grants and
delegations die with the user's sessions (auth checks the session epoch on each exchange).

Tokens are cached until shortly before they expire, so a steady stream of calls for one
user costs one exchange per target every few minutes.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from dataclasses import dataclass

import grpc

from aivera.auth.v1 import auth_pb2, auth_pb2_grpc
from services.common import context as ctx
from services.common.config import CommonSettings
from services.common.errors import Reason, Unauthenticated
from services.common.remote import map_rpc_error, remote_reason

SERVICE_TOKEN_HEADER = "x-aivera-service-token"
# Fetch a new token when this little of the old one's life is left.
_RENEW_MARGIN_SECONDS = 60.0
_DELEGATION_CACHE_SIZE = 10_000
_EXCHANGE_DEADLINE_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class _Token:
    value: str
    expires: float  # monotonic


class ServiceIdentity:
    """This process's credential, its service token and the delegations it holds."""

    def __init__(self, name: str, secret: str, auth_addr: str) -> None:
        self.name = name
        self._secret = secret
        # A plain channel: these calls must not go through the relay that calls us.
        self._channel = grpc.aio.insecure_channel(auth_addr)
        self._identity = auth_pb2_grpc.ServiceIdentityServiceStub(self._channel)
        self._internal = auth_pb2_grpc.AuthInternalServiceStub(self._channel)
        self._token: _Token | None = None
        self._lock = asyncio.Lock()
        self._delegations: OrderedDict[tuple[bytes, str], _Token] = OrderedDict()

    async def close(self) -> None:
        await self._channel.close()

    async def service_token(self) -> str:
        token = self._token
        if token is not None and time.monotonic() < token.expires:
            return token.value
        async with self._lock:
            token = self._token
            if token is None or time.monotonic() >= token.expires:
                token = self._token = await self._issue()
        return token.value

    async def _issue(self) -> _Token:
        try:
            reply = await self._identity.IssueServiceToken(
                auth_pb2.IssueServiceTokenRequest(service=self.name, secret=self._secret),
                timeout=_EXCHANGE_DEADLINE_SECONDS,
            )
        except grpc.aio.AioRpcError as err:
            raise map_rpc_error(err, "auth") from None
        return _Token(reply.service_token, _expires(reply))

    async def delegation(self, subject: str, audience: str) -> str:
        """A delegation for the user of `subject` at `audience` (cached)."""
        key = (hashlib.sha256(subject.encode()).digest(), audience)
        hit = self._delegations.get(key)
        if hit is not None and time.monotonic() < hit.expires:
            self._delegations.move_to_end(key)
            return hit.value
        token = await self._exchange(subject, audience, auth_pb2.TOKEN_TYPE_DELEGATION, 0)
        self._delegations[key] = token
        if len(self._delegations) > _DELEGATION_CACHE_SIZE:
            self._delegations.popitem(last=False)
        return token.value

    async def grant(self, subject: str, ttl_seconds: int = 0) -> str:
        """A grant this service holds for the user of `subject`, for work that outlives
        the subject (0: the longest auth allows)."""
        token = await self._exchange(subject, "", auth_pb2.TOKEN_TYPE_GRANT, ttl_seconds)
        return token.value

    async def _exchange(self, subject: str, audience: str, kind: int, ttl: int) -> _Token:
        request = auth_pb2.ExchangeTokenRequest(
            subject_token=subject,
            audience=audience,
            requested_token_type=kind,  # type: ignore[arg-type]
            grant_ttl_seconds=ttl,
        )
        md: list[tuple[str, str]] = [(SERVICE_TOKEN_HEADER, await self.service_token())]
        rid = ctx.request_id()
        if rid:
            md.append(("x-request-id", rid))
        try:
            reply = await self._internal.ExchangeToken(
                request, metadata=tuple(md), timeout=_EXCHANGE_DEADLINE_SECONDS
            )
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.UNAUTHENTICATED:
                # The user's proof is no good (session ended, user disabled, grant void):
                # the work done for them stops, saying why.
                reason, metadata = remote_reason(err)
                raise Unauthenticated(
                    err.details() or "cannot act for the user", reason=reason, metadata=metadata
                ) from None
            raise map_rpc_error(err, "auth") from None
        return _Token(reply.token, _expires(reply))


def _expires(reply: auth_pb2.IssueServiceTokenResponse | auth_pb2.ExchangeTokenResponse) -> float:
    """Monotonic time to renew at: the token's lifetime, less a margin (at most half)."""
    life = reply.expire_time.ToSeconds() - time.time()
    return time.monotonic() + max(0.0, life - min(_RENEW_MARGIN_SECONDS, life / 2))


def client_entry(service: str, secret: str) -> str:
    """The AUTH_SERVICE_CLIENTS entry registering `secret` as `service`'s credential."""
    return f"{service}:{hashlib.sha256(secret.encode()).hexdigest()}"


def require_identity(name: str, settings: CommonSettings) -> None:
    """Outside dev/test every service but auth needs its credential: without one it could
    act for users only with their own short-lived tokens, and background work would fail."""
    if name != "auth" and settings.aivera_env == "prod" and not settings.service_secret():
        raise ValueError(f"AIVERA_SERVICE_SECRET is required for the {name} service in prod")


def subject_of(caller: ctx.Caller) -> str:
    """What proves the caller's user to auth: a grant for background work, else the token
    the call came with."""
    subject = caller.grant or caller.token
    if not subject:
        raise Unauthenticated(
            "no delegation to act for this user", reason=Reason.DELEGATION_REQUIRED
        )
    return subject


async def grant_now(identity: ServiceIdentity | None, ttl_seconds: int = 0) -> str | None:
    """A grant for the current caller's user, taken while their request is live, for work
    that continues after it (store it with the work; `ctx.acting_for` uses it).

    A process without a mesh identity (a tool, a test running one service; never prod,
    where the credential is required) has no grants: the user's own token stands in, and
    the work can act for the user only as long as that token lives."""
    caller = ctx.current_caller()
    if identity is None:
        return caller.token
    return await identity.grant(subject_of(caller), ttl_seconds)
