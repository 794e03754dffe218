"""Prometheus metrics every service exports on its HTTP port: RPC count and latency by
service, method and status code (the names follow go-grpc-prometheus, so stock
dashboards work), health, model calls and the training queue.

Conventions (checked by tests/observability): base units in names (`_seconds`,
`_bytes`, `_ratio`), `_total` on counters, labels from small fixed sets only. The alert
rules and dashboards in deploy/observability read these names."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

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


# -- beyond RPCs: what the dashboards and alerts in deploy/observability read ---------------
# Labels stay bounded: a service, a provider, a status — never a user, a chat or a job id.

SERVICE_SERVING = Gauge(
    "aivera_service_serving",
    "1 while the service reports SERVING (its database and dependencies answer), else 0.",
    ["service"],
)
MODEL_CALL_SECONDS = Histogram(
    "aivera_model_call_duration_seconds",
    "One model call (a streamed answer, tools included) until its last chunk, by provider.",
    ["provider"],
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300),
)
MODEL_TOKENS = Counter(
    "aivera_model_tokens_total",
    "Tokens of model calls as the provider counted them, by provider and direction "
    "(input: the prompt; output: the answer).",
    ["provider", "direction"],
)
MODEL_CALL_ERRORS = Counter(
    "aivera_model_call_errors_total",
    "Model calls that failed, by provider.",
    ["provider"],
)
TRAINING_JOBS = Gauge(
    "aivera_training_jobs",
    "Training jobs (not deleted) by status, as the training service last counted them.",
    ["status"],
)
TRAINING_QUEUE_OLDEST_AGE = Gauge(
    "aivera_training_queue_oldest_age_seconds",
    "How long the oldest QUEUED training job has waited for a worker (0: none waits).",
)
TRAINING_GPU_MEMORY = Gauge(
    "aivera_training_worker_gpu_memory_used_bytes",
    "GPU memory the worker's training holds now (0 on CPU workers), by device index.",
    ["device"],
)
TRAINING_GPU_UTILIZATION = Gauge(
    "aivera_training_worker_gpu_utilization_ratio",
    "GPU busy share over the last sample period (0..1), by device index; absent where "
    "the driver does not report it.",
    ["device"],
)


def set_serving(service: str, serving: bool) -> None:
    SERVICE_SERVING.labels(service).set(1 if serving else 0)


def sample_gpus() -> None:
    """Set the GPU gauges from what torch reports (a worker's heartbeat calls this); no
    GPU, or no torch loaded, sets nothing."""
    import sys

    torch = sys.modules.get("torch")  # never import torch just for a gauge
    if torch is None or not torch.cuda.is_available():
        return
    for index in range(torch.cuda.device_count()):
        device = str(index)
        TRAINING_GPU_MEMORY.labels(device).set(torch.cuda.memory_reserved(index))
        try:
            TRAINING_GPU_UTILIZATION.labels(device).set(torch.cuda.utilization(index) / 100)
        except (ModuleNotFoundError, RuntimeError, ValueError):
            continue  # utilization needs NVML (pynvml), not always installed
