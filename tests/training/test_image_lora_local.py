"""Image LoRAs trained on the mesh's own workers (LOCAL and SIMULATE executors) through the
training job queue, on CPU with the built-in tiny random image pipeline: StartTraining
queues a job that a real worker claims; the LoRA goes VALIDATING → TRAINING → READY with
its weights in the owner's storage, and WatchJob streams the job's metrics and
checkpoints. A shut-down worker's job resumes from its checkpoint on another worker, a
resumed peft run trains exactly as an uninterrupted one, cancel stops the job, a
simulated LoRA says so, an image that does not decode fails the LoRA, and generation
with the trained weights draws PNGs of the asked size while weights that do not fit the
pipeline are refused. Text-job RPCs keep working with image jobs present."""

from __future__ import annotations

import asyncio
import io
import random
import threading
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2
from PIL import Image

from aivera.storage.v1 import storage_pb2
from aivera.training.v1 import admin_pb2 as A
from aivera.training.v1 import (
    admin_pb2_grpc,
    billing_pb2,
    billing_pb2_grpc,
    image_loras_pb2_grpc,
)
from aivera.training.v1 import image_loras_pb2 as L
from aivera.training.v1 import jobs_pb2 as J
from aivera.training.v1 import models_pb2 as M
from services.training import image_executor, image_jobs, image_pipeline
from services.training.config import TrainingSettings
from services.training.session import StepPoint, Stopped
from tests.helpers.services import bearer
from tests.training.conftest import Env, User, running_worker

IMAGES = storage_pb2.BUCKET_TRAINING_IMAGES
LOCAL = L.IMAGE_LORA_EXECUTOR_LOCAL
SIMULATE = L.IMAGE_LORA_EXECUTOR_SIMULATE


