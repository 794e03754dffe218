"""Image LoRAs (seed 001): a style, character or product an image model learns from 4–15
reference images of the owner, called up in prompts by a trigger word.

A LoRA is assembled in DRAFT: reference images are storage files of the owner, checked
here on their bytes (format sniffed, size read from the image header, never decoded; the
same bytes once per LoRA). Its images and trigger word change only while no training
holds them (DRAFT, FAILED, CANCELLED). Deleting is soft: the LoRA is gone for the owner at
once and its trigger word is free again (a training still running is cancelled first);
its files leave storage after the retention window (image_retention.py).

Training runs on one of three executors (ImageLoraExecutor): REPLICATE (image_trainer.py,
the provider's trainings API), LOCAL and SIMULATE (a training job on the mesh's workers,
image_jobs.py). StartTraining checks everything that can fail before the LoRA changes,
then moves it to QUEUED and hands it to its executor in the same transaction.

Cancelling a REPLICATE training: the LoRA is CANCELLED here first (in a transaction), then
the provider is told. A provider that is down does not undo the cancel: the LoRA keeps
`cancel_pending` and the sweep (image_retention.py) sends the cancel again until the
provider confirms, so a cancelled training never keeps running (and billing) unseen."""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass

import grpc

from aivera.storage.v1 import storage_pb2
from aivera.training.v1 import image_loras_pb2
from services.common import pages
from services.common.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Reason,
    ResourceExhausted,
    ServiceError,
    Unavailable,
    not_found,
)
from services.common.identity import ServiceIdentity, grant_now
from services.common.protoutil import parse_uuid
from services.common.remote import StorageClient
from services.training import checks, image_headers, image_jobs, image_trainer, replicate_keys
from services.training.config import ImageLoraExecutorName, TrainingSettings
from services.training.image_lora_store import ImageLoraRow, ImageLoraStore, ReferenceImageRow
from services.training.store import Store

L = image_loras_pb2
log = logging.getLogger("aivera.training.image_loras")

MIN_IMAGES = 4
MAX_IMAGES = 15
MAX_IMAGE_BYTES = 10 * 1024 * 1024
MIN_SIDE = 512
MAX_SIDE = 4096
MAX_CAPTION = 1000
# Bytes kept for the header: a JPEG's frame header can follow large EXIF/ICC segments.
HEAD_BYTES = 512 * 1024
IMAGE_BUCKETS = frozenset({storage_pb2.BUCKET_TRAINING_IMAGES, storage_pb2.BUCKET_IMAGES})
FORMATS = {
    image_headers.JPEG: L.IMAGE_FORMAT_JPEG,
    image_headers.PNG: L.IMAGE_FORMAT_PNG,
    image_headers.WEBP: L.IMAGE_FORMAT_WEBP,
}
# A trigger word is one token-like word: it must survive prompt tokenisation as itself.
TRIGGER_WORD = re.compile(r"[A-Za-z][A-Za-z0-9_]{2,31}")
# Statuses in which no training holds the images and the trigger word.
EDITABLE = frozenset(
    {L.IMAGE_LORA_STATUS_DRAFT, L.IMAGE_LORA_STATUS_FAILED, L.IMAGE_LORA_STATUS_CANCELLED}
)
# Statuses of a training that has not ended: CancelTraining stops it, delete cancels it.
RUNNING = frozenset(
    {L.IMAGE_LORA_STATUS_VALIDATING, L.IMAGE_LORA_STATUS_QUEUED, L.IMAGE_LORA_STATUS_TRAINING}
)
EXECUTORS: dict[ImageLoraExecutorName, int] = {
    "replicate": L.IMAGE_LORA_EXECUTOR_REPLICATE,
    "local": L.IMAGE_LORA_EXECUTOR_LOCAL,
    "simulate": L.IMAGE_LORA_EXECUTOR_SIMULATE,
}
MAX_STEPS = 6000


@dataclass(frozen=True, slots=True)
class ImageLora:
    row: ImageLoraRow
    images: list[ReferenceImageRow]


def trigger_word(value: str, field: str = "trigger_word") -> str:
    if not TRIGGER_WORD.fullmatch(value):
        raise InvalidArgument(
            f"{field} must be one word of 3–32 characters: a letter, then letters, digits "
            "or underscores",
            field=field,
        )
    return value


