"""LOCAL generations run on the training workers, not in the training API: GenerateImages
records a QUEUED row and its stream follows the row while a real worker (in-process, or a
`python -m services.training worker` process) claims it, draws with the LoRA's trained
weights on the tiny pipeline and stores each image in the owner's `images` bucket.

A generation with no worker of its hardware class stays QUEUED and its stream keeps
telling the client so; the client leaving does not stop it; a worker killed mid-way
(SIGKILL) leaves a lease that expires, and another worker runs the generation again; a
worker shutting down puts it straight back in the queue; the sweep fails one no worker
took in time; another user's generation is NOT_FOUND."""

from __future__ import annotations

import asyncio
import hashlib
import signal
import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2

from aivera.storage.v1 import storage_pb2
from aivera.training.v1 import billing_pb2 as B
from aivera.training.v1 import billing_pb2_grpc
from aivera.training.v1 import image_loras_pb2 as L
from services.training import generations as G
from services.training import image_pipeline
from services.training.image_retention import ImageSweep
from tests.helpers.errors import reason
from tests.training.conftest import Env, running_worker
from tests.training.test_billing import Billed
from tests.training.test_image_generations import fetch, kinds, png_size, trained
from tests.training.test_image_loras import Artist
from tests.training.test_worker_kill import start_worker

LOCAL = L.IMAGE_LORA_EXECUTOR_LOCAL
QUEUED = L.GENERATION_STATUS_QUEUED
PROCESSING = L.GENERATION_STATUS_PROCESSING
SUCCEEDED = L.GENERATION_STATUS_SUCCEEDED
FAILED = L.GENERATION_STATUS_FAILED


@pytest.fixture(scope="module")
def training_overrides() -> dict[str, Any]:
    return {
        "image_lora_local_steps": 2,
        "image_inference_steps": 2,
        "generation_local_long_side": 64,
        "generation_max_active_per_user": 2,
        "training_watch_heartbeat_seconds": 0.4,
    }


@pytest.fixture(scope="module")
async def owner_lora(env: Env) -> tuple[Artist, L.ImageLora]:
    """A LOCAL LoRA trained by a worker, READY; no worker runs after."""
    u = Artist(env)
    async with running_worker(env):
        lora = await trained(u, LOCAL, 2000, timeout=120)
    return u, lora


class Follower:
    """A GenerateImages stream read in a task of its own."""

    def __init__(self, u: Artist, **request: Any) -> None:
        self.events: list[L.GenerateImagesEvent] = []
        self.call = u.loras.GenerateImages(L.GenerateImagesRequest(**request), metadata=u.md)
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for ev in self.call:
            self.events.append(ev)

    async def until(self, seen: Any, timeout: float = 60) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while not seen(self.events):
            assert not self.task.done() or seen(self.events), kinds(self.events)
            assert loop.time() < end, kinds(self.events)
            await asyncio.sleep(0.02)

    def progress(self) -> list[tuple[int, float]]:
        return [
            (e.progress.status, e.progress.fraction) for e in self.events if e.HasField("progress")
        ]

    @property
    def id(self) -> str:
        return self.events[0].queued.id


async def row_of(env: Env, gen_id: str) -> Any:
    return await env.training.pool.fetchrow(
        "SELECT status, worker_id, worker_losses, progress FROM generations WHERE id = $1",
        uuid.UUID(gen_id),
    )


async def until_row(env: Env, gen_id: str, check: Any, timeout: float = 60) -> Any:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        row = await row_of(env, gen_id)
        if check(row):
            return row
        assert loop.time() < end and row["status"] != FAILED, dict(row)
        await asyncio.sleep(0.02)


def test_a_lost_worker_requeues_then_fails() -> None:
    assert G.after_loss(0, 2, "w") == (QUEUED, "")
    assert G.after_loss(1, 2, "w") == (QUEUED, "")
    status, error = G.after_loss(2, 2, "w-7")
    assert status == FAILED and "w-7" in error and "3 lost workers" in error
    assert G.after_loss(0, 0, "w")[0] == FAILED


