"""All SQL of the training service, for the API and the workers alike: datasets, jobs (the
queue, leases, status changes with their events), metrics, checkpoints, costs, model
artifacts, clones and notifications.

Queries return typed rows (frozen dataclasses), never asyncpg records. Every query on a
user's resource names the owner, so another user's resource is simply not found. A job's
events get their sequence from a row lock on the job (`last_seq`) and wake watchers with
a NOTIFY on commit; `apply` writes a lifecycle `Change` with its event (and the owner's
notification when terminal) in the caller's transaction. List queries are keyset pages
(services.common.pages) on a unique order, so concurrent inserts never shift a page.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, fields
from typing import Any

from aivera.training.v1 import (
    datasets_pb2,
    image_loras_pb2,
    jobs_pb2,
    models_pb2,
    notifications_pb2,
)
from services.common import pages
from services.common.db import Database
from services.common.errors import InvalidArgument, Reason
from services.common.protoutil import timestamp
from services.training import events, lifecycle
from services.training.session import StepPoint

EVENTS_CHANNEL = "training_job_events"
NOTIFICATIONS_CHANNEL = "training_notifications"
QUEUE_CHANNEL = "training_queue"
WEBHOOKS_CHANNEL = "training_webhooks"

J = jobs_pb2


# -- rows ---------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class DatasetRow:
    id: uuid.UUID
    user_id: str
    name: str
    file_id: str
    size_bytes: int
    format: datasets_pb2.DatasetFormat.ValueType
    status: datasets_pb2.DatasetStatus.ValueType
    base_model: str
    max_seq_length: int
    errors: list[dict[str, Any]]  # [{"line", "message"}], the first ones
    error_count: int
    stats: dict[str, Any] | None  # DatasetStats fields, when READY
    created_at: dt.datetime
    updated_at: dt.datetime
    description: str


@dataclass(frozen=True, slots=True)
class JobRow:
    id: uuid.UUID
    user_id: str
    name: str
    dataset_id: uuid.UUID | None  # None for a job that trains an image LoRA
    base_model: str
    method: jobs_pb2.TrainingMethod.ValueType
    hyperparameters: dict[str, Any]  # Hyperparameters as JSON (effective values)
    executor: jobs_pb2.Executor.ValueType
    clone_id: uuid.UUID | None
    status: jobs_pb2.JobStatus.ValueType
    attempt: int
    total_steps: int
    steps_per_epoch: int
    steps_done: int
    epoch: float
    loss: float
    eval_loss: float | None
    tokens_per_second: float
    eta_seconds: int
    error: dict[str, Any] | None  # lifecycle.Failure as JSON
    model_id: uuid.UUID | None
    worker_id: str
    claim_token: uuid.UUID | None
    lease_expires_at: dt.datetime | None
    worker_losses: int
    queued_at: dt.datetime | None
    last_seq: int
    created_at: dt.datetime
    start_time: dt.datetime | None
    end_time: dt.datetime | None
    updated_at: dt.datetime
    deleted_at: dt.datetime | None
    hardware_class: str
    init_model_id: uuid.UUID | None
    resume_from_attempt: int
    # The image LoRA the job trains (0015_image_lora_jobs.sql); None for a text job.
    image_lora_id: uuid.UUID | None = None


@dataclass(frozen=True, slots=True)
class CostRow:
    """A job's device time on one device type, all claims together."""

    device_type: str
    hourly_rate_micros: int
    device_seconds: float


@dataclass(frozen=True, slots=True)
class MonthCostRow:
    """A user's billed device time of one month on one device type."""

    month: dt.datetime  # the first instant of the month, UTC
    device_type: str
    hourly_rate_micros: int
    device_seconds: float
    amount_micros: int
    job_count: int  # jobs of the month (all device types)


@dataclass(frozen=True, slots=True)
class QuotaRow:
    """An admin's limits for a user; None keeps the server default."""

    user_id: str
    max_active_jobs: int | None
    gpu_hours_per_month: float | None
    monthly_budget_micros: int | None


@dataclass(frozen=True, slots=True)
class MetricRow:
    id: int
    job_id: uuid.UUID
    attempt: int
    step: int
    epoch: float
    loss: float
    learning_rate: float
    grad_norm: float
    tokens_per_second: float
    eval_loss: float | None
    created_at: dt.datetime


@dataclass(frozen=True, slots=True)
class CheckpointRow:
    id: uuid.UUID
    job_id: uuid.UUID
    attempt: int
    step: int
    epoch: float
    loss: float
    eval_loss: float | None
    size_bytes: int
    storage_path: str
    file_id: str
    created_at: dt.datetime


@dataclass(frozen=True, slots=True)
class ModelRow:
    id: uuid.UUID
    user_id: str
    name: str
    job_id: uuid.UUID
    clone_id: uuid.UUID | None
    base_model: str
    method: jobs_pb2.TrainingMethod.ValueType
    kind: models_pb2.ModelKind.ValueType
    files: list[dict[str, Any]]  # [{"name", "file_id", "size_bytes", "sha256"}]
    size_bytes: int
    steps: int
    final_loss: float
    final_eval_loss: float | None
    created_at: dt.datetime
    simulated: bool
    checkpoint_id: uuid.UUID | None


@dataclass(frozen=True, slots=True)
class CloneRow:
    id: uuid.UUID
    user_id: str
    name: str
    persona_prompt: str
    base_model: str
    active_model_id: uuid.UUID | None
    knowledge_base_id: str
    created_at: dt.datetime
    updated_at: dt.datetime
    # Derived from its jobs, for the clone's status.
    training: bool  # a job of the clone is VALIDATING, QUEUED or RUNNING
    last_job_status: jobs_pb2.JobStatus.ValueType | None  # status of its newest job


@dataclass(frozen=True, slots=True)
class NotificationRow:
    id: uuid.UUID
    user_id: str
    kind: notifications_pb2.NotificationKind.ValueType
    title: str
    body: str
    job_id: str
    dataset_id: str
    model_id: str
    read: bool
    created_at: dt.datetime
    clone_id: str


@dataclass(frozen=True, slots=True)
class WebhookRow:
    id: uuid.UUID
    user_id: str
    url: str
    description: str
    event_kinds: list[int]
    secret_hint: str
    created_at: dt.datetime
    updated_at: dt.datetime


@dataclass(frozen=True, slots=True)
class AttemptRow:
    delivery_id: uuid.UUID
    response_code: int
    error: str
    duration_ms: int
    created_at: dt.datetime


@dataclass(frozen=True, slots=True)
class DeliveryRow:
    id: uuid.UUID
    webhook_id: uuid.UUID
    notification_id: uuid.UUID
    event_type: str
    status: int
    next_attempt_at: dt.datetime | None
    created_at: dt.datetime


@dataclass(frozen=True, slots=True)
class DueRow:
    """A delivery claimed for an attempt, with what sending it needs."""

    id: uuid.UUID
    webhook_id: uuid.UUID
    body: str
    created_at: dt.datetime
    url: str
    secret: bytes
    previous_secret: bytes | None
    previous_expires_at: dt.datetime | None
    attempts: int
    now: dt.datetime


def _columns(row: type, prefix: str = "", *, skip: tuple[str, ...] = ()) -> str:
    return ", ".join(prefix + f.name for f in fields(row) if f.name not in skip)


