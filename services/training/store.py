"""SQL shared by the API and the workers: rows → protos, job events (with their sequence
and a NOTIFY), status changes, notifications and costs."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from google.protobuf import json_format

from aivera.common.v1 import common_pb2
from aivera.training.v1 import (
    clones_pb2,
    datasets_pb2,
    jobs_pb2,
    models_pb2,
    notifications_pb2,
)
from services.common.protoutil import timestamp

EVENTS_CHANNEL = "training_job_events"
NOTIFICATIONS_CHANNEL = "training_notifications"
QUEUE_CHANNEL = "training_queue"

S = jobs_pb2
ACTIVE = (S.JOB_STATUS_VALIDATING, S.JOB_STATUS_QUEUED, S.JOB_STATUS_RUNNING)
TERMINAL = (S.JOB_STATUS_SUCCEEDED, S.JOB_STATUS_FAILED, S.JOB_STATUS_CANCELLED)

Conn = Any  # asyncpg connection (or pool)


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def hp_to_json(hp: jobs_pb2.Hyperparameters) -> dict[str, Any]:
    return json_format.MessageToDict(hp, preserving_proto_field_name=True)


def hp_from_json(value: dict[str, Any]) -> jobs_pb2.Hyperparameters:
    return json_format.ParseDict(value, jobs_pb2.Hyperparameters())


def _ts(target: Any, field: str, value: dt.datetime | None) -> None:
    stamp = timestamp(value)
    if stamp is not None:
        getattr(target, field).CopyFrom(stamp)


# -- datasets ---------------------------------------------------------------------------------
def dataset_proto(row: Any) -> datasets_pb2.Dataset:
    ds = datasets_pb2.Dataset(
        id=str(row["id"]),
        name=row["name"],
        file_id=row["file_id"],
        size_bytes=row["size_bytes"],
        format=row["format"],
        status=row["status"],
        base_model=row["base_model"],
        max_seq_length=row["max_seq_length"],
        error_count=row["error_count"],
    )
    for e in row["errors"] or []:
        ds.errors.add(line=e["line"], message=e["message"])
    if row["stats"]:
        ds.stats.CopyFrom(datasets_pb2.DatasetStats(**row["stats"]))
    _ts(ds, "create_time", row["created_at"])
    _ts(ds, "update_time", row["updated_at"])
    return ds


# -- jobs -----------------------------------------------------------------------------------
async def cost_summary(conn: Conn, job_id: Any, currency: str) -> jobs_pb2.CostSummary:
    rows = await conn.fetch(
        """SELECT device_type, max(hourly_rate_micros) AS rate, sum(device_seconds) AS secs,
                  min(id) AS first
           FROM cost_records WHERE job_id = $1 GROUP BY device_type ORDER BY first""",
        job_id,
    )
    out = jobs_pb2.CostSummary(currency_code=currency)
    for r in rows:
        amount = round(float(r["secs"]) * int(r["rate"]) / 3600)
        out.items.add(
            device_type=r["device_type"],
            device_seconds=float(r["secs"]),
            hourly_rate_micros=int(r["rate"]),
            amount_micros=amount,
        )
        out.amount_micros += amount
    return out


def job_proto(row: Any, cost: jobs_pb2.CostSummary | None = None) -> jobs_pb2.TrainingJob:
    job = jobs_pb2.TrainingJob(
        id=str(row["id"]),
        name=row["name"],
        dataset_id=str(row["dataset_id"]),
        base_model=row["base_model"],
        method=row["method"],
        hyperparameters=hp_from_json(row["hyperparameters"]),
        executor=row["executor"],
        clone_id=str(row["clone_id"]) if row["clone_id"] else "",
        status=row["status"],
        attempt=row["attempt"],
        model_id=str(row["model_id"]) if row["model_id"] else "",
        worker_id=row["worker_id"],
    )
    p = job.progress
    p.steps.CopyFrom(
        common_pb2.Progress(done=row["steps_done"], total=row["total_steps"], unit="steps")
    )
    p.epoch = row["epoch"]
    p.loss = row["loss"]
    if row["eval_loss"] is not None:
        p.eval_loss = row["eval_loss"]
    p.tokens_per_second = row["tokens_per_second"]
    p.eta_seconds = row["eta_seconds"]
    if row["error"] and row["status"] == S.JOB_STATUS_FAILED:
        job.error.CopyFrom(jobs_pb2.JobError(**row["error"]))
    if cost is not None:
        job.cost.CopyFrom(cost)
    _ts(job, "create_time", row["created_at"])
    _ts(job, "start_time", row["start_time"])
    _ts(job, "end_time", row["end_time"])
    _ts(job, "update_time", row["updated_at"])
    return job


async def load_job(conn: Conn, job_id: Any, currency: str) -> jobs_pb2.TrainingJob:
    row = await conn.fetchrow("SELECT * FROM training_jobs WHERE id = $1", job_id)
    return job_proto(row, await cost_summary(conn, job_id, currency))


async def append_event(conn: Conn, job_id: Any, attempt: int, **event: Any) -> int:
    """Store one event with the job's next sequence and wake the watchers (on commit).
    Call inside a transaction: the sequence row lock serialises a job's events."""
    seq = await conn.fetchval(
        "UPDATE training_jobs SET last_seq = last_seq + 1 WHERE id = $1 RETURNING last_seq",
        job_id,
    )
    msg = jobs_pb2.JobEvent(sequence=seq, attempt=attempt, **event)
    _ts(msg, "create_time", now())
    await conn.execute(
        "INSERT INTO job_events (job_id, seq, event) VALUES ($1, $2, $3)",
        job_id,
        seq,
        msg.SerializeToString(),
    )
    await conn.execute("SELECT pg_notify($1, $2)", EVENTS_CHANNEL, str(job_id))
    return int(seq)


