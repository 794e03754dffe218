"""SQL of image LoRAs and their reference images (0012_image_loras.sql), on the training
service's Store (its pool or its transaction). Every query on a LoRA names the owner, so
another user's LoRA is simply not found; a unique index makes the trigger word unique per
owner and a unique key makes an image's bytes unique per LoRA: conflicts come back as
None for the domain to answer."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from services.common import pages
from services.training.store import Store, _after, _created, _make


@dataclass(frozen=True, slots=True)
class ReferenceImageRow:
    id: uuid.UUID
    image_lora_id: uuid.UUID
    file_id: str
    caption: str
    format: int
    width: int
    height: int
    size_bytes: int
    sha256: str
    created_at: dt.datetime


@dataclass(frozen=True, slots=True)
class ImageLoraRow:
    id: uuid.UUID
    user_id: str
    name: str
    kind: int
    trigger_word: str
    status: int
    error: str
    created_at: dt.datetime
    updated_at: dt.datetime
    finished_at: dt.datetime | None
    executor: int
    simulated: bool
    progress: float
    job_id: uuid.UUID | None
    attempt: int
    training_steps: int
    remote_id: str
    remote_version: str
    weights_file_id: str
    weights_size_bytes: int
    weights_sha256: str
    checked_at: dt.datetime | None


_LORA = (
    "id, user_id, name, kind, trigger_word, status, error, created_at, updated_at, finished_at,"
    " executor, simulated, progress, job_id, attempt, training_steps, remote_id,"
    " remote_version, weights_file_id, weights_size_bytes, weights_sha256, checked_at"
)
_IMAGE = (
    "id, image_lora_id, file_id, caption, format, width, height, size_bytes, sha256, created_at"
)


class ImageLoraStore:
    def __init__(self, store: Store) -> None:
        self.store = store

    @property
    def db(self) -> Any:
        return self.store.db

    def bound(self, tx: Store) -> ImageLoraStore:
        """The same queries inside `tx` (from `Store.transaction()`)."""
        return ImageLoraStore(tx)

    async def insert(
        self, *, user_id: str, name: str, kind: int, trigger_word: str, status: int
    ) -> ImageLoraRow | None:
        """None when the owner has a LoRA with this trigger word."""
        try:
            record = await self.db.fetchrow(
                f"""INSERT INTO image_loras (id, user_id, name, kind, trigger_word, status)
                    VALUES ($1, $2, $3, $4, $5, $6) RETURNING {_LORA}""",
                uuid.uuid4(),
                user_id,
                name,
                kind,
                trigger_word,
                status,
            )
        except asyncpg.UniqueViolationError:
            return None
        return _make(ImageLoraRow, record)  # type: ignore[no-any-return]

    async def get(
        self, user_id: str, lora_id: uuid.UUID, *, lock: bool = False
    ) -> ImageLoraRow | None:
        """`lock` holds the row for the transaction (image count checks, status moves)."""
        record = await self.db.fetchrow(
            f"""SELECT {_LORA} FROM image_loras
                WHERE id = $1 AND user_id = $2 AND deleted_at IS NULL
                {"FOR UPDATE" if lock else ""}""",
            lora_id,
            user_id,
        )
        return None if record is None else _make(ImageLoraRow, record)

    async def list_loras(
        self, user_id: str, page: pages.PageRequest
    ) -> tuple[list[ImageLoraRow], str]:
        """Newest first."""
        records = await self.db.fetch(
            f"""SELECT {_LORA} FROM image_loras WHERE user_id = $1 AND deleted_at IS NULL
                AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3::uuid))
                ORDER BY created_at DESC, id DESC LIMIT $4""",
            user_id,
            *_after(page, 2),
            page.limit,
        )
        return pages.take([_make(ImageLoraRow, r) for r in records], page, key=_created)

    async def update(
        self, lora_id: uuid.UUID, *, name: str | None, trigger_word: str | None
    ) -> bool:
        """Change the given fields (None: unchanged); False when the new trigger word is
        taken by another of the owner's LoRAs."""
        try:
            await self.db.execute(
                """UPDATE image_loras SET name = coalesce($2, name),
                          trigger_word = coalesce($3, trigger_word),
                          updated_at = clock_timestamp()
                   WHERE id = $1""",
                lora_id,
                name,
                trigger_word,
            )
        except asyncpg.UniqueViolationError:
            return False
        return True

    async def delete(self, lora_id: uuid.UUID) -> bool:
        """False when it was deleted already."""
        done: str = await self.db.execute(
            """UPDATE image_loras SET deleted_at = clock_timestamp(),
                      updated_at = clock_timestamp()
               WHERE id = $1 AND deleted_at IS NULL""",
            lora_id,
        )
        return done.endswith(" 1")

    async def queue(self, lora_id: uuid.UUID, status: int) -> None:
        """Into the queue: a retry starts with no error and no finish time."""
        await self.db.execute(
            """UPDATE image_loras SET status = $2, error = '', finished_at = NULL,
                      updated_at = clock_timestamp()
               WHERE id = $1""",
            lora_id,
            status,
        )

    # -- reference images ---------------------------------------------------------------
    async def images(
        self, lora_ids: Sequence[uuid.UUID]
    ) -> dict[uuid.UUID, list[ReferenceImageRow]]:
        """The images of each LoRA, oldest first."""
        records = await self.db.fetch(
            f"""SELECT {_IMAGE} FROM image_lora_images WHERE image_lora_id = ANY($1::uuid[])
                ORDER BY created_at, id""",
            list(lora_ids),
        )
        out: dict[uuid.UUID, list[ReferenceImageRow]] = {i: [] for i in lora_ids}
        for r in records:
            row: ReferenceImageRow = _make(ReferenceImageRow, r)
            out[row.image_lora_id].append(row)
        return out

    async def count_images(self, lora_id: uuid.UUID) -> int:
        n: int = await self.db.fetchval(
            "SELECT count(*) FROM image_lora_images WHERE image_lora_id = $1", lora_id
        )
        return n

    async def add_image(
        self,
        lora_id: uuid.UUID,
        *,
        file_id: str,
        caption: str,
        format: int,
        width: int,
        height: int,
        size_bytes: int,
        sha256: str,
    ) -> bool:
        """False when an image with these bytes is in the LoRA already."""
        done: str = await self.db.execute(
            """INSERT INTO image_lora_images (id, image_lora_id, file_id, caption, format,
                                              width, height, size_bytes, sha256)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
               ON CONFLICT (image_lora_id, sha256) DO NOTHING""",
            uuid.uuid4(),
            lora_id,
            file_id,
            caption,
            format,
            width,
            height,
            size_bytes,
            sha256,
        )
        if done.endswith(" 1"):
            await self.touch(lora_id)
            return True
        return False

    async def remove_image(self, lora_id: uuid.UUID, image_id: uuid.UUID) -> bool:
        done: str = await self.db.execute(
            "DELETE FROM image_lora_images WHERE id = $1 AND image_lora_id = $2",
            image_id,
            lora_id,
        )
        if done.endswith(" 1"):
            await self.touch(lora_id)
            return True
        return False

    async def touch(self, lora_id: uuid.UUID) -> None:
        await self.db.execute(
            "UPDATE image_loras SET updated_at = clock_timestamp() WHERE id = $1", lora_id
        )