def kind(value: int, field: str = "kind") -> int:
    if value not in (
        L.IMAGE_LORA_KIND_STYLE,
        L.IMAGE_LORA_KIND_CHARACTER,
        L.IMAGE_LORA_KIND_PRODUCT,
    ):
        raise InvalidArgument(f"{field} must be STYLE, CHARACTER or PRODUCT", field=field)
    return value


def caption(value: str, field: str = "caption") -> str:
    value = value.strip()
    if "\x00" in value:
        raise InvalidArgument(f"{field} must not contain NUL characters", field=field)
    if len(value) > MAX_CAPTION:
        raise InvalidArgument(f"{field} must be at most {MAX_CAPTION} characters", field=field)
    return value


def image_header(head: bytes, field: str = "file_id") -> image_headers.ImageHeader:
    """The reference image's format and size from its first bytes, within the limits."""
    try:
        header = image_headers.read_header(head)
    except image_headers.NotAnImage as exc:
        raise InvalidArgument(
            f"{field} is not a JPEG, PNG or WebP image: {exc}",
            field=field,
            reason=Reason.UNSUPPORTED_FORMAT,
        ) from None
    w, h = header.width, header.height
    if min(w, h) < MIN_SIDE or max(w, h) > MAX_SIDE:
        raise InvalidArgument(
            f"{field} is {w}×{h} pixels: each side must be between {MIN_SIDE} and {MAX_SIDE}",
            field=field,
            reason=Reason.IMAGE_DIMENSIONS,
            metadata={"min_side": str(MIN_SIDE), "max_side": str(MAX_SIDE)},
        )
    return header


def too_large(size: int, field: str = "file_id") -> InvalidArgument:
    return InvalidArgument(
        f"{field} is {size} bytes, over the limit of {MAX_IMAGE_BYTES} (10 MiB)",
        field=field,
        reason=Reason.FILE_TOO_LARGE,
        metadata={"limit": str(MAX_IMAGE_BYTES)},
    )


def status_name(status: int) -> str:
    return L.ImageLoraStatus.Name(status).removeprefix("IMAGE_LORA_STATUS_")  # type: ignore[arg-type]


def executor_name(executor: int) -> str:
    return L.ImageLoraExecutor.Name(executor).removeprefix("IMAGE_LORA_EXECUTOR_")  # type: ignore[arg-type]


def editable(row: ImageLoraRow, what: str) -> None:
    if row.status not in EDITABLE:
        status = status_name(row.status)
        raise FailedPrecondition(
            f"{what} cannot change while the image LoRA is {status}",
            reason=Reason.IMAGE_LORA_STATE,
            metadata={"status": status},
        )


def choose_executor(settings: TrainingSettings, asked: int, field: str = "executor") -> int:
    """The executor asked for, else the server's default; one not enabled is refused (so
    the choice is never silently changed). SIMULATE in production only when allowed, as
    for text training: it is never billed."""
    default = EXECUTORS[settings.image_lora_executor]
    enabled = {EXECUTORS[e] for e in settings.image_lora_executors_enabled} | {default}
    if asked == L.IMAGE_LORA_EXECUTOR_UNSPECIFIED:
        asked = default
    if asked not in enabled:
        name = executor_name(asked) if asked in EXECUTORS.values() else str(asked)
        raise InvalidArgument(
            f"executor {name} is not enabled on this server "
            f"(enabled: {', '.join(sorted(executor_name(e) for e in enabled))})",
            field=field,
        )
    if (
        asked == L.IMAGE_LORA_EXECUTOR_SIMULATE
        and settings.aivera_env == "prod"
        and not settings.training_allow_simulate_in_prod
    ):
        raise InvalidArgument("the simulate executor is disabled in production", field=field)
    return asked


def training_steps(settings: TrainingSettings, executor: int, asked: int) -> int:
    """Steps asked for, 1–6000; 0: the executor's default."""
    if not 0 <= asked <= MAX_STEPS:
        raise InvalidArgument(f"steps must be between 1 and {MAX_STEPS}, or 0", field="steps")
    if asked:
        return asked
    if executor == L.IMAGE_LORA_EXECUTOR_REPLICATE:
        return settings.image_lora_replicate_steps
    return settings.image_lora_local_steps


