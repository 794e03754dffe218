"""A training job continues the trace of the request that created it: the trace context
is stored with the job, and the worker that claims it — another process in production,
with its own pool and channels — opens its spans as children of that request's span."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from aivera.training.v1 import jobs_pb2 as J
from services.common import db
from services.common.channels import open_channel
from services.training.worker import Worker
from tests.observability.conftest import Trace, attrs
from tests.training import conftest as training
from tests.training.conftest import MEMO, Env, User

# The training service's fixtures (a real storage and training service on loopback).
env = training.env
keyring = training.keyring
module_token = training.module_token
rag_addr = training.rag_addr
tiny_model = training.tiny_model

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{CALLER_SPAN}-01"


@pytest.fixture(scope="module")
def training_overrides(spans: InMemorySpanExporter) -> dict[str, Any]:
    """Tracing is on before the services start (the env fixture depends on this)."""
    return {}


@pytest.fixture(scope="module")
async def worker(env: Env) -> AsyncIterator[Worker]:
    pool = await db.create_pool(
        env.settings.dsn(), schema="training", service="w", min_size=1, max_size=4
    )
    chan = open_channel(env.settings.storage_addr)
    w = Worker(env.settings.model_copy(update={"worker_id": "trace-worker"}), pool, chan)
    task = asyncio.create_task(w.run())
    yield w
    w.shutdown.set()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(task, 30)
    await chan.close()
    await pool.close()


async def test_worker_spans_join_the_trace_that_created_the_job(
    env: Env, worker: Worker, spans: InMemorySpanExporter
) -> None:
    u = User(env)
    ds = await u.dataset(MEMO)
    job = await u.jobs.CreateJob(
        J.CreateJobRequest(
            dataset_id=ds.id,
            executor=J.EXECUTOR_SIMULATE,
            hyperparameters=J.Hyperparameters(max_steps=3, checkpoint_every_steps=2),
        ),
        metadata=(*u.md, ("traceparent", TRACEPARENT)),
    )
    done = await u.wait_job(job.id, (J.JOB_STATUS_SUCCEEDED, J.JOB_STATUS_FAILED))
    assert done.status == J.JOB_STATUS_SUCCEEDED, done.error

    # Stored with the job: the context of the CreateJob call's server span.
    stored = await worker.store.trace_context(uuid.UUID(job.id))
    assert stored["traceparent"].startswith(f"00-{TRACE_ID}-")

    trace = Trace([], 0)
    for _ in range(200):
        trace = Trace(spans.get_finished_spans(), int(TRACE_ID, 16))
        if trace.named("training.job"):
            break
        await asyncio.sleep(0.05)
    create = trace.one("/aivera.training.v1.TrainingService/CreateJob", SpanKind.SERVER)
    assert format(create.parent.span_id, "016x") == CALLER_SPAN  # type: ignore[union-attr]
    run = trace.one("training.job")
    assert trace.parent(run) is create
    assert attrs(run)["training.worker"] == "trace-worker"
    assert stored["traceparent"] == f"00-{TRACE_ID}-{format(create.context.span_id, '016x')}-01"
    # The worker's own work is inside the job's span: its SQL and its calls to storage.
    worker_sql = [s for s in trace.spans if attrs(s).get("db.system") and trace.descends(s, run)]
    assert worker_sql
    calls = [s for s in trace.spans if s.kind == SpanKind.CLIENT and "StorageService" in s.name]
    assert any(trace.descends(c, run) for c in calls)


async def test_queue_gauges_count_jobs_by_status(env: Env, worker: Worker) -> None:
    from prometheus_client import REGISTRY

    from services.training import queue_metrics

    u = User(env)
    ds = await u.dataset(MEMO)
    job = await u.jobs.CreateJob(
        J.CreateJobRequest(
            dataset_id=ds.id,
            executor=J.EXECUTOR_SIMULATE,
            hyperparameters=J.Hyperparameters(max_steps=2, checkpoint_every_steps=2),
        ),
        metadata=u.md,
    )
    await u.wait_job(job.id, (J.JOB_STATUS_SUCCEEDED,))
    await queue_metrics.refresh(worker.store)
    succeeded = REGISTRY.get_sample_value("aivera_training_jobs", {"status": "succeeded"})
    assert succeeded is not None and succeeded >= 1
    assert REGISTRY.get_sample_value("aivera_training_jobs", {"status": "queued"}) == 0
    assert REGISTRY.get_sample_value("aivera_training_queue_oldest_age_seconds") == 0
