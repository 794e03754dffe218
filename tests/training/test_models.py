"""Model management through the API and a real worker: a checkpoint promoted to a model
(a real peft adapter that loads onto the base model), artifacts that say whether they are
simulated, continuing training from a model's adapter, rename, soft delete (a clone using
the model loses it and is told; files purged after retention), and retrying a FAILED or
CANCELLED job with changed hyperparameters (it starts over from step 0)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2

from aivera.storage.v1 import storage_pb2
from aivera.training.v1 import clones_pb2 as C
from aivera.training.v1 import jobs_pb2 as J
from aivera.training.v1 import models_pb2 as M
from aivera.training.v1 import notifications_pb2 as N
from services.training.worker import Worker
from tests.helpers.errors import bad_field, reason
from tests.training.conftest import MEMO, Env, User, chat, running_worker

TERMINAL = (J.JOB_STATUS_SUCCEEDED, J.JOB_STATUS_FAILED, J.JOB_STATUS_CANCELLED)
SIM = J.EXECUTOR_SIMULATE
PEFT = J.EXECUTOR_PEFT
Mask = field_mask_pb2.FieldMask


@pytest.fixture(scope="module")
def training_overrides() -> dict[str, Any]:
    return {"training_model_retention_seconds": 0.0}


@pytest.fixture(scope="module")
async def worker(env: Env) -> AsyncIterator[Worker]:
    async with running_worker(env) as w:
        yield w


async def refused(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    return err.value


async def download(u: User, file_id: str) -> bytes:
    out = b""
    async for part in u.storage.Download(storage_pb2.DownloadRequest(id=file_id), metadata=u.md):
        out += part.chunk
    return out


async def first_checkpoint(u: User, job_id: str) -> None:
    req = J.ListCheckpointsRequest(job_id=job_id)
    for _ in range(600):
        if (await u.jobs.ListCheckpoints(req, metadata=u.md)).checkpoints:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("no checkpoint")


async def save_model(u: User, model: M.ModelArtifact, folder: Path) -> Path:
    files = {f.name: await download(u, f.file_id) for f in model.files}

    def write() -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for name, content in files.items():
            (folder / name).write_bytes(content)

    await asyncio.to_thread(write)
    return folder


async def test_promote_a_checkpoint_and_continue_from_it(
    env: Env, worker: Worker, tmp_path: Path
) -> None:
    u = User(env)
    ds = await u.dataset(MEMO)
    hp = J.Hyperparameters(max_steps=4, checkpoint_every_steps=2, learning_rate=1e-2, lora_rank=4)
    job = await u.job(ds.id, executor=PEFT, hp=hp)
    done = await u.wait_job(job.id, TERMINAL, timeout=90)
    assert done.status == J.JOB_STATUS_SUCCEEDED, done.error
    final = await u.models.GetModel(M.GetModelRequest(id=done.model_id), metadata=u.md)
    assert not final.simulated and not final.checkpoint_id
    (ck,) = (
        await u.jobs.ListCheckpoints(J.ListCheckpointsRequest(job_id=job.id), metadata=u.md)
    ).checkpoints
    model = await u.models.PromoteCheckpoint(
        M.PromoteCheckpointRequest(job_id=job.id, checkpoint_id=ck.id), metadata=u.md
    )
    assert model.checkpoint_id == ck.id and model.steps == 2 and not model.simulated
    assert model.name.endswith("(step 2)") and model.final_loss == pytest.approx(ck.loss)
    listed = await u.models.ListModels(M.ListModelsRequest(), metadata=u.md)
    assert {m.id for m in listed.models} == {model.id, final.id}
    # A real adapter: peft loads it onto the base model, with the checkpoint's weights.
    folder = await save_model(u, model, tmp_path / "promoted")
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(env.tiny)
    peft_model = PeftModel.from_pretrained(base, str(folder))
    lora_b = [p for n, p in peft_model.named_parameters() if "lora_B" in n]
    assert lora_b and any(float(p.abs().sum()) > 0 for p in lora_b)  # trained, not init
    # Continue training from the promoted model: its rank is kept; the worker loads it.
    cont = await u.job(
        ds.id, executor=PEFT, init_model_id=model.id, hp=J.Hyperparameters(max_steps=2)
    )
    assert cont.init_model_id == model.id and cont.hyperparameters.lora_rank == 4
    cdone = await u.wait_job(cont.id, TERMINAL, timeout=90)
    assert cdone.status == J.JOB_STATUS_SUCCEEDED, cdone.error
    logs = [
        e.log.text
        async for e in u.jobs.WatchJob(J.WatchJobRequest(id=cont.id), metadata=u.md)
        if e.HasField("log")
    ]
    assert any("continuing from the adapter" in line for line in logs)
    # Bad input: another shape, a simulated model, another user's model.
    err = await refused(
        u.job(ds.id, executor=PEFT, init_model_id=model.id, hp=J.Hyperparameters(lora_rank=8))
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_field(err) == "hyperparameters.lora_rank"
    other = User(env)
    ods = await other.dataset(MEMO)
    err = await refused(other.job(ods.id, init_model_id=model.id))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    for call in (
        other.models.PromoteCheckpoint(
            M.PromoteCheckpointRequest(job_id=job.id, checkpoint_id=ck.id), metadata=other.md
        ),
        u.models.PromoteCheckpoint(
            M.PromoteCheckpointRequest(job_id=job.id, checkpoint_id=str(uuid.uuid4())),
            metadata=u.md,
        ),
    ):
        assert (await refused(call)).code() == grpc.StatusCode.NOT_FOUND
    err = await refused(
        u.models.PromoteCheckpoint(
            M.PromoteCheckpointRequest(job_id=job.id, checkpoint_id="nope"), metadata=u.md
        )
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and bad_field(err) == "checkpoint_id"


async def test_simulated_artifacts_say_so(env: Env, worker: Worker) -> None:
    u = User(env)
    ds = await u.dataset(MEMO)
    job = await u.job(
        ds.id, executor=SIM, hp=J.Hyperparameters(max_steps=3, checkpoint_every_steps=2)
    )
    done = await u.wait_job(job.id, TERMINAL)
    model = await u.models.GetModel(M.GetModelRequest(id=done.model_id), metadata=u.md)
    assert model.simulated
    (ck,) = (
        await u.jobs.ListCheckpoints(J.ListCheckpointsRequest(job_id=job.id), metadata=u.md)
    ).checkpoints
    promoted = await u.models.PromoteCheckpoint(
        M.PromoteCheckpointRequest(job_id=job.id, checkpoint_id=ck.id, name="sim"), metadata=u.md
    )
    assert promoted.simulated and promoted.name == "sim"
    # A simulated model has no weights to continue a real job from.
    err = await refused(u.job(ds.id, executor=PEFT, init_model_id=model.id))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and bad_field(err) == "init_model_id"


async def test_rename_delete_tells_the_clone_and_purges(env: Env, worker: Worker) -> None:
    u = User(env)
    ds = await u.dataset(MEMO)
    clone_id = uuid.uuid4()
    await env.training.pool.execute(
        "INSERT INTO clones (id, user_id, name, base_model) VALUES ($1, $2, 'twin', $3)",
        clone_id,
        u.id,
        env.tiny,
    )
    job = await u.job(
        ds.id, executor=SIM, clone_id=str(clone_id), hp=J.Hyperparameters(max_steps=2)
    )
    done = await u.wait_job(job.id, TERMINAL)
    clone = await u.clones.GetClone(C.GetCloneRequest(id=str(clone_id)), metadata=u.md)
    assert clone.active_model_id == done.model_id
    # Rename.
    renamed = await u.models.UpdateModel(
        M.UpdateModelRequest(
            model=M.ModelArtifact(id=done.model_id, name="v1"), update_mask=Mask(paths=["name"])
        ),
        metadata=u.md,
    )
    assert renamed.name == "v1"
    for req, field in (
        (M.UpdateModelRequest(model=M.ModelArtifact(id=done.model_id, name="x")), "update_mask"),
        (
            M.UpdateModelRequest(
                model=M.ModelArtifact(id=done.model_id, name=""), update_mask=Mask(paths=["name"])
            ),
            "model.name",
        ),
    ):
        err = await refused(u.models.UpdateModel(req, metadata=u.md))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and bad_field(err) == field
    other = User(env)
    for call in (
        other.models.UpdateModel(
            M.UpdateModelRequest(
                model=M.ModelArtifact(id=done.model_id, name="mine"),
                update_mask=Mask(paths=["name"]),
            ),
            metadata=other.md,
        ),
        other.models.DeleteModel(M.DeleteModelRequest(id=done.model_id), metadata=other.md),
    ):
        assert (await refused(call)).code() == grpc.StatusCode.NOT_FOUND
    # Delete: gone from Get/List, the clone loses it and is told.
    await u.models.DeleteModel(M.DeleteModelRequest(id=done.model_id), metadata=u.md)
    for call in (
        u.models.GetModel(M.GetModelRequest(id=done.model_id), metadata=u.md),
        u.models.DeleteModel(M.DeleteModelRequest(id=done.model_id), metadata=u.md),
        u.models.CreateModelDownloadUrl(
            M.CreateModelDownloadUrlRequest(id=done.model_id), metadata=u.md
        ),
    ):
        assert (await refused(call)).code() == grpc.StatusCode.NOT_FOUND
    assert not (await u.models.ListModels(M.ListModelsRequest(), metadata=u.md)).models
    clone = await u.clones.GetClone(C.GetCloneRequest(id=str(clone_id)), metadata=u.md)
    assert clone.active_model_id == "" and clone.status == C.CLONE_STATUS_DRAFT
    notes = (
        await u.notes.ListNotifications(N.ListNotificationsRequest(), metadata=u.md)
    ).notifications
    told = [n for n in notes if n.kind == N.NOTIFICATION_KIND_MODEL_DELETED]
    assert [(n.clone_id, n.model_id) for n in told] == [(str(clone_id), done.model_id)]
    assert "twin" in told[0].body
    # Retention 0 here: the purge deletes its files from storage.
    model_files = [
        r["file_id"]
        for r in (
            await env.training.pool.fetchval(
                "SELECT files FROM model_artifacts WHERE id = $1", uuid.UUID(done.model_id)
            )
        )
    ]
    training = env.training.spec.training  # type: ignore[attr-defined]
    assert await training.models.purge_once() >= 1
    for file_id in model_files:
        gone = await u.storage.GetFile(storage_pb2.GetFileRequest(id=file_id), metadata=u.md)
        assert gone.status == storage_pb2.FILE_STATUS_DELETED
    assert await training.models.purge_once() == 0  # purged once only


async def test_retry_with_changed_hyperparameters(env: Env, worker: Worker) -> None:
    u = User(env)
    # No example has trainable tokens within 16: validation fails the job.
    ds = await u.dataset([chat("long " * 40, "answer")] * 3)
    failed = await u.job(ds.id, executor=SIM, hp=J.Hyperparameters(max_steps=2, max_seq_length=16))
    failed = await u.wait_job(failed.id, (J.JOB_STATUS_FAILED,))
    assert failed.error.code == J.JOB_ERROR_CODE_DATASET_INVALID
    # Bad masks and values are refused, and the job stays FAILED.
    for mask, hp, field in (
        (["learning_rate"], J.Hyperparameters(), "update_mask"),
        (["hyperparameters.wizardry"], J.Hyperparameters(), "update_mask"),
        (
            ["hyperparameters.lora_rank"],
            J.Hyperparameters(lora_rank=999),
            "hyperparameters.lora_rank",
        ),
    ):
        err = await refused(
            u.jobs.RetryJob(
                J.RetryJobRequest(id=failed.id, hyperparameters=hp, update_mask=Mask(paths=mask)),
                metadata=u.md,
            )
        )
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and bad_field(err) == field
    retried = await u.jobs.RetryJob(
        J.RetryJobRequest(
            id=failed.id,
            hyperparameters=J.Hyperparameters(max_seq_length=512),
            update_mask=Mask(paths=["hyperparameters.max_seq_length"]),
        ),
        metadata=u.md,
    )
    assert retried.attempt == 2 and retried.hyperparameters.max_seq_length == 512
    assert retried.hyperparameters.max_steps == 2  # the rest unchanged
    done = await u.wait_job(failed.id, TERMINAL)
    assert done.status == J.JOB_STATUS_SUCCEEDED and done.progress.steps.done == 2
    # A cancelled job with checkpoints, retried with another learning rate, starts over.
    ds2 = await u.dataset(MEMO)
    worker.settings = worker.settings.model_copy(update={"training_simulate_step_seconds": 0.15})
    try:
        job = await u.job(
            ds2.id, executor=SIM, hp=J.Hyperparameters(max_steps=12, checkpoint_every_steps=2)
        )
        await first_checkpoint(u, job.id)
        await u.jobs.CancelJob(J.CancelJobRequest(id=job.id), metadata=u.md)
    finally:
        worker.settings = worker.settings.model_copy(
            update={"training_simulate_step_seconds": 0.02}
        )
    again = await u.jobs.RetryJob(
        J.RetryJobRequest(
            id=job.id,
            hyperparameters=J.Hyperparameters(learning_rate=5e-5),
            update_mask=Mask(paths=["hyperparameters.learning_rate"]),
        ),
        metadata=u.md,
    )
    assert again.hyperparameters.learning_rate == pytest.approx(5e-5)
    done = await u.wait_job(job.id, TERMINAL)
    assert done.status == J.JOB_STATUS_SUCCEEDED and done.progress.steps.done == 12
    points = (
        await u.jobs.ListMetrics(J.ListMetricsRequest(job_id=job.id, page_size=200), metadata=u.md)
    ).metric_points
    assert [p.step for p in points if p.attempt == 2] == list(range(1, 13))
    assert all(p.learning_rate <= 5e-5 + 1e-12 for p in points if p.attempt == 2)
    assert (
        reason(await refused(u.jobs.RetryJob(J.RetryJobRequest(id=job.id), metadata=u.md)))
        == "JOB_STATE"
    )