class ImageLoras:
    def __init__(
        self,
        store: Store,
        storage: StorageClient,
        identity: ServiceIdentity | None,
        settings: TrainingSettings,
        auth: grpc.aio.Channel | None = None,
    ) -> None:
        self.store = store
        self.loras = ImageLoraStore(store)
        self.storage = storage
        self.identity = identity
        self.settings = settings
        # Where users' provider keys are (AuthInternalService.GetProviderKey).
        self.auth = auth

    async def replicate_token(self, user: str) -> str:
        """The user's Replicate key, else the system's; FAILED_PRECONDITION
        (PROVIDER_KEY_MISSING) with neither."""
        return await replicate_keys.replicate_token(self.auth, self.settings, user)

    async def _owned(
        self, loras: ImageLoraStore, user: str, raw_id: str, field: str, *, lock: bool = False
    ) -> ImageLoraRow:
        """NOT_FOUND for a missing, deleted or another user's LoRA."""
        row = await loras.get(user, parse_uuid(raw_id, field=field), lock=lock)
        if row is None:
            raise not_found("image LoRA", raw_id)
        return row

    async def _full(self, loras: ImageLoraStore, row: ImageLoraRow) -> ImageLora:
        images = await loras.images([row.id])
        return ImageLora(row, images[row.id])

    async def get(self, user: str, raw_id: str) -> ImageLora:
        return await self._full(self.loras, await self._owned(self.loras, user, raw_id, "id"))

    async def list(self, user: str, page: pages.PageRequest) -> tuple[list[ImageLora], str]:
        rows, token = await self.loras.list_loras(user, page)
        images = await self.loras.images([r.id for r in rows])
        return [ImageLora(r, images[r.id]) for r in rows], token

    async def create(self, user: str, *, name: str, kind_: int, trigger_word_: str) -> ImageLora:
        row = await self.loras.insert(
            user_id=user,
            name=checks.name(name),
            kind=kind(kind_),
            trigger_word=trigger_word(trigger_word_),
            status=L.IMAGE_LORA_STATUS_DRAFT,
        )
        if row is None:
            raise _taken(trigger_word_, "trigger_word")
        return ImageLora(row, [])

    async def update(
        self, user: str, raw_id: str, *, name: str | None, trigger_word_: str | None
    ) -> ImageLora:
        """Change the fields given (None: not in the update mask)."""
        field = "image_lora.trigger_word"
        async with self.store.transaction() as tx:
            loras = self.loras.bound(tx)
            row = await self._owned(loras, user, raw_id, "image_lora.id", lock=True)
            if name is not None:
                name = checks.name(name, "image_lora.name")
            if trigger_word_ is not None:
                trigger_word(trigger_word_, field)
                if trigger_word_ != row.trigger_word:
                    editable(row, "the trigger word")
            if not await loras.update(row.id, name=name, trigger_word=trigger_word_):
                raise _taken(trigger_word_ or "", field)
            return await self._full(loras, await self._owned(loras, user, raw_id, "image_lora.id"))

    async def delete(self, user: str, raw_id: str) -> None:
        """Soft-delete, cancelling a training that has not ended; the files are purged
        after the retention window, for which a grant is kept (image_retention.py)."""
        # Without a mesh identity the purge acts for the user with what stands in for a
        # grant (identity.grant_now); with one, purging is training's own right.
        grant = None if self.identity else await grant_now(None)
        async with self.store.transaction() as tx:
            loras = self.loras.bound(tx)
            row = await self._owned(loras, user, raw_id, "id", lock=True)
            remote = await self._cancel_locked(tx, row) if row.status in RUNNING else False
            if not await loras.delete(row.id):
                raise not_found("image LoRA", raw_id)
            if grant is not None:
                await tx.put_grant(row.id, user, grant)
        if remote:
            await self.cancel_remote(row)

    async def add_image(self, user: str, raw_id: str, file_id: str, caption_: str) -> ImageLora:
        """Check the file on its bytes (bucket, size, format, header size), then add it
        under the LoRA's row lock so the count and duplicate checks hold."""
        row = await self._owned(self.loras, user, raw_id, "image_lora")
        editable(row, "the reference images")
        text = caption(caption_)
        if not file_id:
            raise InvalidArgument("file_id is required", field="file_id")
        file = await self.storage.get_file(file_id)  # NOT_FOUND when not the caller's
        if file.status != storage_pb2.FILE_STATUS_READY:
            raise FailedPrecondition(
                "the file's upload is not complete (or it was deleted)",
                field="file_id",
                reason=Reason.FILE_NOT_READY,
            )
        if file.bucket not in IMAGE_BUCKETS:
            raise InvalidArgument(
                "file_id is not an image: upload it to the `training-images` bucket",
                field="file_id",
                reason=Reason.UNSUPPORTED_FORMAT,
            )
        if file.size_bytes > MAX_IMAGE_BYTES:
            raise too_large(file.size_bytes)
        head, size, digest = await self._read(file.id)
        header = image_header(head)
        async with self.store.transaction() as tx:
            loras = self.loras.bound(tx)
            row = await self._owned(loras, user, raw_id, "image_lora", lock=True)
            editable(row, "the reference images")
            if await loras.count_images(row.id) >= MAX_IMAGES:
                raise InvalidArgument(
                    f"the image LoRA has {MAX_IMAGES} reference images, the most allowed",
                    field="image_lora",
                    reason=Reason.REFERENCE_IMAGE_COUNT,
                    metadata={"min": str(MIN_IMAGES), "max": str(MAX_IMAGES)},
                )
            added = await loras.add_image(
                row.id,
                file_id=file.id,
                caption=text,
                format=FORMATS[header.format],
                width=header.width,
                height=header.height,
                size_bytes=size,
                sha256=digest,
            )
            if not added:
                raise InvalidArgument(
                    "file_id has the same bytes as a reference image already in the LoRA",
                    field="file_id",
                    reason=Reason.DUPLICATE_IMAGE,
                )
            return await self._full(loras, row)

    async def remove_image(self, user: str, raw_id: str, raw_image_id: str) -> ImageLora:
        image_id = parse_uuid(raw_image_id, field="reference_image")
        async with self.store.transaction() as tx:
            loras = self.loras.bound(tx)
            row = await self._owned(loras, user, raw_id, "image_lora", lock=True)
            editable(row, "the reference images")
            if not await loras.remove_image(row.id, image_id):
                raise not_found("reference image", raw_image_id)
            return await self._full(loras, row)

    async def start(self, user: str, raw_id: str, *, executor: int, steps: int) -> ImageLora:
        """Check everything that can refuse the start (the executor and its key, the
        images: count, files still in storage) while nothing has changed, then queue the
        LoRA as a new attempt, with a grant for the trainer to read the user's files after
        this request, and hand it to its executor in the same transaction."""
        chosen = choose_executor(self.settings, executor)
        steps = training_steps(self.settings, chosen, steps)
        lora = await self._full(
            self.loras, await self._owned(self.loras, user, raw_id, "image_lora")
        )
        startable(lora.row)
        image_count(len(lora.images))
        if chosen == L.IMAGE_LORA_EXECUTOR_REPLICATE:
            await self.replicate_token(user)  # PROVIDER_KEY_MISSING before any change
        for img in lora.images:
            await self._still_there(img)
        grant = await grant_now(self.identity)
        async with self.store.transaction() as tx:
            loras = self.loras.bound(tx)
            row = await self._owned(loras, user, raw_id, "image_lora", lock=True)
            startable(row)  # the checks above ran without the lock: hold them again
            image_count(await loras.count_images(row.id))
            simulated = chosen == L.IMAGE_LORA_EXECUTOR_SIMULATE
            await loras.queue(
                row.id,
                L.IMAGE_LORA_STATUS_QUEUED,
                executor=chosen,
                simulated=simulated,
                steps=steps,
            )
            if grant is not None:
                await tx.put_grant(row.id, user, grant)
            queued = await self._owned(loras, user, raw_id, "image_lora")
            if chosen != L.IMAGE_LORA_EXECUTOR_REPLICATE:
                # The job reads the grant stored above under the LoRA's id; the LoRA
                # points at the job (`job_id`).
                await image_jobs.enqueue(
                    tx, queued, steps=steps, simulate=simulated, settings=self.settings
                )
                queued = await self._owned(loras, user, raw_id, "image_lora")
            # REPLICATE: the remote trainer (image_trainer.py) picks QUEUED LoRAs up.
            return await self._full(loras, queued)

    async def cancel(self, user: str, raw_id: str) -> ImageLora:
        """CANCELLED, in a transaction, before the provider is told (see the module's
        doc); a CANCELLED LoRA answers with itself."""
        async with self.store.transaction() as tx:
            loras = self.loras.bound(tx)
            row = await self._owned(loras, user, raw_id, "image_lora", lock=True)
            if row.status == L.IMAGE_LORA_STATUS_CANCELLED:
                return await self._full(loras, row)
            if row.status not in RUNNING:
                status = status_name(row.status)
                raise FailedPrecondition(
                    f"the image LoRA is {status}: only a training that has not ended "
                    "(VALIDATING, QUEUED or TRAINING) can be cancelled",
                    reason=Reason.IMAGE_LORA_STATE,
                    metadata={"status": status},
                )
            remote = await self._cancel_locked(tx, row)
            cancelled = await self._full(
                loras, await self._owned(loras, user, raw_id, "image_lora")
            )
        if remote:
            await self.cancel_remote(row)
        return cancelled

    async def _cancel_locked(self, tx: Store, row: ImageLoraRow) -> bool:
        """Move a running LoRA (locked by `tx`) to CANCELLED and stop its job; True when
        a remote training must be cancelled at the provider after the commit."""
        remote = row.executor == L.IMAGE_LORA_EXECUTOR_REPLICATE and bool(row.remote_id)
        await self.loras.bound(tx).cancel(
            row.id, L.IMAGE_LORA_STATUS_CANCELLED, cancel_pending=remote
        )
        if row.executor != L.IMAGE_LORA_EXECUTOR_REPLICATE:
            await image_jobs.cancel(tx, row)
        return remote

    async def cancel_remote(self, row: ImageLoraRow) -> bool:
        """Tell the provider; True once it confirmed (then `cancel_pending` is cleared).
        The provider, auth or the database down: logged and left to the sweep, which
        sends it again. A refusal no retry can change (the key is gone or refused) ends
        the attempts, logged."""
        try:
            await image_trainer.cancel_remote(self, row)
        except (Unavailable, ResourceExhausted) as exc:
            log.warning("cancel of remote training of image LoRA %s failed: %s", row.id, exc)
            return False
        except ServiceError as exc:
            log.error(
                "cancel of remote training of image LoRA %s refused, not retried: %s",
                row.id,
                exc.message,
            )
        except Exception as exc:  # unexpected: the sweep tries again
            log.warning("cancel of remote training of image LoRA %s failed: %r", row.id, exc)
            return False
        await self.loras.cancel_confirmed(row.id)
        return True

    async def _still_there(self, img: ReferenceImageRow) -> None:
        gone = FailedPrecondition(
            f"the file of reference image {img.id} is no longer in storage: remove the image",
            field="reference_images",
            reason=Reason.FILE_NOT_READY,
            metadata={"reference_image": str(img.id)},
        )
        try:
            file = await self.storage.get_file(img.file_id)
        except NotFound:
            raise gone from None
        if file.status != storage_pb2.FILE_STATUS_READY:
            raise gone

    async def _read(self, file_id: str) -> tuple[bytes, int, str]:
        """The first HEAD_BYTES, the size and the sha256 of a file, streamed: never more
        than the limit is read, whatever the file's metadata said."""
        sha = hashlib.sha256()
        head = bytearray()
        size = 0
        async for chunk in self.storage.chunks(file_id):
            size += len(chunk)
            if size > MAX_IMAGE_BYTES:
                raise too_large(size)
            sha.update(chunk)
            if len(head) < HEAD_BYTES:
                head += chunk[: HEAD_BYTES - len(head)]
        return bytes(head), size, sha.hexdigest()


def startable(row: ImageLoraRow) -> None:
    if row.status not in EDITABLE:
        status = status_name(row.status)
        raise FailedPrecondition(
            f"the image LoRA is {status}: only a DRAFT, FAILED or CANCELLED one can start training",
            reason=Reason.IMAGE_LORA_STATE,
            metadata={"status": status},
        )


def image_count(n: int) -> None:
    if not MIN_IMAGES <= n <= MAX_IMAGES:
        raise InvalidArgument(
            f"the image LoRA has {n} reference images: training needs {MIN_IMAGES} to {MAX_IMAGES}",
            field="reference_images",
            reason=Reason.REFERENCE_IMAGE_COUNT,
            metadata={"min": str(MIN_IMAGES), "max": str(MAX_IMAGES)},
        )


def _taken(word: str, field: str) -> AlreadyExists:
    return AlreadyExists(
        f"another of your image LoRAs has the trigger word {word!r}",
        field=field,
        metadata={"resource": "image LoRA"},
    )
