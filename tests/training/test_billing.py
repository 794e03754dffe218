"""Estimates before launch, hardware classes, quotas and costs, through the API and real
workers: EstimateJob counts the dataset's real tokens and steps exactly as the job then
runs them; a worker billing as an H100 records GPU hours at the class's price; over the
month's GPU hours or budget CreateJob answers RESOURCE_EXHAUSTED (QUOTA_EXCEEDED);
simulated jobs are never billed; an admin sets a user's quota; costs list by month."""

from __future__ import annotations

import datetime as dt
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2

from aivera.training.v1 import billing_pb2 as B
from aivera.training.v1 import billing_pb2_grpc
from aivera.training.v1 import datasets_pb2 as D
from aivera.training.v1 import jobs_pb2 as J
from services.training.config import HardwareClassSpec, _hardware_classes
from tests.helpers.errors import bad_field, reason
from tests.helpers.services import bearer
from tests.training.conftest import MEMO, Env, User, running_worker

TERMINAL = (J.JOB_STATUS_SUCCEEDED, J.JOB_STATUS_FAILED, J.JOB_STATUS_CANCELLED)
H100 = "nvidia-h100"
# A month's GPU hours every user of this module gets unless an admin sets their own: any
# real GPU use goes over it.
GPU_HOURS = 1e-7


@pytest.fixture(scope="module")
def training_overrides() -> dict[str, Any]:
    classes = _hardware_classes()
    classes["tiny-gpu"] = HardwareClassSpec(
        device_type="nvidia-tiny", memory_gib=0.0001, hourly_rate_micros=1, effective_tflops=1
    )
    return {"training_gpu_hours_per_month": GPU_HOURS, "training_hardware_classes": classes}


class Billed(User):
    def __init__(self, env: Env, role: str = "user") -> None:
        super().__init__(env)
        self.md = bearer(env.keyring.mint(self.id, role=role, ttl=3600))
        self.billing = billing_pb2_grpc.BillingServiceStub(env.chan)

    async def estimate(self, **kw: Any) -> J.JobEstimate:
        hp = kw.pop("hp", None) or J.Hyperparameters(max_steps=4, checkpoint_every_steps=2)
        req = J.CreateJobRequest(hyperparameters=hp, **kw)
        got: J.JobEstimate = await self.jobs.EstimateJob(
            J.EstimateJobRequest(job=req), metadata=self.md
        )
        return got

    async def quota(self) -> B.Quota:
        got: B.Quota = await self.billing.GetQuota(B.GetQuotaRequest(), metadata=self.md)
        return got

    async def months(self) -> list[B.MonthlyCostSummary]:
        got = await self.billing.ListCostSummaries(B.ListCostSummariesRequest(), metadata=self.md)
        return list(got.cost_summaries)


