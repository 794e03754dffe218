"""Image LoRAs (seed 001) against the real storage and training services: the resource's
life (create, get, list in pages, update by mask, soft delete), its trigger word rules,
reference images checked on their bytes (format, header size, byte limit, count,
duplicates), and StartTraining's checks and queueing (a retry too); another user's LoRA or
file is NOT_FOUND. The header reader is tested on images Pillow writes in every layout it
parses. Training: the executor chosen (asked for, else the server's; not enabled, or
REPLICATE without a key, refused before anything changes), CancelTraining in every status,
a retry that resets the attempt, a delete that cancels a running training first, and the
retention sweep that purges a deleted LoRA's files from storage."""

from __future__ import annotations

import asyncio
import io
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2
from PIL import Image

from aivera.storage.v1 import storage_pb2
from aivera.training.v1 import image_loras_pb2 as L
from aivera.training.v1 import image_loras_pb2_grpc, jobs_pb2
from services.common.errors import InvalidArgument
from services.training import image_headers, image_loras
from tests.helpers.errors import bad_field, error_info, reason
from tests.training.conftest import Env, User

IMAGES = storage_pb2.BUCKET_TRAINING_IMAGES
SIM = L.IMAGE_LORA_EXECUTOR_SIMULATE


@pytest.fixture(scope="module")
def training_overrides() -> dict[str, Any]:
    """SIMULATE by default; LOCAL not enabled here; REPLICATE enabled but no system key
    (and no auth to hold users' keys); deleted LoRAs purged a second after, swept often."""
    return {
        "image_lora_executor": "simulate",
        "image_lora_executors_enabled": ["simulate", "replicate"],
        "image_lora_local_steps": 7,
        "image_lora_retention_seconds": 1.0,
        "image_lora_sweep_seconds": 0.2,
    }


def image(w: int, h: int, fmt: str = "PNG", seed: int = 0, **save: Any) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), ((seed * 37) % 256, (seed * 91) % 256, seed % 7)).save(
        buf, fmt, **save
    )
    return buf.getvalue()


# -- the header reader (pure) -------------------------------------------------------------
@pytest.mark.parametrize(
    ("fmt", "save", "expect"),
    [
        ("PNG", {}, image_headers.PNG),
        ("JPEG", {}, image_headers.JPEG),
        ("JPEG", {"progressive": True}, image_headers.JPEG),
        ("WEBP", {}, image_headers.WEBP),  # lossy: VP8
        ("WEBP", {"lossless": True}, image_headers.WEBP),  # VP8L
        ("WEBP", {"exif": b"Exif\x00\x00" + b"\x00" * 64}, image_headers.WEBP),  # VP8X
    ],
)
def test_header_sizes_of_every_layout(fmt: str, save: dict[str, Any], expect: str) -> None:
    raw = image(700, 513, fmt, **save)
    header = image_headers.read_header(raw[:4096])
    assert (header.format, header.width, header.height) == (expect, 700, 513)


def test_jpeg_frame_header_after_large_segments() -> None:
    # A 60 KB APP segment (EXIF-like) before the frame header.
    raw = image(640, 900, "JPEG")
    app = b"\xff\xe1" + (60_002).to_bytes(2, "big") + b"\x00" * 60_000
    raw = raw[:2] + app + raw[2:]
    header = image_headers.read_header(raw)
    assert (header.width, header.height) == (640, 900)


@pytest.mark.parametrize(
    "raw",
    [
        b"GIF89a" + b"\x00" * 40,
        b"hello, world",
        b"\x89PNG\r\n\x1a\n" + b"\x00" * 4,  # truncated
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIDAT" + b"\x00" * 16,  # no IHDR first
        b"\xff\xd8\xff\xd9",  # JPEG ending before any frame
        b"RIFF\x00\x00\x00\x00WEBPVP8 " + b"\x00" * 20,  # no key frame start code
    ],
)
def test_header_refuses_what_is_not_an_image(raw: bytes) -> None:
    with pytest.raises(image_headers.NotAnImage):
        image_headers.read_header(raw)


