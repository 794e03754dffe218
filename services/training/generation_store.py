"""SQL of generations with image LoRAs and their images (0016_generations.sql), on the
training service's Store (its pool or its transaction). Reads name the owner and skip the
generations of deleted LoRAs, so another user's generation, or one of a deleted LoRA, is
simply not found."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aivera.training.v1 import image_loras_pb2
from services.common import pages
from services.training.store import Store, by_created, keyset_after, make_row

QUEUED = image_loras_pb2.GENERATION_STATUS_QUEUED
PROCESSING = image_loras_pb2.GENERATION_STATUS_PROCESSING
FAILED = image_loras_pb2.GENERATION_STATUS_FAILED


@dataclass(frozen=True, slots=True)
class GenerationRow:
    id: uuid.UUID
    user_id: str
    image_lora_id: uuid.UUID
    prompt: str
    lora_scale: float
    num_outputs: int
    aspect_ratio: int
    seed: int
    status: int
    error: str
    executor: int
    simulated: bool
    remote_id: str
    created_at: dt.datetime
    updated_at: dt.datetime
    finished_at: dt.datetime | None


@dataclass(frozen=True, slots=True)
class GenerationImageRow:
    generation_id: uuid.UUID
    position: int
    file_id: str
    width: int
    height: int
    size_bytes: int
    created_at: dt.datetime


_GEN = (
    "g.id, g.user_id, g.image_lora_id, g.prompt, g.lora_scale, g.num_outputs, g.aspect_ratio,"
    " g.seed, g.status, g.error, g.executor, g.simulated, g.remote_id, g.created_at,"
    " g.updated_at, g.finished_at"
)
_IMAGE = "generation_id, position, file_id, width, height, size_bytes, created_at"
# The owner's generations whose LoRA is not deleted.
_VISIBLE = """generations g JOIN image_loras l ON l.id = g.image_lora_id
              AND l.deleted_at IS NULL"""


class GenerationStore:
    def __init__(self, store: Store) -> None:
        self.store = store

    @property
    def db(self) -> Any:
        return self.store.db

    def bound(self, tx: Store) -> GenerationStore:
        return GenerationStore(tx)

    async def insert(
        self,
        *,
        user_id: str,
        image_lora_id: uuid.UUID,
        prompt: str,
        lora_scale: float,
        num_outputs: int,
        aspect_ratio: int,
        seed: int,
        executor: int,
        simulated: bool,
        max_running: int,
        running_for: float,
    ) -> GenerationRow | None:
        """A QUEUED generation; None when the owner already has `max_running` generations
        started less than `running_for` seconds ago and not ended. Must run in a
        transaction: a per-user advisory lock makes the count and the insert one step."""
        await self.db.execute(
            "SELECT pg_advisory_xact_lock(hashtext('generations:' || $1))", user_id
        )
        running: int = await self.db.fetchval(
            """SELECT count(*) FROM generations WHERE user_id = $1 AND status IN ($2, $3)
               AND created_at > clock_timestamp() - make_interval(secs => $4)""",
            user_id,
            QUEUED,
            PROCESSING,
            float(running_for),
        )
        if running >= max_running:
            return None
        record = await self.db.fetchrow(
            f"""INSERT INTO generations AS g (id, user_id, image_lora_id, prompt, lora_scale,
                       num_outputs, aspect_ratio, seed, status, executor, simulated)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING {_GEN}""",
            uuid.uuid4(),
            user_id,
            image_lora_id,
            prompt,
            lora_scale,
            num_outputs,
            aspect_ratio,
            seed,
            QUEUED,
            executor,
            simulated,
        )
        return make_row(GenerationRow, record)  # type: ignore[no-any-return]

    async def get(self, user_id: str, generation_id: uuid.UUID) -> GenerationRow | None:
        record = await self.db.fetchrow(
            f"SELECT {_GEN} FROM {_VISIBLE} WHERE g.id = $1 AND g.user_id = $2",
            generation_id,
            user_id,
        )
        return None if record is None else make_row(GenerationRow, record)

    async def list_generations(
        self, user_id: str, lora_id: uuid.UUID | None, page: pages.PageRequest
    ) -> tuple[list[GenerationRow], str]:
        """Newest first; only one LoRA's when `lora_id` is given."""
        records = await self.db.fetch(
            f"""SELECT {_GEN} FROM {_VISIBLE} WHERE g.user_id = $1
                AND ($2::uuid IS NULL OR g.image_lora_id = $2)
                AND ($3::timestamptz IS NULL OR (g.created_at, g.id) < ($3, $4::uuid))
                ORDER BY g.created_at DESC, g.id DESC LIMIT $5""",
            user_id,
            lora_id,
            *keyset_after(page, 2),
            page.limit,
        )
        return pages.take([make_row(GenerationRow, r) for r in records], page, key=by_created)

    async def images(
        self, generation_ids: Sequence[uuid.UUID]
    ) -> dict[uuid.UUID, list[GenerationImageRow]]:
        """The images of each generation, by position."""
        records = await self.db.fetch(
            f"""SELECT {_IMAGE} FROM generation_images WHERE generation_id = ANY($1::uuid[])
                ORDER BY generation_id, position""",
            list(generation_ids),
        )
        out: dict[uuid.UUID, list[GenerationImageRow]] = {i: [] for i in generation_ids}
        for r in records:
            row: GenerationImageRow = make_row(GenerationImageRow, r)
            out[row.generation_id].append(row)
        return out

    async def add_image(
        self,
        generation_id: uuid.UUID,
        *,
        position: int,
        file_id: str,
        width: int,
        height: int,
        size_bytes: int,
    ) -> GenerationImageRow:
        record = await self.db.fetchrow(
            f"""INSERT INTO generation_images (generation_id, position, file_id, width,
                                               height, size_bytes)
                VALUES ($1, $2, $3, $4, $5, $6) RETURNING {_IMAGE}""",
            generation_id,
            position,
            file_id,
            width,
            height,
            size_bytes,
        )
        return make_row(GenerationImageRow, record)  # type: ignore[no-any-return]

    async def processing(self, generation_id: uuid.UUID, *, remote_id: str = "") -> None:
        await self.db.execute(
            """UPDATE generations SET status = $2, remote_id = $3,
                      updated_at = clock_timestamp()
               WHERE id = $1 AND status IN ($4, $2)""",
            generation_id,
            PROCESSING,
            remote_id,
            QUEUED,
        )

    async def finish(self, generation_id: uuid.UUID, status: int, error: str = "") -> None:
        """SUCCEEDED or FAILED, once (a generation the sweep failed stays failed)."""
        await self.db.execute(
            """UPDATE generations SET status = $2, error = $3,
                      finished_at = clock_timestamp(), updated_at = clock_timestamp()
               WHERE id = $1 AND status IN ($4, $5)""",
            generation_id,
            status,
            error,
            QUEUED,
            PROCESSING,
        )

    async def by_id(self, generation_id: uuid.UUID) -> GenerationRow | None:
        record = await self.db.fetchrow(
            f"SELECT {_GEN} FROM generations g WHERE g.id = $1", generation_id
        )
        return None if record is None else make_row(GenerationRow, record)

    async def fail_abandoned(self, older_than: float, error: str) -> int:
        """Fail generations still running `older_than` seconds after they started (their
        process went away); how many."""
        done: str = await self.db.execute(
            """UPDATE generations SET status = $1, error = $2,
                      finished_at = clock_timestamp(), updated_at = clock_timestamp()
               WHERE status IN ($3, $4)
               AND created_at <= clock_timestamp() - make_interval(secs => $5)""",
            FAILED,
            error,
            QUEUED,
            PROCESSING,
            float(older_than),
        )
        return int(done.split()[-1])

    async def files_of_lora(self, lora_id: uuid.UUID) -> list[str]:
        """The storage files of every image generated with the LoRA."""
        records = await self.db.fetch(
            """SELECT i.file_id FROM generation_images i
               JOIN generations g ON g.id = i.generation_id WHERE g.image_lora_id = $1""",
            lora_id,
        )
        return [r["file_id"] for r in records]