async def refused(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    return err.value


async def test_estimate_matches_the_job_it_describes(env: Env) -> None:
    u = Billed(env)
    ds = await u.dataset(MEMO)
    assert ds.status == D.DATASET_STATUS_READY
    hp = J.Hyperparameters(epochs=3, batch_size=2, checkpoint_every_steps=2)
    est = await u.estimate(dataset_id=ds.id, hp=hp)
    # The dataset's real tokens: nothing truncated, no eval split, so one epoch is the
    # dataset's own token counts.
    assert est.tokens_per_epoch == ds.stats.total_tokens
    assert est.trained_tokens_per_epoch == ds.stats.trained_tokens
    assert est.train_examples == ds.stats.example_count and est.eval_examples == 0
    assert (
        est.total_steps == 3 * est.steps_per_epoch and est.total_tokens == 3 * ds.stats.total_tokens
    )
    assert est.hardware_class == "cpu" and est.currency_code == "USD"
    assert est.hyperparameters.lora_rank == 16 and est.hyperparameters.batch_size == 2
    assert est.fits_in_memory and 0 < est.memory_required_bytes < est.memory_available_bytes
    assert est.within_quota and est.expected_seconds >= 1
    # Created with the same request, the job plans exactly those steps (no worker here:
    # it waits QUEUED, then is cancelled).
    job = await u.job(ds.id, hp=hp)
    queued = await u.wait_job(job.id, (J.JOB_STATUS_QUEUED, J.JOB_STATUS_FAILED))
    assert queued.status == J.JOB_STATUS_QUEUED and queued.hardware_class == "cpu"
    assert queued.progress.steps.total == est.total_steps
    await u.jobs.CancelJob(J.CancelJobRequest(id=job.id), metadata=u.md)
    # max_steps past one epoch: the remainder's tokens come from the next epoch's order.
    one = await u.estimate(
        dataset_id=ds.id, hp=J.Hyperparameters(epochs=1, batch_size=1, max_seq_length=64)
    )
    assert one.steps_per_epoch > 1 and one.total_tokens == one.tokens_per_epoch
    longer = await u.estimate(
        dataset_id=ds.id,
        hp=J.Hyperparameters(max_steps=one.steps_per_epoch + 1, batch_size=1, max_seq_length=64),
    )
    assert one.tokens_per_epoch < longer.total_tokens < 2 * one.tokens_per_epoch
    # A faster class is quicker; a simulated job costs nothing; QLoRA needs less memory.
    big = J.Hyperparameters(max_steps=200_000, batch_size=2)
    on_cpu = await u.estimate(dataset_id=ds.id, hp=big)
    on_h100 = await u.estimate(dataset_id=ds.id, hp=big, hardware_class=H100)
    assert on_h100.expected_seconds < on_cpu.expected_seconds and on_cpu.expected_cost_micros > 0
    sim = await u.estimate(dataset_id=ds.id, hp=big, executor=J.EXECUTOR_SIMULATE)
    assert sim.expected_cost_micros == 0
    q = await u.estimate(dataset_id=ds.id, method=J.TRAINING_METHOD_QLORA)
    lora = await u.estimate(dataset_id=ds.id, method=J.TRAINING_METHOD_LORA)
    assert q.memory_required_bytes < lora.memory_required_bytes
    small = await u.estimate(dataset_id=ds.id, hardware_class="tiny-gpu")
    assert not small.fits_in_memory


async def test_estimate_bad_input_and_another_users_dataset(env: Env) -> None:
    u = Billed(env)
    ds = await u.dataset(MEMO)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"hardware_class": "quantum"}, "job.hardware_class"),
        ({"hp": J.Hyperparameters(lora_rank=999)}, "job.hyperparameters.lora_rank"),
        ({"base_model": "nope"}, "job.base_model"),
        ({"dataset_id": "not-a-uuid"}, "job.dataset_id"),
    ]
    for kw, field in cases:
        err = await refused(u.estimate(**{"dataset_id": ds.id, **kw}))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, kw
        assert bad_field(err) == field
    err = await refused(u.job(ds.id, hardware_class="quantum"))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and bad_field(err) == "hardware_class"
    other = Billed(env)
    err = await refused(other.estimate(dataset_id=ds.id))
    assert err.code() == grpc.StatusCode.NOT_FOUND