_DATASET = _columns(DatasetRow)
_JOB = _columns(JobRow)
_METRIC = _columns(MetricRow)
_CHECKPOINT = _columns(CheckpointRow)
_MODEL = _columns(ModelRow)
_NOTIFICATION = _columns(NotificationRow)
_WEBHOOK = _columns(WebhookRow)
_DELIVERY = _columns(DeliveryRow)
# $2 of every clone query: the active job statuses.
_CLONE = (
    _columns(CloneRow, "c.", skip=("training", "last_job_status"))
    + """,
    EXISTS (SELECT 1 FROM training_jobs j WHERE j.clone_id = c.id AND j.deleted_at IS NULL
            AND j.status = ANY($2::smallint[])) AS training,
    (SELECT j.status FROM training_jobs j WHERE j.clone_id = c.id
     ORDER BY j.created_at DESC, j.id DESC LIMIT 1) AS last_job_status"""
)
_ACTIVE = list(lifecycle.ACTIVE)
# An image LoRA's status for each job status its job moves to (store.mirror_image_lora),
# and the LoRA statuses in which its job still moves it.
_LORA_MIRROR: dict[int, int] = {
    lifecycle.QUEUED: image_loras_pb2.IMAGE_LORA_STATUS_QUEUED,
    lifecycle.RUNNING: image_loras_pb2.IMAGE_LORA_STATUS_VALIDATING,
    lifecycle.SUCCEEDED: image_loras_pb2.IMAGE_LORA_STATUS_READY,
    lifecycle.FAILED: image_loras_pb2.IMAGE_LORA_STATUS_FAILED,
    lifecycle.CANCELLED: image_loras_pb2.IMAGE_LORA_STATUS_CANCELLED,
}
_LORA_TRAINING = [
    image_loras_pb2.IMAGE_LORA_STATUS_QUEUED,
    image_loras_pb2.IMAGE_LORA_STATUS_VALIDATING,
    image_loras_pb2.IMAGE_LORA_STATUS_TRAINING,
]


# Public: the image LoRA and generation stores build their rows and pages the same way.
def make_row(row: type, record: Any) -> Any:
    """A typed row from an asyncpg record."""
    return row(**dict(record))


def by_created(row: Any) -> pages.Keyset:
    """The keyset of a row listed newest first by (created_at, id)."""
    return (row.created_at, row.id)


def keyset_after(page: pages.PageRequest, size: int) -> tuple[Any, ...]:
    """The keyset position of a page as query arguments (Nones on the first page)."""
    if page.after is None:
        return (None,) * size
    if len(page.after) != size:
        raise InvalidArgument(
            "page_token is not valid for this request",
            field="page_token",
            reason=Reason.INVALID_PAGE_TOKEN,
        )
    return tuple(page.after)


