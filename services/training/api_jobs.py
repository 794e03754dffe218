"""TrainingService: jobs (create, validate into the queue, cancel, retry, delete), their
event stream, metrics and checkpoints."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

from google.protobuf import empty_pb2

from aivera.training.v1 import datasets_pb2, jobs_pb2
from services.common import context as ctx
from services.common.errors import (
    FailedPrecondition,
    InvalidArgument,
    ResourceExhausted,
    ServiceError,
    not_found,
)
from services.common.pages import decode_token, encode_token, page_size
from services.common.protoutil import parse_uuid
from services.common.server import App
from services.training import basemodels, hyper, store
from services.training.api_datasets import check_base_model, check_name, load_dataset
from services.training.config import TrainingSettings
from services.training.hub import Hub, wait
from services.training.plan import PlanError, make_plan
from services.training.storage_io import Storage

log = logging.getLogger("aivera.training.jobs")
J = jobs_pb2
EXECUTORS = {"peft": J.EXECUTOR_PEFT, "simulate": J.EXECUTOR_SIMULATE}


async def load_job(conn: Any, user: str, raw_id: str, field: str = "id") -> Any:
    job_id = parse_uuid(raw_id, field=field)
    row = await conn.fetchrow(
        "SELECT * FROM training_jobs WHERE id = $1 AND user_id = $2 AND deleted_at IS NULL",
        job_id,
        user,
    )
    if row is None:
        raise not_found("job", raw_id)
    return row


async def load_clone(conn: Any, user: str, raw_id: str, field: str = "id") -> Any:
    clone_id = parse_uuid(raw_id, field=field)
    row = await conn.fetchrow(
        "SELECT * FROM clones WHERE id = $1 AND user_id = $2 AND deleted_at IS NULL",
        clone_id,
        user,
    )
    if row is None:
        raise not_found("clone", raw_id)
    return row


def _newest_page(rows: list[Any], size: int) -> str:
    if len(rows) <= size:
        return ""
    last = rows[size - 1]
    return encode_token({"t": last["created_at"].isoformat(), "id": str(last["id"])})


def _position(token: str) -> tuple[dt.datetime, uuid.UUID] | None:
    pos = decode_token(token)
    if pos is None:
        return None
    try:
        return dt.datetime.fromisoformat(pos["t"]), uuid.UUID(pos["id"])
    except (KeyError, ValueError, TypeError):
        raise InvalidArgument("page_token is not valid", field="page_token") from None


def executor_name(value: int) -> str:
    return J.Executor.Name(value) if value in J.Executor.values() else str(value)  # type: ignore[arg-type]


class TrainingService:
    def __init__(self, app: App, settings: TrainingSettings, hub: Hub) -> None:
        self.app = app
        self.settings = settings
        self.hub = hub

    def currency(self) -> str:
        return self.settings.training_currency

    async def _job(self, conn: Any, job_id: Any) -> J.TrainingJob:
        return await store.load_job(conn, job_id, self.currency())

    # -- create and the validation step ---------------------------------------------------
    async def CreateJob(self, request: J.CreateJobRequest, context: Any) -> J.TrainingJob:
        user = ctx.require_user_id()
        name = check_name(request.name, required=False)
        if request.method not in (
            J.TRAINING_METHOD_UNSPECIFIED,
            J.TRAINING_METHOD_LORA,
            J.TRAINING_METHOD_QLORA,
        ):
            raise InvalidArgument("method must be LORA or QLORA", field="method")
        method = request.method or J.TRAINING_METHOD_LORA
        executor = request.executor or EXECUTORS[self.settings.training_executor]
        enabled = {EXECUTORS[e] for e in self.settings.training_executors_enabled}
        enabled.add(EXECUTORS[self.settings.training_executor])
        if executor not in enabled:
            raise InvalidArgument(
                f"executor {executor_name(executor)} is not enabled on this server",
                field="executor",
            )
        pool = self.app.pool
        dataset = await load_dataset(pool, user, request.dataset_id, field="dataset_id")
        clone = None
        if request.clone_id:
            clone = await load_clone(pool, user, request.clone_id, field="clone_id")
        base_model = request.base_model or (clone["base_model"] if clone else dataset["base_model"])
        base_model = check_base_model(self.settings, base_model)
        if clone is not None and base_model != clone["base_model"]:
            raise InvalidArgument(
                f"base_model {base_model!r} differs from the clone's {clone['base_model']!r}",
                field="base_model",
            )
        try:
            facts = await asyncio.to_thread(basemodels.facts, base_model, self.settings)
        except (OSError, ValueError) as exc:
            raise InvalidArgument(
                f"base_model {base_model!r} cannot be loaded: {exc}", field="base_model"
            ) from None
        hp = hyper.effective(
            request.hyperparameters,
            context_length=facts.context_length,
            linear_modules=facts.linear_modules,
            dataset_max_seq_length=dataset["max_seq_length"],
            checkpoint_every_default=self.settings.training_checkpoint_every_steps,
        )
        if dataset["status"] != datasets_pb2.DATASET_STATUS_READY:
            raise FailedPrecondition("the dataset is not READY")
        job_id = uuid.uuid4()
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", user)
            active = await conn.fetchval(
                """SELECT count(*) FROM training_jobs WHERE user_id = $1 AND deleted_at IS NULL
                   AND status = ANY($2::smallint[])""",
                user,
                list(store.ACTIVE),
            )
            if active >= self.settings.training_max_active_jobs:
                raise ResourceExhausted(
                    f"you already have {active} unfinished jobs (limit "
                    f"{self.settings.training_max_active_jobs})"
                )
            await conn.execute(
                """INSERT INTO training_jobs (id, user_id, name, dataset_id, base_model, method,
                       hyperparameters, executor, clone_id, status)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)""",
                job_id,
                user,
                name or f"{dataset['name']} ({'qlora' if method == 2 else 'lora'})",
                dataset["id"],
                base_model,
                method,
                store.hp_to_json(hp),
                executor,
                clone["id"] if clone else None,
                J.JOB_STATUS_VALIDATING,
            )
            await store.append_event(
                conn,
                job_id,
                1,
                status_changed=J.StatusChanged(
                    status=J.JOB_STATUS_VALIDATING, message="validating"
                ),
            )
            job = await self._job(conn, job_id)
        self.app.spawn(self.validate(job_id, user), name=f"validate-job-{job_id}")
        return job

    async def validate(self, job_id: uuid.UUID, user: str) -> None:
        """VALIDATING → QUEUED with the total steps, or FAILED (DATASET_INVALID)."""
        pool = self.app.pool
        row = await pool.fetchrow(
            """SELECT j.*, d.file_id FROM training_jobs j JOIN datasets d ON d.id = j.dataset_id
               WHERE j.id = $1""",
            job_id,
        )
        hp = store.hp_from_json(row["hyperparameters"])
        error: dict[str, Any] | None = None
        total = spe = 0
        try:
            with ctx.acting_for(user):
                raw = await Storage(
                    self.app.channel(self.settings.storage_addr), self.settings.internal_token()
                ).download(row["file_id"])
            tok = await asyncio.to_thread(basemodels.tokenizer, row["base_model"], self.settings)
            plan = await asyncio.to_thread(make_plan, raw, tok, hp)
            total, spe = plan.total_steps, plan.steps_per_epoch
        except PlanError as exc:
            error = {"code": J.JOB_ERROR_CODE_DATASET_INVALID, "message": str(exc)}
        except ServiceError as exc:
            error = {"code": J.JOB_ERROR_CODE_STORAGE_ERROR, "message": exc.message}
        except (OSError, ValueError) as exc:
            error = {"code": J.JOB_ERROR_CODE_MODEL_LOAD_FAILED, "message": str(exc)}
        async with pool.acquire() as conn, conn.transaction():
            status = await conn.fetchval(
                "SELECT status FROM training_jobs WHERE id = $1 FOR UPDATE", job_id
            )
            if status != J.JOB_STATUS_VALIDATING:
                return  # cancelled meanwhile
            if error is not None:
                await store.set_status(
                    conn, job_id, J.JOB_STATUS_FAILED, error["message"], error=error
                )
                return
            await store.set_status(
                conn,
                job_id,
                J.JOB_STATUS_QUEUED,
                f"queued: {total} steps",
                extra_sql=", total_steps = $5, steps_per_epoch = $6, queued_at = clock_timestamp()",
                extra_args=(total, spe),
            )

    async def resume_pending(self) -> None:
        rows = await self.app.pool.fetch(
            "SELECT id, user_id FROM training_jobs WHERE status = $1 AND deleted_at IS NULL",
            J.JOB_STATUS_VALIDATING,
        )
        for r in rows:
            self.app.spawn(self.validate(r["id"], r["user_id"]), name=f"validate-job-{r['id']}")

    # -- reads ----------------------------------------------------------------------------
    async def GetJob(self, request: J.GetJobRequest, context: Any) -> J.TrainingJob:
        row = await load_job(self.app.pool, ctx.require_user_id(), request.id)
        return store.job_proto(
            row, await store.cost_summary(self.app.pool, row["id"], self.currency())
        )

    async def ListJobs(self, request: J.ListJobsRequest, context: Any) -> J.ListJobsResponse:
        user = ctx.require_user_id()
        size = page_size(request.page_size)
        pos = _position(request.page_token)
        args: list[Any] = [user, request.status or None, size + 1]
        where = ""
        if pos is not None:
            args += list(pos)
            where = "AND (created_at, id) < ($4, $5)"
        rows = await self.app.pool.fetch(
            f"""SELECT * FROM training_jobs WHERE user_id = $1 AND deleted_at IS NULL
                AND ($2::smallint IS NULL OR status = $2) {where}
                ORDER BY created_at DESC, id DESC LIMIT $3""",
            *args,
        )
        jobs = [
            store.job_proto(r, await store.cost_summary(self.app.pool, r["id"], self.currency()))
            for r in rows[:size]
        ]
        return J.ListJobsResponse(jobs=jobs, next_page_token=_newest_page(rows, size))

    # -- state changes --------------------------------------------------------------------
    async def CancelJob(self, request: J.CancelJobRequest, context: Any) -> J.TrainingJob:
        user = ctx.require_user_id()
        async with self.app.pool.acquire() as conn, conn.transaction():
            row = await load_job(conn, user, request.id)
            await conn.execute("SELECT 1 FROM training_jobs WHERE id = $1 FOR UPDATE", row["id"])
            row = await conn.fetchrow("SELECT * FROM training_jobs WHERE id = $1", row["id"])
            status = row["status"]
            if status in (J.JOB_STATUS_SUCCEEDED, J.JOB_STATUS_FAILED):
                raise FailedPrecondition(
                    f"the job is {J.JobStatus.Name(status)}; only unfinished jobs can be cancelled"
                )
            if status != J.JOB_STATUS_CANCELLED:
                await store.set_status(
                    conn,
                    row["id"],
                    J.JOB_STATUS_CANCELLED,
                    "cancelled by user",
                    extra_sql=", claim_token = NULL, lease_expires_at = NULL",
                )
            return await self._job(conn, row["id"])

    async def RetryJob(self, request: J.RetryJobRequest, context: Any) -> J.TrainingJob:
        user = ctx.require_user_id()
        async with self.app.pool.acquire() as conn, conn.transaction():
            row = await load_job(conn, user, request.id)
            row = await conn.fetchrow(
                "SELECT * FROM training_jobs WHERE id = $1 FOR UPDATE", row["id"]
            )
            if row["status"] not in (J.JOB_STATUS_FAILED, J.JOB_STATUS_CANCELLED):
                raise FailedPrecondition(
                    f"the job is {J.JobStatus.Name(row['status'])}; only FAILED or CANCELLED "
                    "jobs can be retried"
                )
            ds_deleted = await conn.fetchval(
                "SELECT deleted_at IS NOT NULL FROM datasets WHERE id = $1", row["dataset_id"]
            )
            if ds_deleted:
                raise FailedPrecondition("the job's dataset was deleted")
            if row["total_steps"] == 0:  # failed before validation finished: validate again
                await conn.execute(
                    "UPDATE training_jobs SET attempt = attempt + 1 WHERE id = $1", row["id"]
                )
                await store.set_status(conn, row["id"], J.JOB_STATUS_VALIDATING, "retrying")
                self.app.spawn(self.validate(row["id"], user), name=f"validate-job-{row['id']}")
                return await self._job(conn, row["id"])
            last = await conn.fetchval(
                "SELECT max(step) FROM checkpoints WHERE job_id = $1", row["id"]
            )
            await conn.execute(
                """UPDATE training_jobs SET attempt = attempt + 1, start_time = NULL,
                          worker_losses = 0, claim_token = NULL, lease_expires_at = NULL
                   WHERE id = $1""",
                row["id"],
            )
            await store.set_status(conn, row["id"], J.JOB_STATUS_VALIDATING, "retrying")
            await store.set_status(
                conn,
                row["id"],
                J.JOB_STATUS_QUEUED,
                f"queued: resuming from step {last or 0}",
                extra_sql=", queued_at = clock_timestamp()",
            )
            return await self._job(conn, row["id"])

    async def DeleteJob(self, request: J.DeleteJobRequest, context: Any) -> empty_pb2.Empty:
        user = ctx.require_user_id()
        async with self.app.pool.acquire() as conn, conn.transaction():
            row = await load_job(conn, user, request.id)
            if row["status"] not in store.TERMINAL:
                raise FailedPrecondition("the job is not finished: cancel it first")
            await conn.execute(
                "UPDATE training_jobs SET deleted_at = clock_timestamp() WHERE id = $1", row["id"]
            )
        return empty_pb2.Empty()

    # -- streams and history --------------------------------------------------------------
    async def WatchJob(self, request: J.WatchJobRequest, context: Any) -> AsyncIterator[J.JobEvent]:
        user = ctx.require_user_id()
        pool = self.app.pool
        row = await load_job(pool, user, request.id)
        job_id = row["id"]
        if request.after_sequence < 0 or request.after_sequence > row["last_seq"]:
            raise InvalidArgument(
                f"after_sequence must be between 0 and {row['last_seq']}", field="after_sequence"
            )
        cursor = request.after_sequence
        idle = 0.0
        beat = self.settings.training_watch_heartbeat_seconds
        with self.hub.subscribe(store.EVENTS_CHANNEL, str(job_id)) as woken:
            while True:
                status = await pool.fetchval(
                    "SELECT status FROM training_jobs WHERE id = $1 AND deleted_at IS NULL",
                    job_id,
                )
                if status is None:
                    raise not_found("job", request.id)
                rows = await pool.fetch(
                    "SELECT seq, event FROM job_events WHERE job_id = $1 AND seq > $2 ORDER BY seq",
                    job_id,
                    cursor,
                )
                for r in rows:
                    cursor = r["seq"]
                    yield J.JobEvent.FromString(r["event"])
                if rows:
                    idle = 0.0
                if status in store.TERMINAL:
                    # The terminal status and its event were written together: every event
                    # up to the status read above has been sent.
                    job = await self._job(pool, job_id)
                    final = J.JobEvent(sequence=cursor, attempt=job.attempt, final=job)
                    final.create_time.GetCurrentTime()
                    yield final
                    return
                started = asyncio.get_running_loop().time()
                await wait(woken, min(1.0, beat))
                idle += asyncio.get_running_loop().time() - started
                if idle >= beat:
                    idle = 0.0
                    hb = J.JobEvent(sequence=cursor, heartbeat=empty_pb2.Empty())
                    hb.create_time.GetCurrentTime()
                    yield hb

    async def ListMetrics(
        self, request: J.ListMetricsRequest, context: Any
    ) -> J.ListMetricsResponse:
        user = ctx.require_user_id()
        row = await load_job(self.app.pool, user, request.job_id, field="job_id")
        size = page_size(request.page_size)
        pos = decode_token(request.page_token)
        after = 0
        if pos is not None:
            value = pos.get("id")
            if not isinstance(value, int) or value < 0:
                raise InvalidArgument("page_token is not valid", field="page_token")
            after = value
        rows = await self.app.pool.fetch(
            """SELECT * FROM metrics_points WHERE job_id = $1 AND id > $2 AND step >= $3
               ORDER BY id LIMIT $4""",
            row["id"],
            after,
            request.from_step,
            size + 1,
        )
        out = J.ListMetricsResponse(metric_points=[store.metric_proto(r) for r in rows[:size]])
        if len(rows) > size:
            out.next_page_token = encode_token({"id": rows[size - 1]["id"]})
        return out

    async def ListCheckpoints(
        self, request: J.ListCheckpointsRequest, context: Any
    ) -> J.ListCheckpointsResponse:
        user = ctx.require_user_id()
        row = await load_job(self.app.pool, user, request.job_id, field="job_id")
        size = page_size(request.page_size)
        pos = _position(request.page_token)
        args: list[Any] = [row["id"], size + 1]
        where = ""
        if pos is not None:
            args += list(pos)
            where = "AND (created_at, id) > ($3, $4)"
        rows = await self.app.pool.fetch(
            f"""SELECT * FROM checkpoints WHERE job_id = $1 {where}
                ORDER BY created_at, id LIMIT $2""",
            *args,
        )
        out = J.ListCheckpointsResponse(
            checkpoints=[store.checkpoint_proto(r) for r in rows[:size]]
        )
        out.next_page_token = _newest_page(rows, size)
        return out