async def test_queued_without_a_worker_then_a_worker_runs_it(
    env: Env, owner_lora: tuple[Artist, L.ImageLora]
) -> None:
    u, lora = owner_lora
    # A worker of another hardware class is no worker for it (generations queue for the
    # image LoRA class: the default, `cpu`).
    async with running_worker(env, training_worker_hardware_classes=["nvidia-h100"]):
        a = Follower(u, image_lora=lora.id, prompt="a red cube", num_outputs=2, seed=3)
        await a.until(lambda evs: len(evs) >= 1)
        b = Follower(u, image_lora=lora.id, prompt="a blue cube", aspect_ratio=3)
        await b.until(lambda evs: len(evs) >= 1)
        b.call.cancel()  # the client leaves; the generation stays
        # Still QUEUED, and the stream says so at each heartbeat (0.4 s here).
        await a.until(lambda evs: sum(1 for e in evs if e.HasField("progress")) >= 3)
        assert set(a.progress()) == {(QUEUED, 0.0)}
        assert kinds(a.events)[0] == "queued" and a.events[0].queued.executor == LOCAL
        for f in (a, b):
            assert (await row_of(env, f.id))["status"] == QUEUED
        # Another user: neither the generation nor the LoRA is theirs.
        other = Artist(env)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await other.loras.GetGeneration(L.GetGenerationRequest(id=a.id), metadata=other.md)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        call = other.loras.GenerateImages(
            L.GenerateImagesRequest(image_lora=lora.id, prompt="x"), metadata=other.md
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call.read()
        assert err.value.code() == grpc.StatusCode.NOT_FOUND

    async with running_worker(env) as worker:
        await asyncio.wait_for(a.task, 60)
        kept = await until_row(env, b.id, lambda r: r["status"] == SUCCEEDED)
    assert kept["worker_id"] == worker.worker_id
    done = a.events[-1].done
    assert done.status == SUCCEEDED, done.error
    assert (done.executor, done.simulated, len(done.images)) == (LOCAL, False, 2)
    # queued, QUEUED heartbeats, (PROCESSING as far as the stream saw it), each image
    # with its URL, done.
    assert kinds(a.events)[-3:] == ["image", "image", "done"]
    processing = [f for s, f in a.progress() if s == PROCESSING]
    assert processing == sorted(processing) and all(0 <= f <= 1 for f in processing)
    streamed = [e.image for e in a.events if e.HasField("image")]
    assert sorted(i.index for i in streamed) == [0, 1]
    assert {i.file_id for i in streamed} == {i.file_id for i in done.images}
    for img in streamed:
        assert img.url and img.HasField("url_expire_time")
        file = await u.storage.GetFile(storage_pb2.GetFileRequest(id=img.file_id), metadata=u.md)
        assert file.bucket == storage_pb2.BUCKET_IMAGES
        assert png_size(await fetch(u, img.file_id)) == (img.width, img.height) == (64, 64)
    got = await u.loras.GetGeneration(L.GetGenerationRequest(id=b.id), metadata=u.md)
    assert got.status == SUCCEEDED and [(i.width, i.height) for i in got.images] == [(32, 64)]
    # The grant the worker stored the images on is dropped with the generation.
    assert not await env.training.pool.fetchval(
        "SELECT count(*) FROM work_grants WHERE resource_id = ANY($1::uuid[])",
        [uuid.UUID(a.id), uuid.UUID(b.id)],
    )


async def test_a_killed_worker_s_generation_runs_again(
    env: Env, owner_lora: tuple[Artist, L.ImageLora], tmp_path: Path
) -> None:
    u, lora = owner_lora
    f = Follower(u, image_lora=lora.id, prompt="a slow one", num_outputs=2, seed=9)
    await f.until(lambda evs: len(evs) >= 1)
    log = tmp_path / "doomed.log"
    # Many denoising steps: the process is killed while it draws.
    proc = start_worker(
        env,
        "doomed",
        log,
        IMAGE_INFERENCE_STEPS="900",  # under the scheduler's 1000
        GENERATION_LOCAL_LONG_SIDE="64",
        TRAINING_LEASE_SECONDS="2",
    )
    try:
        await until_row(
            env,
            f.id,
            lambda r: r["worker_id"] == "doomed" and r["progress"] > 0,
            timeout=90,
        )
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    row = await row_of(env, f.id)
    assert row["status"] == PROCESSING and row["progress"] < 1.0, log.read_text()[-2000:]
    # Another worker reaps the expired lease and runs the generation again.
    async with running_worker(env) as worker:
        await asyncio.wait_for(f.task, 60)
    done = f.events[-1].done
    assert done.status == SUCCEEDED and len(done.images) == 2, done.error
    row = await row_of(env, f.id)
    assert (row["worker_id"], row["worker_losses"]) == (worker.worker_id, 1)
    # The stream followed it through: it saw the doomed worker draw, then every image.
    assert any(s == PROCESSING for s, _ in f.progress()), f.progress()
    assert kinds(f.events)[-3:] == ["image", "image", "done"]


async def test_a_worker_shutting_down_requeues_its_generation(
    env: Env, owner_lora: tuple[Artist, L.ImageLora]
) -> None:
    u, lora = owner_lora
    f = Follower(u, image_lora=lora.id, prompt="interrupted", seed=4)
    await f.until(lambda evs: len(evs) >= 1)
    async with running_worker(env, image_inference_steps=900) as first:
        await until_row(
            env, f.id, lambda r: r["worker_id"] == first.worker_id and r["progress"] > 0
        )
        first.shutdown.set()  # SIGTERM: stops at the next step, back to the queue
    row = await row_of(env, f.id)
    assert (row["status"], row["worker_losses"], row["worker_id"]) == (QUEUED, 0, "")
    async with running_worker(env):
        await asyncio.wait_for(f.task, 60)
    assert f.events[-1].done.status == SUCCEEDED


async def test_the_sweep_fails_a_generation_no_worker_took(
    env: Env, owner_lora: tuple[Artist, L.ImageLora]
) -> None:
    u, lora = owner_lora
    f = Follower(u, image_lora=lora.id, prompt="nobody draws this")
    await f.until(lambda evs: len(evs) >= 1)
    assert env.training.spec.training is not None  # type: ignore[attr-defined]
    sweep: ImageSweep = env.training.spec.training.image_sweep  # type: ignore[attr-defined]
    impatient = ImageSweep(
        sweep.store,
        env.settings.model_copy(update={"generation_queue_timeout_seconds": 0.0}),
        sweep.loras,
        sweep.models,
        sweep.abandoned_after,
    )
    await impatient.once()
    await asyncio.wait_for(f.task, 30)
    done = f.events[-1].done
    assert done.status == FAILED and "no worker took the generation within 0 s" in done.error
    assert done.HasField("finish_time") and not done.images


async def test_a_local_generation_is_billed_and_counted_in_the_quota(
    env: Env, owner_lora: tuple[Artist, L.ImageLora]
) -> None:
    u, lora = owner_lora
    billing = billing_pb2_grpc.BillingServiceStub(env.chan)

    async def quota() -> B.Quota:
        got: B.Quota = await billing.GetQuota(B.GetQuotaRequest(), metadata=u.md)
        return got

    before = await quota()
    async with running_worker(env) as worker:
        f = Follower(u, image_lora=lora.id, prompt="a billed cube", num_outputs=2, seed=5)
        await asyncio.wait_for(f.task, 60)
        simulated = await trained(u, L.IMAGE_LORA_EXECUTOR_SIMULATE, 3000, timeout=60)
    done = f.events[-1].done
    assert done.status == SUCCEEDED, done.error
    # The worker's device time, at its rate, on the generation (the final figure).
    (item,) = done.cost.items
    assert item.device_type == worker.device and item.device_seconds > 0
    assert item.hourly_rate_micros == worker.rate_of_class("cpu") > 0
    assert done.cost.amount_micros == item.amount_micros > 0
    assert done.cost.currency_code == env.settings.training_currency
    got = await u.loras.GetGeneration(L.GetGenerationRequest(id=done.id), metadata=u.md)
    assert got.cost == done.cost
    # Counted in the month's spending and in the month's costs.
    after = await quota()
    assert after.spent_micros == before.spent_micros + done.cost.amount_micros
    months = await billing.ListCostSummaries(B.ListCostSummariesRequest(), metadata=u.md)
    assert months.cost_summaries[0].month == after.month
    assert months.cost_summaries[0].amount_micros == after.spent_micros
    # A simulated LoRA's generation costs nothing and counts nowhere.
    sim = Follower(u, image_lora=simulated.id, prompt="free", seed=1)
    await asyncio.wait_for(sim.task, 60)
    assert sim.events[-1].done.status == SUCCEEDED and not sim.events[-1].done.HasField("cost")
    assert (await quota()).spent_micros == after.spent_micros

    # A budget already spent: LOCAL is refused before anything is recorded; SIMULATE runs.
    admin = Billed(env, role="admin")

    async def budget(micros: int) -> None:
        await admin.billing.UpdateQuota(
            B.UpdateQuotaRequest(
                user_id=u.id,
                monthly_budget_micros=micros,
                update_mask=field_mask_pb2.FieldMask(paths=["monthly_budget_micros"]),
            ),
            metadata=admin.md,
        )

    count = "SELECT count(*) FROM generations WHERE user_id = $1"
    await budget(1)
    try:
        rows = await env.training.pool.fetchval(count, u.id)
        call = u.loras.GenerateImages(
            L.GenerateImagesRequest(image_lora=lora.id, prompt="too dear"), metadata=u.md
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call.read()
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert reason(err.value) == "QUOTA_EXCEEDED" and "generation" in str(err.value.details())
        assert await env.training.pool.fetchval(count, u.id) == rows
        sim = Follower(u, image_lora=simulated.id, prompt="still free", seed=2)
        await asyncio.wait_for(sim.task, 60)
        assert sim.events[-1].done.status == SUCCEEDED
    finally:
        await budget(0)


def test_the_loaded_lora_is_kept_between_generations_and_switched(env: Env) -> None:
    """A worker keeps the last LoRA loaded in its pipeline: the same weights draw the same
    images again, other weights (or none) replace them, and nothing of one LoRA leaks into
    the next generation."""
    import torch
    from safetensors.torch import save

    name = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"

    def lora(seed: int) -> bytes:
        g = torch.Generator().manual_seed(seed)
        return save(
            {
                f"unet.{name}.lora.down.weight": torch.randn(4, 32, generator=g),
                f"unet.{name}.lora.up.weight": torch.randn(32, 4, generator=g),
            }
        )

    def draw(weights: bytes | None) -> bytes:
        out: dict[int, bytes] = {}
        image_pipeline.generate(
            weights=weights,
            simulate=False,
            prompt="zqcube",
            lora_scale=1.0,
            num_outputs=1,
            width=64,
            height=64,
            seed=21,
            on_progress=lambda _f: None,
            on_image=out.__setitem__,
            settings=env.settings,
        )
        return out[0]

    one, two = lora(1), lora(2)
    first = draw(one)
    base = draw(None)
    assert first != base
    assert draw(one) == first  # loaded again after the base pipeline alone
    assert draw(one) == first  # kept loaded
    shared = image_pipeline._shared(str(image_pipeline.resolve(env.settings)))
    assert shared.lora == hashlib.sha256(one).hexdigest()
    other = draw(two)
    assert other not in (first, base)
    assert draw(None) == base and draw(one) == first
