"""The training worker's HTTP port (`TRAINING_WORKER_HTTP_PORT`, default 9096): Prometheus
`/metrics` and `/healthz`, the path the Deployment's startup, readiness and liveness probes
use (deploy/k8s/base/training-worker.yaml).

`/healthz` is 200 only while the worker is doing its job: migrated, connected to Postgres
and polling the queue (or heartbeating a running job) successfully within the last
`window` seconds; 503 before the first successful poll, when Postgres is unreachable for
longer than that, and once it is shutting down. A second worker on one machine, finding
the port taken, serves on a free port (logged) instead.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from typing import Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, generate_latest

from services.common.ports import TRAINING_WORKER_HTTP

log = logging.getLogger("aivera.training.worker")

JOBS = Counter(
    "aivera_training_worker_jobs_total",
    "Jobs this worker ran, by outcome (succeeded, failed, stopped).",
    ["outcome"],
)
BUSY = Gauge("aivera_training_worker_busy", "1 while this worker is running a job.")
LAST_OK = Gauge(
    "aivera_training_worker_last_ok_timestamp_seconds",
    "When this worker last reached the queue (a poll or a heartbeat), Unix time.",
)
QUEUE_ERRORS = Counter(
    "aivera_training_worker_queue_errors_total",
    "Polls and heartbeats that could not reach Postgres.",
)


class Health(Protocol):
    def health(self) -> tuple[bool, dict[str, object]]: ...


def http_port() -> int:
    """The worker's HTTP port: `TRAINING_WORKER_HTTP_PORT`, else the mesh's table."""
    return int(os.environ.get("TRAINING_WORKER_HTTP_PORT", TRAINING_WORKER_HTTP))


def mark_ok() -> None:
    LAST_OK.set(time.time())


async def start_worker_http(worker: Health, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Serve `/healthz` and `/metrics`; returns the runner and the bound port (for port 0)."""
    app = web.Application()

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        ok, detail = worker.health()
        return web.json_response({"serving": ok, **detail}, status=200 if ok else 503)

    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE or port == 0:
            await runner.cleanup()
            raise
        # Another worker on this machine has the port (any number may run on one host;
        # in a cluster each pod has its own): serve on a free one, and say so.
        log.warning("port %d is taken (%s): health and metrics on a free port", port, exc)
        site = web.TCPSite(runner, host, 0)
        await site.start()
    server = getattr(site, "_server", None)
    sockets = getattr(server, "sockets", None)
    bound = sockets[0].getsockname()[1] if sockets else port
    return runner, bound


__all__ = ["BUSY", "JOBS", "QUEUE_ERRORS", "http_port", "mark_ok", "start_worker_http"]
