"""SQL of generations with image LoRAs and their images (0016_generations.sql), on the
training service's Store (its pool or its transaction). Reads name the owner and skip the
generations of deleted LoRAs, so another user's generation, or one of a deleted LoRA, is
simply not found.

LOCAL generations are a queue of the training workers (0017_generation_workers.sql):
claimed with a row lock that skips rows other workers are claiming, held by a claim token
and a lease; every write of a worker names its token, so one that lost its claim writes
nothing. Each change NOTIFYs `GENERATIONS_CHANNEL` with the generation's id (the streams
following it wake), and a new LOCAL generation NOTIFYs the workers' `QUEUE_CHANNEL`."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aivera.training.v1 import image_loras_pb2
from services.common import pages
from services.training.store import QUEUE_CHANNEL, Store, by_created, keyset_after, make_row

QUEUED = image_loras_pb2.GENERATION_STATUS_QUEUED
PROCESSING = image_loras_pb2.GENERATION_STATUS_PROCESSING
FAILED = image_loras_pb2.GENERATION_STATUS_FAILED
LOCAL = image_loras_pb2.IMAGE_LORA_EXECUTOR_LOCAL
# Payload: the generation's id. Streams of GenerateImages wait on it.
GENERATIONS_CHANNEL = "training_generations"


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
    # LOCAL: the queue and the worker's claim.
    hardware_class: str
    worker_id: str
    worker_losses: int
    progress: float


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
    " g.updated_at, g.finished_at, g.hardware_class, g.worker_id, g.worker_losses, g.progress"
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
        hardware_class: str = "",
    ) -> GenerationRow | None:
        """A QUEUED generation; None when the owner already has `max_running` generations
        not ended (in-process ones count for `running_for` seconds after they started:
        past that their process went away; LOCAL ones until a worker or the sweep ends
        them). Must run in a transaction: a per-user advisory lock makes the count and the
        insert one step. A LOCAL one wakes the workers on commit."""
        await self.db.execute(
            "SELECT pg_advisory_xact_lock(hashtext('generations:' || $1))", user_id
        )
        running: int = await self.db.fetchval(
            """SELECT count(*) FROM generations WHERE user_id = $1 AND status IN ($2, $3)
               AND (executor = $5
                    OR created_at > clock_timestamp() - make_interval(secs => $4))""",
            user_id,
            QUEUED,
            PROCESSING,
            float(running_for),
            LOCAL,
        )
        if running >= max_running:
            return None
        record = await self.db.fetchrow(
            f"""INSERT INTO generations AS g (id, user_id, image_lora_id, prompt, lora_scale,
                       num_outputs, aspect_ratio, seed, status, executor, simulated,
                       hardware_class)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING {_GEN}""",
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
            hardware_class,
        )
        row: GenerationRow = make_row(GenerationRow, record)
        if executor == LOCAL:
            await self.db.execute("SELECT pg_notify($1, $2)", QUEUE_CHANNEL, str(row.id))
        return row

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
        """Fail in-process generations still running `older_than` seconds after they
        started (their process went away); how many. In-process: REPLICATE and SIMULATE,
        and LOCAL ones PROCESSING without a claim (run in the API before 0017). Claimed
        LOCAL ones are the workers' (leases), queued ones `fail_unclaimed`'s."""
        done: str = await self.db.execute(
            """UPDATE generations SET status = $1, error = $2,
                      finished_at = clock_timestamp(), updated_at = clock_timestamp()
               WHERE status IN ($3, $4)
               AND (executor <> $6 OR (status = $4 AND claim_token IS NULL))
               AND created_at <= clock_timestamp() - make_interval(secs => $5)""",
            FAILED,
            error,
            QUEUED,
            PROCESSING,
            float(older_than),
            LOCAL,
        )
        return int(done.split()[-1])

    # -- LOCAL: the workers' queue ---------------------------------------------------------
    async def _notify(self, generation_id: uuid.UUID) -> None:
        await self.db.execute("SELECT pg_notify($1, $2)", GENERATIONS_CHANNEL, str(generation_id))

    async def next_local(self, classes: Sequence[str] = ()) -> GenerationRow | None:
        """The oldest QUEUED LOCAL generation of one of the hardware `classes` (empty:
        any), locked (skipping those other workers are claiming). In a transaction."""
        # Constants in the text, so the partial index's predicate matches any plan.
        record = await self.db.fetchrow(
            f"""SELECT {_GEN} FROM generations g WHERE g.status = {QUEUED}
                AND g.executor = {LOCAL}
                AND ($1::text[] IS NULL OR g.hardware_class = ANY($1::text[]))
                ORDER BY g.created_at, g.id LIMIT 1 FOR UPDATE SKIP LOCKED""",
            list(classes) or None,
        )
        return None if record is None else make_row(GenerationRow, record)

    async def claim(
        self, generation_id: uuid.UUID, *, worker_id: str, token: uuid.UUID, lease: float
    ) -> GenerationRow:
        """PROCESSING under `token`'s lease (the row locked by `next_local`)."""
        record = await self.db.fetchrow(
            f"""UPDATE generations AS g SET status = $2, worker_id = $3, claim_token = $4,
                       lease_expires_at = clock_timestamp() + make_interval(secs => $5),
                       progress = 0, updated_at = clock_timestamp()
                WHERE g.id = $1 RETURNING {_GEN}""",
            generation_id,
            PROCESSING,
            worker_id,
            token,
            float(lease),
        )
        await self._notify(generation_id)
        return make_row(GenerationRow, record)  # type: ignore[no-any-return]

    async def renew(self, generation_id: uuid.UUID, token: uuid.UUID, lease: float) -> bool:
        """Extend the lease; False when the claim is no longer `token`'s (the generation
        was reaped, failed by the sweep, or ended)."""
        ok = await self.db.fetchval(
            """UPDATE generations SET lease_expires_at = clock_timestamp()
                      + make_interval(secs => $3)
               WHERE id = $1 AND claim_token = $2 AND status = $4 RETURNING true""",
            generation_id,
            token,
            float(lease),
            PROCESSING,
        )
        return bool(ok)

    async def set_progress(
        self, generation_id: uuid.UUID, token: uuid.UUID, fraction: float
    ) -> bool:
        ok = await self.db.fetchval(
            """UPDATE generations SET progress = $3, updated_at = clock_timestamp()
               WHERE id = $1 AND claim_token = $2 AND status = $4 RETURNING true""",
            generation_id,
            token,
            float(fraction),
            PROCESSING,
        )
        if ok:
            await self._notify(generation_id)
        return bool(ok)

    async def add_claimed_image(
        self,
        generation_id: uuid.UUID,
        token: uuid.UUID,
        *,
        position: int,
        file_id: str,
        width: int,
        height: int,
        size_bytes: int,
    ) -> bool:
        """Record an image while the claim is `token`'s (False: it is not; nothing is
        written). In a transaction: the generation's row lock orders it with a reap."""
        ours = await self.db.fetchval(
            """SELECT true FROM generations WHERE id = $1 AND claim_token = $2
               AND status = $3 FOR UPDATE""",
            generation_id,
            token,
            PROCESSING,
        )
        if not ours:
            return False
        await self.db.execute(
            """INSERT INTO generation_images (generation_id, position, file_id, width,
                                              height, size_bytes)
               VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING""",
            generation_id,
            position,
            file_id,
            width,
            height,
            size_bytes,
        )
        await self._notify(generation_id)
        return True

    async def finish_claimed(
        self, generation_id: uuid.UUID, token: uuid.UUID, status: int, error: str = ""
    ) -> bool:
        """SUCCEEDED or FAILED while the claim is `token`'s; the grant it ran on is
        dropped. False when the claim is not (nothing is written)."""
        ok = await self.db.fetchval(
            """UPDATE generations SET status = $3, error = $4, claim_token = NULL,
                      lease_expires_at = NULL, finished_at = clock_timestamp(),
                      updated_at = clock_timestamp()
               WHERE id = $1 AND claim_token = $2 AND status = $5 RETURNING true""",
            generation_id,
            token,
            status,
            error,
            PROCESSING,
        )
        if ok:
            await self.db.execute("DELETE FROM work_grants WHERE resource_id = $1", generation_id)
            await self._notify(generation_id)
        return bool(ok)

    async def requeue_claimed(self, generation_id: uuid.UUID, token: uuid.UUID) -> bool:
        """Back to QUEUED (its worker shuts down: no loss counted), at the head of the
        queue (its place is its creation time)."""
        ok = await self.db.fetchval(
            """UPDATE generations SET status = $3, claim_token = NULL, lease_expires_at = NULL,
                      worker_id = '', progress = 0, queued_at = clock_timestamp(),
                      updated_at = clock_timestamp()
               WHERE id = $1 AND claim_token = $2 AND status = $4 RETURNING true""",
            generation_id,
            token,
            QUEUED,
            PROCESSING,
        )
        if ok:
            await self._notify(generation_id)
        return bool(ok)

    async def expired_claims(self) -> list[GenerationRow]:
        """PROCESSING LOCAL generations whose lease expired (their worker died), locked,
        skipping those another process is reaping. In a transaction."""
        records = await self.db.fetch(
            f"""SELECT {_GEN} FROM generations g WHERE g.status = {PROCESSING}
                AND g.claim_token IS NOT NULL AND g.lease_expires_at < clock_timestamp()
                FOR UPDATE SKIP LOCKED"""
        )
        return [make_row(GenerationRow, r) for r in records]

    async def lose_worker(self, generation_id: uuid.UUID, status: int, error: str) -> None:
        """After its worker was lost: QUEUED again or FAILED (`status`), one more loss."""
        ended = status != QUEUED
        await self.db.execute(
            """UPDATE generations SET status = $2, error = $3, claim_token = NULL,
                      lease_expires_at = NULL, progress = 0, worker_losses = worker_losses + 1,
                      queued_at = clock_timestamp(), updated_at = clock_timestamp(),
                      finished_at = CASE WHEN $4::boolean THEN clock_timestamp() END
               WHERE id = $1""",
            generation_id,
            status,
            error,
            ended,
        )
        if ended:
            await self.db.execute("DELETE FROM work_grants WHERE resource_id = $1", generation_id)
        await self._notify(generation_id)

    async def fail_unclaimed(self, older_than: float, error: str) -> int:
        """Fail LOCAL generations QUEUED for `older_than` seconds (no worker of their
        class took them); how many."""
        records = await self.db.fetch(
            """UPDATE generations SET status = $1, error = $2, finished_at = clock_timestamp(),
                      updated_at = clock_timestamp()
               WHERE status = $3 AND executor = $4
               AND queued_at <= clock_timestamp() - make_interval(secs => $5) RETURNING id""",
            FAILED,
            error,
            QUEUED,
            LOCAL,
            float(older_than),
        )
        ids = [r["id"] for r in records]
        if ids:
            await self.db.execute(
                "DELETE FROM work_grants WHERE resource_id = ANY($1::uuid[])", ids
            )
            for gid in ids:
                await self._notify(gid)
        return len(ids)

    async def files_of_lora(self, lora_id: uuid.UUID) -> list[str]:
        """The storage files of every image generated with the LoRA."""
        records = await self.db.fetch(
            """SELECT i.file_id FROM generation_images i
               JOIN generations g ON g.id = i.generation_id WHERE g.image_lora_id = $1""",
            lora_id,
        )
        return [r["file_id"] for r in records]
