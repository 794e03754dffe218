"""Serving a proto service: one wrapper around every RPC handler.

The wrapper does, once per call, what every service needs: request id and deadline into
the call context, the access check declared in the proto (public / user / admin /
internal), domain errors → gRPC statuses, one structured log line, and metrics. Handlers
are registered from the service descriptor, so a method a servicer does not implement
yet answers UNIMPLEMENTED, and no generated `add_*_to_server` is needed.

Wrapping at registration (rather than a grpc.aio ServerInterceptor) keeps it to a single
layer per call and lets the caller live in a context variable the handler can read.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from services.common import context as ctx
from services.common import db, messages, tracing, validate
from services.common.access import Access, MethodInfo, method_info
from services.common.errors import (
    Internal,
    PermissionDenied,
    Reason,
    ServiceError,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    reason_name,
)
from services.common.identity import SERVICE_TOKEN_HEADER
from services.common.internal import AUTHORIZATION_HEADER, REQUEST_ID_HEADER
from services.common.jwks import JwksVerifier
from services.common.logs import fields
from services.common.metrics import MethodMetrics
from services.common.revocations import RevocationFeed

log = logging.getLogger("aivera.rpc")

_NO_DEADLINE = 1e8  # grpc reports "no deadline" as a huge remaining time


def _metadata(context: grpc.aio.ServicerContext[Any, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in context.invocation_metadata() or ():
        if isinstance(value, str):
            out[key] = value
    return out


def _bearer(md: dict[str, str]) -> str | None:
    header = md.get(AUTHORIZATION_HEADER)
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthenticated(
            "authorization must be 'Bearer <access token>'", reason=Reason.TOKEN_INVALID
        )
    return token


def _timeout(context: grpc.aio.ServicerContext[Any, Any]) -> float | None:
    remaining = context.time_remaining()
    if remaining is None or remaining > _NO_DEADLINE:
        return None
    return float(remaining)


class RpcRuntime:
    """Per-server policy shared by all wrapped handlers."""

    def __init__(
        self,
        *,
        verifier: JwksVerifier | None,
        service_name: str = "",
        revocations: RevocationFeed | None = None,
        ready: Callable[[], bool] = lambda: True,
        log_calls: bool = True,
    ) -> None:
        self.verifier = verifier
        self.revocations = revocations
        self._name = service_name  # delegations must be addressed to it
        self._ready = ready
        self._log_calls = log_calls

    # -- access -------------------------------------------------------------------------
    async def authorize(self, info: MethodInfo, md: dict[str, str]) -> ctx.Caller:
        """Who is calling, checked against the RPC's declared access and callers.

        A mesh service sends its service token; on a user's behalf it also sends a
        delegation addressed to this service and issued to it. Anyone else sends a user's
        access token (or nothing, for public RPCs)."""
        service = await self._service(md)
        if info.access is Access.PUBLIC:
            return ctx.Caller(user_id=None, service=service)
        if service is not None and info.callers and service not in info.callers:
            raise PermissionDenied(
                f"the {service} service may not call {info.name}",
                reason=Reason.CALLER_NOT_ALLOWED,
                metadata={"service": service},
            )
        token = _bearer(md)
        if info.access is Access.INTERNAL and service is None:
            if token is not None:
                raise PermissionDenied(
                    "this RPC is internal to the mesh", reason=Reason.INTERNAL_ONLY
                )
            raise Unauthenticated(
                "this RPC needs a mesh service token", reason=Reason.INTERNAL_ONLY
            )
        if token is None:
            if service is not None:
                if info.access is Access.INTERNAL:
                    return ctx.Caller(user_id=None, service=service)
                raise Unauthenticated(
                    "a service calling a user RPC needs a delegation for the user",
                    reason=Reason.DELEGATION_REQUIRED,
                )
            raise Unauthenticated(
                "missing access token (authorization: Bearer <token>)",
                reason=Reason.TOKEN_MISSING,
            )
        verifier = self._verifier()
        if service is None:
            claims = await verifier.verify(token)
        else:
            try:
                claims = await verifier.verify_delegation(token, service=self._name)
            except Unauthenticated as exc:
                raise Unauthenticated(
                    f"invalid delegation: {exc.message}", reason=Reason.DELEGATION_INVALID
                ) from None
            if claims.service != service:
                raise Unauthenticated(
                    "the delegation was issued to another service",
                    reason=Reason.DELEGATION_INVALID,
                )
        if self.revocations is not None:
            self.revocations.check(claims.user_id, claims.epoch)
        if info.access is Access.ADMIN and claims.role != ctx.ROLE_ADMIN:
            raise PermissionDenied("this RPC needs the admin role", reason=Reason.ADMIN_REQUIRED)
        return ctx.Caller(user_id=claims.user_id, role=claims.role, service=service, token=token)

    def _verifier(self) -> JwksVerifier:
        if self.verifier is None:
            raise Unavailable("token verification is not configured")
        return self.verifier

    async def _service(self, md: dict[str, str]) -> str | None:
        presented = md.get(SERVICE_TOKEN_HEADER)
        if presented is None:
            return None
        try:
            return await self._verifier().verify_service(presented)
        except Unauthenticated as exc:
            raise Unauthenticated(
                f"invalid service token: {exc.message}", reason=Reason.BAD_SERVICE_CREDENTIAL
            ) from None

    # -- call lifecycle -----------------------------------------------------------------
    async def _begin(self, info: MethodInfo, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        md = _metadata(context)
        rid = md.get(REQUEST_ID_HEADER) or ctx.new_request_id()
        ctx.bind(
            caller=ctx.ANONYMOUS,
            request_id=rid,
            method=info.path,
            timeout=_timeout(context),
            language=md.get("accept-language", ""),
        )
        if not self._ready():
            raise Unavailable("service is starting; retry shortly", reason=Reason.SERVICE_STARTING)
        ctx.set_caller(await self.authorize(info, md))

    def _code_of(
        self, exc: BaseException, context: grpc.aio.ServicerContext[Any, Any]
    ) -> grpc.StatusCode:
        if db.is_unreachable(exc):
            return grpc.StatusCode.UNAVAILABLE
        if isinstance(exc, ServiceError):
            return exc.code
        if isinstance(exc, grpc.aio.AbortError):  # the handler called context.abort itself
            return context.code() or grpc.StatusCode.UNKNOWN
        if isinstance(exc, asyncio.CancelledError):
            return grpc.StatusCode.CANCELLED
        return grpc.StatusCode.INTERNAL

    async def _fail(
        self, exc: BaseException, info: MethodInfo, context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        """Turn an exception into the call's status (by aborting); returns only for
        aborts already made and cancellations, which the caller re-raises."""
        if db.is_unreachable(exc):
            # A database outage is retryable, never INTERNAL: clients back off and retry.
            log.warning("database unreachable in %s: %s", info.path, type(exc).__name__)
            exc = Unavailable(
                "the database is unavailable; retry shortly",
                reason=Reason.DATABASE_UNAVAILABLE,
                metadata={"dependency": "postgres"},
            )
        if isinstance(exc, ServiceError):
            await _abort(context, info, exc)
        if isinstance(exc, (grpc.aio.AbortError, asyncio.CancelledError, GeneratorExit)):
            return
        log.exception("unhandled error in %s", info.path)
        await _abort(context, info, Internal(f"internal error (request id {ctx.request_id()})"))

    def _finish(
        self,
        info: MethodInfo,
        metrics: MethodMetrics,
        code: grpc.StatusCode,
        start: float,
        sent: int = 0,
    ) -> None:
        elapsed = time.perf_counter() - start
        metrics.observe(code.name, elapsed, sent)
        if self._log_calls:
            level = logging.WARNING if code is grpc.StatusCode.INTERNAL else logging.INFO
            log.log(
                level,
                "rpc %s %s",
                info.path,
                code.name,
                extra=fields(method=info.path, code=code.name, ms=round(elapsed * 1000, 2)),
            )

    # -- wrappers, one per streaming kind -----------------------------------------------
    def wrap(self, info: MethodInfo, behavior: Any) -> Any:
        metrics = MethodMetrics(info.service, info.name)
        tracing.serves(info.path)  # the call's server span is opened below, not by a layer
        if info.server_streaming:
            return self._wrap_stream_out(info, behavior, metrics)
        return self._wrap_single_out(info, behavior, metrics)

    def _wrap_single_out(self, info: MethodInfo, behavior: Any, metrics: MethodMetrics) -> Any:
        async def handler(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            start = time.perf_counter()
            code = grpc.StatusCode.OK
            with tracing.serving(info.path, context) as context:
                try:
                    await self._begin(info, context)
                    request = _checked(info, request)
                    return await behavior(request, context)
                except BaseException as exc:
                    code = self._code_of(exc, context)
                    await self._fail(exc, info, context)
                    raise
                finally:
                    self._finish(info, metrics, code, start)

        return handler

    def _wrap_stream_out(self, info: MethodInfo, behavior: Any, metrics: MethodMetrics) -> Any:
        async def handler(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            start = time.perf_counter()
            code = grpc.StatusCode.OK
            sent = 0
            stream: AsyncIterator[Any] | None = None
            with tracing.serving(info.path, context) as context:
                try:
                    await self._begin(info, context)
                    request = _checked(info, request)
                    stream = behavior(request, context)
                    async for message in stream:
                        sent += 1
                        yield message
                except BaseException as exc:
                    code = self._code_of(exc, context)
                    await self._fail(exc, info, context)
                    raise
                finally:
                    # Close the handler's generator now, so its work stops when the client
                    # goes away rather than whenever the garbage collector gets to it.
                    aclose = getattr(stream, "aclose", None)
                    if aclose is not None:
                        await aclose()
                    self._finish(info, metrics, code, start, sent)

        return handler


def _checked(info: MethodInfo, request: Any) -> Any:
    """The request after the generic checks of `validate` (malformed bytes, control
    characters in text, undefined enums) → InvalidArgument; a client stream is checked
    message by message as the handler reads it."""
    if info.client_streaming:
        return validate.checked_stream(request)
    validate.check_request(request)
    return request


def error_domain(service: str) -> str:
    """ErrorInfo.domain of a service: `aivera.chat.v1.ChatService` → `chat.aivera.dev`."""
    parts = service.split(".")
    name = parts[1] if len(parts) > 2 and parts[0] == "aivera" else service
    return f"{name}.aivera.dev"


def status_of(exc: ServiceError, service: str) -> status_pb2.Status:
    """The google.rpc.Status of a domain error: ErrorInfo always, LocalizedMessage in the
    caller's language, and BadRequest when a field is at fault."""
    status = status_pb2.Status(code=exc.code.value[0], message=exc.message)
    info = error_details_pb2.ErrorInfo(
        reason=reason_name(exc.reason), domain=error_domain(service), metadata=exc.metadata
    )
    status.details.add().Pack(info)
    locale = messages.locale_of(ctx.language())
    values = {**exc.metadata, "request_id": ctx.request_id()}
    text = messages.localized(exc.reason, locale, **values)
    status.details.add().Pack(error_details_pb2.LocalizedMessage(locale=locale, message=text))
    if exc.field is not None:
        detail = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=exc.field, description=exc.message
                )
            ]
        )
        status.details.add().Pack(detail)
    return status


