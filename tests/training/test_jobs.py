"""Jobs through the API with an in-process worker (simulate executor, and one real peft
job): validation of hyperparameters, the queue, WatchJob replay, cancel, retry, artifacts,
costs, notifications, clones and isolation."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from aivera.training.v1 import clones_pb2 as C
from aivera.training.v1 import datasets_pb2 as D
from aivera.training.v1 import jobs_pb2 as J
from aivera.training.v1 import models_pb2 as M
from aivera.training.v1 import notifications_pb2 as N
from services.common import db
from services.common.channels import open_channel
from services.training.worker import Worker
from tests.training.conftest import MEMO, Env, User, chat

pytestmark = pytest.mark.asyncio
SIM = J.EXECUTOR_SIMULATE
TERMINAL = (J.JOB_STATUS_SUCCEEDED, J.JOB_STATUS_FAILED, J.JOB_STATUS_CANCELLED)


def bad_field(exc: grpc.aio.AioRpcError) -> str:
    status = rpc_status.from_call(exc)
    assert status is not None, exc
    for detail in status.details:
        br = error_details_pb2.BadRequest()
        if detail.Unpack(br):
            field: str = br.field_violations[0].field  # google.rpc has no stubs here
            return field
    return ""


@pytest.fixture(scope="module")
async def worker(env: Env) -> AsyncIterator[Worker]:
    pool = await db.create_pool(
        env.settings.dsn(), schema="training", service="w", min_size=1, max_size=4
    )
    chan = open_channel(env.settings.storage_addr)
    w = Worker(env.settings.model_copy(update={"worker_id": "test-worker"}), pool, chan)
    task = asyncio.create_task(w.run())
    yield w
    w.shutdown.set()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(task, 30)
    await chan.close()
    await pool.close()


@pytest.fixture(scope="module")
async def ready(env: Env) -> tuple[User, D.Dataset]:
    u = User(env)
    ds = await u.dataset(MEMO)
    assert ds.status == D.DATASET_STATUS_READY
    return u, ds


HP_BAD: list[tuple[dict[str, Any], str]] = [
    ({"epochs": 0, "max_steps": 0}, ""),
    ({"epochs": 101}, "hyperparameters.epochs"),
    ({"max_steps": -1}, "hyperparameters.max_steps"),
    ({"max_steps": 1_000_001}, "hyperparameters.max_steps"),
    ({"learning_rate": 1.5}, "hyperparameters.learning_rate"),
    ({"learning_rate": -1e-4}, "hyperparameters.learning_rate"),
    ({"lora_rank": 257}, "hyperparameters.lora_rank"),
    ({"lora_alpha": 2000}, "hyperparameters.lora_alpha"),
    ({"lora_dropout": 1.0}, "hyperparameters.lora_dropout"),
    ({"target_modules": ["q_proj", "wizard_proj"]}, "hyperparameters.target_modules"),
    ({"batch_size": 300}, "hyperparameters.batch_size"),
    ({"gradient_accumulation_steps": 2000}, "hyperparameters.gradient_accumulation_steps"),
    ({"max_seq_length": 8}, "hyperparameters.max_seq_length"),
    ({"max_seq_length": 100_000}, "hyperparameters.max_seq_length"),
    ({"max_steps": 10, "warmup_steps": 10}, "hyperparameters.warmup_steps"),
    ({"warmup_steps": -1}, "hyperparameters.warmup_steps"),
    ({"warmup_ratio": 1.0}, "hyperparameters.warmup_ratio"),
    ({"seed": -5}, "hyperparameters.seed"),
    ({"eval_split": 0.6}, "hyperparameters.eval_split"),
    ({"checkpoint_every_steps": -2}, "hyperparameters.checkpoint_every_steps"),
]


@pytest.mark.parametrize(("fields", "field"), HP_BAD[1:])
async def test_bad_hyperparameters_name_the_field(
    env: Env, ready: tuple[User, D.Dataset], fields: dict[str, Any], field: str
) -> None:
    u, ds = ready
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await u.job(ds.id, hp=J.Hyperparameters(**fields))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_field(err.value) == field


async def test_create_job_other_errors(env: Env, ready: tuple[User, D.Dataset]) -> None:
    u, ds = ready
    cases: list[tuple[dict[str, Any], grpc.StatusCode, str]] = [
        (dict(base_model="not-allowed"), grpc.StatusCode.INVALID_ARGUMENT, "base_model"),
        (dict(executor=7), grpc.StatusCode.INVALID_ARGUMENT, "executor"),
        (dict(method=9), grpc.StatusCode.INVALID_ARGUMENT, "method"),
        (dict(name="x" * 201), grpc.StatusCode.INVALID_ARGUMENT, "name"),
        (dict(clone_id=str(uuid.uuid4())), grpc.StatusCode.NOT_FOUND, ""),
    ]
    for kw, code, field in cases:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await u.job(ds.id, **kw)
        assert err.value.code() == code, kw
        if field:
            assert bad_field(err.value) == field
    bad = await u.dataset(b"{nope}\n")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await u.job(bad.id)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    other = User(env)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await other.job(ds.id)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def collect(u: User, job_id: str, after: int = 0, limit: int = 10_000) -> list[J.JobEvent]:
    """The stored events WatchJob sends, and its `final`; the live `heartbeat` and `cost`
    events (which repeat a stored sequence) are left out (test_watch_cost has them)."""
    out: list[J.JobEvent] = []
    call = u.jobs.WatchJob(J.WatchJobRequest(id=job_id, after_sequence=after), metadata=u.md)
    async for ev in call:
        if ev.WhichOneof("event") in ("heartbeat", "cost"):
            continue
        out.append(ev)
        if len(out) >= limit:
            call.cancel()
            break
    return out


async def test_simulated_job_end_to_end(
    env: Env, ready: tuple[User, D.Dataset], worker: Worker
) -> None:
    u, ds = ready
    job = await u.job(
        ds.id, executor=SIM, hp=J.Hyperparameters(max_steps=6, checkpoint_every_steps=2)
    )
    assert job.status == J.JOB_STATUS_VALIDATING and job.executor == SIM
    assert job.hyperparameters.lora_rank == 16 and job.hyperparameters.lora_alpha == 32
    assert list(job.hyperparameters.target_modules)  # defaults filled in
    # Watch live from the start; the stream ends by itself with `final`.
    events = await asyncio.wait_for(collect(u, job.id), 60)
    assert [e.sequence for e in events[:-1]] == list(range(1, len(events)))
    final = events[-1]
    assert final.HasField("final") and final.sequence == events[-2].sequence
    done = final.final
    assert done.status == J.JOB_STATUS_SUCCEEDED and done.model_id
    assert done.progress.steps.done == done.progress.steps.total == 6
    statuses = [e.status_changed.status for e in events if e.HasField("status_changed")]
    assert statuses == [
        J.JOB_STATUS_VALIDATING,
        J.JOB_STATUS_QUEUED,
        J.JOB_STATUS_RUNNING,
        J.JOB_STATUS_SUCCEEDED,
    ]
    assert [e.metric.step for e in events if e.HasField("metric")] == [1, 2, 3, 4, 5, 6]
    assert [e.checkpoint.step for e in events if e.HasField("checkpoint")] == [2, 4]
    # Reconnect: replay after a given sequence, no gap, no duplicate.
    k = events[4].sequence
    again = await collect(u, job.id, after=k)
    assert [e.sequence for e in again[:-1]] == [e.sequence for e in events[5:-1]]
    assert again[-1].HasField("final")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await collect(u, job.id, after=events[-2].sequence + 1)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # History.
    page = await u.jobs.ListMetrics(J.ListMetricsRequest(job_id=job.id, page_size=4), metadata=u.md)
    rest = await u.jobs.ListMetrics(
        J.ListMetricsRequest(job_id=job.id, page_token=page.next_page_token), metadata=u.md
    )
    assert [m.step for m in [*page.metric_points, *rest.metric_points]] == [1, 2, 3, 4, 5, 6]
    ck = await u.jobs.ListCheckpoints(J.ListCheckpointsRequest(job_id=job.id), metadata=u.md)
    assert [c.step for c in ck.checkpoints] == [2, 4]
    assert all(c.storage_path.startswith(f"models/{u.id}/") for c in ck.checkpoints)
    # Cost, model and its download URLs.
    assert done.cost.currency_code == "USD" and done.cost.items[0].device_type == "cpu"
    assert done.cost.items[0].device_seconds > 0
    assert done.cost.amount_micros == sum(i.amount_micros for i in done.cost.items)
    model = await u.models.GetModel(M.GetModelRequest(id=done.model_id), metadata=u.md)
    assert model.steps == 6 and {f.name for f in model.files} == {
        "adapter_model.safetensors",
        "adapter_config.json",
    }
    urls = await u.models.CreateModelDownloadUrl(
        M.CreateModelDownloadUrlRequest(id=model.id, ttl_seconds=120), metadata=u.md
    )
    assert len(urls.urls) == 2 and all(x.url.startswith("http") for x in urls.urls)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await u.models.CreateModelDownloadUrl(
            M.CreateModelDownloadUrlRequest(id=model.id, ttl_seconds=10), metadata=u.md
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # Notifications.
    notes = await u.notes.ListNotifications(
        N.ListNotificationsRequest(unread_only=True), metadata=u.md
    )
    kinds = [n.kind for n in notes.notifications]
    assert N.NOTIFICATION_KIND_JOB_SUCCEEDED in kinds and N.NOTIFICATION_KIND_DATASET_READY in kinds
    marked = await u.notes.MarkRead(N.MarkReadRequest(all=True), metadata=u.md)
    assert marked.marked_count == len(kinds)
    # Isolation: another user sees none of it.
    other = User(env)
    for call in (
        other.jobs.GetJob(J.GetJobRequest(id=job.id), metadata=other.md),
        other.jobs.CancelJob(J.CancelJobRequest(id=job.id), metadata=other.md),
        other.jobs.RetryJob(J.RetryJobRequest(id=job.id), metadata=other.md),
        other.jobs.DeleteJob(J.DeleteJobRequest(id=job.id), metadata=other.md),
        other.jobs.ListMetrics(J.ListMetricsRequest(job_id=job.id), metadata=other.md),
        other.jobs.ListCheckpoints(J.ListCheckpointsRequest(job_id=job.id), metadata=other.md),
        other.models.GetModel(M.GetModelRequest(id=model.id), metadata=other.md),
        other.models.CreateModelDownloadUrl(
            M.CreateModelDownloadUrlRequest(id=model.id), metadata=other.md
        ),
        collect(other, job.id),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert not (await other.models.ListModels(M.ListModelsRequest(), metadata=other.md)).models
    assert not (await other.jobs.ListJobs(J.ListJobsRequest(), metadata=other.md)).jobs
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await other.notes.MarkRead(
            N.MarkReadRequest(ids=[notes.notifications[0].id]), metadata=other.md
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    # Delete: gone from Get/List/Watch, the model stays.
    await u.jobs.DeleteJob(J.DeleteJobRequest(id=job.id), metadata=u.md)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await u.jobs.GetJob(J.GetJobRequest(id=job.id), metadata=u.md)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    await u.models.GetModel(M.GetModelRequest(id=model.id), metadata=u.md)


async def test_cancel_then_retry_resumes_from_checkpoint(
    env: Env, ready: tuple[User, D.Dataset], worker: Worker
) -> None:
    u, ds = ready
    # Slow simulated steps so the job is surely running when cancelled.
    worker.settings = worker.settings.model_copy(update={"training_simulate_step_seconds": 0.15})
    job = await u.job(
        ds.id, executor=SIM, hp=J.Hyperparameters(max_steps=30, checkpoint_every_steps=3)
    )
    loop = asyncio.get_running_loop()
    while True:
        ck = await u.jobs.ListCheckpoints(J.ListCheckpointsRequest(job_id=job.id), metadata=u.md)
        if ck.checkpoints:
            break
        await asyncio.sleep(0.05)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await u.jobs.DeleteJob(J.DeleteJobRequest(id=job.id), metadata=u.md)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await u.jobs.RetryJob(J.RetryJobRequest(id=job.id), metadata=u.md)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    t0 = loop.time()
    cancelled = await u.jobs.CancelJob(J.CancelJobRequest(id=job.id), metadata=u.md)
    assert cancelled.status == J.JOB_STATUS_CANCELLED and cancelled.end_time.seconds
    again = await u.jobs.CancelJob(J.CancelJobRequest(id=job.id), metadata=u.md)
    assert again.status == J.JOB_STATUS_CANCELLED
    # The worker stops within seconds: no metric after a short while.
    await asyncio.sleep(1.5)
    m1 = await u.jobs.ListMetrics(J.ListMetricsRequest(job_id=job.id, page_size=200), metadata=u.md)
    await asyncio.sleep(1.0)
    m2 = await u.jobs.ListMetrics(J.ListMetricsRequest(job_id=job.id, page_size=200), metadata=u.md)
    assert len(m1.metric_points) == len(m2.metric_points) < 30
    assert loop.time() - t0 < 10
    cost1 = (await u.jobs.GetJob(J.GetJobRequest(id=job.id), metadata=u.md)).cost.amount_micros
    ck = await u.jobs.ListCheckpoints(J.ListCheckpointsRequest(job_id=job.id), metadata=u.md)
    last = ck.checkpoints[-1].step
    # Retry: attempt 2 resumes from the last checkpoint and ends with exactly 30 steps.
    worker.settings = worker.settings.model_copy(update={"training_simulate_step_seconds": 0.02})
    retried = await u.jobs.RetryJob(J.RetryJobRequest(id=job.id), metadata=u.md)
    assert retried.attempt == 2 and retried.status == J.JOB_STATUS_QUEUED
    assert not retried.HasField("error")
    done = await u.wait_job(job.id, TERMINAL)
    assert done.status == J.JOB_STATUS_SUCCEEDED and done.progress.steps.done == 30
    points = (
        await u.jobs.ListMetrics(J.ListMetricsRequest(job_id=job.id, page_size=200), metadata=u.md)
    ).metric_points
    second = [p.step for p in points if p.attempt == 2]
    assert second == list(range(last + 1, 31))
    assert done.cost.amount_micros >= cost1
    events = await collect(u, job.id)
    statuses = [e.status_changed.status for e in events if e.HasField("status_changed")]
    assert J.JOB_STATUS_CANCELLED in statuses and statuses[-1] == J.JOB_STATUS_SUCCEEDED
    # The simulated run says so in its log, as it starts and as it ends.
    logs = [e.log.text for e in events if e.HasField("log")]
    assert any("simulated" in line and "placeholder" in line for line in logs), logs
    assert any("simulation finished" in line for line in logs), logs
    kinds = [
        n.kind
        for n in (
            await u.notes.ListNotifications(N.ListNotificationsRequest(), metadata=u.md)
        ).notifications
    ]
    assert N.NOTIFICATION_KIND_JOB_CANCELLED in kinds


async def test_watch_notifications_streams_new_ones(
    env: Env, ready: tuple[User, D.Dataset]
) -> None:
    u = User(env)
    call = u.notes.WatchNotifications(
        N.WatchNotificationsRequest(include_unread=True), metadata=u.md
    )
    await u.dataset([chat("q", "a")])
    ev = await asyncio.wait_for(call.read(), 15)
    assert ev.notification.kind == N.NOTIFICATION_KIND_DATASET_READY
    call.cancel()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await u.notes.MarkRead(N.MarkReadRequest(), metadata=u.md)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_clone_gets_active_model_and_isolation(
    env: Env, ready: tuple[User, D.Dataset], worker: Worker
) -> None:
    u, ds = ready
    # The RAG service is not running here: CreateClone creates nothing.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await u.clones.CreateClone(
            C.CreateCloneRequest(name="me", base_model=env.tiny), metadata=u.md
        )
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert not (await u.clones.ListClones(C.ListClonesRequest(), metadata=u.md)).clones
    # A clone row as CreateClone leaves it (knowledge base made in RAG).
    clone_id = uuid.uuid4()
    await env.training.pool.execute(
        "INSERT INTO clones (id, user_id, name, base_model) VALUES ($1, $2, 'me', $3)",
        clone_id,
        u.id,
        env.tiny,
    )
    clone = await u.clones.GetClone(C.GetCloneRequest(id=str(clone_id)), metadata=u.md)
    assert clone.status == C.CLONE_STATUS_DRAFT
    job = await u.job(
        ds.id,
        executor=SIM,
        clone_id=str(clone_id),
        hp=J.Hyperparameters(max_steps=3, checkpoint_every_steps=2),
    )
    training = await u.clones.GetClone(C.GetCloneRequest(id=str(clone_id)), metadata=u.md)
    assert training.status == C.CLONE_STATUS_TRAINING
    done = await u.wait_job(job.id, TERMINAL)
    assert done.status == J.JOB_STATUS_SUCCEEDED
    clone = await u.clones.GetClone(C.GetCloneRequest(id=str(clone_id)), metadata=u.md)
    assert clone.status == C.CLONE_STATUS_READY and clone.active_model_id == done.model_id
    models = await u.models.ListModels(M.ListModelsRequest(clone_id=str(clone_id)), metadata=u.md)
    assert [m.id for m in models.models] == [done.model_id]
    upd = await u.clones.UpdateClone(
        C.UpdateCloneRequest(
            clone=C.Clone(id=str(clone_id), name="renamed", active_model_id=""),
            update_mask=field_mask_pb2.FieldMask(paths=["name", "active_model_id"]),
        ),
        metadata=u.md,
    )
    assert (
        upd.name == "renamed" and upd.active_model_id == "" and upd.status == C.CLONE_STATUS_DRAFT
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await u.clones.UpdateClone(
            C.UpdateCloneRequest(
                clone=C.Clone(id=str(clone_id)),
                update_mask=field_mask_pb2.FieldMask(paths=["base_model"]),
            ),
            metadata=u.md,
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    other = User(env)
    for call in (
        other.clones.GetClone(C.GetCloneRequest(id=str(clone_id)), metadata=other.md),
        other.clones.DeleteClone(C.DeleteCloneRequest(id=str(clone_id)), metadata=other.md),
        other.clones.AddKnowledge(
            C.AddKnowledgeRequest(id=str(clone_id), file_id="f"), metadata=other.md
        ),
        other.clones.UpdateClone(
            C.UpdateCloneRequest(
                clone=C.Clone(id=str(clone_id), name="x"),
                update_mask=field_mask_pb2.FieldMask(paths=["name"]),
            ),
            metadata=other.md,
        ),
        other.job(ds.id, clone_id=str(clone_id)),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    await u.clones.DeleteClone(C.DeleteCloneRequest(id=str(clone_id)), metadata=u.md)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await u.clones.GetClone(C.GetCloneRequest(id=str(clone_id)), metadata=u.md)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_real_peft_job_through_the_worker(
    env: Env, ready: tuple[User, D.Dataset], worker: Worker
) -> None:
    u, ds = ready
    job = await u.job(
        ds.id,
        executor=J.EXECUTOR_PEFT,
        method=J.TRAINING_METHOD_LORA,
        hp=J.Hyperparameters(
            max_steps=4, checkpoint_every_steps=2, learning_rate=1e-2, eval_split=0.2
        ),
    )
    done = await u.wait_job(job.id, TERMINAL, timeout=90)
    assert done.status == J.JOB_STATUS_SUCCEEDED, done.error
    assert done.progress.steps.done == 4 and done.progress.HasField("eval_loss")
    model = await u.models.GetModel(M.GetModelRequest(id=done.model_id), metadata=u.md)
    assert model.final_loss > 0 and model.HasField("final_eval_loss")
    sizes = {f.name: f.size_bytes for f in model.files}
    assert sizes["adapter_model.safetensors"] > 1000


async def test_list_jobs_pages_filters_and_rejects_bad_input(
    env: Env, ready: tuple[User, D.Dataset], worker: Worker
) -> None:
    u = User(env)
    ds = await u.dataset(MEMO)
    hp = J.Hyperparameters(max_steps=2, checkpoint_every_steps=1)
    done = await u.job(ds.id, executor=SIM, hp=hp)
    await u.wait_job(done.id, TERMINAL)
    cancelled = await u.job(ds.id, executor=SIM, hp=J.Hyperparameters(max_steps=500))
    await u.jobs.CancelJob(J.CancelJobRequest(id=cancelled.id), metadata=u.md)
    third = await u.job(ds.id, executor=SIM, hp=hp)
    await u.wait_job(third.id, TERMINAL)
    # Newest first, two pages of two and one.
    page = await u.jobs.ListJobs(J.ListJobsRequest(page_size=2), metadata=u.md)
    assert [j.id for j in page.jobs] == [third.id, cancelled.id] and page.next_page_token
    rest = await u.jobs.ListJobs(
        J.ListJobsRequest(page_size=2, page_token=page.next_page_token), metadata=u.md
    )
    assert [j.id for j in rest.jobs] == [done.id] and not rest.next_page_token
    only = await u.jobs.ListJobs(J.ListJobsRequest(status=J.JOB_STATUS_CANCELLED), metadata=u.md)
    assert [j.id for j in only.jobs] == [cancelled.id]
    for bad in (J.ListJobsRequest(page_size=-1), J.ListJobsRequest(page_token="not-a-token")):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await u.jobs.ListJobs(bad, metadata=u.md)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # Another user sees none of them.
    other = User(env)
    assert not (await other.jobs.ListJobs(J.ListJobsRequest(), metadata=other.md)).jobs


async def test_notifications_bad_input_and_another_users_stream(
    env: Env, ready: tuple[User, D.Dataset]
) -> None:
    u, other = User(env), User(env)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await u.notes.ListNotifications(
            N.ListNotificationsRequest(page_token="not-a-token"), metadata=u.md
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # The other user's stream stays silent while u gets a notification.
    theirs = other.notes.WatchNotifications(N.WatchNotificationsRequest(), metadata=other.md)
    mine = u.notes.WatchNotifications(N.WatchNotificationsRequest(), metadata=u.md)
    await asyncio.sleep(0.3)  # both streams subscribed
    await u.dataset([chat("q", "a")])
    ev = await asyncio.wait_for(mine.read(), 15)
    assert ev.notification.kind == N.NOTIFICATION_KIND_DATASET_READY
    with contextlib.suppress(asyncio.TimeoutError):
        while True:
            ev = await asyncio.wait_for(theirs.read(), 1.5)
            assert not ev.HasField("notification"), "another user's notification leaked"
    mine.cancel()
    theirs.cancel()
    listed = await other.notes.ListNotifications(N.ListNotificationsRequest(), metadata=other.md)
    assert not listed.notifications
