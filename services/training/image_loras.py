"""Image LoRAs (seed 001): a style, character or product an image model learns from 4–15
reference images of the owner, called up in prompts by a trigger word.

A LoRA is assembled in DRAFT: reference images are storage files of the owner, checked
here on their bytes (format sniffed, size read from the image header, never decoded; the
same bytes once per LoRA). Its images and trigger word change only while no training
holds them (DRAFT, FAILED, CANCELLED). Deleting is soft: the LoRA is gone for the owner at
once and its trigger word is free again."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from aivera.storage.v1 import storage_pb2
from aivera.training.v1 import image_loras_pb2
from services.common import pages
from services.common.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Reason,
    not_found,
)
from services.common.identity import ServiceIdentity, grant_now
from services.common.protoutil import parse_uuid
from services.common.remote import StorageClient
from services.training import checks, image_headers
from services.training.image_lora_store import ImageLoraRow, ImageLoraStore, ReferenceImageRow
from services.training.store import Store

L = image_loras_pb2

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


def editable(row: ImageLoraRow, what: str) -> None:
    if row.status not in EDITABLE:
        status = L.ImageLoraStatus.Name(row.status).removeprefix("IMAGE_LORA_STATUS_")  # type: ignore[arg-type]
        raise FailedPrecondition(
            f"{what} cannot change while the image LoRA is {status}",
            reason=Reason.IMAGE_LORA_STATE,
            metadata={"status": status},
        )


class ImageLoras:
    def __init__(
        self, store: Store, storage: StorageClient, identity: ServiceIdentity | None
    ) -> None:
        self.store = store
        self.loras = ImageLoraStore(store)
        self.storage = storage
        self.identity = identity

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
        row = await self._owned(self.loras, user, raw_id, "id")
        if not await self.loras.delete(row.id):
            raise not_found("image LoRA", raw_id)

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

    async def start(self, user: str, raw_id: str) -> ImageLora:
        """Check the images (count, files still in storage) and queue the LoRA, with a
        grant for the trainer to read the user's files after this request."""
        lora = await self._full(
            self.loras, await self._owned(self.loras, user, raw_id, "image_lora")
        )
        startable(lora.row)
        image_count(len(lora.images))
        for img in lora.images:
            await self._still_there(img)
        grant = await grant_now(self.identity)
        async with self.store.transaction() as tx:
            loras = self.loras.bound(tx)
            row = await self._owned(loras, user, raw_id, "image_lora", lock=True)
            startable(row)  # the checks above ran without the lock: hold them again
            image_count(await loras.count_images(row.id))
            await loras.queue(row.id, L.IMAGE_LORA_STATUS_QUEUED)
            if grant is not None:
                await tx.put_grant(row.id, user, grant)
            return await self._full(loras, await self._owned(loras, user, raw_id, "image_lora"))

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
        status = L.ImageLoraStatus.Name(row.status).removeprefix("IMAGE_LORA_STATUS_")  # type: ignore[arg-type]
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
