"""Generations with image LoRAs against the real storage and training services: LoRAs
trained the honest way (SIMULATE and LOCAL by a worker on the job queue, REPLICATE by the
remote trainer against the loopback Replicate of tests/helpers/replicate_server.py), then
GenerateImages streaming queued → progress → each image (stored in the owner's `images`
bucket, with a signed URL) → done; the trigger word injected when the prompt lacks it; a
provider failure ending the generation FAILED (not a gRPC error); a generation that goes on
and is recorded after its caller went away; the per-user limit; bad input; another user's
LoRA or generation NOT_FOUND. Also CancelTraining of a remote training, with the provider
up (cancelled there at once) and down (cancelled here, sent again by the sweep)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from aivera.storage.v1 import storage_pb2
from aivera.training.v1 import image_loras_pb2 as L
from services.common.errors import InvalidArgument
from services.training import generations as G
from services.training import image_pipeline
from services.training.config import TrainingSettings
from services.training.worker import Worker
from tests.helpers.errors import bad_field, error_info, reason
from tests.helpers.replicate_server import ReplicateServer
from tests.training.conftest import Env, running_worker
from tests.training.test_image_loras import Artist, image, word

REPLICATE = L.IMAGE_LORA_EXECUTOR_REPLICATE
LOCAL = L.IMAGE_LORA_EXECUTOR_LOCAL
SIM = L.IMAGE_LORA_EXECUTOR_SIMULATE


@pytest.fixture(scope="module")
async def fake() -> AsyncIterator[ReplicateServer]:
    async with ReplicateServer(step_seconds=0.02) as server:
        yield server


@pytest.fixture(scope="module")
def training_overrides(fake: ReplicateServer) -> dict[str, Any]:
    return {
        "replicate_api_url": fake.url,
        "replicate_api_token": fake.token,
        "replicate_timeout_seconds": 5.0,
        "image_lora_executor": "simulate",
        "image_lora_local_steps": 2,
        "image_lora_poll_seconds": 0.1,
        "image_lora_retry_seconds": 0.2,
        "image_lora_sweep_seconds": 0.2,
        "image_inference_steps": 2,
        "generation_local_long_side": 64,
        "generation_poll_seconds": 0.02,
        "generation_poll_max_seconds": 0.05,
        "generation_max_active_per_user": 1,
        # Long enough for every generation here but the one stalled on purpose.
        "generation_timeout_seconds": 6.0,
        "image_lora_retention_seconds": 1.0,
    }


@pytest.fixture(scope="module")
async def worker(env: Env) -> AsyncIterator[Worker]:
    async with running_worker(env) as w:
        yield w


# -- pure ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("prompt", "expect"),
    [
        ("a dog on grass", "sksdog a dog on grass"),
        ("a photo of SKSDOG on grass", "a photo of SKSDOG on grass"),  # any case
        ("sksdog, running", "sksdog, running"),
        ("sksdogs running", "sksdog sksdogs running"),  # a longer word is not it
        ("my_sksdog running", "sksdog my_sksdog running"),
    ],
)
def test_trigger_word_is_prepended_when_missing(prompt: str, expect: str) -> None:
    assert G.with_trigger_word(prompt, "sksdog") == expect


def test_request_checks() -> None:
    assert G.lora_scale(None) == 1.0 and G.lora_scale(0.0) == 0.0 and G.lora_scale(2.0) == 2.0
    for bad_scale in (2.5, -0.1, float("nan")):
        with pytest.raises(InvalidArgument) as err:
            G.lora_scale(bad_scale)
        assert err.value.field == "lora_scale"
    assert G.num_outputs(0) == 1 and G.num_outputs(4) == 4
    with pytest.raises(InvalidArgument):
        G.num_outputs(5)
    assert G.aspect_ratio(0) == L.ASPECT_RATIO_1_1
    with pytest.raises(InvalidArgument):
        G.aspect_ratio(99)
    assert G.seed(7) == 7 and 0 <= G.seed(None) <= G.MAX_SEED
    with pytest.raises(InvalidArgument):
        G.seed(-1)
    assert G.pixel_size(L.ASPECT_RATIO_1_1, 64) == (64, 64)
    assert G.pixel_size(L.ASPECT_RATIO_16_9, 1024) == (1024, 576)
    assert G.pixel_size(L.ASPECT_RATIO_2_3, 1024) == (688, 1024)
    assert G.progress_of(" 50%|██| 1/2\n100%|███| 2/2\n") == 1.0
    assert G.progress_of("starting") == 0.0


# -- helpers ------------------------------------------------------------------------------
async def trained(
    u: Artist, executor: L.ImageLoraExecutor.ValueType, seed: int, timeout: float = 90
) -> L.ImageLora:
    """A LoRA trained by `executor` through StartTraining, READY."""
    lora = await u.create(word())
    for i in range(4):
        await u.add(lora.id, image(512, 512, seed=seed + i))
    await u.loras.StartTraining(
        L.StartTrainingRequest(image_lora=lora.id, executor=executor), metadata=u.md
    )
    return await wait_lora(u, lora.id, (L.IMAGE_LORA_STATUS_READY,), timeout)


async def wait_lora(
    u: Artist, lora_id: str, statuses: tuple[int, ...], timeout: float = 60
) -> L.ImageLora:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        got: L.ImageLora = await u.loras.GetImageLora(
            L.GetImageLoraRequest(id=lora_id), metadata=u.md
        )
        if got.status in statuses:
            return got
        assert got.status not in (L.IMAGE_LORA_STATUS_FAILED,) or L.IMAGE_LORA_STATUS_FAILED in (
            statuses
        ), got.error
        assert loop.time() < end, f"LoRA stuck in {L.ImageLoraStatus.Name(got.status)}"
        await asyncio.sleep(0.05)


async def generate(u: Artist, **kw: Any) -> list[L.GenerateImagesEvent]:
    events: list[L.GenerateImagesEvent] = []
    async for ev in u.loras.GenerateImages(L.GenerateImagesRequest(**kw), metadata=u.md):
        events.append(ev)
    return events


async def refused(u: Artist, **kw: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await generate(u, **kw)
    return err.value


def kinds(events: list[L.GenerateImagesEvent]) -> list[str]:
    return [str(e.WhichOneof("event")) for e in events]


async def fetch(u: Artist, file_id: str) -> bytes:
    data = b""
    async for msg in u.storage.Download(storage_pb2.DownloadRequest(id=file_id), metadata=u.md):
        if msg.WhichOneof("payload") == "chunk":
            data += msg.chunk
    return data


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


async def wait_generation(
    u: Artist, gen_id: str, statuses: tuple[int, ...], timeout: float = 30
) -> L.Generation:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        got: L.Generation = await u.loras.GetGeneration(
            L.GetGenerationRequest(id=gen_id), metadata=u.md
        )
        if got.status in statuses:
            return got
        assert loop.time() < end, f"generation stuck: {got}"
        await asyncio.sleep(0.05)


# -- SIMULATE: the stream, bad input, another user ---------------------------------------
async def test_generate_with_a_simulated_lora(env: Env, worker: Worker) -> None:
    u, other = Artist(env), Artist(env)
    lora = await trained(u, SIM, 1000)
    assert lora.simulated and lora.executor == SIM

    events = await generate(
        u, image_lora=lora.id, prompt="a dog on grass", num_outputs=2, aspect_ratio=2
    )
    assert kinds(events)[0] == "queued" and kinds(events)[-1] == "done"
    assert kinds(events).count("image") == 2 and "progress" in kinds(events)
    queued, done = events[0].queued, events[-1].done
    assert queued.status == L.GENERATION_STATUS_QUEUED
    # The trigger word was prepended; a seed was drawn and reported.
    assert queued.prompt == f"{lora.trigger_word} a dog on grass"
    assert done.seed == queued.seed and done.lora_scale == 1.0
    assert (done.status, done.executor, done.simulated) == (
        L.GENERATION_STATUS_SUCCEEDED,
        SIM,
        True,
    )
    assert [i.index for i in done.images] == [0, 1] and done.HasField("finish_time")
    streamed = [e.image for e in events if e.WhichOneof("event") == "image"]
    assert {i.file_id for i in streamed} == {i.file_id for i in done.images}
    for img in streamed:
        assert img.url and img.HasField("url_expire_time")
        file = await u.storage.GetFile(storage_pb2.GetFileRequest(id=img.file_id), metadata=u.md)
        assert file.bucket == storage_pb2.BUCKET_IMAGES
        assert png_size(await fetch(u, img.file_id)) == (img.width, img.height) == (64, 32)

    # The prompt naming the trigger word (any case) runs as it is, with the seed asked for.
    again = await generate(
        u,
        image_lora=lora.id,
        prompt=f"portrait of {lora.trigger_word.upper()}",
        seed=1234,
        lora_scale=0.0,
    )
    assert again[-1].done.prompt == f"portrait of {lora.trigger_word.upper()}"
    assert (again[-1].done.seed, again[-1].done.lora_scale) == (1234, 0.0)
    assert len(again[-1].done.images) == 1

    # Get and List, with fresh URLs; newest first, by LoRA too.
    got = await u.loras.GetGeneration(L.GetGenerationRequest(id=done.id), metadata=u.md)
    assert [i.file_id for i in got.images] == [i.file_id for i in done.images]
    assert all(i.url for i in got.images) and got.status == L.GENERATION_STATUS_SUCCEEDED
    listed = await u.loras.ListGenerations(
        L.ListGenerationsRequest(image_lora=lora.id, page_size=1), metadata=u.md
    )
    assert [g.id for g in listed.generations] == [again[-1].done.id]
    rest = await u.loras.ListGenerations(
        L.ListGenerationsRequest(
            image_lora=lora.id, page_size=1, page_token=listed.next_page_token
        ),
        metadata=u.md,
    )
    assert [g.id for g in rest.generations] == [done.id]

    # Bad input: INVALID_ARGUMENT naming the field, nothing recorded.
    bad: list[tuple[dict[str, Any], str]] = [
        ({"prompt": ""}, "prompt"),
        ({"prompt": "   "}, "prompt"),
        ({"prompt": "x" * 2001}, "prompt"),
        ({"prompt": "a", "lora_scale": 2.5}, "lora_scale"),
        ({"prompt": "a", "num_outputs": 5}, "num_outputs"),
        ({"prompt": "a", "aspect_ratio": 42}, "aspect_ratio"),
    ]
    for kw, field in bad:
        err = await refused(u, image_lora=lora.id, **kw)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, kw
        assert bad_field(err) == field, kw
    all_mine = await u.loras.ListGenerations(L.ListGenerationsRequest(), metadata=u.md)
    assert len(all_mine.generations) == 2

    # Another user: the LoRA and the generation are NOT_FOUND, their list is empty.
    assert (await refused(other, image_lora=lora.id, prompt="a")).code() == (
        grpc.StatusCode.NOT_FOUND
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await other.loras.GetGeneration(L.GetGenerationRequest(id=done.id), metadata=other.md)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await other.loras.ListGenerations(
            L.ListGenerationsRequest(image_lora=lora.id), metadata=other.md
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    theirs = await other.loras.ListGenerations(L.ListGenerationsRequest(), metadata=other.md)
    assert list(theirs.generations) == []

    # A LoRA that is not READY: IMAGE_LORA_NOT_READY.
    draft = await u.create(word())
    err = await refused(u, image_lora=draft.id, prompt="a")
    assert (err.code(), reason(err)) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "IMAGE_LORA_NOT_READY",
    )
    assert error_info(err).metadata["status"] == "DRAFT"

    # A deleted LoRA's generations are gone from Get and List.
    await u.loras.DeleteImageLora(L.DeleteImageLoraRequest(id=lora.id), metadata=u.md)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await u.loras.GetGeneration(L.GetGenerationRequest(id=done.id), metadata=u.md)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    after = await u.loras.ListGenerations(L.ListGenerationsRequest(), metadata=u.md)
    assert list(after.generations) == []
    # After the retention (1 s here) the sweep purges its images, weights and references.
    row = await env.training.pool.fetchrow(
        "SELECT weights_file_id FROM image_loras WHERE id = $1", uuid.UUID(lora.id)
    )
    files = [i.file_id for i in done.images] + [i.file_id for i in again[-1].done.images]
    files += [r.file_id for r in lora.reference_images] + [row["weights_file_id"]]
    assert row["weights_file_id"]
    loop = asyncio.get_running_loop()
    end = loop.time() + 20
    while not await env.training.pool.fetchval(
        "SELECT purged_at IS NOT NULL FROM image_loras WHERE id = $1", uuid.UUID(lora.id)
    ):
        assert loop.time() < end, "the deleted LoRA was not purged"
        await asyncio.sleep(0.1)
    for file_id in files:
        gone = await u.storage.GetFile(storage_pb2.GetFileRequest(id=file_id), metadata=u.md)
        assert gone.status == storage_pb2.FILE_STATUS_DELETED, file_id


# -- LOCAL: diffusers with the trained weights --------------------------------------------
async def test_generate_with_a_local_lora(env: Env, worker: Worker) -> None:
    u = Artist(env)
    lora = await trained(u, LOCAL, 1100, timeout=120)
    assert not lora.simulated and lora.weights_size_bytes > 0
    events = await generate(u, image_lora=lora.id, prompt="a red cube", seed=5, aspect_ratio=3)
    done = events[-1].done
    assert done.status == L.GENERATION_STATUS_SUCCEEDED, done.error
    assert (done.executor, done.simulated, len(done.images)) == (LOCAL, False, 1)
    (img,) = done.images
    assert png_size(await fetch(u, img.file_id)) == (img.width, img.height) == (32, 64)
    # Drawn by the worker (the training API runs no image pipeline).
    ran_on = await env.training.pool.fetchval(
        "SELECT worker_id FROM generations WHERE id = $1", uuid.UUID(done.id)
    )
    assert ran_on == worker.worker_id


# -- REPLICATE: predictions on the trained version ---------------------------------------
async def test_generate_with_a_replicate_lora(env: Env, fake: ReplicateServer) -> None:
    u = Artist(env)
    lora = await trained(u, REPLICATE, 1200)
    events = await generate(
        u,
        image_lora=lora.id,
        prompt="a cat in a hat",
        num_outputs=2,
        aspect_ratio=L.ASPECT_RATIO_3_2,
        lora_scale=0.8,
        seed=77,
    )
    done = events[-1].done
    assert done.status == L.GENERATION_STATUS_SUCCEEDED, done.error
    assert (done.executor, len(done.images)) == (REPLICATE, 2)
    # What the prediction was asked: the prompt with the trigger word, the scale, the
    # provider's aspect ratio, the seed, PNG.
    (prediction,) = [
        p for p in fake.predictions.values() if p["input"]["prompt"].endswith("a cat in a hat")
    ]
    assert prediction["input"] == {
        "prompt": f"{lora.trigger_word} a cat in a hat",
        "lora_scale": 0.8,
        "num_outputs": 2,
        "aspect_ratio": "3:2",
        "seed": 77,
        "output_format": "png",
    }
    for img in done.images:
        assert png_size(await fetch(u, img.file_id)) == (img.width, img.height) == (1216, 832)

    # The provider fails the prediction: done FAILED with its reason, no gRPC error.
    fake.fail_predictions = "NSFW content detected"
    try:
        failed = await generate(u, image_lora=lora.id, prompt="something")
    finally:
        fake.fail_predictions = ""
    assert kinds(failed)[0] == "queued" and kinds(failed)[-1] == "done"
    assert failed[-1].done.status == L.GENERATION_STATUS_FAILED
    assert "NSFW content detected" in failed[-1].done.error

    # The caller goes away mid-generation: it goes on and is recorded. Meanwhile the
    # user's one running generation is the limit.
    fake.stall = True
    try:
        call = u.loras.GenerateImages(
            L.GenerateImagesRequest(image_lora=lora.id, prompt="a long one"), metadata=u.md
        )
        first = await call.read()
        gen_id = first.queued.id
        call.cancel()
        err = await refused(u, image_lora=lora.id, prompt="one more")
        assert (err.code(), reason(err)) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "TOO_MANY_GENERATIONS",
        )
        assert error_info(err).metadata["limit"] == "1"
    finally:
        fake.finish_stalled()
    kept = await wait_generation(u, gen_id, (L.GENERATION_STATUS_SUCCEEDED,))
    assert len(kept.images) == 1 and kept.prompt.startswith(lora.trigger_word)

    # A prediction that never ends: FAILED at the timeout, and cancelled at the provider
    # (it would bill on).
    fake.stall = True
    try:
        stuck = await generate(u, image_lora=lora.id, prompt="forever")
    finally:
        fake.finish_stalled()
    assert stuck[-1].done.status == L.GENERATION_STATUS_FAILED
    assert "did not end within 6 s" in stuck[-1].done.error
    (stuck_id,) = [
        p["id"] for p in fake.predictions.values() if p["input"]["prompt"].endswith("forever")
    ]
    assert stuck_id in fake.cancels


async def test_cancel_a_remote_training(env: Env, fake: ReplicateServer) -> None:
    u = Artist(env)
    fake.stall = True
    try:
        for i, down in enumerate((False, True)):
            lora = await u.create(word())
            for k in range(4):
                await u.add(lora.id, image(512, 512, seed=1300 + 10 * i + k))
            await u.loras.StartTraining(
                L.StartTrainingRequest(image_lora=lora.id, executor=REPLICATE), metadata=u.md
            )
            await wait_lora(u, lora.id, (L.IMAGE_LORA_STATUS_TRAINING,))
            remote_id = await env.training.pool.fetchval(
                "SELECT remote_id FROM image_loras WHERE id = $1", uuid.UUID(lora.id)
            )
            assert remote_id
            fake.down = down
            try:
                cancelled = await u.loras.CancelTraining(
                    L.CancelTrainingRequest(image_lora=lora.id), metadata=u.md
                )
            finally:
                fake.down = False
            # CANCELLED here either way; with the provider down the sweep sends it again.
            assert cancelled.status == L.IMAGE_LORA_STATUS_CANCELLED
            loop = asyncio.get_running_loop()
            end = loop.time() + 20
            while remote_id not in fake.cancels:
                assert loop.time() < end, "the remote training was never cancelled"
                await asyncio.sleep(0.05)
            assert fake.trainings[remote_id]["status"] == "canceled"
            while await env.training.pool.fetchval(
                "SELECT cancel_pending FROM image_loras WHERE id = $1", uuid.UUID(lora.id)
            ):
                assert loop.time() < end
                await asyncio.sleep(0.05)
            assert (await wait_lora(u, lora.id, (L.IMAGE_LORA_STATUS_CANCELLED,))).HasField(
                "finish_time"
            )
    finally:
        fake.finish_stalled()


def test_local_images_default_to_the_base_pipelines_native_side() -> None:
    """GENERATION_LOCAL_LONG_SIDE 0 (the default): a LOCAL image is drawn at the base
    pipeline's own size (the toy pipeline's 64 px, not 1024 px it would take minutes to
    draw on CPU); a set value wins."""
    settings = TrainingSettings()
    assert settings.generation_local_long_side == 0
    side = G.native_side(settings)
    assert side == image_pipeline.resolution(image_pipeline.resolve(settings)) == 64
    assert G.pixel_size(L.ASPECT_RATIO_1_1, side) == (64, 64)