async def log_line(conn: Conn, job_id: Any, attempt: int, text: str, level: int = 2) -> None:
    async with conn.transaction():
        await append_event(conn, job_id, attempt, log=jobs_pb2.LogLine(level=level, text=text))  # type: ignore[arg-type]


async def set_status(
    conn: Conn,
    job_id: Any,
    status: int,
    message: str,
    *,
    error: dict[str, Any] | None = None,
    extra_sql: str = "",
    extra_args: tuple[Any, ...] = (),
) -> Any:
    """Move a job to `status` with its event (and its notification when terminal). Call
    inside a transaction. Returns the updated row."""
    terminal = status in TERMINAL
    row = await conn.fetchrow(
        f"""UPDATE training_jobs SET status = $2, error = $3, updated_at = clock_timestamp(),
                   end_time = CASE WHEN $4 THEN clock_timestamp() ELSE NULL END
                   {extra_sql}
            WHERE id = $1 RETURNING *""",
        job_id,
        status,
        error,
        terminal,
        *extra_args,
    )
    change = jobs_pb2.StatusChanged(status=status, message=message)  # type: ignore[arg-type]
    if error is not None and status == S.JOB_STATUS_FAILED:
        change.error.CopyFrom(jobs_pb2.JobError(**error))
    await append_event(conn, job_id, row["attempt"], status_changed=change)
    if terminal:
        await job_notification(conn, row, status, message)
    if status == S.JOB_STATUS_QUEUED:
        await conn.execute("SELECT pg_notify($1, $2)", QUEUE_CHANNEL, str(job_id))
    return row


async def job_notification(conn: Conn, row: Any, status: int, message: str) -> None:
    N = notifications_pb2
    table: dict[int, tuple[int, str]] = {
        S.JOB_STATUS_SUCCEEDED: (N.NOTIFICATION_KIND_JOB_SUCCEEDED, "Training finished"),
        S.JOB_STATUS_FAILED: (N.NOTIFICATION_KIND_JOB_FAILED, "Training failed"),
        S.JOB_STATUS_CANCELLED: (N.NOTIFICATION_KIND_JOB_CANCELLED, "Training cancelled"),
    }
    kind, title = table[status]
    body = f"Job {row['name']!r}: {message}"
    await notify_user(
        conn,
        row["user_id"],
        kind,
        title,
        body,
        job_id=str(row["id"]),
        model_id=str(row["model_id"]) if row["model_id"] else "",
    )


