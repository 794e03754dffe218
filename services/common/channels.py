"""Outgoing gRPC channels: one factory for every call a service makes to another.

Each channel gets keepalive, a retry policy for UNAVAILABLE on the RPCs the protos mark
idempotent (gRPC service config, so retries happen inside grpc with backoff), and an
interceptor that relays the caller: the request id, the remaining deadline, this service's
token and, when the call is made for a user, a delegation for the target service
(services.common.identity). A process without a service identity (a tool, a test running
one service) relays the user's own token instead.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import grpc

from services.common import context as ctx
from services.common import tracing
from services.common.access import method_table
from services.common.identity import SERVICE_TOKEN_HEADER, ServiceIdentity, subject_of
from services.common.internal import AUTHORIZATION_HEADER, REQUEST_ID_HEADER

_RETRY_POLICY = {
    "maxAttempts": 4,
    "initialBackoff": "0.1s",
    "maxBackoff": "2s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}


def service_config() -> str:
    """gRPC service config retrying UNAVAILABLE for every idempotent aivera RPC."""
    names = [
        {"service": info.service, "method": info.name}
        for info in method_table().values()
        if info.idempotent
    ]
    return json.dumps(
        {
            # Spread calls over every replica behind a headless Service (dns:/// targets).
            "loadBalancingConfig": [{"round_robin": {}}],
            "methodConfig": [{"name": names, "retryPolicy": _RETRY_POLICY}],
        }
    )


async def outgoing_metadata(method: str, identity: ServiceIdentity | None) -> list[tuple[str, str]]:
    """Metadata for a call made now, from the current call context."""
    md: list[tuple[str, str]] = []
    rid = ctx.request_id()
    if rid:
        md.append((REQUEST_ID_HEADER, rid))
    caller = ctx.current_caller()
    if identity is None:
        relayed = caller.grant or caller.token  # see identity.grant_now
        if relayed:
            md.append((AUTHORIZATION_HEADER, f"Bearer {relayed}"))
        return md
    md.append((SERVICE_TOKEN_HEADER, await identity.service_token()))
    if caller.user_id:
        info = method_table().get(method)
        audience = info.audience if info is not None else method.split(".")[1]
        delegation = await identity.delegation(subject_of(caller), audience)
        md.append((AUTHORIZATION_HEADER, f"Bearer {delegation}"))
    return md


def _method_name(details: grpc.aio.ClientCallDetails) -> str:
    method = details.method
    return method.decode() if isinstance(method, bytes) else str(method)


class _Relay:
    """Rewrites call details: relay metadata and the remaining deadline."""

    def __init__(self, identity: ServiceIdentity | None) -> None:
        self._identity = identity

    async def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        md = grpc.aio.Metadata(*(details.metadata or ()))
        present = {key for key, _ in md}
        for key, value in await outgoing_metadata(_method_name(details), self._identity):
            if key not in present:  # an explicit header set by the caller wins
                md.add(key, value)
        timeout = details.timeout
        remaining = ctx.deadline_remaining()
        if remaining is not None:
            timeout = remaining if timeout is None else min(timeout, remaining)
        return grpc.aio.ClientCallDetails(
            details.method, timeout, md, details.credentials, details.wait_for_ready
        )


# grpc.aio files each interceptor under ONE call kind (an isinstance/elif chain), so a
# class implementing all four would only see unary-unary calls: one class per kind.
class _RelayUnaryUnary(_Relay, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(await self._details(details), request)


class _RelayUnaryStream(_Relay, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(await self._details(details), request)


class _RelayStreamUnary(_Relay, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(
        self, continuation: Any, details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(await self._details(details), request_iterator)


class _RelayStreamStream(_Relay, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(
        self, continuation: Any, details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(await self._details(details), request_iterator)


def relay_interceptors(identity: ServiceIdentity | None) -> list[Any]:
    return [
        cls(identity)
        for cls in (_RelayUnaryUnary, _RelayUnaryStream, _RelayStreamUnary, _RelayStreamStream)
    ]


def open_channel(
    target: str,
    *,
    identity: ServiceIdentity | None = None,
    extra_options: Sequence[tuple[str, Any]] = (),
) -> grpc.aio.Channel:
    """An insecure channel inside the mesh (TLS is the service mesh's / Envoy's job)."""
    options: list[tuple[str, Any]] = [
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.enable_retries", 1),
        ("grpc.service_config", service_config()),
        ("grpc.max_receive_message_length", 16 * 1024 * 1024),
        *extra_options,
    ]
    # A client span per call and the W3C trace context in its metadata while tracing is on.
    interceptors = [*tracing.client_interceptors(), *relay_interceptors(identity)]
    return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)