@pytest.fixture(scope="module")
def training_overrides(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return {"image_inference_steps": 3}


def png(seed: int, w: int = 512, h: int = 512, fmt: str = "PNG") -> bytes:
    """A reference image with a pattern of its own (distinct bytes per seed)."""
    img = Image.new("RGB", (w, h), ((seed * 53) % 256, (seed * 97) % 256, (seed * 29) % 256))
    for x in range(0, w, 64):
        img.paste((255 - (seed * 13) % 256, x % 256, 40), (x, (x * 3) % h, x + 32, h))
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


class Artist(User):
    def __init__(self, env: Env) -> None:
        super().__init__(env)
        self.loras = image_loras_pb2_grpc.ImageLoraServiceStub(env.chan)

    async def lora(self, images: list[bytes] | None = None) -> L.ImageLora:
        """A LoRA with 4 reference images (captions on two of them)."""
        word = "zq" + uuid.uuid4().hex[:8]
        lora: L.ImageLora = await self.loras.CreateImageLora(
            L.CreateImageLoraRequest(name="style", kind=L.IMAGE_LORA_KIND_STYLE, trigger_word=word),
            metadata=self.md,
        )
        base = uuid.uuid4().int % 1000
        for i, raw in enumerate(images or [png(base + i) for i in range(4)]):
            file_id = await self.upload(raw, f"ref{i}.png", IMAGES)
            await self.loras.AddReferenceImage(
                L.AddReferenceImageRequest(
                    image_lora=lora.id, file_id=file_id, caption="a red barn" if i < 2 else ""
                ),
                metadata=self.md,
            )
        return lora

    async def start(self, lora_id: str, executor: int, steps: int) -> L.ImageLora:
        started: L.ImageLora = await self.loras.StartTraining(
            L.StartTrainingRequest(image_lora=lora_id, executor=executor, steps=steps),  # type: ignore[arg-type]
            metadata=self.md,
        )
        return started

    async def get(self, lora_id: str) -> L.ImageLora:
        got: L.ImageLora = await self.loras.GetImageLora(
            L.GetImageLoraRequest(id=lora_id), metadata=self.md
        )
        return got

    async def wait_lora(
        self, lora_id: str, statuses: tuple[int, ...], timeout: float = 90
    ) -> L.ImageLora:
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while True:
            lora = await self.get(lora_id)
            if lora.status in statuses:
                return lora
            if loop.time() > end:
                raise AssertionError(f"LoRA stuck in {L.ImageLoraStatus.Name(lora.status)}")
            await asyncio.sleep(0.05)

    async def download(self, file_id: str) -> tuple[storage_pb2.File, bytes]:
        meta = storage_pb2.File()
        data = bytearray()
        async for r in self.storage.Download(
            storage_pb2.DownloadRequest(id=file_id), metadata=self.md
        ):
            if r.HasField("file"):
                meta = r.file
            data += r.chunk
        return meta, bytes(data)

    async def events(self, job_id: str) -> list[J.JobEvent]:
        return [
            e
            async for e in self.jobs.WatchJob(
                J.WatchJobRequest(id=job_id, after_sequence=0), metadata=self.md
            )
        ]

    async def weights_file_of(self, lora_id: str) -> str:
        """The weights' storage file, as the LoRA's job left it (read from the worker's
        upload in the `models` bucket of the owner)."""
        files = await self.storage.ListFiles(
            storage_pb2.ListFilesRequest(
                bucket=storage_pb2.BUCKET_MODELS,
                labels={"image_lora_id": lora_id, "purpose": "image-lora"},
            ),
            metadata=self.md,
        )
        assert len(files.files) == 1, files
        return str(files.files[0].id)


@pytest.fixture
async def artist(env: Env) -> AsyncIterator[Artist]:
    yield Artist(env)


# -- the whole local flow -----------------------------------------------------------------
async def test_local_training_runs_on_a_worker_and_generates(env: Env, artist: Artist) -> None:
    lora = await artist.lora()
    queued = await artist.start(lora.id, LOCAL, steps=8)
    assert queued.status == L.IMAGE_LORA_STATUS_QUEUED and queued.job_id
    assert not queued.simulated
    job = await artist.jobs.GetJob(J.GetJobRequest(id=queued.job_id), metadata=artist.md)
    assert job.image_lora == lora.id and job.dataset_id == ""
    assert job.status == J.JOB_STATUS_QUEUED and job.executor == J.EXECUTOR_PEFT
    assert job.progress.steps.total == 8 and job.base_model == image_pipeline.TINY
    assert list(job.hyperparameters.target_modules) == list(image_pipeline.LORA_TARGETS)
    assert job.hyperparameters.checkpoint_every_steps == 2  # 4 checkpoints a short run

    async with running_worker(env):
        ready = await artist.wait_lora(lora.id, (L.IMAGE_LORA_STATUS_READY,))
    assert ready.progress == 1.0 and ready.weights_size_bytes > 0 and ready.training_steps == 8
    assert ready.HasField("finish_time") and ready.job_id == queued.job_id

    events = await artist.events(queued.job_id)
    statuses = [e.status_changed.status for e in events if e.HasField("status_changed")]
    assert statuses[-1] == J.JOB_STATUS_SUCCEEDED and J.JOB_STATUS_RUNNING in statuses
    assert [e.metric.step for e in events if e.HasField("metric")] == list(range(1, 9))
    assert [e.checkpoint.step for e in events if e.HasField("checkpoint")] == [2, 4, 6]
    logs = [e.log.text for e in events if e.HasField("log")]
    assert any("reading 4 reference images" in t for t in logs)
    assert any("at 64×64 px" in t for t in logs)
    assert events[-1].HasField("final") and events[-1].final.image_lora == lora.id

    done = await artist.jobs.GetJob(J.GetJobRequest(id=queued.job_id), metadata=artist.md)
    assert done.status == J.JOB_STATUS_SUCCEEDED and not done.model_id
    assert done.cost.items and done.cost.items[0].device_type == "cpu"
    assert done.cost.items[0].hourly_rate_micros > 0  # a LOCAL job is billed
    # Its checkpoints are no text adapters: no model is made of them.
    ck = next(e.checkpoint for e in events if e.HasField("checkpoint"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await artist.models.PromoteCheckpoint(
            M.PromoteCheckpointRequest(job_id=queued.job_id, checkpoint_id=ck.id),
            metadata=artist.md,
        )
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    # The weights: the owner's file in `models`, a LoRA of the pipeline's attention.
    meta, blob = await artist.download(await artist.weights_file_of(lora.id))
    assert meta.bucket == storage_pb2.BUCKET_MODELS and len(blob) == ready.weights_size_bytes
    tensors, info = image_pipeline.read_weights(blob)
    assert info["aivera_base"] == image_pipeline.TINY and info["aivera_simulated"] == "false"
    ups = [t for k, t in tensors.items() if k.endswith("lora.up.weight")]
    assert ups and all(k.startswith("unet.") for k in tensors)
    assert any(float(t.abs().max()) > 0 for t in ups)  # trained (up starts at zero)
    assert {k.split(".lora.")[0].rsplit(".", 1)[-1] for k in tensors} >= {"to_q", "to_k", "to_v"}

    # Generation with the trained weights: PNGs of the asked size, progress to 1.
    images: dict[int, bytes] = {}
    progress: list[float] = []
    await asyncio.to_thread(
        image_pipeline.generate,
        weights=blob,
        simulate=False,
        prompt=f"{ready.trigger_word} at dusk",
        lora_scale=0.8,
        num_outputs=2,
        width=80,
        height=48,
        seed=11,
        on_progress=progress.append,
        on_image=images.__setitem__,
        settings=env.settings,
    )
    assert sorted(images) == [0, 1] and progress[-1] == 1.0
    for raw in images.values():
        assert raw[:8] == b"\x89PNG\r\n\x1a\n"
        assert Image.open(io.BytesIO(raw)).size == (80, 48)


async def test_a_stopped_worker_s_job_resumes_from_its_checkpoint(env: Env, artist: Artist) -> None:
    """Worker A shuts down after the first checkpoint: the job and the LoRA go back to
    QUEUED; worker B resumes from the checkpoint and finishes."""
    lora = await artist.lora()
    queued = await artist.start(lora.id, SIMULATE, steps=20)  # a checkpoint every 5 steps
    job_id = queued.job_id
    async with running_worker(env, training_simulate_step_seconds=0.2) as worker:
        loop = asyncio.get_running_loop()
        end = loop.time() + 60
        while True:
            cks = await artist.jobs.ListCheckpoints(
                J.ListCheckpointsRequest(job_id=job_id), metadata=artist.md
            )
            if cks.checkpoints or loop.time() > end:
                break
            await asyncio.sleep(0.05)
        assert cks.checkpoints, "no checkpoint"
        worker.shutdown.set()
    job = await artist.jobs.GetJob(J.GetJobRequest(id=job_id), metadata=artist.md)
    assert job.status == J.JOB_STATUS_QUEUED
    assert (await artist.get(lora.id)).status == L.IMAGE_LORA_STATUS_QUEUED
    async with running_worker(env, training_simulate_step_seconds=0.01):
        ready = await artist.wait_lora(lora.id, (L.IMAGE_LORA_STATUS_READY,))
    assert ready.simulated
    events = await artist.events(job_id)
    resumed = [e.log.text for e in events if "resuming from checkpoint at step" in e.log.text]
    assert resumed, [e.log.text for e in events if e.HasField("log")]
    at = int(resumed[0].rsplit(" ", 1)[-1])
    assert at >= 5 and at % 5 == 0
    steps = [e.metric.step for e in events if e.HasField("metric")]
    assert steps[-(20 - at) :] == list(range(at + 1, 21))  # the second run, from `at`
    assert steps[:at] == list(range(1, at + 1))  # the first run, up to the checkpoint


def _session(
    pipeline: Path, images: list[Image.Image], resume: bytes | None, stop_after: int
) -> tuple[image_executor.ImageSession, list[StepPoint], list[tuple[int, bytes]]]:
    points: list[StepPoint] = []
    ckpts: list[tuple[int, bytes]] = []
    stop = threading.Event()

    def on_step(p: StepPoint) -> None:
        points.append(p)
        if stop_after and p.step >= stop_after:
            stop.set()

    hp = image_jobs.hyperparameters(
        TrainingSettings.model_construct(image_lora_learning_rate=1e-2, image_lora_rank=4), 8
    )
    s = image_executor.ImageSession(
        pipeline=pipeline,
        base_name=image_pipeline.TINY,
        images=images,
        captions=["a photo of zqdog", "zqdog, a red barn"] * 2,
        hp=hp,
        total_steps=8,
        resume=resume,
        on_step=on_step,
        on_checkpoint=lambda p, b: ckpts.append((p.step, b)),
        log=lambda _t: None,
        stop=stop,
        torch_threads=1,
    )
    return s, points, ckpts


def test_resumed_training_matches_an_uninterrupted_run(env: Env) -> None:
    path = image_pipeline.resolve(env.settings)
    images = [image_executor.prepare_image(png(i), 64, 10**7) for i in range(4)]
    s, points, ckpts = _session(path, images, None, 0)
    full = image_executor.run_peft(s)
    assert [p.step for p in points] == list(range(1, 9)) and [c for c, _ in ckpts] == [2, 4, 6]
    s, _, ckpts = _session(path, images, None, stop_after=3)
    with pytest.raises(Stopped):
        image_executor.run_peft(s)
    assert [c for c, _ in ckpts] == [2]
    s, points, _ = _session(path, images, ckpts[0][1], 0)
    resumed = image_executor.run_peft(s)
    assert [p.step for p in points] == list(range(3, 9))
    a, _ = image_pipeline.read_weights(full.weights)
    b, _ = image_pipeline.read_weights(resumed.weights)
    assert a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)


# -- cancel, simulate, bad images ------------------------------------------------------------
async def test_cancel_stops_the_running_job(env: Env, artist: Artist) -> None:
    lora = await artist.lora()
    queued = await artist.start(lora.id, SIMULATE, steps=200)
    async with running_worker(env, training_simulate_step_seconds=0.1):
        await artist.wait_lora(lora.id, (L.IMAGE_LORA_STATUS_TRAINING,))
        cancelled = await artist.loras.CancelTraining(
            L.CancelTrainingRequest(image_lora=lora.id), metadata=artist.md
        )
        assert cancelled.status == L.IMAGE_LORA_STATUS_CANCELLED
        job = await artist.wait_job(queued.job_id, (J.JOB_STATUS_CANCELLED,))
        seen = job.progress.steps.done
        # The worker stops at its next step and is free for other work.
        other = await artist.lora()
        await artist.start(other.id, SIMULATE, steps=2)
        await artist.wait_lora(other.id, (L.IMAGE_LORA_STATUS_READY,))
    job = await artist.jobs.GetJob(J.GetJobRequest(id=queued.job_id), metadata=artist.md)
    assert job.status == J.JOB_STATUS_CANCELLED and job.progress.steps.done <= seen + 1
    final = await artist.get(lora.id)
    assert final.status == L.IMAGE_LORA_STATUS_CANCELLED and final.weights_size_bytes == 0


async def test_cancel_job_cancels_the_lora(env: Env, artist: Artist) -> None:
    """TrainingService.CancelJob on an image LoRA's job: the LoRA follows."""
    lora = await artist.lora()
    queued = await artist.start(lora.id, LOCAL, steps=4)
    await artist.jobs.CancelJob(J.CancelJobRequest(id=queued.job_id), metadata=artist.md)
    got = await artist.get(lora.id)
    assert got.status == L.IMAGE_LORA_STATUS_CANCELLED and got.HasField("finish_time")


async def test_simulated_lora_says_so_and_is_never_billed(env: Env, artist: Artist) -> None:
    lora = await artist.lora()
    queued = await artist.start(lora.id, SIMULATE, steps=4)
    assert queued.simulated
    async with running_worker(env):
        ready = await artist.wait_lora(lora.id, (L.IMAGE_LORA_STATUS_READY,))
    assert ready.simulated and ready.executor == SIMULATE and ready.weights_size_bytes > 0
    job = await artist.jobs.GetJob(J.GetJobRequest(id=queued.job_id), metadata=artist.md)
    assert job.executor == J.EXECUTOR_SIMULATE and job.status == J.JOB_STATUS_SUCCEEDED
    assert job.cost.items and job.cost.amount_micros == 0
    assert all(i.hourly_rate_micros == 0 for i in job.cost.items)
    _, blob = await artist.download(await artist.weights_file_of(lora.id))
    _, info = image_pipeline.read_weights(blob)
    assert info["aivera_simulated"] == "true"
    with pytest.raises(image_pipeline.WeightsMismatch, match="simulated"):
        await asyncio.to_thread(_generate, env, blob, False)
    images = await asyncio.to_thread(_generate, env, blob, True)
    assert [Image.open(io.BytesIO(b)).size for b in images] == [(64, 48), (64, 48)]
    assert images == await asyncio.to_thread(_generate, env, blob, True)  # seeded


async def test_an_image_that_does_not_decode_fails_the_lora(env: Env, artist: Artist) -> None:
    """The header passes AddReferenceImage's checks; the worker's decode does not."""
    # Signature and header intact, then an IDAT chunk of garbage.
    garbage = random.Random(0).randbytes(4096)
    broken = png(900)[:33] + (4096).to_bytes(4, "big") + b"IDAT" + garbage + b"\x00" * 4
    lora = await artist.lora([png(901), png(902), png(903), broken])
    await artist.start(lora.id, LOCAL, steps=4)
    async with running_worker(env):
        failed = await artist.wait_lora(lora.id, (L.IMAGE_LORA_STATUS_FAILED,))
    assert "cannot be decoded" in failed.error and failed.HasField("finish_time")
    job = await artist.jobs.GetJob(J.GetJobRequest(id=failed.job_id), metadata=artist.md)
    assert job.status == J.JOB_STATUS_FAILED
    assert job.error.code == J.JOB_ERROR_CODE_DATASET_INVALID


def test_pixel_budget_is_checked_before_decoding() -> None:
    with pytest.raises(image_executor.ImageInvalid, match="over the budget"):
        image_executor.prepare_image(png(1, 600, 600), 64, max_pixels=600 * 599)
    img = image_executor.prepare_image(png(1, 900, 600, "JPEG"), 64, max_pixels=10**7)
    assert img.size == (64, 64) and img.mode == "RGB"
    assert image_executor.with_trigger("zqdog", "") == "a photo of zqdog"
    assert image_executor.with_trigger("zqdog", "ZqDog, sitting") == "ZqDog, sitting"
    assert image_executor.with_trigger("zqdog", "a barn") == "zqdog, a barn"


# -- weights that do not fit ------------------------------------------------------------------
def _generate(env: Env, weights: bytes | None, simulate: bool) -> list[bytes]:
    out: dict[int, bytes] = {}
    image_pipeline.generate(
        weights=weights,
        simulate=simulate,
        prompt="zqdog",
        lora_scale=1.0,
        num_outputs=2,
        width=64,
        height=48,
        seed=5,
        on_progress=lambda _f: None,
        on_image=out.__setitem__,
        settings=env.settings,
    )
    return [out[i] for i in sorted(out)]


def test_weights_that_do_not_fit_the_pipeline_are_refused(env: Env) -> None:
    import torch
    from safetensors.torch import save

    with pytest.raises(image_pipeline.WeightsMismatch, match="not a safetensors"):
        _generate(env, b"\x00" * 64, False)
    name = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    wrong = {  # rank 4 on a module of 32 features, shaped for 48
        f"unet.{name}.lora.down.weight": torch.zeros(4, 48),
        f"unet.{name}.lora.up.weight": torch.zeros(48, 4),
    }
    with pytest.raises(image_pipeline.WeightsMismatch, match="do not fit") as err:
        _generate(env, save(wrong), False)
    assert name in str(err.value)
    other = {"unet.no_such.block.lora.down.weight": torch.zeros(4, 32)}
    other["unet.no_such.block.lora.up.weight"] = torch.zeros(32, 4)
    with pytest.raises(image_pipeline.WeightsMismatch, match="does not have"):
        _generate(env, save(other), False)
    with pytest.raises(image_pipeline.WeightsMismatch, match="no UNet LoRA"):
        _generate(env, save({"text_encoder.x": torch.zeros(2)}), False)
    # The pipeline is left as it was: the base model alone still draws.
    assert len(_generate(env, None, False)) == 2


# -- text-job RPCs with image jobs present ----------------------------------------------------
async def test_job_rpcs_with_image_jobs_present(env: Env, artist: Artist) -> None:
    lora = await artist.lora()
    queued = await artist.start(lora.id, LOCAL, steps=4)
    listed = await artist.jobs.ListJobs(J.ListJobsRequest(), metadata=artist.md)
    mine = [j for j in listed.jobs if j.id == queued.job_id]
    assert mine and mine[0].image_lora == lora.id and mine[0].dataset_id == ""
    await artist.jobs.CancelJob(J.CancelJobRequest(id=queued.job_id), metadata=artist.md)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await artist.jobs.RetryJob(J.RetryJobRequest(id=queued.job_id), metadata=artist.md)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "StartTraining" in (err.value.details() or "")
    billing = billing_pb2_grpc.BillingServiceStub(env.chan)
    quota = await billing.GetQuota(billing_pb2.GetQuotaRequest(), metadata=artist.md)
    assert quota.active_jobs == 0
    await billing.ListCostSummaries(billing_pb2.ListCostSummariesRequest(), metadata=artist.md)
    admin_md = bearer(env.keyring.mint("admin-" + uuid.uuid4().hex[:6], role="admin", ttl=600))
    admin = admin_pb2_grpc.TrainingAdminServiceStub(env.chan)
    seen = await admin.GetUserJob(A.GetUserJobRequest(id=queued.job_id), metadata=admin_md)
    assert seen.job.image_lora == lora.id and seen.user_id == artist.id
    listed_all = await admin.ListUserJobs(
        A.ListUserJobsRequest(user_id=artist.id), metadata=admin_md
    )
    assert any(j.job.id == queued.job_id for j in listed_all.jobs)
    # Another user sees neither the job nor the LoRA.
    other = Artist(env)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await other.jobs.GetJob(J.GetJobRequest(id=queued.job_id), metadata=other.md)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    # A retry through StartTraining makes a new job.
    again = await artist.start(lora.id, LOCAL, steps=4)
    assert again.job_id and again.job_id != queued.job_id and again.attempt == 2


async def test_active_job_limit_counts_image_jobs(env: Env, artist: Artist) -> None:
    billing = billing_pb2_grpc.BillingServiceStub(env.chan)
    loras = [await artist.lora() for _ in range(2)]
    admin = env.keyring.mint("admin-" + uuid.uuid4().hex[:6], role="admin", ttl=600)
    await billing.UpdateQuota(
        billing_pb2.UpdateQuotaRequest(
            user_id=artist.id,
            max_active_jobs=1,
            update_mask=field_mask_pb2.FieldMask(paths=["max_active_jobs"]),
        ),
        metadata=(("authorization", f"Bearer {admin}"),),
    )
    await artist.start(loras[0].id, SIMULATE, steps=2)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await artist.start(loras[1].id, SIMULATE, steps=2)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (await artist.get(loras[1].id)).status == L.IMAGE_LORA_STATUS_DRAFT