async def test_gpu_hours_budget_simulation_and_monthly_costs(env: Env) -> None:
    u, admin, other = Billed(env), Billed(env, role="admin"), Billed(env)
    ds = await u.dataset(MEMO)
    hp = J.Hyperparameters(max_steps=3, checkpoint_every_steps=2)
    mask = field_mask_pb2.FieldMask

    async def gpu_hours(value: float) -> B.Quota:
        quota: B.Quota = await admin.billing.UpdateQuota(
            B.UpdateQuotaRequest(
                user_id=u.id,
                gpu_hours_per_month=value,
                update_mask=mask(paths=["gpu_hours_per_month"]),
            ),
            metadata=admin.md,
        )
        return quota

    # Room for one job: an admin gives the user GPU hours above the module's default.
    lifted = await gpu_hours(1000)
    assert lifted.gpu_hours_per_month == 1000 and lifted.user_id == u.id
    # A worker on the H100 pool (it bills as nvidia-h100) runs a real LoRA job.
    async with running_worker(
        env, training_device_type=H100, training_worker_hardware_classes=[H100]
    ):
        job = await u.job(ds.id, hp=hp, hardware_class=H100)
        done = await u.wait_job(job.id, TERMINAL, timeout=90)
    assert done.status == J.JOB_STATUS_SUCCEEDED, done.error
    (item,) = done.cost.items
    assert item.device_type == H100 and item.hourly_rate_micros == 4_500_000
    assert item.device_seconds > 0 and done.cost.amount_micros > 0
    # Back to the server default (0 in the request), which the hours used are over.
    back = await gpu_hours(0)
    assert back.gpu_hours_per_month == pytest.approx(GPU_HOURS)
    quota = await u.quota()
    assert quota.gpu_hours_used > GPU_HOURS and quota.spent_micros == done.cost.amount_micros
    assert quota.month == dt.datetime.now(dt.UTC).strftime("%Y-%m")
    # The month's GPU hours are used up: a GPU job is refused, a CPU job is not.
    err = await refused(u.job(ds.id, hp=hp, hardware_class=H100))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and reason(err) == "QUOTA_EXCEEDED"
    est = await u.estimate(dataset_id=ds.id, hardware_class=H100)
    assert not est.within_quota and "GPU hours" in est.quota_message
    cpu_job = await u.job(ds.id, hp=hp)
    await u.jobs.CancelJob(J.CancelJobRequest(id=cpu_job.id), metadata=u.md)
    # Simulated jobs are never billed, so the quota does not stop them.
    async with running_worker(env, training_device_type=H100):
        sim = await u.job(ds.id, hp=hp, hardware_class=H100, executor=J.EXECUTOR_SIMULATE)
        sim_done = await u.wait_job(sim.id, TERMINAL)
    assert sim_done.status == J.JOB_STATUS_SUCCEEDED
    assert sim_done.cost.items[0].device_seconds > 0 and sim_done.cost.amount_micros == 0
    assert (await u.quota()).spent_micros == quota.spent_micros
    (month,) = await u.months()
    assert month.month == quota.month and month.job_count == 1
    assert month.amount_micros == done.cost.amount_micros and month.gpu_hours > 0
    assert [i.device_type for i in month.items] == [H100]
    # An admin lifts the user's GPU hours again; then sets a budget that is already spent.
    await gpu_hours(1000)
    ok = await u.job(ds.id, hp=hp, hardware_class=H100)
    await u.jobs.CancelJob(J.CancelJobRequest(id=ok.id), metadata=u.md)
    await admin.billing.UpdateQuota(
        B.UpdateQuotaRequest(
            user_id=u.id, monthly_budget_micros=1, update_mask=mask(paths=["monthly_budget_micros"])
        ),
        metadata=admin.md,
    )
    err = await refused(u.job(ds.id, hp=hp))
    assert reason(err) == "QUOTA_EXCEEDED"
    limits = await u.quota()
    assert limits.monthly_budget_micros == 1 and limits.gpu_hours_per_month == 1000
    # Another user's quota and costs are their own.
    theirs = await other.quota()
    assert theirs.spent_micros == 0 and theirs.gpu_hours_used == 0
    assert not await other.months()


