"""Prometheus metrics every service exports on its HTTP port: RPC count and latency by
service, method and status code (the names follow go-grpc-prometheus, so stock
dashboards work)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

RPC_HANDLED = Counter(
    "grpc_server_handled_total",
    "RPCs completed, by method and status code.",
    ["grpc_service", "grpc_method", "grpc_code"],
)
RPC_LATENCY = Histogram(
    "grpc_server_handling_seconds",
    "RPC duration until the last response (streams included).",
    ["grpc_service", "grpc_method"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
STREAM_MSGS_SENT = Counter(
    "grpc_server_msg_sent_total",
    "Messages sent on server streams.",
    ["grpc_service", "grpc_method"],
)


class MethodMetrics:
    """Label children resolved once per method, so the per-call cost is an increment."""

    __slots__ = ("_handled", "_latency", "_method", "_sent", "_service")

    def __init__(self, service: str, method: str) -> None:
        self._service = service
        self._method = method
        self._latency = RPC_LATENCY.labels(service, method)
        self._sent = STREAM_MSGS_SENT.labels(service, method)
        self._handled: dict[str, Counter] = {}

    def observe(self, code: str, seconds: float, sent: int = 0) -> None:
        child = self._handled.get(code)
        if child is None:
            child = RPC_HANDLED.labels(self._service, self._method, code)
            self._handled[code] = child
        child.inc()
        self._latency.observe(seconds)
        if sent:
            self._sent.inc(sent)