def test_header_limits_name_the_limit() -> None:
    with pytest.raises(InvalidArgument) as err:
        image_loras.image_header(image(511, 800)[:64])
    assert "512" in err.value.message and "4096" in err.value.message
    assert err.value.metadata["min_side"] == "512"


async def test_stream_stops_past_the_byte_limit() -> None:
    """A file larger than its metadata said is refused once 10 MiB have been read."""
    sent: list[int] = []

    class Storage:
        async def chunks(self, file_id: str) -> AsyncIterator[bytes]:
            for _ in range(20):
                sent.append(1)
                yield b"\x00" * (1024 * 1024)

    loras = image_loras.ImageLoras.__new__(image_loras.ImageLoras)
    loras.storage = Storage()  # type: ignore[assignment]
    with pytest.raises(InvalidArgument) as err:
        await loras._read("f")
    assert err.value.metadata["limit"] == str(10 * 1024 * 1024)
    assert len(sent) == 11


# -- the service --------------------------------------------------------------------------
class Artist(User):
    def __init__(self, env: Env) -> None:
        super().__init__(env)
        self.loras = image_loras_pb2_grpc.ImageLoraServiceStub(env.chan)

    async def create(
        self,
        word: str,
        name: str = "My style",
        kind: L.ImageLoraKind.ValueType = L.IMAGE_LORA_KIND_STYLE,
    ) -> L.ImageLora:
        lora: L.ImageLora = await self.loras.CreateImageLora(
            L.CreateImageLoraRequest(name=name, kind=kind, trigger_word=word), metadata=self.md
        )
        return lora

    async def add(self, lora_id: str, raw: bytes, caption: str = "") -> L.ImageLora:
        file_id = await self.upload(raw, "ref.png", IMAGES)
        return await self.add_file(lora_id, file_id, caption)

    async def add_file(self, lora_id: str, file_id: str, caption: str = "") -> L.ImageLora:
        lora: L.ImageLora = await self.loras.AddReferenceImage(
            L.AddReferenceImageRequest(image_lora=lora_id, file_id=file_id, caption=caption),
            metadata=self.md,
        )
        return lora


def word() -> str:
    return "sks" + uuid.uuid4().hex[:8]


