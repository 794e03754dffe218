"""Tracing is off unless OTEL_EXPORTER_OTLP_ENDPOINT is set, and off means nothing on the
request path: no interceptors, no patched asyncpg, a shared no-op for our spans."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import asyncpg

from services.common import tracing

ROOT = Path(__file__).resolve().parents[2]


def _run(code: str, env: dict[str, str]) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


PROBE = """
from services.common import tracing
on = tracing.configure("chat")
print(on, len(tracing.server_interceptors()), len(tracing.client_interceptors()),
      tracing.span("x") is tracing._NO_SPAN, type(tracing._provider).__name__)
tracing.shutdown()
"""


def test_off_without_an_endpoint() -> None:
    assert _run(PROBE, {}) == "False 0 0 True NoneType"


def test_on_with_an_endpoint() -> None:
    # Nothing listens there: spans are dropped at export, the service runs on.
    out = _run(PROBE, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"})
    assert out == "True 1 4 False TracerProvider"


def test_off_leaves_the_request_path_alone() -> None:
    assert not tracing.enabled()
    assert tracing.server_interceptors() == [] and tracing.client_interceptors() == []
    assert tracing.carrier() == {}
    with tracing.span("anything", {"a": 1}) as span:
        assert not span.is_recording()
    # asyncpg is not wrapped (the instrumentation patches its methods in place).
    assert not hasattr(asyncpg.connection.Connection.fetch, "__wrapped__")
    metadata: list[tuple[str, str]] = [("traceparent", "00-" + "1" * 32 + "-" + "2" * 16 + "-01")]
    tracing.inject_metadata(metadata)  # a gateway with tracing off passes the caller's on
    assert metadata[0][0] == "traceparent"
