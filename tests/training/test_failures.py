"""The failure half of the job state machine, through the API and real workers: an invalid
dataset, out of memory, a NaN loss, a timeout, workers lost past the limit (a worker
process killed), and the dataset's file deleted mid-job. Each ends FAILED with its code,
a JOB_FAILED notification, a cost record for the device time used, and its clone (if
any) told: the clone shows FAILED and the notification names it."""

from __future__ import annotations

import asyncio
import signal
import uuid
from pathlib import Path
from typing import Any, cast

import pytest

from aivera.storage.v1 import storage_pb2
from aivera.training.v1 import clones_pb2 as C
from aivera.training.v1 import jobs_pb2 as J
from aivera.training.v1 import notifications_pb2 as N
from services.training.config import HardwareClassSpec, _hardware_classes
from services.training.worker import out_of_memory
from tests.helpers.tiny import build_tiny_model
from tests.training.conftest import MEMO, Env, User, chat, running_worker
from tests.training.test_worker_kill import start_worker

SIM, PEFT = J.EXECUTOR_SIMULATE, J.EXECUTOR_PEFT
FAILED = (J.JOB_STATUS_FAILED, J.JOB_STATUS_SUCCEEDED, J.JOB_STATUS_CANCELLED)


@pytest.fixture(scope="module")
def nan_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A base model whose embeddings are NaN: every loss it computes is NaN."""
    import torch
    from transformers import AutoModelForCausalLM

    folder = build_tiny_model(tmp_path_factory.mktemp("models") / "nan-llama")
    model = AutoModelForCausalLM.from_pretrained(folder)
    # A Llama's input embeddings are an nn.Embedding; transformers types them as any Module.
    embeddings = cast(torch.nn.Embedding, model.get_input_embeddings())
    with torch.no_grad():
        embeddings.weight.fill_(float("nan"))
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def training_overrides(tiny_model: Path, nan_model: Path) -> dict[str, Any]:
    classes = _hardware_classes()
    classes["tiny-gpu"] = HardwareClassSpec(
        device_type="nvidia-tiny", memory_gib=0.01, hourly_rate_micros=1_000, effective_tflops=1
    )
    return {
        "allowed_base_models": [str(tiny_model), str(nan_model)],
        "training_hardware_classes": classes,
    }


async def make_clone(env: Env, u: User, base_model: str) -> str:
    clone_id = uuid.uuid4()
    await env.training.pool.execute(
        "INSERT INTO clones (id, user_id, name, base_model) VALUES ($1, $2, 'twin', $3)",
        clone_id,
        u.id,
        base_model,
    )
    return str(clone_id)


async def ends_failed(
    u: User, job_id: str, code: int, *, device_time: bool = True, clone_id: str = ""
) -> J.TrainingJob:
    """The job FAILED with `code`, its owner notified (naming the clone), its device time
    billed, its clone showing FAILED."""
    job = await u.wait_job(job_id, FAILED, timeout=90)
    assert job.status == J.JOB_STATUS_FAILED, job
    assert job.error.code == code, job.error
    assert job.end_time.seconds
    notes = (
        await u.notes.ListNotifications(N.ListNotificationsRequest(), metadata=u.md)
    ).notifications
    mine = [n for n in notes if n.job_id == job_id]
    assert [n.kind for n in mine] == [N.NOTIFICATION_KIND_JOB_FAILED]
    assert job.error.message in mine[0].body and mine[0].clone_id == clone_id
    if device_time:
        assert job.cost.items and all(i.device_seconds > 0 for i in job.cost.items)
        assert job.cost.amount_micros == sum(i.amount_micros for i in job.cost.items)
    else:
        assert not job.cost.items
    if clone_id:
        clone = await u.clones.GetClone(C.GetCloneRequest(id=clone_id), metadata=u.md)
        assert clone.status == C.CLONE_STATUS_FAILED
    return job


async def test_invalid_dataset_fails_before_any_device_time(env: Env) -> None:
    u = User(env)
    clone = await make_clone(env, u, env.tiny)
    # No example has trainable tokens within 16 tokens.
    ds = await u.dataset([chat("long " * 40, "answer")] * 2)
    job = await u.job(ds.id, clone_id=clone, hp=J.Hyperparameters(max_steps=2, max_seq_length=16))
    failed = await ends_failed(
        u, job.id, J.JOB_ERROR_CODE_DATASET_INVALID, device_time=False, clone_id=clone
    )
    assert "trainable" in failed.error.message


async def test_out_of_memory(env: Env) -> None:
    u = User(env)
    ds = await u.dataset(MEMO)
    # A worker on the "tiny-gpu" pool: 10 MiB of device memory, the job needs far more.
    async with running_worker(env, training_device_type="nvidia-tiny"):
        job = await u.job(ds.id, executor=PEFT, hardware_class="tiny-gpu")
        failed = await ends_failed(u, job.id, J.JOB_ERROR_CODE_OUT_OF_MEMORY)
    assert "GiB" in failed.error.message and failed.cost.items[0].device_type == "nvidia-tiny"
    # The reactive path knows a real allocation failure from torch, and nothing else.
    import torch

    with pytest.raises(RuntimeError) as real:
        torch.empty(2**62, dtype=torch.uint8)
    assert out_of_memory(real.value) and out_of_memory(MemoryError())
    assert not out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))


async def test_nan_loss(env: Env, nan_model: Path) -> None:
    u = User(env)
    clone = await make_clone(env, u, str(nan_model))
    ds = await u.dataset(MEMO)
    async with running_worker(env):
        job = await u.job(
            ds.id,
            executor=PEFT,
            clone_id=clone,
            base_model=str(nan_model),
            hp=J.Hyperparameters(max_steps=3),
        )
        failed = await ends_failed(
            u, job.id, J.JOB_ERROR_CODE_NUMERICAL_INSTABILITY, clone_id=clone
        )
    assert failed.error.step == 0 and "nan" in failed.error.message.lower()


async def test_timeout(env: Env) -> None:
    u = User(env)
    ds = await u.dataset(MEMO)
    async with running_worker(
        env, training_max_job_seconds=1.0, training_simulate_step_seconds=0.1
    ):
        job = await u.job(ds.id, executor=SIM, hp=J.Hyperparameters(max_steps=200))
        failed = await ends_failed(u, job.id, J.JOB_ERROR_CODE_TIMEOUT)
    assert 0 < failed.progress.steps.done < 200
    assert sum(i.device_seconds for i in failed.cost.items) >= 1.0


async def test_worker_lost_past_the_limit(env: Env, tmp_path: Path) -> None:
    u = User(env)
    clone = await make_clone(env, u, env.tiny)
    ds = await u.dataset(MEMO)
    job = await u.job(ds.id, executor=SIM, clone_id=clone, hp=J.Hyperparameters(max_steps=500))
    await u.wait_job(job.id, (J.JOB_STATUS_QUEUED,))
    proc = start_worker(env, "doomed", tmp_path / "doomed.log")
    try:
        running = await u.wait_job(job.id, (J.JOB_STATUS_RUNNING,), timeout=90)
        assert running.worker_id == "doomed"
        await asyncio.sleep(1.0)  # a heartbeat or two bill its device time
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    # The next worker reaps the expired lease; with no loss allowed the job fails.
    async with running_worker(env, training_max_worker_losses=0):
        failed = await ends_failed(u, job.id, J.JOB_ERROR_CODE_WORKER_LOST, clone_id=clone)
    assert failed.worker_id == "doomed"


async def test_dataset_file_deleted_mid_job(env: Env) -> None:
    u = User(env)
    ds = await u.dataset(MEMO)
    async with running_worker(env, training_simulate_step_seconds=0.15) as first:
        job = await u.job(ds.id, executor=SIM, hp=J.Hyperparameters(max_steps=300))
        await u.wait_job(job.id, (J.JOB_STATUS_RUNNING,))
        # The dataset row cannot be deleted while the job runs; its storage file can.
        await u.storage.DeleteFile(storage_pb2.DeleteFileRequest(id=ds.file_id), metadata=u.md)
        first.shutdown.set()  # the worker stops; the job goes back to the queue
    async with running_worker(env):
        failed = await ends_failed(u, job.id, J.JOB_ERROR_CODE_DATASET_INVALID)
    assert "deleted" in failed.error.message