async def test_update_quota_is_admin_only_and_checked(env: Env) -> None:
    u, admin = Billed(env), Billed(env, role="admin")
    mask = field_mask_pb2.FieldMask(paths=["max_active_jobs"])
    err = await refused(
        u.billing.UpdateQuota(
            B.UpdateQuotaRequest(user_id=u.id, max_active_jobs=99, update_mask=mask),
            metadata=u.md,
        )
    )
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    bad: list[tuple[B.UpdateQuotaRequest, str]] = [
        (B.UpdateQuotaRequest(max_active_jobs=1, update_mask=mask), "user_id"),
        (B.UpdateQuotaRequest(user_id=u.id, max_active_jobs=1), "update_mask"),
        (
            B.UpdateQuotaRequest(
                user_id=u.id, update_mask=field_mask_pb2.FieldMask(paths=["role"])
            ),
            "update_mask",
        ),
        (
            B.UpdateQuotaRequest(user_id=u.id, max_active_jobs=-1, update_mask=mask),
            "max_active_jobs",
        ),
    ]
    for req, field in bad:
        err = await refused(admin.billing.UpdateQuota(req, metadata=admin.md))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and bad_field(err) == field
    # One active job allowed: the second is refused with the per-user limit.
    one = await admin.billing.UpdateQuota(
        B.UpdateQuotaRequest(user_id=u.id, max_active_jobs=1, update_mask=mask), metadata=admin.md
    )
    assert one.max_active_jobs == 1
    ds = await u.dataset(MEMO)
    first = await u.job(ds.id)
    err = await refused(u.job(ds.id))
    assert reason(err) == "TOO_MANY_ACTIVE_JOBS"
    await u.jobs.CancelJob(J.CancelJobRequest(id=first.id), metadata=u.md)
    # Back to the server default (0 in the request).
    back = await admin.billing.UpdateQuota(
        B.UpdateQuotaRequest(user_id=u.id, update_mask=mask), metadata=admin.md
    )
    assert back.max_active_jobs == env.settings.training_max_active_jobs
    err = await refused(
        u.billing.ListCostSummaries(B.ListCostSummariesRequest(page_token="x"), metadata=u.md)
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_simulation_is_refused_in_prod_unless_allowed(env: Env) -> None:
    u = Billed(env)
    ds = await u.dataset(MEMO)
    spec = env.training.spec
    jobs = spec.training.jobs  # type: ignore[attr-defined]
    saved = jobs.settings
    try:
        jobs.settings = saved.model_copy(update={"aivera_env": "prod"})
        err = await refused(u.job(ds.id, executor=J.EXECUTOR_SIMULATE))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and bad_field(err) == "executor"
        jobs.settings = saved.model_copy(
            update={"aivera_env": "prod", "training_allow_simulate_in_prod": True}
        )
        allowed = await u.job(ds.id, executor=J.EXECUTOR_SIMULATE)
        assert allowed.executor == J.EXECUTOR_SIMULATE
        await u.jobs.CancelJob(J.CancelJobRequest(id=allowed.id), metadata=u.md)
    finally:
        jobs.settings = saved


async def test_budget_checked_against_the_estimate_and_while_running(env: Env) -> None:
    u, admin = Billed(env), Billed(env, role="admin")
    ds = await u.dataset(MEMO)
    await admin.billing.UpdateQuota(
        B.UpdateQuotaRequest(
            user_id=u.id,
            monthly_budget_micros=10,  # 0.36 s of the cpu class
            update_mask=field_mask_pb2.FieldMask(paths=["monthly_budget_micros"]),
        ),
        metadata=admin.md,
    )
    # Expected to cost more than the whole budget: refused before it is created.
    huge = J.Hyperparameters(max_steps=1_000_000)
    est = await u.estimate(dataset_id=ds.id, hp=huge)
    assert est.expected_cost_micros > 10 and not est.within_quota
    err = await refused(u.job(ds.id, hp=huge))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and reason(err) == "QUOTA_EXCEEDED"
    assert not (await u.jobs.ListJobs(J.ListJobsRequest(), metadata=u.md)).jobs
    # Expected to fit (the tiny model's estimate is near 0), but the CPU time it really
    # takes runs the budget out: the worker stops it at a step boundary.
    long = J.Hyperparameters(max_steps=300, checkpoint_every_steps=1000)
    job = await u.job(ds.id, hp=long)
    async with running_worker(env):
        failed = await u.wait_job(job.id, TERMINAL, timeout=90)
    assert failed.status == J.JOB_STATUS_FAILED, failed
    assert failed.error.code == J.JOB_ERROR_CODE_QUOTA_EXCEEDED
    assert "budget" in failed.error.message and failed.progress.steps.done < 300
    assert (await u.quota()).spent_micros >= 10