async def test_image_lora_lifecycle(env: Env) -> None:
    u, other = Artist(env), Artist(env)
    tw = word()
    lora = await u.create(tw, kind=L.IMAGE_LORA_KIND_CHARACTER)
    assert lora.status == L.IMAGE_LORA_STATUS_DRAFT
    assert (lora.kind, lora.trigger_word, lora.name) == (
        L.IMAGE_LORA_KIND_CHARACTER,
        tw,
        "My style",
    )
    assert lora.create_time.seconds > 0 and not lora.HasField("finish_time")
    got = await u.loras.GetImageLora(L.GetImageLoraRequest(id=lora.id), metadata=u.md)
    assert got == lora

    # The same trigger word, in any case, is taken for this user only.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await u.create(tw.upper())
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert bad_field(err.value) == "trigger_word"
    assert (await other.create(tw)).trigger_word == tw

    # Paged list, newest first; another user's LoRAs are not in it.
    second, third = await u.create(word()), await u.create(word())
    page = await u.loras.ListImageLoras(L.ListImageLorasRequest(page_size=2), metadata=u.md)
    assert [x.id for x in page.image_loras] == [third.id, second.id]
    rest = await u.loras.ListImageLoras(
        L.ListImageLorasRequest(page_size=2, page_token=page.next_page_token), metadata=u.md
    )
    assert [x.id for x in rest.image_loras] == [lora.id] and not rest.next_page_token

    # Update by mask: only the masked fields change; a taken word is ALREADY_EXISTS.
    mask = field_mask_pb2.FieldMask(paths=["name"])
    upd = await u.loras.UpdateImageLora(
        L.UpdateImageLoraRequest(
            image_lora=L.ImageLora(id=lora.id, name="Renamed", trigger_word="ignored"),
            update_mask=mask,
        ),
        metadata=u.md,
    )
    assert (upd.name, upd.trigger_word) == ("Renamed", tw)
    new_word = word()
    upd = await u.loras.UpdateImageLora(
        L.UpdateImageLoraRequest(
            image_lora=L.ImageLora(id=lora.id, trigger_word=new_word),
            update_mask=field_mask_pb2.FieldMask(paths=["trigger_word"]),
        ),
        metadata=u.md,
    )
    assert upd.trigger_word == new_word
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await u.loras.UpdateImageLora(
            L.UpdateImageLoraRequest(
                image_lora=L.ImageLora(id=second.id, trigger_word=new_word.upper()),
                update_mask=field_mask_pb2.FieldMask(paths=["trigger_word"]),
            ),
            metadata=u.md,
        )
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS

    # Another user: NOT_FOUND on every method.
    calls = [
        other.loras.GetImageLora(L.GetImageLoraRequest(id=lora.id), metadata=other.md),
        other.loras.UpdateImageLora(
            L.UpdateImageLoraRequest(
                image_lora=L.ImageLora(id=lora.id, name="x"), update_mask=mask
            ),
            metadata=other.md,
        ),
        other.loras.DeleteImageLora(L.DeleteImageLoraRequest(id=lora.id), metadata=other.md),
        other.add(lora.id, image(512, 512)),
    ]
    for call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.NOT_FOUND

    # Soft delete: gone at once, the word is free again, a repeated delete is NOT_FOUND.
    await u.loras.DeleteImageLora(L.DeleteImageLoraRequest(id=lora.id), metadata=u.md)
    for call in [
        u.loras.GetImageLora(L.GetImageLoraRequest(id=lora.id), metadata=u.md),
        u.loras.DeleteImageLora(L.DeleteImageLoraRequest(id=lora.id), metadata=u.md),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    listed = await u.loras.ListImageLoras(L.ListImageLorasRequest(), metadata=u.md)
    assert lora.id not in [x.id for x in listed.image_loras]
    assert (await u.create(new_word)).trigger_word == new_word


@pytest.mark.parametrize(
    ("req", "field"),
    [
        (
            L.CreateImageLoraRequest(name="", kind=L.IMAGE_LORA_KIND_STYLE, trigger_word="sksdog"),
            "name",
        ),
        (
            L.CreateImageLoraRequest(
                name="n", kind=L.IMAGE_LORA_KIND_UNSPECIFIED, trigger_word="sksdog"
            ),
            "kind",
        ),
        (
            L.CreateImageLoraRequest(
                name="n", kind=L.ImageLoraKind.ValueType(9), trigger_word="sksdog"
            ),
            "kind",
        ),
        (
            L.CreateImageLoraRequest(
                name="n", kind=L.IMAGE_LORA_KIND_STYLE, trigger_word="two words"
            ),
            "trigger_word",
        ),
        (
            L.CreateImageLoraRequest(name="n", kind=L.IMAGE_LORA_KIND_STYLE, trigger_word="ab"),
            "trigger_word",
        ),
        (
            L.CreateImageLoraRequest(name="n", kind=L.IMAGE_LORA_KIND_STYLE, trigger_word="9lives"),
            "trigger_word",
        ),
        (
            L.CreateImageLoraRequest(name="n", kind=L.IMAGE_LORA_KIND_STYLE, trigger_word="a-b<c>"),
            "trigger_word",
        ),
        (
            L.CreateImageLoraRequest(name="n", kind=L.IMAGE_LORA_KIND_STYLE, trigger_word="x" * 33),
            "trigger_word",
        ),
    ],
)
async def test_create_bad_input(env: Env, req: L.CreateImageLoraRequest, field: str) -> None:
    u = Artist(env)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await u.loras.CreateImageLora(req, metadata=u.md)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_field(err.value) == field


async def test_update_bad_input(env: Env) -> None:
    u = Artist(env)
    lora = await u.create(word())
    for image_lora, paths, field in [
        (L.ImageLora(id=lora.id, name="x"), [], "update_mask"),
        (L.ImageLora(id=lora.id, name="x"), ["kind"], "update_mask"),
        (
            L.ImageLora(id=lora.id, trigger_word="no way"),
            ["trigger_word"],
            "image_lora.trigger_word",
        ),
        (L.ImageLora(id=lora.id, name=" "), ["name"], "image_lora.name"),
        (L.ImageLora(id="nope", name="x"), ["name"], "image_lora.id"),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await u.loras.UpdateImageLora(
                L.UpdateImageLoraRequest(
                    image_lora=image_lora, update_mask=field_mask_pb2.FieldMask(paths=paths)
                ),
                metadata=u.md,
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, field
        assert bad_field(err.value) == field


async def test_reference_images(env: Env) -> None:
    u, other = Artist(env), Artist(env)
    lora = await u.create(word())
    first = image(512, 768, "PNG", seed=1)
    got = await u.add(lora.id, first, caption="  a dog on grass ")
    (ref,) = got.reference_images
    assert (ref.format, ref.width, ref.height) == (L.IMAGE_FORMAT_PNG, 512, 768)
    assert (ref.caption, ref.size_bytes) == ("a dog on grass", len(first))
    got = await u.add(lora.id, image(1024, 600, "JPEG", seed=2))
    got = await u.add(lora.id, image(600, 4096, "WEBP", seed=3))
    assert [(r.format, r.width, r.height) for r in got.reference_images][1:] == [
        (L.IMAGE_FORMAT_JPEG, 1024, 600),
        (L.IMAGE_FORMAT_WEBP, 600, 4096),
    ]

    async def refused(
        raw: bytes, bucket: storage_pb2.Bucket.ValueType = IMAGES, filename: str = "x.png"
    ) -> Any:
        file_id = await u.upload(raw, filename, bucket)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await u.add_file(lora.id, file_id)
        return err.value

    # The same bytes again (another file): DUPLICATE_IMAGE.
    err = await refused(first)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason(err) == "DUPLICATE_IMAGE"
    # Sides outside 512..4096, named in the message.
    for w, h in [(511, 800), (800, 300), (4097, 512)]:
        err = await refused(image(w, h, "PNG"))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert reason(err) == "IMAGE_DIMENSIONS" and bad_field(err) == "file_id"
        assert "512" in err.details() and "4096" in err.details()
        assert error_info(err).metadata["max_side"] == "4096"
    # A PNG signature over garbage: the header, not the name or magic, decides.
    err = await refused(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    assert (err.code(), reason(err)) == (grpc.StatusCode.INVALID_ARGUMENT, "UNSUPPORTED_FORMAT")
    # Not an image at all (a dataset file).
    err = await refused(b'{"text": "hi"}\n', storage_pb2.BUCKET_DATASETS, "d.jsonl")
    assert (err.code(), reason(err)) == (grpc.StatusCode.INVALID_ARGUMENT, "UNSUPPORTED_FORMAT")
    # Another user's file is NOT_FOUND; a caption over 1000 characters is refused.
    theirs = await other.upload(image(512, 512, seed=9), "t.png", IMAGES)
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await u.add_file(lora.id, theirs)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await u.add(lora.id, image(512, 512, seed=10), caption="c" * 1001)
    assert (e.value.code(), bad_field(e.value)) == (grpc.StatusCode.INVALID_ARGUMENT, "caption")
    assert (
        len(
            (
                await u.loras.GetImageLora(L.GetImageLoraRequest(id=lora.id), metadata=u.md)
            ).reference_images
        )
        == 3
    )

    # Remove: gone from the LoRA; again, or by another user, NOT_FOUND.
    rm = L.RemoveReferenceImageRequest(image_lora=lora.id, reference_image=ref.id)
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await other.loras.RemoveReferenceImage(rm, metadata=other.md)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    after = await u.loras.RemoveReferenceImage(rm, metadata=u.md)
    assert ref.id not in [r.id for r in after.reference_images] and len(after.reference_images) == 2
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await u.loras.RemoveReferenceImage(rm, metadata=u.md)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    # Removed bytes can come back.
    assert len((await u.add(lora.id, first)).reference_images) == 3


async def test_at_most_fifteen_images(env: Env) -> None:
    u = Artist(env)
    lora = await u.create(word())
    for i in range(image_loras.MAX_IMAGES):
        got = await u.add(lora.id, image(512, 512, seed=100 + i))
    assert len(got.reference_images) == 15
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await u.add(lora.id, image(512, 512, seed=200))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason(err.value) == "REFERENCE_IMAGE_COUNT"
    assert error_info(err.value).metadata["max"] == "15"


async def test_start_training(env: Env) -> None:
    u, other = Artist(env), Artist(env)
    lora = await u.create(word())
    start = L.StartTrainingRequest(image_lora=lora.id)

    async def refused(who: Artist = u) -> grpc.aio.AioRpcError:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await who.loras.StartTraining(start, metadata=who.md)
        return err.value

    # 3 images: too few.
    for i in range(3):
        got = await u.add(lora.id, image(512, 512, seed=400 + i))
    err = await refused()
    assert (err.code(), reason(err)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "REFERENCE_IMAGE_COUNT",
    )
    assert bad_field(err) == "reference_images" and error_info(err).metadata["min"] == "4"

    # A 4th image whose storage file is then deleted: refused, naming the image.
    file_id = await u.upload(image(512, 512, seed=403), "r.png", IMAGES)
    got = await u.add_file(lora.id, file_id)
    await u.storage.DeleteFile(storage_pb2.DeleteFileRequest(id=file_id), metadata=u.md)
    err = await refused()
    assert (err.code(), reason(err)) == (grpc.StatusCode.FAILED_PRECONDITION, "FILE_NOT_READY")
    gone = next(r for r in got.reference_images if r.file_id == file_id)
    assert error_info(err).metadata["reference_image"] == gone.id
    await u.loras.RemoveReferenceImage(
        L.RemoveReferenceImageRequest(image_lora=lora.id, reference_image=gone.id),
        metadata=u.md,
    )
    await u.add(lora.id, image(512, 512, seed=404))

    # Another user: NOT_FOUND, nothing queued.
    assert (await refused(other)).code() == grpc.StatusCode.NOT_FOUND
    queued = await u.loras.StartTraining(start, metadata=u.md)
    assert queued.status == L.IMAGE_LORA_STATUS_QUEUED and len(queued.reference_images) == 4
    # The server's default executor (SIMULATE here) with its default steps, as a job.
    assert (queued.executor, queued.simulated, queued.attempt) == (SIM, True, 1)
    assert queued.training_steps == 7 and queued.progress == 0
    job = await u.jobs.GetJob(jobs_pb2.GetJobRequest(id=queued.job_id), metadata=u.md)
    assert job.status in (jobs_pb2.JOB_STATUS_QUEUED, jobs_pb2.JOB_STATUS_VALIDATING)
    # The trainer will read the files after this request: a grant is kept for it.
    assert (
        await env.training.pool.fetchval(
            "SELECT count(*) FROM work_grants WHERE resource_id = $1", uuid.UUID(lora.id)
        )
        == 1
    )
    # Queued: a second start, and any change of images or trigger word, is refused.
    calls = [
        u.loras.StartTraining(start, metadata=u.md),
        u.add(lora.id, image(512, 512, seed=405)),
        u.loras.RemoveReferenceImage(
            L.RemoveReferenceImageRequest(
                image_lora=lora.id, reference_image=queued.reference_images[0].id
            ),
            metadata=u.md,
        ),
        u.loras.UpdateImageLora(
            L.UpdateImageLoraRequest(
                image_lora=L.ImageLora(id=lora.id, trigger_word=word()),
                update_mask=field_mask_pb2.FieldMask(paths=["trigger_word"]),
            ),
            metadata=u.md,
        ),
    ]
    for call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await call
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert reason(e.value) == "IMAGE_LORA_STATE"
    # Renaming is still allowed.
    upd = await u.loras.UpdateImageLora(
        L.UpdateImageLoraRequest(
            image_lora=L.ImageLora(id=lora.id, name="Still mine"),
            update_mask=field_mask_pb2.FieldMask(paths=["name"]),
        ),
        metadata=u.md,
    )
    assert upd.name == "Still mine" and upd.status == L.IMAGE_LORA_STATUS_QUEUED


async def test_retry_after_failure_clears_the_error(env: Env) -> None:
    """A FAILED LoRA starts again with the same images; its error and finish time go.
    (FAILED is set directly: the trainer that fails a LoRA is a later slice.)"""
    u = Artist(env)
    lora = await u.create(word())
    for i in range(4):
        await u.add(lora.id, image(512, 512, seed=500 + i))
    await env.training.pool.execute(
        "UPDATE image_loras SET status = $2, error = 'out of memory', "
        "finished_at = clock_timestamp() WHERE id = $1",
        uuid.UUID(lora.id),
        L.IMAGE_LORA_STATUS_FAILED,
    )
    failed = await u.loras.GetImageLora(L.GetImageLoraRequest(id=lora.id), metadata=u.md)
    assert failed.error == "out of memory" and failed.HasField("finish_time")
    again = await u.loras.StartTraining(L.StartTrainingRequest(image_lora=lora.id), metadata=u.md)
    assert again.status == L.IMAGE_LORA_STATUS_QUEUED
    assert again.error == "" and not again.HasField("finish_time")
    assert [r.id for r in again.reference_images] == [r.id for r in failed.reference_images]


# -- executors, cancel, retry, delete, retention --------------------------------------------
async def trainable(u: Artist, seed: int) -> L.ImageLora:
    lora = await u.create(word())
    for i in range(4):
        got = await u.add(lora.id, image(512, 512, seed=seed + i))
    return got


async def start(u: Artist, lora_id: str, **kw: Any) -> L.ImageLora:
    got: L.ImageLora = await u.loras.StartTraining(
        L.StartTrainingRequest(image_lora=lora_id, **kw), metadata=u.md
    )
    return got


async def get(u: Artist, lora_id: str) -> L.ImageLora:
    got: L.ImageLora = await u.loras.GetImageLora(L.GetImageLoraRequest(id=lora_id), metadata=u.md)
    return got


async def test_executor_choice_is_refused_before_any_change(env: Env) -> None:
    u = Artist(env)
    lora = await trainable(u, 600)
    # LOCAL is not enabled on this server: INVALID_ARGUMENT naming `executor`.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await start(u, lora.id, executor=L.IMAGE_LORA_EXECUTOR_LOCAL)
    assert (err.value.code(), bad_field(err.value)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "executor",
    )
    assert "LOCAL" in err.value.details() and "SIMULATE" in err.value.details()
    # REPLICATE with neither a key of the user nor a system key: PROVIDER_KEY_MISSING.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await start(u, lora.id, executor=L.IMAGE_LORA_EXECUTOR_REPLICATE)
    assert (err.value.code(), reason(err.value)) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "PROVIDER_KEY_MISSING",
    )
    # Steps out of range.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await start(u, lora.id, steps=6001)
    assert (err.value.code(), bad_field(err.value)) == (grpc.StatusCode.INVALID_ARGUMENT, "steps")
    unchanged = await get(u, lora.id)
    assert unchanged.status == L.IMAGE_LORA_STATUS_DRAFT
    assert (unchanged.attempt, unchanged.executor, unchanged.job_id) == (
        0,
        L.IMAGE_LORA_EXECUTOR_UNSPECIFIED,
        "",
    )
    # The executor asked for, with the steps asked for.
    queued = await start(u, lora.id, executor=SIM, steps=3)
    assert (queued.executor, queued.training_steps, queued.attempt) == (SIM, 3, 1)


async def test_cancel_training_in_every_status(env: Env) -> None:
    u, other = Artist(env), Artist(env)
    lora = await trainable(u, 700)
    cancel = L.CancelTrainingRequest(image_lora=lora.id)

    async def refused(who: Artist = u) -> grpc.aio.AioRpcError:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await who.loras.CancelTraining(cancel, metadata=who.md)
        return err.value

    # DRAFT: nothing to cancel.
    err = await refused()
    assert (err.code(), reason(err)) == (grpc.StatusCode.FAILED_PRECONDITION, "IMAGE_LORA_STATE")
    assert error_info(err).metadata["status"] == "DRAFT"
    queued = await start(u, lora.id)
    # Another user: NOT_FOUND, nothing cancelled.
    assert (await refused(other)).code() == grpc.StatusCode.NOT_FOUND
    assert (await get(u, lora.id)).status == L.IMAGE_LORA_STATUS_QUEUED
    cancelled = await u.loras.CancelTraining(cancel, metadata=u.md)
    assert cancelled.status == L.IMAGE_LORA_STATUS_CANCELLED
    assert cancelled.HasField("finish_time")
    # Its job is stopped too.
    job = await u.jobs.GetJob(jobs_pb2.GetJobRequest(id=queued.job_id), metadata=u.md)
    assert job.status == jobs_pb2.JOB_STATUS_CANCELLED
    # Again: the CANCELLED LoRA answers with itself.
    again = await u.loras.CancelTraining(cancel, metadata=u.md)
    assert again == cancelled
    # READY (trained): not cancellable.
    await env.training.pool.execute(
        "UPDATE image_loras SET status = $2 WHERE id = $1",
        uuid.UUID(lora.id),
        L.IMAGE_LORA_STATUS_READY,
    )
    err = await refused()
    assert (err.code(), reason(err)) == (grpc.StatusCode.FAILED_PRECONDITION, "IMAGE_LORA_STATE")
    # Bad id.
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await u.loras.CancelTraining(L.CancelTrainingRequest(image_lora="nope"), metadata=u.md)
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_retry_resets_the_attempt(env: Env) -> None:
    u = Artist(env)
    lora = await trainable(u, 800)
    first = await start(u, lora.id, steps=5)
    await u.loras.CancelTraining(L.CancelTrainingRequest(image_lora=lora.id), metadata=u.md)
    # What the first attempt left (progress, a remote id, weights) does not carry over.
    await env.training.pool.execute(
        "UPDATE image_loras SET progress = 0.5, weights_file_id = 'old', "
        "weights_size_bytes = 9, remote_id = 'r-1' WHERE id = $1",
        uuid.UUID(lora.id),
    )
    second = await start(u, lora.id)
    assert (second.status, second.attempt, second.training_steps) == (
        L.IMAGE_LORA_STATUS_QUEUED,
        2,
        7,
    )
    assert second.job_id and second.job_id != first.job_id
    assert (second.progress, second.weights_size_bytes, second.error) == (0, 0, "")
    assert not second.HasField("finish_time")
    row = await env.training.pool.fetchrow(
        "SELECT remote_id, weights_file_id FROM image_loras WHERE id = $1", uuid.UUID(lora.id)
    )
    assert (row["remote_id"], row["weights_file_id"]) == ("", "")
    assert [r.id for r in second.reference_images] == [r.id for r in first.reference_images]


async def test_delete_cancels_and_the_files_are_purged_after_retention(env: Env) -> None:
    u = Artist(env)
    lora = await trainable(u, 900)
    queued = await start(u, lora.id)
    files = [r.file_id for r in queued.reference_images]
    await u.loras.DeleteImageLora(L.DeleteImageLoraRequest(id=lora.id), metadata=u.md)
    row = await env.training.pool.fetchrow(
        "SELECT status, deleted_at FROM image_loras WHERE id = $1", uuid.UUID(lora.id)
    )
    assert row["status"] == L.IMAGE_LORA_STATUS_CANCELLED and row["deleted_at"] is not None
    job = await u.jobs.GetJob(jobs_pb2.GetJobRequest(id=queued.job_id), metadata=u.md)
    assert job.status == jobs_pb2.JOB_STATUS_CANCELLED
    # The files are still there within the retention window...
    still = await u.storage.GetFile(storage_pb2.GetFileRequest(id=files[0]), metadata=u.md)
    assert still.status == storage_pb2.FILE_STATUS_READY
    # ...and the sweep purges them after it (1 s here), once.
    loop = asyncio.get_running_loop()
    end = loop.time() + 20
    while (
        await env.training.pool.fetchval(
            "SELECT purged_at FROM image_loras WHERE id = $1", uuid.UUID(lora.id)
        )
        is None
    ):
        assert loop.time() < end, "the sweep did not purge the deleted LoRA"
        await asyncio.sleep(0.1)
    for file_id in files:
        gone = await u.storage.GetFile(storage_pb2.GetFileRequest(id=file_id), metadata=u.md)
        assert gone.status == storage_pb2.FILE_STATUS_DELETED
    sweep = env.training.spec.training.image_sweep  # type: ignore[attr-defined]
    assert await sweep.purge_once() == 0