async def notify_user(
    conn: Conn,
    user_id: str,
    kind: int,
    title: str,
    body: str,
    *,
    job_id: str = "",
    dataset_id: str = "",
    model_id: str = "",
) -> None:
    await conn.execute(
        """INSERT INTO notifications (id, user_id, kind, title, body, job_id, dataset_id,
                                      model_id)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8)""",
        uuid.uuid4(),
        user_id,
        kind,
        title,
        body[:1000],
        job_id,
        dataset_id,
        model_id,
    )
    await conn.execute("SELECT pg_notify($1, $2)", NOTIFICATIONS_CHANNEL, user_id)


def notification_proto(row: Any) -> notifications_pb2.Notification:
    n = notifications_pb2.Notification(
        id=str(row["id"]),
        kind=row["kind"],
        title=row["title"],
        body=row["body"],
        job_id=row["job_id"],
        dataset_id=row["dataset_id"],
        model_id=row["model_id"],
        read=row["read"],
    )
    _ts(n, "create_time", row["created_at"])
    return n


# -- metrics, checkpoints, models, clones -----------------------------------------------------
def metric_proto(row: Any) -> jobs_pb2.MetricPoint:
    m = jobs_pb2.MetricPoint(
        attempt=row["attempt"],
        step=row["step"],
        epoch=row["epoch"],
        loss=row["loss"],
        learning_rate=row["learning_rate"],
        grad_norm=row["grad_norm"],
        tokens_per_second=row["tokens_per_second"],
    )
    if row["eval_loss"] is not None:
        m.eval_loss = row["eval_loss"]
    _ts(m, "create_time", row["created_at"])
    return m


def checkpoint_proto(row: Any) -> jobs_pb2.Checkpoint:
    c = jobs_pb2.Checkpoint(
        id=str(row["id"]),
        job_id=str(row["job_id"]),
        attempt=row["attempt"],
        step=row["step"],
        epoch=row["epoch"],
        loss=row["loss"],
        size_bytes=row["size_bytes"],
        storage_path=row["storage_path"],
    )
    if row["eval_loss"] is not None:
        c.eval_loss = row["eval_loss"]
    _ts(c, "create_time", row["created_at"])
    return c


def model_proto(row: Any) -> models_pb2.ModelArtifact:
    m = models_pb2.ModelArtifact(
        id=str(row["id"]),
        name=row["name"],
        job_id=str(row["job_id"]),
        clone_id=str(row["clone_id"]) if row["clone_id"] else "",
        base_model=row["base_model"],
        method=row["method"],
        kind=row["kind"],
        size_bytes=row["size_bytes"],
        steps=row["steps"],
        final_loss=row["final_loss"],
    )
    for f in row["files"]:
        m.files.add(
            name=f["name"], file_id=f["file_id"], size_bytes=f["size_bytes"], sha256=f["sha256"]
        )
    if row["final_eval_loss"] is not None:
        m.final_eval_loss = row["final_eval_loss"]
    _ts(m, "create_time", row["created_at"])
    return m


CLONE_STATUS_SQL = """
    CASE
      WHEN EXISTS (SELECT 1 FROM training_jobs j WHERE j.clone_id = c.id
                   AND j.deleted_at IS NULL AND j.status IN (1, 2, 3)) THEN 2
      WHEN c.active_model_id IS NOT NULL THEN 3
      WHEN (SELECT j.status FROM training_jobs j WHERE j.clone_id = c.id
            ORDER BY j.created_at DESC LIMIT 1) = 5 THEN 4
      ELSE 1
    END AS derived_status
"""


def clone_proto(row: Any) -> clones_pb2.Clone:
    c = clones_pb2.Clone(
        id=str(row["id"]),
        name=row["name"],
        persona_prompt=row["persona_prompt"],
        base_model=row["base_model"],
        active_model_id=str(row["active_model_id"]) if row["active_model_id"] else "",
        knowledge_base_id=row["knowledge_base_id"],
        status=row["derived_status"],
    )
    _ts(c, "create_time", row["created_at"])
    _ts(c, "update_time", row["updated_at"])
    return c