async def _abort(
    context: grpc.aio.ServicerContext[Any, Any], info: MethodInfo, exc: ServiceError
) -> None:
    await context.abort_with_status(rpc_status.to_status(status_of(exc, info.service)))


def _unimplemented(info: MethodInfo) -> Any:
    message = f"{info.service}/{info.name} is not implemented yet"
    if info.server_streaming:

        async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
            raise Unimplemented(message)
            yield  # pragma: no cover - makes this an async generator

        return stream

    async def unary(request: Any, context: Any) -> Any:
        raise Unimplemented(message)

    return unary


def _implementation(servicer: object, method: MethodDescriptor) -> Any | None:
    impl = getattr(servicer, method.name, None)
    if impl is None:
        return None
    # The generated *Servicer base classes only raise NotImplementedError: treat them as
    # missing so the call answers UNIMPLEMENTED through our wrapper.
    owner = getattr(getattr(impl, "__func__", None), "__module__", "")
    if owner.endswith("_pb2_grpc"):
        return None
    return impl


def service_handler(
    service: ServiceDescriptor, servicer: object, runtime: RpcRuntime
) -> grpc.GenericRpcHandler:
    """A generic handler serving every method of `service` from `servicer`."""
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method in service.methods:
        info = method_info(service, method)
        request_cls = message_factory.GetMessageClass(method.input_type)
        response_cls = message_factory.GetMessageClass(method.output_type)
        impl = _implementation(servicer, method) or _unimplemented(info)
        wrapped = runtime.wrap(info, impl)
        # Undecodable bytes become INVALID_ARGUMENT in the wrapper, not grpc's UNKNOWN.
        deserialize = validate.deserializer(request_cls)
        serialize = response_cls.SerializeToString
        if info.client_streaming and info.server_streaming:
            handler = grpc.stream_stream_rpc_method_handler(wrapped, deserialize, serialize)
        elif info.client_streaming:
            handler = grpc.stream_unary_rpc_method_handler(wrapped, deserialize, serialize)
        elif info.server_streaming:
            handler = grpc.unary_stream_rpc_method_handler(wrapped, deserialize, serialize)
        else:
            handler = grpc.unary_unary_rpc_method_handler(wrapped, deserialize, serialize)
        handlers[method.name] = handler
    return grpc.method_handlers_generic_handler(service.full_name, handlers)
