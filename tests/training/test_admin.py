"""An admin reads any user's jobs and their logs (deleted jobs too); every call leaves an
audit line in the JSON log; a user without the admin role is refused."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import grpc
import pytest

from aivera.training.v1 import admin_pb2 as A
from aivera.training.v1 import admin_pb2_grpc
from aivera.training.v1 import jobs_pb2 as J
from tests.helpers.services import bearer
from tests.training.conftest import MEMO, Env, User, running_worker
from tests.training.test_models import first_checkpoint

TERMINAL = (J.JOB_STATUS_SUCCEEDED, J.JOB_STATUS_FAILED, J.JOB_STATUS_CANCELLED)


def admin_stub(env: Env) -> tuple[admin_pb2_grpc.TrainingAdminServiceStub, Any, str]:
    admin_id = "admin-" + uuid.uuid4().hex[:8]
    md = bearer(env.keyring.mint(admin_id, role="admin", ttl=600))
    return admin_pb2_grpc.TrainingAdminServiceStub(env.chan), md, admin_id


def audits(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [
        r.fields
        for r in caplog.records
        if r.name == "aivera.training.admin" and hasattr(r, "fields")
    ]


async def test_admin_reads_a_users_jobs_and_logs(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    u = User(env)
    ds = await u.dataset(MEMO)
    # A job with log lines: cancelled after a checkpoint, then resumed from it.
    async with running_worker(env, training_simulate_step_seconds=0.1) as w:
        job = await u.job(
            ds.id,
            executor=J.EXECUTOR_SIMULATE,
            hp=J.Hyperparameters(max_steps=8, checkpoint_every_steps=2),
        )
        await first_checkpoint(u, job.id)
        await u.jobs.CancelJob(J.CancelJobRequest(id=job.id), metadata=u.md)
        w.settings = w.settings.model_copy(update={"training_simulate_step_seconds": 0.01})
        await u.jobs.RetryJob(J.RetryJobRequest(id=job.id), metadata=u.md)
        done = await u.wait_job(job.id, TERMINAL)
        other = await u.job(ds.id, executor=J.EXECUTOR_SIMULATE, hp=J.Hyperparameters(max_steps=1))
        await u.wait_job(other.id, TERMINAL)
    await u.jobs.DeleteJob(J.DeleteJobRequest(id=other.id), metadata=u.md)
    stub, md, admin_id = admin_stub(env)
    caplog.set_level(logging.INFO, logger="aivera.training.admin")
    listed = await stub.ListUserJobs(A.ListUserJobsRequest(user_id=u.id), metadata=md)
    assert [(j.job.id, j.deleted, j.user_id) for j in listed.jobs] == [
        (other.id, True, u.id),
        (job.id, False, u.id),
    ]
    assert listed.jobs[1].job.status == done.status == J.JOB_STATUS_SUCCEEDED
    page = await stub.ListUserJobs(A.ListUserJobsRequest(page_size=1), metadata=md)
    assert len(page.jobs) == 1 and page.next_page_token  # every user's jobs
    one = await stub.GetUserJob(A.GetUserJobRequest(id=job.id), metadata=md)
    assert one.user_id == u.id and one.job.cost.items
    logs = await stub.ListJobEvents(
        A.ListJobEventsRequest(job_id=job.id, logs_only=True), metadata=md
    )
    assert logs.events and all(e.HasField("log") for e in logs.events)
    assert any("resuming" in e.log.text for e in logs.events)
    # All events, in pages, in sequence order.
    seen: list[int] = []
    token = ""
    while True:
        got = await stub.ListJobEvents(
            A.ListJobEventsRequest(job_id=job.id, page_size=5, page_token=token), metadata=md
        )
        seen += [e.sequence for e in got.events]
        token = got.next_page_token
        if not token:
            break
    assert seen == list(range(1, len(seen) + 1)) and len(seen) > 5
    # Each call is audited with who looked at whose job.
    trail = audits(caplog)
    assert {
        "audit": "training.admin.list_jobs",
        "admin": admin_id,
        "target_user": u.id,
    }.items() <= trail[0].items()
    assert any(
        a["audit"] == "training.admin.list_job_events"
        and a["job_id"] == job.id
        and a["target_user"] == u.id
        and a["admin"] == admin_id
        for a in trail
    )
    assert any(a["audit"] == "training.admin.get_job" for a in trail)


async def test_admin_only_and_bad_input(env: Env) -> None:
    u = User(env)
    user_stub = admin_pb2_grpc.TrainingAdminServiceStub(env.chan)
    for call in (
        user_stub.ListUserJobs(A.ListUserJobsRequest(), metadata=u.md),
        user_stub.GetUserJob(A.GetUserJobRequest(id=str(uuid.uuid4())), metadata=u.md),
        user_stub.ListJobEvents(A.ListJobEventsRequest(job_id=str(uuid.uuid4())), metadata=u.md),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    stub, md, _ = admin_stub(env)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetUserJob(A.GetUserJobRequest(id=str(uuid.uuid4())), metadata=md)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    for bad in (
        stub.GetUserJob(A.GetUserJobRequest(id="nope"), metadata=md),
        stub.ListUserJobs(A.ListUserJobsRequest(page_token="x"), metadata=md),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await bad
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
