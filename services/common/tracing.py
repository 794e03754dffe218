# The OpenTelemetry instrumentations are untyped; calling into them is the point here.
# mypy: disable-error-code="no-untyped-call"
"""Distributed tracing with OpenTelemetry: one trace per request across the mesh.

Off unless `OTEL_EXPORTER_OTLP_ENDPOINT` is set (`configure`); tests turn it on with an
in-memory exporter (`install`). While off, nothing is instrumented: servers and channels
get no interceptors, asyncpg is not patched, and `span()` returns one shared no-op
context manager, so the request path pays one module-global read per call site.

While on:
- every RPC has a server span and every call to another service a client span (the
  gRPC instrumentation's: its interceptors, added by `server.py` and `channels.py`, and
  for our methods its server span opened by the RPC wrapper, `serving`); the W3C
  `traceparent`/`tracestate` travel in the call's metadata, through the gateways too;
- every SQL statement has a span (the asyncpg instrumentation); calls and statements
  outside any request (health checks, queue polls, background feeds) and BEGIN/COMMIT
  are not traced (`_RequestsOnly`; the asyncpg instrumentation is not even entered
  for them): noise that would cost;
- model calls, RAG stages and storage transfers open spans of their own (`span`);
- work that outlives its request (a training job) stores `carrier()` with itself and
  continues that trace where it runs (`continued`);
- log lines carry `trace_id` and `span_id` (logs.py).

Settings beyond the endpoint are the SDK's own: `OTEL_SERVICE_NAME` (default: the
service's name), `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_EXPORTER_OTLP_*`, `OTEL_BSP_*`; the
share of requests traced is `OTEL_TRACES_SAMPLER_ARG` (0..1, default 1; a request
whose caller sampled it is traced whatever the ratio).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Iterator, Mapping, MutableSequence, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, TypeVar

import grpc
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.instrumentation.grpc import _aio_client, _aio_server
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import (
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.util.types import Attributes

log = logging.getLogger("aivera.tracing")
# Span attributes as call sites build them (values: str, bool, int, float or sequences).
Attrs = Mapping[str, Any] | None
T = TypeVar("T")

ENDPOINT_ENV = "OTEL_EXPORTER_OTLP_ENDPOINT"
RATIO_ENV = "OTEL_TRACES_SAMPLER_ARG"
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
_TRACE_HEADERS = frozenset((TRACEPARENT, TRACESTATE))
_INSTRUMENTATION = "aivera"
_GRPC_INSTRUMENTATION = "opentelemetry.instrumentation.grpc"

_provider: TracerProvider | None = None
_tracer: trace.Tracer | None = None
_server: _ServerInterceptor | None = None  # opens the RPC wrapper's server spans (`serving`)
_asyncpg: Any = None  # the AsyncPGInstrumentor while installed


class _NoSpan(AbstractContextManager[Span]):
    """What `span()` returns while tracing is off: enters to the invalid span, whose
    setters do nothing, so call sites need no `if`."""

    __slots__ = ()

    def __enter__(self) -> Span:
        return trace.INVALID_SPAN

    def __exit__(self, *exc: object) -> None:
        return None


_NO_SPAN = _NoSpan()


def enabled() -> bool:
    return _tracer is not None


# -- set-up ---------------------------------------------------------------------------------
_TRANSACTION_CONTROL = frozenset(("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE"))


class _RequestsOnly(Sampler):
    """What is traced: the work of requests, sampled by ratio at the root (a caller's
    decision is followed). Not traced, as noise that costs: calls and SQL that belong to
    no request (health checks, queue polls, feeds refreshed in the background: a CLIENT
    span without a parent) and transaction control statements (BEGIN, COMMIT...: the
    statements between them are the spans worth reading)."""

    def __init__(self, ratio: float) -> None:
        self._sampler = ParentBased(TraceIdRatioBased(ratio))

    def should_sample(
        self,
        parent_context: otel_context.Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[trace.Link] | None = None,
        trace_state: trace.TraceState | None = None,
    ) -> SamplingResult:
        if kind is SpanKind.CLIENT:
            parent = trace.get_current_span(parent_context).get_span_context()
            if not parent.is_valid or name.rstrip(";").upper() in _TRANSACTION_CONTROL:
                return SamplingResult(Decision.DROP)
        return self._sampler.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )

    def get_description(self) -> str:
        return f"RequestsOnly({self._sampler.get_description()})"


def _untraced_sql(query: Any) -> bool:
    """A statement the sampler would drop: outside a recorded span (no request, or a
    request not sampled) or transaction control."""
    if not trace.get_current_span().is_recording():
        return True
    if not isinstance(query, str):
        return False
    head = query.lstrip()[:10].split(None, 1)
    return bool(head) and head[0].rstrip(";").upper() in _TRANSACTION_CONTROL


def _asyncpg_instrumentor() -> Any:
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor

    class Instrumentor(AsyncPGInstrumentor):
        """The asyncpg instrumentation, stepped around for statements whose span would
        be dropped: no operation-name regex, attributes or non-recording span for
        them (a turn's BEGIN/COMMIT, health checks, a request not sampled)."""

        async def _do_execute(self, func: Any, instance: Any, args: Any, kwargs: Any) -> Any:
            if _untraced_sql(args[0] if args else None):
                return await func(*args, **kwargs)
            return await super()._do_execute(func, instance, args, kwargs)

        async def _do_prepared_execute(
            self, func: Any, instance: Any, args: Any, kwargs: Any
        ) -> Any:
            if _untraced_sql(getattr(instance, "_query", None)):
                return await func(*args, **kwargs)
            return await super()._do_prepared_execute(func, instance, args, kwargs)

        async def _do_cursor_execute(self, func: Any, instance: Any, args: Any, kwargs: Any) -> Any:
            if _untraced_sql(getattr(instance, "_query", None)):
                return await func(*args, **kwargs)
            return await super()._do_cursor_execute(func, instance, args, kwargs)

    return Instrumentor()


def make_provider(service: str, *, ratio: float = 1.0) -> TracerProvider:
    """A tracer provider for `service` (resource attributes from the environment too)."""
    name = os.environ.get("OTEL_SERVICE_NAME") or service
    resource = Resource.create({"service.name": name, "service.namespace": "aivera"})
    return TracerProvider(resource=resource, sampler=_RequestsOnly(ratio))


def install(provider: TracerProvider, *, processor: SpanProcessor | None = None) -> None:
    """Turn tracing on with `provider` (and `processor` added to it): our spans, the
    asyncpg instrumentation, and interceptors for servers and channels made from now on."""
    global _provider, _tracer, _server, _asyncpg
    if processor is not None:
        provider.add_span_processor(processor)
    if _asyncpg is not None:
        _asyncpg.uninstrument()
    _provider = provider
    _tracer = provider.get_tracer(_INSTRUMENTATION)
    _server = _ServerInterceptor(provider.get_tracer(_GRPC_INSTRUMENTATION))
    _asyncpg = _asyncpg_instrumentor()
    _asyncpg.instrument(tracer_provider=provider)


def uninstall() -> None:
    """Turn tracing off again (tests); servers and channels already made keep theirs."""
    global _provider, _tracer, _server, _asyncpg
    if _asyncpg is not None:
        _asyncpg.uninstrument()
    _provider = _tracer = _server = _asyncpg = None


def configure(service: str, env: Mapping[str, str] | None = None) -> bool:
    """Tracing for a service process: on, exporting over OTLP/gRPC in batches, when
    `OTEL_EXPORTER_OTLP_ENDPOINT` is set; off otherwise. Returns whether it is on."""
    env = os.environ if env is None else env
    endpoint = env.get(ENDPOINT_ENV, "").strip()
    if not endpoint:
        return False
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    try:
        ratio = min(1.0, max(0.0, float(env.get(RATIO_ENV, "1") or 1)))
    except ValueError:
        ratio = 1.0
    provider = make_provider(service, ratio=ratio)
    # The exporter reads the endpoint (and its TLS, headers, timeout) from the environment.
    exporter: SpanExporter = OTLPSpanExporter()
    install(provider, processor=BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)  # for libraries that trace through the global API
    log.info("tracing on: OTLP to %s, sampling %.2f of new traces", endpoint, ratio)
    return True


def shutdown() -> None:
    """Flush spans still buffered (at process exit)."""
    if _provider is not None:
        _provider.shutdown()


# -- RPCs -----------------------------------------------------------------------------------
class _ServicerContext(_aio_server._OpenTelemetryAioServicerContext):
    """The instrumentation's context wrapper records `abort(code, ...)`; our RPC wrapper
    aborts with a full status (`abort_with_status`, carrying ErrorInfo), which it would
    miss: the span would end OK on an error."""

    async def abort_with_status(self, status: Any) -> Any:
        code = status.code
        span = self._self_active_span
        span.set_attribute("rpc.grpc.status_code", code.value[0])
        if code not in _CLIENT_FAULTS:
            span.set_status(Status(StatusCode.ERROR, f"{code.name}: {status.details}"))
        return await self.__wrapped__.abort_with_status(status)


# A server span is an error for failures of the service, not for a caller's mistakes
# (OpenTelemetry's gRPC conventions).
_CLIENT_FAULTS = frozenset(
    (
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    )
)


class _ServerInterceptor(_aio_server.OpenTelemetryAioServerInterceptor):
    """The instrumentation's aio server interceptor with `_ServicerContext`."""

    def _intercept_aio_server_unary(self, behavior: Any, details: Any) -> Any:
        async def unary(request: Any, context: Any) -> Any:
            with self._set_remote_context(context):
                with self._start_span(details, context, set_status_on_exception=False) as span:
                    try:
                        return await behavior(request, _ctx(context, span))
                    except Exception as error:
                        _record_unexpected(span, error)
                        raise

        return unary

    def _intercept_aio_server_stream(self, behavior: Any, details: Any) -> Any:
        async def stream(request: Any, context: Any) -> Any:
            with self._set_remote_context(context):
                with self._start_span(details, context, set_status_on_exception=False) as span:
                    try:
                        async for response in behavior(request, _ctx(context, span)):
                            yield response
                    except Exception as error:
                        _record_unexpected(span, error)
                        raise

        return stream


def _ctx(context: Any, span: Span) -> Any:
    return _ServicerContext(context, span)


def _record_unexpected(span: Span, error: BaseException) -> None:
    # An abort is recorded by the context wrapper; anything else escaped the RPC wrapper.
    if not isinstance(error, grpc.aio.AbortError):
        span.record_exception(error)


_PROBES = ("/grpc.health.", "/grpc.reflection.")
# Methods served through our RPC wrapper, which opens their server spans itself.
_IN_WRAPPER: set[str] = set()


def _intercepted(details: Any) -> bool:
    # Health probes and reflection every few seconds would drown the traces.
    method = details.method
    method = method.decode() if isinstance(method, bytes) else method
    return not method.startswith(_PROBES) and method not in _IN_WRAPPER


def server_interceptors() -> list[grpc.aio.ServerInterceptor]:
    """Interceptors for a gRPC server: a server span per call (none while off), for
    methods that do not open theirs through `serving`."""
    if _provider is None:
        return []
    tracer = _provider.get_tracer(_GRPC_INSTRUMENTATION)
    return [_ServerInterceptor(tracer, filter_=_intercepted)]


class _CallDetails:
    """What the instrumentation's span reads of grpc's handler call details."""

    __slots__ = ("method",)

    def __init__(self, method: str) -> None:
        self.method = method


def serves(method: str) -> None:
    """`method` ("/pkg.Service/Method") opens its server span through `serving`; the
    interceptor leaves it alone."""
    _IN_WRAPPER.add(method)


def serving(method: str, context: Any) -> AbstractContextManager[Any]:
    """The server span of one call of a method of ours (see `serves`), the same span the
    interceptor would open (the instrumentation's attributes and remote parent); enters
    to the servicer context to use inside it, wrapped to record aborts on the span. Our
    RPC wrapper opens it in its own generator, where the interceptor would add a second
    one around it: a hop for every streamed message. While off: the context itself."""
    if _server is None:
        return nullcontext(context)
    return _serving(_server, method, context)


@contextmanager
def _serving(server: _ServerInterceptor, method: str, context: Any) -> Iterator[Any]:
    with server._set_remote_context(context):
        details = _CallDetails(method)
        with server._start_span(details, context, set_status_on_exception=False) as span:
            try:
                yield _ctx(context, span)
            except Exception as error:
                _record_unexpected(span, error)
                raise


class _UnaryStreamClient(_aio_client.UnaryStreamAioClientInterceptor):
    """The instrumentation ends a streaming call's client span when the caller's loop
    over the responses ends; a caller that stops reading at the answer it waited for
    (an ingest's `done`) would leave the span open until garbage collection. Here the
    span ends when the call does, however the caller reads."""

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        if self.tracing_skipped(details):
            return await continuation(details, request)
        with self._start_interceptor_span(details.method) as span:
            try:
                call = await continuation(self.propagate_trace_in_details(details), request)
            except BaseException:
                span.end()
                raise
        call.add_done_callback(_end_with_call(span))
        return call


class _StreamStreamClient(_aio_client.StreamStreamAioClientInterceptor):
    """As `_UnaryStreamClient`, for bidirectional streams."""

    async def intercept_stream_stream(
        self, continuation: Any, details: Any, request_iterator: Any
    ) -> Any:
        if self.tracing_skipped(details):
            return await continuation(details, request_iterator)
        with self._start_interceptor_span(details.method) as span:
            try:
                call = await continuation(
                    self.propagate_trace_in_details(details), request_iterator
                )
            except BaseException:
                span.end()
                raise
        call.add_done_callback(_end_with_call(span))
        return call


def _end_with_call(span: Span) -> Any:
    async def finish(call: Any) -> None:
        try:
            code = await call.code()
            span.set_attribute("rpc.grpc.status_code", code.value[0])
            if code is not grpc.StatusCode.OK:
                span.set_status(Status(StatusCode.ERROR, f"{code.name}: {await call.details()}"))
        finally:
            span.end()

    def done(call: Any) -> None:
        task = asyncio.get_running_loop().create_task(finish(call))
        _finishing.add(task)
        task.add_done_callback(_finishing.discard)

    return done


_finishing: set[asyncio.Task[None]] = set()  # held until they run (tasks are weak refs)


def client_interceptors() -> list[Any]:
    """Interceptors for a channel: a client span per call, the trace context in its
    metadata (none while off)."""
    if _provider is None:
        return []
    tracer = _provider.get_tracer(_GRPC_INSTRUMENTATION)
    return [
        _aio_client.UnaryUnaryAioClientInterceptor(tracer),
        _UnaryStreamClient(tracer),
        _aio_client.StreamUnaryAioClientInterceptor(tracer),
        _StreamStreamClient(tracer),
    ]


# -- spans of our own -----------------------------------------------------------------------
def span(
    name: str,
    attributes: Attrs = None,
    *,
    kind: SpanKind = SpanKind.INTERNAL,
    parent: otel_context.Context | None = None,
) -> AbstractContextManager[Span]:
    """A span around a block, current inside it (children nest under it); an exception
    leaving the block marks it as an error. While off: a shared no-op."""
    if _tracer is None:
        return _NO_SPAN
    return _tracer.start_as_current_span(name, context=parent, kind=kind, attributes=attributes)


def server_span(
    name: str, headers: Mapping[str, str], attributes: Attrs = None
) -> AbstractContextManager[Span]:
    """A server span continuing the trace that incoming HTTP `headers` carry (a gateway's
    span of a browser's call). While off: a shared no-op."""
    if _tracer is None:
        return _NO_SPAN
    return _tracer.start_as_current_span(
        name, context=extract(headers), kind=SpanKind.SERVER, attributes=attributes
    )


def current_span() -> Span:
    """The span current now (the invalid span, whose setters do nothing, while off)."""
    if _tracer is None:
        return trace.INVALID_SPAN
    return trace.get_current_span()


def current_ids() -> tuple[str, str] | None:
    """(trace_id, span_id) in hex of the span current now, for log lines."""
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


def carrier() -> dict[str, str]:
    """The current trace context as W3C headers (`traceparent`, `tracestate`), to store
    with work that outlives the request; empty while off or outside a trace."""
    if _tracer is None:
        return {}
    out: dict[str, str] = {}
    propagate.inject(out)
    return {k: v for k, v in out.items() if k in _TRACE_HEADERS}


def extract(headers: Mapping[str, str]) -> otel_context.Context:
    """The trace context W3C headers carry (a fresh root context if none)."""
    return propagate.extract(
        {k.lower(): v for k, v in headers.items() if k.lower() in _TRACE_HEADERS}
    )


@contextmanager
def continued(
    stored: Mapping[str, str] | None, name: str, attributes: Attrs = None
) -> Iterator[Span]:
    """A span continuing the trace `stored` (from `carrier()`) — a training job picked
    up by a worker joins the trace of the request that created it."""
    if _tracer is None:
        yield trace.INVALID_SPAN
        return
    parent = extract(stored or {})
    with _tracer.start_as_current_span(name, context=parent, attributes=attributes) as current:
        yield current


def inject_metadata(metadata: MutableSequence[tuple[str, Any]]) -> None:
    """Replace the trace headers in outgoing gRPC metadata with the current span's (a
    gateway forwarding a call by hand); no change while off."""
    if _tracer is None:
        return
    metadata[:] = [(k, v) for k, v in metadata if k not in _TRACE_HEADERS]
    metadata.extend(carrier().items())


async def within(name: str, awaitable: Awaitable[T], attributes: Attrs = None) -> T:
    """`await awaitable` inside a span named `name` (a stage of a pipeline: an
    embedding, an index search, a transfer). While off: just the await."""
    if _tracer is None:
        return await awaitable
    with _tracer.start_as_current_span(name, attributes=attributes):
        return await awaitable
