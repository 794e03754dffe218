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
from services.training.store import Store, by_created, keyset_after, make_row


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
        return make_row(ImageLoraRow, record)  # type: ignore[no-any-return]

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
        return None if record is None else make_row(ImageLoraRow, record)

    async def list_loras(
        self, user_id: str, page: pages.PageRequest
    ) -> tuple[list[ImageLoraRow], str]:
        """Newest first."""
        records = await self.db.fetch(
            f"""SELECT {_LORA} FROM image_loras WHERE user_id = $1 AND deleted_at IS NULL
                AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3::uuid))
                ORDER BY created_at DESC, id DESC LIMIT $4""",
            user_id,
            *keyset_after(page, 2),
            page.limit,
        )
        return pages.take([make_row(ImageLoraRow, r) for r in records], page, key=by_created)

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

    async def queue(
        self, lora_id: uuid.UUID, status: int, *, executor: int, simulated: bool, steps: int
    ) -> None:
        """Into the queue as a new attempt: a retry starts from nothing (no error, finish
        time, progress, job, remote training or weights of the attempt before)."""
        await self.db.execute(
            """UPDATE image_loras SET status = $2, error = '', finished_at = NULL,
                      executor = $3, simulated = $4, training_steps = $5, progress = 0,
                      attempt = attempt + 1, job_id = NULL, remote_id = '',
                      remote_version = '', weights_file_id = '', weights_size_bytes = 0,
                      weights_sha256 = '', checked_at = NULL, cancel_pending = false,
                      remote_retry_at = NULL, remote_failures = 0,
                      updated_at = clock_timestamp()
               WHERE id = $1""",
            lora_id,
            status,
            executor,
            simulated,
            steps,
        )

    async def cancel(self, lora_id: uuid.UUID, status: int, *, cancel_pending: bool) -> None:
        """Ended by its owner; `cancel_pending` until the provider confirmed the cancel."""
        await self.db.execute(
            """UPDATE image_loras SET status = $2, finished_at = clock_timestamp(),
                      cancel_pending = $3, updated_at = clock_timestamp()
               WHERE id = $1""",
            lora_id,
            status,
            cancel_pending,
        )

    async def by_id(self, lora_id: uuid.UUID) -> ImageLoraRow | None:
        """Any LoRA, deleted ones too (background work that already checked access)."""
        record = await self.db.fetchrow(f"SELECT {_LORA} FROM image_loras WHERE id = $1", lora_id)
        return None if record is None else make_row(ImageLoraRow, record)

    # -- background sweeps (image_retention.py) -----------------------------------------
    async def cancels_pending(self, limit: int = 100) -> list[ImageLoraRow]:
        """Remote trainings cancelled here that the provider has not confirmed."""
        records = await self.db.fetch(
            f"""SELECT {_LORA} FROM image_loras WHERE cancel_pending
                ORDER BY updated_at LIMIT $1""",
            limit,
        )
        return [make_row(ImageLoraRow, r) for r in records]

    async def cancel_confirmed(self, lora_id: uuid.UUID) -> None:
        await self.db.execute(
            "UPDATE image_loras SET cancel_pending = false WHERE id = $1", lora_id
        )

    async def to_purge(self, older_than: float, limit: int = 100) -> list[ImageLoraRow]:
        """Deleted LoRAs whose retention has passed and whose files are still kept."""
        records = await self.db.fetch(
            f"""SELECT {_LORA} FROM image_loras WHERE deleted_at IS NOT NULL
                AND purged_at IS NULL
                AND deleted_at <= clock_timestamp() - make_interval(secs => $1)
                ORDER BY deleted_at LIMIT $2""",
            float(older_than),
            limit,
        )
        return [make_row(ImageLoraRow, r) for r in records]

    async def mark_purged(self, lora_id: uuid.UUID) -> None:
        await self.db.execute(
            "UPDATE image_loras SET purged_at = clock_timestamp() WHERE id = $1", lora_id
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
            row: ReferenceImageRow = make_row(ReferenceImageRow, r)
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

    # -- remote trainer (R) -------------------------------------------------------------
    # image_trainer.py / image_webhooks.py (0014_replicate_webhooks.sql). A claimed LoRA is
    # VALIDATING with the `updated_at` of its claim as the claim's token: the trainer's
    # later moves name it, so a LoRA cancelled, deleted or reclaimed meanwhile is left alone.
    async def claim_remote(
        self, *, executor: int, queued: int, validating: int
    ) -> ImageLoraRow | None:
        """The oldest QUEUED LoRA of `executor` whose retry time has come, moved to
        VALIDATING (SKIP LOCKED: each replica claims a different one)."""
        record = await self.db.fetchrow(
            f"""UPDATE image_loras SET status = $3, updated_at = clock_timestamp(),
                       checked_at = clock_timestamp()
                WHERE id = (
                    SELECT id FROM image_loras
                    WHERE status = $2 AND executor = $1 AND deleted_at IS NULL
                      AND (remote_retry_at IS NULL OR remote_retry_at <= clock_timestamp())
                    ORDER BY updated_at, id LIMIT 1 FOR UPDATE SKIP LOCKED)
                RETURNING {_LORA}""",
            executor,
            queued,
            validating,
        )
        return None if record is None else make_row(ImageLoraRow, record)

    async def requeue_stale_claims(
        self, *, executor: int, queued: int, validating: int, older_than: float
    ) -> int:
        """Claims whose trainer went away (VALIDATING, no remote training, older than
        `older_than` seconds) back to QUEUED."""
        done: str = await self.db.execute(
            """UPDATE image_loras SET status = $2, updated_at = clock_timestamp()
               WHERE status = $3 AND executor = $1 AND remote_id = '' AND deleted_at IS NULL
                 AND updated_at <= clock_timestamp() - make_interval(secs => $4)""",
            executor,
            queued,
            validating,
            float(older_than),
        )
        return int(done.split()[-1])

    async def set_remote(
        self,
        lora_id: uuid.UUID,
        claimed: dt.datetime,
        *,
        remote_id: str,
        training: int,
        validating: int,
    ) -> bool:
        """The claimed LoRA trains remotely as `remote_id`; False when the claim was lost."""
        done: str = await self.db.execute(
            """UPDATE image_loras SET status = $4, remote_id = $3, progress = 0,
                      checked_at = clock_timestamp(), updated_at = clock_timestamp(),
                      remote_failures = 0, remote_retry_at = NULL
               WHERE id = $1 AND updated_at = $2 AND status = $5 AND deleted_at IS NULL""",
            lora_id,
            claimed,
            remote_id,
            training,
            validating,
        )
        return done.endswith(" 1")

    async def retry_later(
        self,
        lora_id: uuid.UUID,
        claimed: dt.datetime,
        *,
        queued: int,
        validating: int,
        base: float,
        most: float,
    ) -> float | None:
        """Back to QUEUED, to be tried again after a delay doubling with each failure in a
        row; the delay, or None when the claim was lost."""
        delay: float | None = await self.db.fetchval(
            """UPDATE image_loras SET status = $3, updated_at = clock_timestamp(),
                      remote_failures = remote_failures + 1,
                      remote_retry_at = clock_timestamp()
                          + make_interval(secs => least($6, $5 * 2 ^ remote_failures))
               WHERE id = $1 AND updated_at = $2 AND status = $4 AND deleted_at IS NULL
               RETURNING least($6, $5 * 2 ^ (remote_failures - 1))""",
            lora_id,
            claimed,
            queued,
            validating,
            float(base),
            float(most),
        )
        return delay

    async def fail_claimed(
        self, lora_id: uuid.UUID, claimed: dt.datetime, *, failed: int, validating: int, error: str
    ) -> bool:
        done: str = await self.db.execute(
            """UPDATE image_loras SET status = $3, error = $5, finished_at = clock_timestamp(),
                      updated_at = clock_timestamp()
               WHERE id = $1 AND updated_at = $2 AND status = $4 AND deleted_at IS NULL""",
            lora_id,
            claimed,
            failed,
            validating,
            error,
        )
        return done.endswith(" 1")

    async def due_polls(
        self, *, executor: int, training: int, older_than: float, limit: int
    ) -> list[ImageLoraRow]:
        """TRAINING remote LoRAs not confirmed for `older_than` seconds (or asked to be
        checked now: `checked_at` NULL), marked checked so no other replica polls them too."""
        records = await self.db.fetch(
            f"""UPDATE image_loras SET checked_at = clock_timestamp()
                WHERE id IN (
                    SELECT id FROM image_loras
                    WHERE status = $2 AND executor = $1 AND remote_id <> ''
                      AND (checked_at IS NULL
                           OR checked_at <= clock_timestamp() - make_interval(secs => $3))
                    ORDER BY checked_at NULLS FIRST, id LIMIT $4 FOR UPDATE SKIP LOCKED)
                RETURNING {_LORA}""",
            executor,
            training,
            float(older_than),
            limit,
        )
        return [make_row(ImageLoraRow, r) for r in records]

    async def by_remote(self, executor: int, remote_id: str) -> ImageLoraRow | None:
        """The LoRA training remotely as `remote_id`, locked for the transaction."""
        record = await self.db.fetchrow(
            f"""SELECT {_LORA} FROM image_loras WHERE remote_id = $2 AND executor = $1
                FOR UPDATE""",
            executor,
            remote_id,
        )
        return None if record is None else make_row(ImageLoraRow, record)

    async def remote_progress(
        self, lora_id: uuid.UUID, remote_id: str, *, training: int, progress: float | None
    ) -> None:
        """Heard from the provider: still training (progress never goes back)."""
        await self.db.execute(
            """UPDATE image_loras SET progress = greatest(progress, coalesce($4, progress)),
                      checked_at = clock_timestamp(), updated_at = clock_timestamp()
               WHERE id = $1 AND remote_id = $2 AND status = $3""",
            lora_id,
            remote_id,
            training,
            progress,
        )

    async def recheck(self, lora_id: uuid.UUID) -> None:
        """Poll it at once (the provider says it ended: the trainer fetches the result)."""
        await self.db.execute("UPDATE image_loras SET checked_at = NULL WHERE id = $1", lora_id)

    async def finish_remote(
        self,
        lora_id: uuid.UUID,
        remote_id: str,
        *,
        training: int,
        ready: int,
        version: str,
        file_id: str,
        size_bytes: int,
        sha256: str,
    ) -> bool:
        """READY with its weights; False when it is no longer that training (cancelled,
        deleted, or finished by another replica)."""
        done: str = await self.db.execute(
            """UPDATE image_loras SET status = $4, progress = 1, remote_version = $5,
                      weights_file_id = $6, weights_size_bytes = $7, weights_sha256 = $8,
                      finished_at = clock_timestamp(), checked_at = clock_timestamp(),
                      updated_at = clock_timestamp()
               WHERE id = $1 AND remote_id = $2 AND status = $3 AND deleted_at IS NULL""",
            lora_id,
            remote_id,
            training,
            ready,
            version,
            file_id,
            size_bytes,
            sha256,
        )
        return done.endswith(" 1")

    async def end_remote(
        self, lora_id: uuid.UUID, remote_id: str, *, training: int, status: int, error: str
    ) -> bool:
        """FAILED or CANCELLED at the provider."""
        done: str = await self.db.execute(
            """UPDATE image_loras SET status = $4, error = $5, finished_at = clock_timestamp(),
                      checked_at = clock_timestamp(), updated_at = clock_timestamp()
               WHERE id = $1 AND remote_id = $2 AND status = $3""",
            lora_id,
            remote_id,
            training,
            status,
            error,
        )
        return done.endswith(" 1")

    async def first_webhook(self, webhook_id: str) -> bool:
        """Record a webhook id; False when it was recorded before (a retry or a replay)."""
        done: str = await self.db.execute(
            """INSERT INTO replicate_webhooks (webhook_id) VALUES ($1)
               ON CONFLICT (webhook_id) DO NOTHING""",
            webhook_id,
        )
        return done.endswith(" 1")

    async def prune_webhooks(self, older_than: float) -> None:
        await self.db.execute(
            """DELETE FROM replicate_webhooks
               WHERE received_at <= clock_timestamp() - make_interval(secs => $1)""",
            float(older_than),
        )

    async def set_intent(
        self, lora_id: uuid.UUID, claimed: dt.datetime, *, validating: int, attempt: int, url: str
    ) -> bool:
        """Record, before the create call, the training about to be created for this attempt
        (its images' URL); the claim's token (`updated_at`) is left as it is. False when the
        claim was lost."""
        done: str = await self.db.execute(
            """UPDATE image_loras SET remote_intent = $5, remote_intent_attempt = $4,
                      remote_intent_at = clock_timestamp()
               WHERE id = $1 AND updated_at = $2 AND status = $3 AND deleted_at IS NULL""",
            lora_id,
            claimed,
            validating,
            attempt,
            url,
        )
        return done.endswith(" 1")

    async def intent_of(self, lora_id: uuid.UUID, attempt: int) -> tuple[str, dt.datetime] | None:
        """The images' URL of a training maybe created for `attempt`, and when it was
        recorded; None when no create was begun for that attempt."""
        record = await self.db.fetchrow(
            """SELECT remote_intent, remote_intent_at FROM image_loras
               WHERE id = $1 AND remote_intent_attempt = $2 AND remote_intent <> ''""",
            lora_id,
            attempt,
        )
        return None if record is None else (record[0], record[1])
