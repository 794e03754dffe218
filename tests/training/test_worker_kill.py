"""A worker process killed mid-job (SIGKILL): after the lease expires another worker
process resumes from the last checkpoint and the job ends with exactly its steps."""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from aivera.training.v1 import jobs_pb2 as J
from tests.training.conftest import MEMO, Env, User

pytestmark = pytest.mark.asyncio
ROOT = Path(__file__).resolve().parents[2]


def start_worker(env: Env, worker_id: str, log: Path, **extra: str) -> subprocess.Popen[bytes]:
    """A worker process on the module's database and storage; `extra`: more env vars."""
    vars_ = dict(os.environ)
    vars_.update(
        DATABASE_URL=env.settings.dsn(),
        STORAGE_ADDR=env.settings.storage_addr,
        ALLOWED_BASE_MODELS=json.dumps([env.tiny]),
        TRAINING_LEASE_SECONDS="3",
        TRAINING_HEARTBEAT_SECONDS="0.5",
        TRAINING_POLL_SECONDS="0.3",
        TRAINING_TORCH_THREADS="1",
        WORKER_ID=worker_id,
        AIVERA_ENV="test",
        PYTHONPATH=f"{ROOT}:{ROOT / 'gen'}",
    )
    vars_.update(extra)
    return subprocess.Popen(
        [sys.executable, "-m", "services.training", "worker"],
        cwd=ROOT,
        env=vars_,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )


async def test_killed_worker_is_resumed_by_another(env: Env, tmp_path: Path) -> None:
    u = User(env)
    ds = await u.dataset(MEMO)
    total = 40
    job = await u.job(
        ds.id,
        executor=J.EXECUTOR_PEFT,
        hp=J.Hyperparameters(
            max_steps=total, checkpoint_every_steps=5, batch_size=1, learning_rate=5e-3
        ),
    )
    # Watch live from the start, through the kill, to the end.
    live: list[J.JobEvent] = []

    async def watch() -> None:
        async for ev in u.jobs.WatchJob(J.WatchJobRequest(id=job.id), metadata=u.md):
            live.append(ev)

    watcher = asyncio.create_task(watch())
    await u.wait_job(job.id, (J.JOB_STATUS_QUEUED,))
    await asyncio.sleep(2.5)  # no worker yet: the stream sends a heartbeat
    assert any(e.HasField("heartbeat") for e in live), live
    first = start_worker(env, "worker-a", tmp_path / "a.log")
    second = None
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while True:  # wait for a checkpoint, then kill the worker hard
            ck = await u.jobs.ListCheckpoints(
                J.ListCheckpointsRequest(job_id=job.id), metadata=u.md
            )
            if ck.checkpoints:
                break
            assert loop.time() < deadline, (tmp_path / "a.log").read_text()[-3000:]
            await asyncio.sleep(0.02)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        killed_at = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
        killed = await u.jobs.GetJob(J.GetJobRequest(id=job.id), metadata=u.md)
        assert killed.status == J.JOB_STATUS_RUNNING and killed.worker_id == "worker-a"
        assert killed.progress.steps.done < total, "the job finished before the kill"
        ck = await u.jobs.ListCheckpoints(J.ListCheckpointsRequest(job_id=job.id), metadata=u.md)
        resume_step = ck.checkpoints[-1].step
        second = start_worker(env, "worker-b", tmp_path / "b.log")
        done = await u.wait_job(job.id, (J.JOB_STATUS_SUCCEEDED, J.JOB_STATUS_FAILED), timeout=90)
        assert done.status == J.JOB_STATUS_SUCCEEDED, (tmp_path / "b.log").read_text()[-3000:]
        assert done.worker_id == "worker-b" and done.attempt == 1
        assert done.progress.steps.done == done.progress.steps.total == total
        points = (
            await u.jobs.ListMetrics(
                J.ListMetricsRequest(job_id=job.id, page_size=200), metadata=u.md
            )
        ).metric_points
        latest = {p.step: p for p in points}
        assert sorted(latest) == list(range(1, total + 1))
        # Worker b started from the checkpoint, not from step 1 (nor after it).
        after_kill = [p.step for p in points if p.create_time.ToDatetime() > killed_at]
        assert after_kill == list(range(resume_step + 1, total + 1))
        events = []
        async for ev in u.jobs.WatchJob(J.WatchJobRequest(id=job.id), metadata=u.md):
            events.append(ev)
        messages = [e.status_changed.message for e in events if e.HasField("status_changed")]
        assert any("worker-a lost" in m and f"step {resume_step}" in m for m in messages), messages
        assert {i.device_type for i in done.cost.items} == {"cpu"}
        await asyncio.wait_for(watcher, 10)
        stored = [e for e in live if e.WhichOneof("event") not in ("heartbeat", "cost")]
        assert [e.sequence for e in stored[:-1]] == list(range(1, len(stored)))
        assert stored[-1].HasField("final") and stored[-1].final.status == J.JOB_STATUS_SUCCEEDED
        assert [e.sequence for e in stored[:-1]] == [e.sequence for e in events[:-1]]
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