class Store:
    """The training schema. Built on the App as its `Database` (the pool connects after
    wiring; a worker passes `Connected(pool)`); `transaction()` gives a Store bound to
    one connection inside a transaction."""

    def __init__(self, database: Database, conn: Any = None) -> None:
        self._database = database
        self._conn = conn

    @property
    def db(self) -> Any:
        return self._conn if self._conn is not None else self._database.pool

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Store]:
        if self._conn is not None:
            async with self._conn.transaction():
                yield self
            return
        async with self._database.pool.acquire() as conn, conn.transaction():
            yield Store(self._database, conn)

    async def clock(self) -> dt.datetime:
        now: dt.datetime = await self.db.fetchval("SELECT clock_timestamp()")
        return now

    # -- datasets -------------------------------------------------------------------------
    async def insert_dataset(
        self,
        *,
        user_id: str,
        name: str,
        file_id: str,
        size_bytes: int,
        status: int,
        base_model: str,
        max_seq_length: int,
        description: str = "",
    ) -> DatasetRow:
        record = await self.db.fetchrow(
            f"""INSERT INTO datasets (id, user_id, name, file_id, size_bytes, status, base_model,
                                      max_seq_length, description)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING {_DATASET}""",
            uuid.uuid4(),
            user_id,
            name,
            file_id,
            size_bytes,
            status,
            base_model,
            max_seq_length,
            description,
        )
        return make_row(DatasetRow, record)  # type: ignore[no-any-return]

    async def update_dataset(
        self, dataset_id: uuid.UUID, *, name: str | None, description: str | None
    ) -> None:
        """Change the given fields (None: unchanged)."""
        await self.db.execute(
            """UPDATE datasets SET name = coalesce($2, name),
                      description = coalesce($3, description), updated_at = clock_timestamp()
               WHERE id = $1""",
            dataset_id,
            name,
            description,
        )

    async def get_dataset(self, user_id: str, dataset_id: uuid.UUID) -> DatasetRow | None:
        record = await self.db.fetchrow(
            f"""SELECT {_DATASET} FROM datasets
                WHERE id = $1 AND user_id = $2 AND deleted_at IS NULL""",
            dataset_id,
            user_id,
        )
        return None if record is None else make_row(DatasetRow, record)

    # -- grants of background work (0011_work_grants.sql) ------------------------------
    async def put_grant(self, resource_id: uuid.UUID, user_id: str, grant: str) -> None:
        await self.db.execute(
            """INSERT INTO work_grants (resource_id, user_id, grant_token) VALUES ($1, $2, $3)
               ON CONFLICT (resource_id) DO UPDATE SET grant_token = excluded.grant_token""",
            resource_id,
            uuid.UUID(user_id),
            grant,
        )

    async def grant_of(self, resource_id: uuid.UUID) -> str | None:
        grant: str | None = await self.db.fetchval(
            "SELECT grant_token FROM work_grants WHERE resource_id = $1", resource_id
        )
        return grant

    async def drop_grant(self, resource_id: uuid.UUID) -> None:
        await self.db.execute("DELETE FROM work_grants WHERE resource_id = $1", resource_id)

    async def dataset_by_id(self, dataset_id: uuid.UUID) -> DatasetRow | None:
        """Any dataset, deleted ones too (background work that already checked access)."""
        record = await self.db.fetchrow(
            f"SELECT {_DATASET} FROM datasets WHERE id = $1", dataset_id
        )
        return None if record is None else make_row(DatasetRow, record)

    async def list_datasets(
        self, user_id: str, status: int, page: pages.PageRequest
    ) -> tuple[list[DatasetRow], str]:
        """Newest first; `status` 0 means all."""
        records = await self.db.fetch(
            f"""SELECT {_DATASET} FROM datasets WHERE user_id = $1 AND deleted_at IS NULL
                AND ($2::smallint IS NULL OR status = $2)
                AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4::uuid))
                ORDER BY created_at DESC, id DESC LIMIT $5""",
            user_id,
            status or None,
            *keyset_after(page, 2),
            page.limit,
        )
        return pages.take([make_row(DatasetRow, r) for r in records], page, key=by_created)

    async def validating_datasets(self, status: int) -> list[tuple[uuid.UUID, str]]:
        records = await self.db.fetch(
            "SELECT id, user_id FROM datasets WHERE status = $1 AND deleted_at IS NULL", status
        )
        return [(r["id"], r["user_id"]) for r in records]

    async def finish_dataset(
        self,
        dataset_id: uuid.UUID,
        *,
        status: int,
        format: int,
        errors: list[dict[str, Any]],
        error_count: int,
        stats: dict[str, Any] | None,
    ) -> None:
        await self.db.execute(
            """UPDATE datasets SET status = $2, format = $3, errors = $4, error_count = $5,
                      stats = $6, updated_at = clock_timestamp() WHERE id = $1""",
            dataset_id,
            status,
            format,
            errors,
            error_count,
            stats,
        )

    async def active_jobs_using(self, dataset_id: uuid.UUID) -> int:
        count: int = await self.db.fetchval(
            """SELECT count(*) FROM training_jobs WHERE dataset_id = $1
               AND deleted_at IS NULL AND status = ANY($2::smallint[])""",
            dataset_id,
            _ACTIVE,
        )
        return count

    async def dataset_deleted(self, dataset_id: uuid.UUID) -> bool:
        return bool(
            await self.db.fetchval(
                "SELECT deleted_at IS NOT NULL FROM datasets WHERE id = $1", dataset_id
            )
        )

    async def delete_dataset(self, dataset_id: uuid.UUID) -> None:
        await self.db.execute(
            "UPDATE datasets SET deleted_at = clock_timestamp() WHERE id = $1", dataset_id
        )

    # -- jobs -------------------------------------------------------------------------------
    async def lock_user(self, user_id: str) -> None:
        """Serialise a user's job creations (inside a transaction), so the active-job
        limit holds under concurrent CreateJob calls."""
        await self.db.execute("SELECT pg_advisory_xact_lock(hashtext($1))", user_id)

    async def count_active_jobs(self, user_id: str) -> int:
        count: int = await self.db.fetchval(
            """SELECT count(*) FROM training_jobs WHERE user_id = $1 AND deleted_at IS NULL
               AND status = ANY($2::smallint[])""",
            user_id,
            _ACTIVE,
        )
        return count

    async def insert_job(
        self,
        *,
        user_id: str,
        name: str,
        dataset_id: uuid.UUID | None,
        base_model: str,
        method: int,
        hyperparameters: dict[str, Any],
        executor: int,
        clone_id: uuid.UUID | None,
        created: lifecycle.Change,
        hardware_class: str,
        init_model_id: uuid.UUID | None = None,
        image_lora_id: uuid.UUID | None = None,
    ) -> JobRow:
        """A new job in the status of `created`, with its first event (in a transaction).
        It trains on `dataset_id`, or the image LoRA `image_lora_id`."""
        record = await self.db.fetchrow(
            f"""INSERT INTO training_jobs (id, user_id, name, dataset_id, base_model, method,
                    hyperparameters, executor, clone_id, status, hardware_class, init_model_id,
                    image_lora_id)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
                RETURNING {_JOB}""",
            uuid.uuid4(),
            user_id,
            name,
            dataset_id,
            base_model,
            method,
            hyperparameters,
            executor,
            clone_id,
            created.status,
            hardware_class,
            init_model_id,
            image_lora_id,
        )
        job: JobRow = make_row(JobRow, record)
        await self._status_event(job, created)
        return job

    async def get_job(
        self, user_id: str, job_id: uuid.UUID, *, lock: bool = False
    ) -> JobRow | None:
        """The user's job (not deleted); with `lock`, locked until the transaction ends
        (every status change reads the job so)."""
        record = await self.db.fetchrow(
            f"""SELECT {_JOB} FROM training_jobs
                WHERE id = $1 AND user_id = $2 AND deleted_at IS NULL
                {"FOR UPDATE" if lock else ""}""",
            job_id,
            user_id,
        )
        return None if record is None else make_row(JobRow, record)

    async def job_by_id(self, job_id: uuid.UUID) -> JobRow | None:
        record = await self.db.fetchrow(f"SELECT {_JOB} FROM training_jobs WHERE id = $1", job_id)
        return None if record is None else make_row(JobRow, record)

    async def lock_job(self, job_id: uuid.UUID) -> JobRow | None:
        """Any job, locked until the transaction ends (background work and workers)."""
        record = await self.db.fetchrow(
            f"SELECT {_JOB} FROM training_jobs WHERE id = $1 FOR UPDATE", job_id
        )
        return None if record is None else make_row(JobRow, record)

    async def list_jobs(
        self, user_id: str, status: int, page: pages.PageRequest
    ) -> tuple[list[JobRow], str]:
        """Newest first; `status` 0 means all."""
        records = await self.db.fetch(
            f"""SELECT {_JOB} FROM training_jobs WHERE user_id = $1 AND deleted_at IS NULL
                AND ($2::smallint IS NULL OR status = $2)
                AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4::uuid))
                ORDER BY created_at DESC, id DESC LIMIT $5""",
            user_id,
            status or None,
            *keyset_after(page, 2),
            page.limit,
        )
        return pages.take([make_row(JobRow, r) for r in records], page, key=by_created)

    async def job_status(self, job_id: uuid.UUID) -> int | None:
        """The status of a job that is not deleted (None once deleted)."""
        status: int | None = await self.db.fetchval(
            "SELECT status FROM training_jobs WHERE id = $1 AND deleted_at IS NULL", job_id
        )
        return status

    async def jobs_in_status(self, status: int) -> list[tuple[uuid.UUID, str]]:
        records = await self.db.fetch(
            "SELECT id, user_id FROM training_jobs WHERE status = $1 AND deleted_at IS NULL",
            status,
        )
        return [(r["id"], r["user_id"]) for r in records]

    async def apply(self, job_id: uuid.UUID, change: lifecycle.Change) -> JobRow:
        """Write a transition decided by `lifecycle` with its StatusChanged event, the
        owner's notification when terminal, and a queue wake-up when QUEUED. Call inside
        the transaction that locked the job."""
        lease = change.lease
        record = await self.db.fetchrow(
            f"""UPDATE training_jobs SET
                    status = $2, error = $3, updated_at = clock_timestamp(),
                    end_time = CASE WHEN $4 THEN clock_timestamp() ELSE NULL END,
                    attempt = coalesce($5, attempt),
                    worker_losses = coalesce($6, worker_losses),
                    total_steps = coalesce($7, total_steps),
                    steps_per_epoch = coalesce($8, steps_per_epoch),
                    claim_token = CASE WHEN $9::uuid IS NOT NULL THEN $9::uuid
                                       WHEN $10 THEN NULL ELSE claim_token END,
                    lease_expires_at = CASE
                        WHEN $9::uuid IS NOT NULL THEN now() + make_interval(secs => $11)
                        WHEN $10 THEN NULL ELSE lease_expires_at END,
                    worker_id = coalesce($12, worker_id),
                    start_time = CASE WHEN $13 THEN NULL
                        WHEN $9::uuid IS NOT NULL THEN coalesce(start_time, clock_timestamp())
                        ELSE start_time END,
                    queued_at = CASE WHEN $14 THEN clock_timestamp() ELSE queued_at END,
                    model_id = coalesce($15, model_id)
                WHERE id = $1 RETURNING {_JOB}""",
            job_id,
            change.status,
            None if change.error is None else change.error.as_json(),
            change.terminal,
            change.attempt,
            change.worker_losses,
            change.total_steps,
            change.steps_per_epoch,
            None if lease is None else lease.token,
            change.release,
            0.0 if lease is None else float(lease.seconds),
            None if lease is None else lease.worker_id,
            change.restart,
            change.queued,
            change.model_id,
        )
        job: JobRow = make_row(JobRow, record)
        await self._status_event(job, change)
        if change.notice is not None:
            await self.notify(
                job.user_id,
                change.notice.kind,
                change.notice.title,
                change.notice.body,
                job_id=str(job.id),
                model_id=str(job.model_id) if job.model_id else "",
                clone_id=str(job.clone_id) if job.clone_id else "",
            )
        if change.queued:
            await self.db.execute("SELECT pg_notify($1, $2)", QUEUE_CHANNEL, str(job.id))
        if job.image_lora_id is not None:
            await self.mirror_image_lora(job)
        elif change.terminal:
            # The work is over: nothing reads the user's files for it any more (a retry
            # takes a new grant). An image LoRA's grant lives under the LoRA, for its purge.
            await self.drop_grant(job.id)
        return job

    async def _status_event(self, job: JobRow, change: lifecycle.Change) -> None:
        status_changed = J.StatusChanged(status=change.status, message=change.message)
        if change.error is not None:
            status_changed.error.CopyFrom(J.JobError(**change.error.as_json()))
        await self.append_event(job.id, job.attempt, J.JobEvent(status_changed=status_changed))

    async def delete_job(self, job_id: uuid.UUID) -> None:
        await self.db.execute(
            "UPDATE training_jobs SET deleted_at = clock_timestamp() WHERE id = $1", job_id
        )

    # -- job events ---------------------------------------------------------------------------
    async def append_event(self, job_id: uuid.UUID, attempt: int, event: J.JobEvent) -> int:
        """Store `event` (its payload set) with the job's next sequence and wake the
        watchers on commit. Call inside a transaction: the job's row lock on `last_seq`
        serialises its events."""
        seq: int = await self.db.fetchval(
            "UPDATE training_jobs SET last_seq = last_seq + 1 WHERE id = $1 RETURNING last_seq",
            job_id,
        )
        stored = J.JobEvent()
        stored.CopyFrom(event)
        stored.sequence = seq
        stored.attempt = attempt
        stamp = timestamp(dt.datetime.now(dt.UTC))
        assert stamp is not None
        stored.create_time.CopyFrom(stamp)
        await self.db.execute(
            "INSERT INTO job_events (job_id, seq, event) VALUES ($1, $2, $3)",
            job_id,
            seq,
            stored.SerializeToString(),
        )
        await self.db.execute("SELECT pg_notify($1, $2)", EVENTS_CHANNEL, str(job_id))
        return seq

    async def events_after(self, job_id: uuid.UUID, sequence: int) -> list[J.JobEvent]:
        records = await self.db.fetch(
            "SELECT event FROM job_events WHERE job_id = $1 AND seq > $2 ORDER BY seq",
            job_id,
            sequence,
        )
        return [J.JobEvent.FromString(r["event"]) for r in records]

    # -- the queue (workers) ------------------------------------------------------------------
    async def expired_leases(self) -> list[JobRow]:
        """RUNNING jobs whose lease has expired, locked (skipping those another worker
        is reaping)."""
        records = await self.db.fetch(
            f"""SELECT {_JOB} FROM training_jobs WHERE status = $1 AND lease_expires_at < now()
                FOR UPDATE SKIP LOCKED""",
            lifecycle.RUNNING,
        )
        return [make_row(JobRow, r) for r in records]

    async def next_queued(self, classes: Sequence[str] = ()) -> JobRow | None:
        """The oldest QUEUED job of one of the hardware `classes` (empty: any), locked
        (skipping those other workers are claiming)."""
        record = await self.db.fetchrow(
            f"""SELECT {_JOB} FROM training_jobs WHERE status = $1 AND deleted_at IS NULL
                AND ($2::text[] IS NULL OR hardware_class = ANY($2::text[]))
                ORDER BY queued_at, id LIMIT 1 FOR UPDATE SKIP LOCKED""",
            lifecycle.QUEUED,
            list(classes) or None,
        )
        return None if record is None else make_row(JobRow, record)

    async def claim_token(self, job_id: uuid.UUID) -> uuid.UUID | None:
        """The job's current claim token, without a lock (a quick check before slow work)."""
        token: uuid.UUID | None = await self.db.fetchval(
            "SELECT claim_token FROM training_jobs WHERE id = $1", job_id
        )
        return token

    async def renew_lease(self, job_id: uuid.UUID, token: uuid.UUID, seconds: float) -> bool:
        """Extend a running job's lease; False when the claim is no longer `token`'s."""
        ok = await self.db.fetchval(
            """UPDATE training_jobs SET lease_expires_at = now() + make_interval(secs => $3)
               WHERE id = $1 AND claim_token = $2 AND status = $4 RETURNING true""",
            job_id,
            token,
            float(seconds),
            lifecycle.RUNNING,
        )
        return bool(ok)

    async def dataset_file(self, dataset_id: uuid.UUID) -> str:
        file_id: str = await self.db.fetchval(
            "SELECT file_id FROM datasets WHERE id = $1", dataset_id
        )
        return file_id

    async def record_step(
        self, job_id: uuid.UUID, attempt: int, point: StepPoint, eta_seconds: int
    ) -> MetricRow:
        """A metric point and the job's progress (in a transaction)."""
        record = await self.db.fetchrow(
            f"""INSERT INTO metrics_points (job_id, attempt, step, epoch, loss, learning_rate,
                    grad_norm, tokens_per_second, eval_loss)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING {_METRIC}""",
            job_id,
            attempt,
            point.step,
            point.epoch,
            point.loss,
            point.learning_rate,
            point.grad_norm,
            point.tokens_per_second,
            point.eval_loss,
        )
        await self.db.execute(
            """UPDATE training_jobs SET steps_done = $2, epoch = $3, loss = $4,
                   eval_loss = coalesce($5, eval_loss), tokens_per_second = $6,
                   eta_seconds = $7, updated_at = clock_timestamp() WHERE id = $1""",
            job_id,
            point.step,
            point.epoch,
            point.loss,
            point.eval_loss,
            point.tokens_per_second,
            eta_seconds,
        )
        return make_row(MetricRow, record)  # type: ignore[no-any-return]

    # -- metrics and checkpoints --------------------------------------------------------------
    async def list_metrics(
        self, job_id: uuid.UUID, from_step: int, page: pages.PageRequest
    ) -> tuple[list[MetricRow], str]:
        """In the order they were written."""
        (after,) = keyset_after(page, 1)
        records = await self.db.fetch(
            f"""SELECT {_METRIC} FROM metrics_points WHERE job_id = $1 AND id > $2
                AND step >= $3 ORDER BY id LIMIT $4""",
            job_id,
            after or 0,
            from_step,
            page.limit,
        )
        return pages.take([make_row(MetricRow, r) for r in records], page, key=lambda r: (r.id,))

    async def insert_checkpoint(
        self,
        *,
        job_id: uuid.UUID,
        attempt: int,
        point: StepPoint,
        size_bytes: int,
        storage_path: str,
        file_id: str,
    ) -> CheckpointRow:
        record = await self.db.fetchrow(
            f"""INSERT INTO checkpoints (id, job_id, attempt, step, epoch, loss, eval_loss,
                    size_bytes, storage_path, file_id)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING {_CHECKPOINT}""",
            uuid.uuid4(),
            job_id,
            attempt,
            point.step,
            point.epoch,
            point.loss,
            point.eval_loss,
            size_bytes,
            storage_path,
            file_id,
        )
        return make_row(CheckpointRow, record)  # type: ignore[no-any-return]

    async def latest_checkpoint(self, job_id: uuid.UUID) -> CheckpointRow | None:
        record = await self.db.fetchrow(
            f"""SELECT {_CHECKPOINT} FROM checkpoints WHERE job_id = $1
                AND attempt >= (SELECT resume_from_attempt FROM training_jobs WHERE id = $1)
                ORDER BY step DESC, created_at DESC LIMIT 1""",
            job_id,
        )
        return None if record is None else make_row(CheckpointRow, record)

    async def last_checkpoint_step(self, job_id: uuid.UUID) -> int:
        """The step a resumed job starts from (0: from the beginning)."""
        step = await self.db.fetchval(
            """SELECT max(step) FROM checkpoints WHERE job_id = $1
               AND attempt >= (SELECT resume_from_attempt FROM training_jobs WHERE id = $1)""",
            job_id,
        )
        return int(step or 0)

    async def list_checkpoints(
        self, job_id: uuid.UUID, page: pages.PageRequest
    ) -> tuple[list[CheckpointRow], str]:
        """Oldest first."""
        records = await self.db.fetch(
            f"""SELECT {_CHECKPOINT} FROM checkpoints WHERE job_id = $1
                AND ($2::timestamptz IS NULL OR (created_at, id) > ($2, $3::uuid))
                ORDER BY created_at, id LIMIT $4""",
            job_id,
            *keyset_after(page, 2),
            page.limit,
        )
        return pages.take([make_row(CheckpointRow, r) for r in records], page, key=by_created)

    # -- costs --------------------------------------------------------------------------------
    async def open_cost(
        self,
        *,
        job: JobRow,
        worker_id: str,
        device_type: str,
        rate: int,
        simulated: bool = False,
    ) -> int:
        """A cost record for one claim of a job; its id. A simulated job's time is kept
        at rate 0 (never billed)."""
        cost_id: int = await self.db.fetchval(
            """INSERT INTO cost_records (job_id, attempt, worker_id, device_type,
                                         hourly_rate_micros, simulated, hardware_class, user_id)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id""",
            job.id,
            job.attempt,
            worker_id,
            device_type,
            0 if simulated else rate,
            simulated,
            job.hardware_class,
            job.user_id,
        )
        return cost_id

    async def open_generation_cost(
        self,
        *,
        generation_id: uuid.UUID,
        user_id: str,
        worker_id: str,
        device_type: str,
        rate: int,
        hardware_class: str,
        simulated: bool,
    ) -> int:
        """A cost record for one claim of a LOCAL generation by a worker (0019); its id. A
        simulated LoRA's generation is kept at rate 0 (never billed)."""
        cost_id: int = await self.db.fetchval(
            """INSERT INTO cost_records (generation_id, attempt, worker_id, device_type,
                                         hourly_rate_micros, simulated, hardware_class, user_id)
               VALUES ($1, 0, $2, $3, $4, $5, $6, $7) RETURNING id""",
            generation_id,
            worker_id,
            device_type,
            0 if simulated else rate,
            simulated,
            hardware_class,
            user_id,
        )
        return cost_id

    async def bill_generation(self, cost_id: int, claim_token: uuid.UUID) -> None:
        """A generation claim's device time up to now, while it is PROCESSING on that
        claim (the end's transaction bills before the status changes, so it is final)."""
        await self.db.execute(
            """UPDATE cost_records c SET device_seconds =
                   extract(epoch FROM clock_timestamp() - c.started_at),
                   updated_at = clock_timestamp()
               FROM generations g
               WHERE c.id = $1 AND g.id = c.generation_id AND g.status = $2
                 AND g.claim_token = $3""",
            cost_id,
            image_loras_pb2.GENERATION_STATUS_PROCESSING,
            claim_token,
        )

    async def generation_costs(
        self, generation_ids: Sequence[uuid.UUID]
    ) -> dict[uuid.UUID, list[CostRow]]:
        """Each generation's billed device time by device type (simulated ones: none)."""
        records = await self.db.fetch(
            """SELECT generation_id, device_type, max(hourly_rate_micros) AS rate,
                      sum(device_seconds) AS secs, min(id) AS first
               FROM cost_records
               WHERE generation_id = ANY($1::uuid[]) AND NOT simulated
               GROUP BY generation_id, device_type ORDER BY generation_id, first""",
            list(generation_ids),
        )
        out: dict[uuid.UUID, list[CostRow]] = {gid: [] for gid in generation_ids}
        for r in records:
            out[r["generation_id"]].append(
                CostRow(r["device_type"], int(r["rate"]), float(r["secs"]))
            )
        return out

    async def month_usage(self, user_id: str, since: dt.datetime) -> tuple[float, int]:
        """A user's billed GPU device-seconds and spending (micros) since `since`."""
        record = await self.db.fetchrow(
            """SELECT coalesce(sum(device_seconds) FILTER (WHERE device_type <> 'cpu'), 0)
                          AS gpu_seconds,
                      coalesce(sum(round(device_seconds * hourly_rate_micros / 3600.0)), 0)
                          AS spent
               FROM cost_records WHERE user_id = $1 AND NOT simulated AND started_at >= $2""",
            user_id,
            since,
        )
        return float(record["gpu_seconds"]), int(record["spent"])

    async def monthly_costs(
        self, user_id: str, page: pages.PageRequest
    ) -> tuple[list[list[MonthCostRow]], str]:
        """A user's billed costs grouped by UTC month, newest first; each month's rows by
        device type."""
        (after,) = keyset_after(page, 1)
        months = await self.db.fetch(
            """SELECT month FROM (
                   SELECT DISTINCT date_trunc('month', started_at AT TIME ZONE 'UTC') AS month
                   FROM cost_records WHERE user_id = $1 AND NOT simulated) m
               WHERE ($2::timestamp IS NULL OR month < $2) ORDER BY month DESC LIMIT $3""",
            user_id,
            after,
            page.limit,
        )
        chosen = [r["month"] for r in months]
        records = await self.db.fetch(
            """WITH c AS (SELECT date_trunc('month', started_at AT TIME ZONE 'UTC') AS month, *
                        FROM cost_records WHERE user_id = $1 AND NOT simulated)
               SELECT month, device_type, max(hourly_rate_micros) AS rate,
                      sum(device_seconds) AS secs,
                      sum(round(device_seconds * hourly_rate_micros / 3600.0)) AS amount,
                      (SELECT count(DISTINCT job_id) FROM c c2 WHERE c2.month = c.month) AS jobs,
                      min(id) AS first
               FROM c WHERE month = ANY($2::timestamp[])
               GROUP BY month, device_type ORDER BY month DESC, first""",
            user_id,
            chosen[: page.limit],
        )
        grouped: dict[dt.datetime, list[MonthCostRow]] = {m: [] for m in chosen}
        for r in records:
            grouped[r["month"]].append(
                MonthCostRow(
                    month=r["month"].replace(tzinfo=dt.UTC),
                    device_type=r["device_type"],
                    hourly_rate_micros=int(r["rate"]),
                    device_seconds=float(r["secs"]),
                    amount_micros=int(r["amount"]),
                    job_count=int(r["jobs"]),
                )
            )
        out = [grouped[m] for m in chosen]
        return pages.take(out, page, key=lambda rows: (rows[0].month.replace(tzinfo=None),))

    async def user_quota(self, user_id: str) -> QuotaRow | None:
        record = await self.db.fetchrow(
            """SELECT user_id, max_active_jobs, gpu_hours_per_month, monthly_budget_micros
               FROM user_quotas WHERE user_id = $1""",
            user_id,
        )
        return None if record is None else make_row(QuotaRow, record)

    async def set_user_quota(self, row: QuotaRow, fields_: Sequence[str], admin: str) -> None:
        """Set the named fields of a user's quota (None: back to the default)."""
        names = [
            f
            for f in ("max_active_jobs", "gpu_hours_per_month", "monthly_budget_micros")
            if f in fields_
        ]
        values = [getattr(row, f) for f in names]
        sets = ", ".join(f"{f} = ${i + 3}" for i, f in enumerate(names))
        await self.db.execute(
            """INSERT INTO user_quotas (user_id, updated_by) VALUES ($1, $2)
                ON CONFLICT (user_id) DO UPDATE SET updated_by = $2,
                    updated_at = clock_timestamp()""",
            row.user_id,
            admin,
        )
        if names:
            await self.db.execute(
                f"UPDATE user_quotas SET {sets}, updated_by = $2 WHERE user_id = $1",
                row.user_id,
                admin,
                *values,
            )

    async def bill(self, cost_id: int, claim_token: uuid.UUID) -> None:
        """Bring a claim's device time up to now, while the job is RUNNING on that claim:
        the final status's transaction bills last, so the cost a finished job shows is
        the one it keeps (a heartbeat or clean-up after it changes nothing)."""
        await self.db.execute(
            """UPDATE cost_records c SET device_seconds =
                   extract(epoch FROM clock_timestamp() - c.started_at),
                   updated_at = clock_timestamp()
               FROM training_jobs j
               WHERE c.id = $1 AND j.id = c.job_id AND j.status = $2
                 AND j.claim_token = $3""",
            cost_id,
            lifecycle.RUNNING,
            claim_token,
        )

    async def save_trace_context(self, job_id: uuid.UUID, carrier: dict[str, str]) -> None:
        """The W3C trace context of the request that created the job (tracing on)."""
        await self.db.execute(
            "UPDATE training_jobs SET trace_context = $2 WHERE id = $1", job_id, carrier
        )

    async def trace_context(self, job_id: uuid.UUID) -> dict[str, str]:
        """The job's stored trace context; empty when it was created untraced."""
        stored = await self.db.fetchval(
            "SELECT trace_context FROM training_jobs WHERE id = $1", job_id
        )
        return {str(k): str(v) for k, v in (stored or {}).items()}

    async def queue_stats(self) -> tuple[dict[int, int], float]:
        """Jobs (not deleted) by status, and the age in seconds of the oldest QUEUED job
        (0 when none waits) — the queue's gauges."""
        records = await self.db.fetch(
            """SELECT status, count(*) AS n,
                      extract(epoch FROM now() - min(queued_at)) AS oldest
               FROM training_jobs WHERE deleted_at IS NULL GROUP BY status"""
        )
        counts = {int(r["status"]): int(r["n"]) for r in records}
        oldest = next(
            (float(r["oldest"] or 0) for r in records if r["status"] == jobs_pb2.JOB_STATUS_QUEUED),
            0.0,
        )
        return counts, oldest

    async def device_seconds(self, job_id: uuid.UUID) -> float:
        spent = await self.db.fetchval(
            "SELECT sum(device_seconds) FROM cost_records WHERE job_id = $1", job_id
        )
        return float(spent or 0.0)

    async def costs(self, job_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, list[CostRow]]:
        """Each job's device time by device type, in the order the types were first used."""
        records = await self.db.fetch(
            """SELECT job_id, device_type, max(hourly_rate_micros) AS rate,
                      sum(device_seconds) AS secs, min(id) AS first
               FROM cost_records WHERE job_id = ANY($1::uuid[])
               GROUP BY job_id, device_type ORDER BY job_id, first""",
            list(job_ids),
        )
        out: dict[uuid.UUID, list[CostRow]] = {job_id: [] for job_id in job_ids}
        for r in records:
            out[r["job_id"]].append(CostRow(r["device_type"], int(r["rate"]), float(r["secs"])))
        return out

    # -- model artifacts ----------------------------------------------------------------------
    async def insert_model(
        self,
        *,
        user_id: str,
        name: str,
        job_id: uuid.UUID,
        clone_id: uuid.UUID | None,
        base_model: str,
        method: int,
        kind: int,
        files: list[dict[str, Any]],
        steps: int,
        final_loss: float,
        final_eval_loss: float | None,
        simulated: bool = False,
        checkpoint_id: uuid.UUID | None = None,
    ) -> ModelRow:
        record = await self.db.fetchrow(
            f"""INSERT INTO model_artifacts (id, user_id, name, job_id, clone_id, base_model,
                    method, kind, files, size_bytes, steps, final_loss, final_eval_loss,
                    simulated, checkpoint_id)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
                RETURNING {_MODEL}""",
            uuid.uuid4(),
            user_id,
            name,
            job_id,
            clone_id,
            base_model,
            method,
            kind,
            files,
            sum(int(f["size_bytes"]) for f in files),
            steps,
            final_loss,
            final_eval_loss,
            simulated,
            checkpoint_id,
        )
        return make_row(ModelRow, record)  # type: ignore[no-any-return]

    async def get_model(self, user_id: str, model_id: uuid.UUID) -> ModelRow | None:
        record = await self.db.fetchrow(
            f"""SELECT {_MODEL} FROM model_artifacts
                WHERE id = $1 AND user_id = $2 AND deleted_at IS NULL""",
            model_id,
            user_id,
        )
        return None if record is None else make_row(ModelRow, record)

    async def list_models(
        self, user_id: str, clone_id: uuid.UUID | None, page: pages.PageRequest
    ) -> tuple[list[ModelRow], str]:
        """Newest first; only the clone's when `clone_id` is given."""
        records = await self.db.fetch(
            f"""SELECT {_MODEL} FROM model_artifacts WHERE user_id = $1 AND deleted_at IS NULL
                AND ($2::uuid IS NULL OR clone_id = $2)
                AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4::uuid))
                ORDER BY created_at DESC, id DESC LIMIT $5""",
            user_id,
            clone_id,
            *keyset_after(page, 2),
            page.limit,
        )
        return pages.take([make_row(ModelRow, r) for r in records], page, key=by_created)

    async def rename_model(self, model_id: uuid.UUID, name: str) -> None:
        await self.db.execute("UPDATE model_artifacts SET name = $2 WHERE id = $1", model_id, name)

    async def delete_model(self, model_id: uuid.UUID) -> list[tuple[uuid.UUID, str]]:
        """Soft-delete a model and take it from the clones whose active model it was;
        those clones (id, name)."""
        await self.db.execute(
            "UPDATE model_artifacts SET deleted_at = clock_timestamp() WHERE id = $1", model_id
        )
        records = await self.db.fetch(
            """UPDATE clones SET active_model_id = NULL, updated_at = clock_timestamp()
               WHERE active_model_id = $1 AND deleted_at IS NULL RETURNING id, name""",
            model_id,
        )
        return [(r["id"], r["name"]) for r in records]

    async def models_to_purge(self, older_than: float, limit: int = 100) -> list[ModelRow]:
        """Deleted models whose retention has passed and whose files are still kept."""
        records = await self.db.fetch(
            f"""SELECT {_MODEL} FROM model_artifacts WHERE deleted_at IS NOT NULL
                AND purged_at IS NULL
                AND deleted_at <= clock_timestamp() - make_interval(secs => $1)
                ORDER BY deleted_at LIMIT $2""",
            float(older_than),
            limit,
        )
        return [make_row(ModelRow, r) for r in records]

    async def mark_purged(self, model_id: uuid.UUID) -> None:
        await self.db.execute(
            "UPDATE model_artifacts SET purged_at = clock_timestamp() WHERE id = $1", model_id
        )

    async def get_checkpoint(
        self, job_id: uuid.UUID, checkpoint_id: uuid.UUID
    ) -> CheckpointRow | None:
        record = await self.db.fetchrow(
            f"SELECT {_CHECKPOINT} FROM checkpoints WHERE id = $1 AND job_id = $2",
            checkpoint_id,
            job_id,
        )
        return None if record is None else make_row(CheckpointRow, record)

    async def model_by_id(self, model_id: uuid.UUID) -> ModelRow | None:
        """Any model, deleted ones too (workers: a job's starting adapter)."""
        record = await self.db.fetchrow(
            f"SELECT {_MODEL} FROM model_artifacts WHERE id = $1", model_id
        )
        return None if record is None else make_row(ModelRow, record)

    async def restart_plan(
        self, job_id: uuid.UUID, hyperparameters: dict[str, Any], attempt: int
    ) -> None:
        """New hyperparameters for a retried job: its plan is computed again and it starts
        over from step 0 (checkpoints of earlier attempts are not resumed)."""
        await self.db.execute(
            """UPDATE training_jobs SET hyperparameters = $2, total_steps = 0,
                      steps_per_epoch = 0, steps_done = 0, epoch = 0, loss = 0,
                      eval_loss = NULL, tokens_per_second = 0, eta_seconds = 0,
                      resume_from_attempt = $3, updated_at = clock_timestamp()
               WHERE id = $1""",
            job_id,
            hyperparameters,
            attempt,
        )

    # -- clones -------------------------------------------------------------------------------
    async def insert_clone(
        self,
        *,
        clone_id: uuid.UUID,
        user_id: str,
        name: str,
        persona_prompt: str,
        base_model: str,
        knowledge_base_id: str,
    ) -> None:
        await self.db.execute(
            """INSERT INTO clones (id, user_id, name, persona_prompt, base_model,
                                   knowledge_base_id) VALUES ($1, $2, $3, $4, $5, $6)""",
            clone_id,
            user_id,
            name,
            persona_prompt,
            base_model,
            knowledge_base_id,
        )

    async def get_clone(self, user_id: str, clone_id: uuid.UUID) -> CloneRow | None:
        record = await self.db.fetchrow(
            f"""SELECT {_CLONE} FROM clones c
                WHERE c.id = $1 AND c.user_id = $3 AND c.deleted_at IS NULL""",
            clone_id,
            _ACTIVE,
            user_id,
        )
        return None if record is None else make_row(CloneRow, record)

    async def list_clones(
        self, user_id: str, page: pages.PageRequest
    ) -> tuple[list[CloneRow], str]:
        """Newest first."""
        records = await self.db.fetch(
            f"""SELECT {_CLONE} FROM clones c WHERE c.user_id = $1 AND c.deleted_at IS NULL
                AND ($3::timestamptz IS NULL OR (c.created_at, c.id) < ($3, $4::uuid))
                ORDER BY c.created_at DESC, c.id DESC LIMIT $5""",
            user_id,
            _ACTIVE,
            *keyset_after(page, 2),
            page.limit,
        )
        return pages.take([make_row(CloneRow, r) for r in records], page, key=by_created)

    async def update_clone(
        self,
        clone_id: uuid.UUID,
        *,
        name: str | None = None,
        persona_prompt: str | None = None,
        set_active_model: bool = False,
        active_model_id: uuid.UUID | None = None,
    ) -> None:
        """Change the given fields (None: unchanged; the active model only when
        `set_active_model`, None then clears it)."""
        await self.db.execute(
            """UPDATE clones SET name = coalesce($2, name),
                      persona_prompt = coalesce($3, persona_prompt),
                      active_model_id = CASE WHEN $4 THEN $5::uuid ELSE active_model_id END,
                      updated_at = clock_timestamp()
               WHERE id = $1""",
            clone_id,
            name,
            persona_prompt,
            set_active_model,
            active_model_id,
        )

    async def set_clone_model(self, clone_id: uuid.UUID, model_id: uuid.UUID) -> None:
        """A job's new model becomes its clone's active model (unless the clone is gone)."""
        await self.db.execute(
            """UPDATE clones SET active_model_id = $2, updated_at = clock_timestamp()
               WHERE id = $1 AND deleted_at IS NULL""",
            clone_id,
            model_id,
        )

    async def delete_clone(self, clone_id: uuid.UUID) -> bool:
        """False when it was deleted already."""
        deleted = await self.db.fetchval(
            """UPDATE clones SET deleted_at = clock_timestamp()
               WHERE id = $1 AND deleted_at IS NULL RETURNING true""",
            clone_id,
        )
        return bool(deleted)

    # -- notifications ------------------------------------------------------------------------
    async def notify(
        self,
        user_id: str,
        kind: int,
        title: str,
        body: str,
        *,
        job_id: str = "",
        dataset_id: str = "",
        model_id: str = "",
        clone_id: str = "",
    ) -> None:
        """A notification for the user (their watchers wake on commit) and its delivery to
        each of their webhooks whose filter takes it (the outbox the deliverer sends)."""
        note_id = uuid.uuid4()
        created = await self.db.fetchval(
            """INSERT INTO notifications (id, user_id, kind, title, body, job_id, dataset_id,
                                          model_id, clone_id)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING created_at""",
            note_id,
            user_id,
            kind,
            title,
            body[:1000],
            job_id,
            dataset_id,
            model_id,
            clone_id,
        )
        await self.db.execute("SELECT pg_notify($1, $2)", NOTIFICATIONS_CHANNEL, user_id)
        payload = events.body(
            notification_id=note_id,
            kind=kind,
            title=title,
            text=body[:1000],
            job_id=job_id,
            dataset_id=dataset_id,
            model_id=model_id,
            clone_id=clone_id,
            at=created,
        )
        queued = await self.db.fetchval(
            """WITH d AS (
                   INSERT INTO webhook_deliveries (id, webhook_id, user_id, notification_id,
                       event_type, body, status, next_attempt_at)
                   SELECT gen_random_uuid(), w.id, w.user_id, $2, $3, $4, 1, clock_timestamp()
                   FROM webhooks w WHERE w.user_id = $1 AND w.deleted_at IS NULL
                   AND (cardinality(w.event_kinds) = 0 OR $5::smallint = ANY(w.event_kinds))
                   RETURNING 1)
               SELECT count(*) FROM d""",
            user_id,
            note_id,
            events.event_type(kind),
            payload,
            kind,
        )
        if queued:
            await self.db.execute("SELECT pg_notify($1, '')", WEBHOOKS_CHANNEL)

    async def list_notifications(
        self, user_id: str, unread_only: bool, page: pages.PageRequest
    ) -> tuple[list[NotificationRow], str]:
        """Newest first."""
        records = await self.db.fetch(
            f"""SELECT {_NOTIFICATION} FROM notifications WHERE user_id = $1
                AND (NOT $2 OR NOT read)
                AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4::uuid))
                ORDER BY created_at DESC, id DESC LIMIT $5""",
            user_id,
            unread_only,
            *keyset_after(page, 2),
            page.limit,
        )
        return pages.take([make_row(NotificationRow, r) for r in records], page, key=by_created)

    async def unread_notifications(self, user_id: str, limit: int) -> list[NotificationRow]:
        """The newest `limit` unread ones, oldest first."""
        records = await self.db.fetch(
            f"""SELECT {_NOTIFICATION} FROM (SELECT {_NOTIFICATION} FROM notifications
                WHERE user_id = $1 AND NOT read ORDER BY created_at DESC, id DESC LIMIT $2) t
                ORDER BY created_at, id""",
            user_id,
            limit,
        )
        return [make_row(NotificationRow, r) for r in records]

    async def notifications_since(self, user_id: str, since: dt.datetime) -> list[NotificationRow]:
        """Those created at or after `since`, oldest first."""
        records = await self.db.fetch(
            f"""SELECT {_NOTIFICATION} FROM notifications WHERE user_id = $1
                AND created_at >= $2 ORDER BY created_at, id""",
            user_id,
            since,
        )
        return [make_row(NotificationRow, r) for r in records]

    async def count_own_notifications(self, user_id: str, ids: Sequence[uuid.UUID]) -> int:
        count: int = await self.db.fetchval(
            "SELECT count(*) FROM notifications WHERE user_id = $1 AND id = ANY($2::uuid[])",
            user_id,
            list(ids),
        )
        return count

    async def mark_read(self, user_id: str, ids: Sequence[uuid.UUID] | None) -> int:
        """Mark the given notifications (None: all of the user's) read; how many were
        unread."""
        records = await self.db.fetch(
            """UPDATE notifications SET read = true WHERE user_id = $1
               AND ($2::uuid[] IS NULL OR id = ANY($2::uuid[])) AND NOT read RETURNING id""",
            user_id,
            None if ids is None else list(ids),
        )
        return len(records)

    # -- webhooks -------------------------------------------------------------------------------
    async def count_webhooks(self, user_id: str) -> int:
        count: int = await self.db.fetchval(
            "SELECT count(*) FROM webhooks WHERE user_id = $1 AND deleted_at IS NULL", user_id
        )
        return count

    async def insert_webhook(
        self,
        *,
        webhook_id: uuid.UUID,
        user_id: str,
        url: str,
        description: str,
        event_kinds: list[int],
        secret: bytes,
        secret_hint: str,
    ) -> WebhookRow:
        record = await self.db.fetchrow(
            f"""INSERT INTO webhooks (id, user_id, url, description, event_kinds, secret,
                                      secret_hint)
                VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {_WEBHOOK}""",
            webhook_id,
            user_id,
            url,
            description,
            event_kinds,
            secret,
            secret_hint,
        )
        return make_row(WebhookRow, record)  # type: ignore[no-any-return]

    async def get_webhook(self, user_id: str, webhook_id: uuid.UUID) -> WebhookRow | None:
        record = await self.db.fetchrow(
            f"""SELECT {_WEBHOOK} FROM webhooks
                WHERE id = $1 AND user_id = $2 AND deleted_at IS NULL""",
            webhook_id,
            user_id,
        )
        return None if record is None else make_row(WebhookRow, record)

    async def list_webhooks(
        self, user_id: str, page: pages.PageRequest
    ) -> tuple[list[WebhookRow], str]:
        records = await self.db.fetch(
            f"""SELECT {_WEBHOOK} FROM webhooks WHERE user_id = $1 AND deleted_at IS NULL
                AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3::uuid))
                ORDER BY created_at DESC, id DESC LIMIT $4""",
            user_id,
            *keyset_after(page, 2),
            page.limit,
        )
        return pages.take([make_row(WebhookRow, r) for r in records], page, key=by_created)

    async def delete_webhook(self, webhook_id: uuid.UUID) -> None:
        """Soft-delete; its pending deliveries are given up."""
        await self.db.execute(
            "UPDATE webhooks SET deleted_at = clock_timestamp() WHERE id = $1", webhook_id
        )
        await self.db.execute(
            """UPDATE webhook_deliveries SET status = 3, next_attempt_at = NULL
               WHERE webhook_id = $1 AND status = 1""",
            webhook_id,
        )

    async def rotate_webhook_secret(
        self, webhook_id: uuid.UUID, secret: bytes, hint: str, previous_for: float
    ) -> WebhookRow:
        """A new secret; the current one keeps signing for `previous_for` seconds."""
        record = await self.db.fetchrow(
            f"""UPDATE webhooks SET previous_secret = secret,
                    previous_expires_at = clock_timestamp() + make_interval(secs => $4),
                    secret = $2, secret_hint = $3, updated_at = clock_timestamp()
                WHERE id = $1 RETURNING {_WEBHOOK}""",
            webhook_id,
            secret,
            hint,
            float(previous_for),
        )
        return make_row(WebhookRow, record)  # type: ignore[no-any-return]

    async def claim_deliveries(self, limit: int, hold_seconds: float) -> list[DueRow]:
        """Due deliveries, claimed for `hold_seconds` (another replica skips them while
        this one sends; a crash leaves them due again after it)."""
        records = await self.db.fetch(
            """WITH due AS (
                   SELECT d.id FROM webhook_deliveries d
                   WHERE d.status = 1 AND d.next_attempt_at <= clock_timestamp()
                   ORDER BY d.next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED),
               held AS (
                   UPDATE webhook_deliveries d
                   SET next_attempt_at = clock_timestamp() + make_interval(secs => $2)
                   FROM due WHERE d.id = due.id RETURNING d.*)
               SELECT h.id, h.webhook_id, h.body, h.created_at, w.url, w.secret,
                      w.previous_secret, w.previous_expires_at,
                      (SELECT count(*) FROM webhook_attempts a WHERE a.delivery_id = h.id)
                          AS attempts,
                      clock_timestamp() AS now
               FROM held h JOIN webhooks w ON w.id = h.webhook_id""",
            limit,
            float(hold_seconds),
        )
        return [make_row(DueRow, r) for r in records]

    async def record_attempt(
        self,
        delivery_id: uuid.UUID,
        *,
        response_code: int,
        error: str,
        duration_ms: int,
        status: int,
        retry_in: float | None,
    ) -> None:
        """Log an attempt and set the delivery's status (and its next attempt)."""
        await self.db.execute(
            """INSERT INTO webhook_attempts (delivery_id, response_code, error, duration_ms)
               VALUES ($1, $2, $3, $4)""",
            delivery_id,
            response_code,
            error[:500],
            duration_ms,
        )
        await self.db.execute(
            """UPDATE webhook_deliveries SET status = $2,
                   next_attempt_at = CASE WHEN $3::float8 IS NULL THEN NULL
                       ELSE clock_timestamp() + make_interval(secs => $3) END
               WHERE id = $1 AND status = 1""",
            delivery_id,
            status,
            retry_in,
        )

    async def list_deliveries(
        self, webhook_id: uuid.UUID, page: pages.PageRequest
    ) -> tuple[list[tuple[DeliveryRow, list[AttemptRow]]], str]:
        records = await self.db.fetch(
            f"""SELECT {_DELIVERY} FROM webhook_deliveries WHERE webhook_id = $1
                AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3::uuid))
                ORDER BY created_at DESC, id DESC LIMIT $4""",
            webhook_id,
            *keyset_after(page, 2),
            page.limit,
        )
        rows, token = pages.take([make_row(DeliveryRow, r) for r in records], page, key=by_created)
        attempts = await self.db.fetch(
            """SELECT delivery_id, response_code, error, duration_ms, created_at
               FROM webhook_attempts WHERE delivery_id = ANY($1::uuid[]) ORDER BY id""",
            [r.id for r in rows],
        )
        by: dict[uuid.UUID, list[AttemptRow]] = {r.id: [] for r in rows}
        for a in attempts:
            by[a["delivery_id"]].append(make_row(AttemptRow, a))
        return [(r, by[r.id]) for r in rows], token

    # -- jobs that train image LoRAs (0015_image_lora_jobs.sql) ----------------------------
    # The LoRA follows its job: every write names the job, so a LoRA that has since been
    # started again (a newer job) or has ended is left alone.
    async def link_image_lora_job(
        self, lora_id: uuid.UUID, job_id: uuid.UUID, *, steps: int, simulated: bool
    ) -> None:
        """The LoRA's training is now `job_id` (no progress, no weights yet)."""
        await self.db.execute(
            """UPDATE image_loras SET job_id = $2, training_steps = $3, simulated = $4,
                      progress = 0, weights_file_id = '', weights_size_bytes = 0,
                      weights_sha256 = '', updated_at = clock_timestamp()
               WHERE id = $1""",
            lora_id,
            job_id,
            steps,
            simulated,
        )

    async def mirror_image_lora(self, job: JobRow) -> None:
        """Move the job's LoRA with the job (called by `apply`): claimed → VALIDATING (the
        worker checks the images), back in the queue → QUEUED, SUCCEEDED → READY,
        FAILED (with the job's error) and CANCELLED as they are."""
        status = _LORA_MIRROR.get(job.status)
        if status is None:
            return
        error = str((job.error or {}).get("message", "")) if job.status == lifecycle.FAILED else ""
        await self.db.execute(
            """UPDATE image_loras SET status = $3::smallint, error = $4,
                      progress = CASE WHEN $3::smallint = $5::smallint THEN 1 ELSE progress END,
                      finished_at = CASE WHEN $6 THEN clock_timestamp() ELSE NULL END,
                      updated_at = clock_timestamp()
               WHERE id = $1 AND job_id = $2 AND status = ANY($7::smallint[])""",
            job.image_lora_id,
            job.id,
            status,
            error,
            image_loras_pb2.IMAGE_LORA_STATUS_READY,
            job.status in lifecycle.TERMINAL,
            _LORA_TRAINING,
        )

    async def image_lora_training(
        self, lora_id: uuid.UUID, job_id: uuid.UUID, progress: float
    ) -> None:
        """The job's LoRA is TRAINING, `progress` (0–1) of the way."""
        await self.db.execute(
            """UPDATE image_loras SET status = $3, progress = $4, updated_at = clock_timestamp()
               WHERE id = $1 AND job_id = $2 AND status = ANY($5::smallint[])""",
            lora_id,
            job_id,
            image_loras_pb2.IMAGE_LORA_STATUS_TRAINING,
            progress,
            _LORA_TRAINING,
        )

    async def image_lora_weights(
        self, lora_id: uuid.UUID, job_id: uuid.UUID, *, file_id: str, size: int, sha256: str
    ) -> None:
        """The trained weights of the job's LoRA (before the job SUCCEEDS, in its
        transaction)."""
        await self.db.execute(
            """UPDATE image_loras SET weights_file_id = $3, weights_size_bytes = $4,
                      weights_sha256 = $5, updated_at = clock_timestamp()
               WHERE id = $1 AND job_id = $2""",
            lora_id,
            job_id,
            file_id,
            size,
            sha256,
        )

    # -- admin ----------------------------------------------------------------------------------
    async def list_all_jobs(
        self, user_id: str | None, status: int, page: pages.PageRequest
    ) -> tuple[list[JobRow], str]:
        """Any user's jobs (one user's with `user_id`), deleted ones too, newest first."""
        records = await self.db.fetch(
            f"""SELECT {_JOB} FROM training_jobs WHERE ($1::text IS NULL OR user_id = $1)
                AND ($2::smallint IS NULL OR status = $2)
                AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4::uuid))
                ORDER BY created_at DESC, id DESC LIMIT $5""",
            user_id,
            status or None,
            *keyset_after(page, 2),
            page.limit,
        )
        return pages.take([make_row(JobRow, r) for r in records], page, key=by_created)

    async def events_page(
        self, job_id: uuid.UUID, page: pages.PageRequest
    ) -> tuple[list[J.JobEvent], int | None]:
        """Up to `page.size` stored events after the page's position, and the position of
        the next page (None on the last)."""
        (after,) = keyset_after(page, 1)
        records = await self.db.fetch(
            """SELECT seq, event FROM job_events WHERE job_id = $1 AND seq > $2
               ORDER BY seq LIMIT $3""",
            job_id,
            after or 0,
            page.limit,
        )
        events = [J.JobEvent.FromString(r["event"]) for r in records[: page.size]]
        more = len(records) > page.size
        return events, (int(records[page.size - 1]["seq"]) if more else None)
