"""Tracing on for a test module, with spans kept in memory (OpenTelemetry's in-memory
exporter), and helpers to read one trace as a tree."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from services.common import tracing


@pytest.fixture(scope="module")
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on for the module: services and channels started after this fixture are
    traced. Module fixtures that start services must depend on it."""
    exporter = InMemorySpanExporter()
    tracing.install(tracing.make_provider("test"), processor=SimpleSpanProcessor(exporter))
    try:
        yield exporter
    finally:
        tracing.uninstall()


class Trace:
    """The finished spans of one trace, by id."""

    def __init__(self, spans: Iterable[ReadableSpan], trace_id: int) -> None:
        self.spans = [s for s in spans if s.context is not None and s.context.trace_id == trace_id]
        self.by_id = {s.context.span_id: s for s in self.spans if s.context is not None}

    def named(self, name: str, kind: SpanKind | None = None) -> list[ReadableSpan]:
        return [s for s in self.spans if s.name == name and (kind is None or s.kind == kind)]

    def one(self, name: str, kind: SpanKind | None = None) -> ReadableSpan:
        found = self.named(name, kind)
        assert found, f"no span {name!r} in the trace: {sorted({s.name for s in self.spans})}"
        return found[0]

    def parent(self, span: ReadableSpan) -> ReadableSpan | None:
        return None if span.parent is None else self.by_id.get(span.parent.span_id)

    def ancestors(self, span: ReadableSpan) -> list[ReadableSpan]:
        out: list[ReadableSpan] = []
        current = self.parent(span)
        while current is not None:
            out.append(current)
            current = self.parent(current)
        return out

    def descends(self, span: ReadableSpan, ancestor: ReadableSpan) -> bool:
        return any(a is ancestor for a in self.ancestors(span))

    def orphans(self) -> list[ReadableSpan]:
        """Spans whose parent is not in the trace (only the root may be one)."""
        return [
            s for s in self.spans if s.parent is not None and s.parent.span_id not in self.by_id
        ]


def attrs(span: ReadableSpan) -> dict[str, Any]:
    """A span's attributes as a plain dict."""
    return dict(span.attributes or {})
