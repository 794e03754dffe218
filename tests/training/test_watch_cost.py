"""WatchJob says what a running job has cost so far: a live `cost` event (not stored, the
last stored sequence) when the job's billed device time changed, looked at once per
heartbeat interval; the stored events keep their gapless sequence around it, and a
finished job's replay ends without one (its `final` carries the cost)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

from aivera.training.v1 import jobs_pb2 as J
from tests.training.conftest import MEMO, Env, User, running_worker

LIVE = ("heartbeat", "cost", "final")


@pytest.fixture(scope="module")
def training_overrides() -> dict[str, Any]:
    return {"training_watch_heartbeat_seconds": 0.3}


async def watch(u: User, job_id: str) -> list[J.JobEvent]:
    call = u.jobs.WatchJob(J.WatchJobRequest(id=job_id), metadata=u.md)
    return [e async for e in call]


async def test_a_running_job_streams_its_cost_so_far(env: Env) -> None:
    u = User(env)
    ds = await u.dataset(MEMO)
    hp = J.Hyperparameters(max_steps=15, checkpoint_every_steps=5)
    # The worker bills at each of its heartbeats (0.3 s); the job runs 15 × 0.2 s.
    async with running_worker(env, training_heartbeat_seconds=0.3):
        job = await u.job(ds.id, hp=hp, executor=J.EXECUTOR_SIMULATE)
        events = await asyncio.wait_for(watch(u, job.id), 90)
    final = events[-1]
    assert final.HasField("final") and final.final.status == J.JOB_STATUS_SUCCEEDED
    costs = [e for e in events if e.HasField("cost")]
    assert len(costs) >= 2, [e.WhichOneof("event") for e in events]
    seconds = [e.cost.items[0].device_seconds for e in costs]
    assert seconds == sorted(seconds) and seconds[-1] > seconds[0]  # it grows as it runs
    assert all(e.cost.items[0].device_type == "cpu" for e in costs)
    assert all(e.cost.currency_code == final.final.cost.currency_code for e in costs)
    assert seconds[-1] <= final.final.cost.items[0].device_seconds
    # Live events repeat the last stored sequence; the stored ones stay 1, 2, 3, … .
    stored = [e for e in events if e.WhichOneof("event") not in LIVE]
    assert [e.sequence for e in stored] == list(range(1, len(stored) + 1))
    assert all(e.sequence <= stored[-1].sequence for e in costs)
    # A finished job's replay: its stored events and `final`, no cost event.
    again = await watch(u, job.id)
    assert not any(e.HasField("cost") for e in again)
    assert again[-1].final.cost == final.final.cost


async def test_a_queued_job_has_no_cost_to_stream(env: Env) -> None:
    u = User(env)
    ds = await u.dataset(MEMO)
    job = await u.job(ds.id, executor=J.EXECUTOR_SIMULATE)  # no worker: it stays queued
    await u.wait_job(job.id, (J.JOB_STATUS_QUEUED,))
    seen: list[J.JobEvent] = []

    async def follow() -> None:
        async for e in u.jobs.WatchJob(J.WatchJobRequest(id=job.id), metadata=u.md):
            seen.append(e)

    task = asyncio.create_task(follow())
    try:
        for _ in range(100):  # until a few heartbeats went by (0.3 s each)
            if sum(e.HasField("heartbeat") for e in seen) >= 3:
                break
            await asyncio.sleep(0.1)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert sum(e.HasField("heartbeat") for e in seen) >= 3
    assert not any(e.HasField("cost") for e in seen)
    await u.jobs.CancelJob(J.CancelJobRequest(id=job.id), metadata=u.md)
