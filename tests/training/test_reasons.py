"""The ErrorInfo reasons programs branch on when training refuses a call: a dataset that
is not ready, a job in the wrong state, a dataset still in use, too many active jobs, a
base model that is not allowed, and another user's job. No worker runs in this module,
so jobs stay QUEUED once validated; the active-job limit is 2 here."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from aivera.training.v1 import datasets_pb2 as D
from aivera.training.v1 import jobs_pb2 as J
from tests.helpers.errors import bad_field, error_info, localized, reason
from tests.training.conftest import MEMO, Env, User, chat

pytestmark = pytest.mark.asyncio
LIMIT = 2


@pytest.fixture(scope="module")
def training_overrides() -> dict[str, Any]:
    return {"training_max_active_jobs": LIMIT}


async def refused(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    return err.value


async def test_a_dataset_that_is_not_ready(env: Env) -> None:
    u = User(env)
    bad = await u.dataset(b"{nope}\n")
    assert bad.status == D.DATASET_STATUS_ERROR
    err = await refused(u.job(bad.id))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert reason(err) == "DATASET_NOT_READY"
    assert error_info(err).metadata["dataset_id"] == bad.id
    assert localized(err).message


async def test_job_state_in_use_and_the_active_job_limit(env: Env) -> None:
    u = User(env)
    # No example has trainable tokens within 16: validation fails the job.
    short = await u.dataset([chat("long " * 40, "answer")])
    failed = await u.job(short.id, hp=J.Hyperparameters(max_steps=1, max_seq_length=16))
    failed = await u.wait_job(failed.id, (J.JOB_STATUS_FAILED,))
    assert failed.error.code == J.JOB_ERROR_CODE_DATASET_INVALID
    err = await refused(u.jobs.CancelJob(J.CancelJobRequest(id=failed.id), metadata=u.md))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert reason(err) == "JOB_STATE"
    assert error_info(err).metadata["status"] == "JOB_STATUS_FAILED"

    ds = await u.dataset(MEMO)
    queued = await u.job(ds.id)
    await u.wait_job(queued.id, (J.JOB_STATUS_QUEUED,))
    for call in (
        u.jobs.DeleteJob(J.DeleteJobRequest(id=queued.id), metadata=u.md),
        u.jobs.RetryJob(J.RetryJobRequest(id=queued.id), metadata=u.md),
    ):
        err = await refused(call)
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert reason(err) == "JOB_STATE"
    err = await refused(u.datasets.DeleteDataset(D.DeleteDatasetRequest(id=ds.id), metadata=u.md))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and reason(err) == "IN_USE"

    second = await u.job(ds.id)
    err = await refused(u.job(ds.id))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert reason(err) == "TOO_MANY_ACTIVE_JOBS"
    assert error_info(err).metadata["limit"] == str(LIMIT)
    # Cancelling frees a slot; cancelling again changes nothing.
    for _ in range(2):
        job = await u.jobs.CancelJob(J.CancelJobRequest(id=second.id), metadata=u.md)
        assert job.status == J.JOB_STATUS_CANCELLED
    third = await u.job(ds.id)
    assert third.status == J.JOB_STATUS_VALIDATING


async def test_a_base_model_that_is_not_allowed(env: Env) -> None:
    u = User(env)
    file_id = await u.upload(b'{"messages": []}\n')
    err = await refused(
        u.datasets.CreateDataset(
            D.CreateDatasetRequest(name="d", file_id=file_id, base_model="gpt-17"), metadata=u.md
        )
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason(err) == "BASE_MODEL_UNAVAILABLE" and bad_field(err) == "base_model"


async def test_another_users_job_is_not_found(env: Env) -> None:
    u, other = User(env), User(env)
    ds = await u.dataset(MEMO)
    job = await u.job(ds.id)
    for call in (
        other.jobs.GetJob(J.GetJobRequest(id=job.id), metadata=other.md),
        other.jobs.CancelJob(J.CancelJobRequest(id=job.id), metadata=other.md),
        other.jobs.RetryJob(J.RetryJobRequest(id=job.id), metadata=other.md),
        other.jobs.DeleteJob(J.DeleteJobRequest(id=job.id), metadata=other.md),
        other.jobs.ListMetrics(J.ListMetricsRequest(job_id=job.id), metadata=other.md),
        other.job(ds.id),
    ):
        err = await refused(call)
        assert err.code() == grpc.StatusCode.NOT_FOUND
        assert reason(err) == "NOT_FOUND"
    await u.jobs.CancelJob(J.CancelJobRequest(id=job.id), metadata=u.md)
