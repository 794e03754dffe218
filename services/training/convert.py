"""Protos from the store's rows (what the servicers answer and the workers put in job
events), and the hyperparameters' JSON form in the jobs table."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
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
from services.training import lifecycle
from services.training.clones import clone_status
from services.training.store import (
    CheckpointRow,
    CloneRow,
    CostRow,
    DatasetRow,
    JobRow,
    MetricRow,
    ModelRow,
    NotificationRow,
)

J = jobs_pb2


def hp_to_json(hp: jobs_pb2.Hyperparameters) -> dict[str, Any]:
    return json_format.MessageToDict(hp, preserving_proto_field_name=True)


def hp_from_json(value: dict[str, Any]) -> jobs_pb2.Hyperparameters:
    return json_format.ParseDict(value, jobs_pb2.Hyperparameters())


def _ts(target: Any, field: str, value: dt.datetime | None) -> None:
    stamp = timestamp(value)
    if stamp is not None:
        getattr(target, field).CopyFrom(stamp)


def dataset_proto(row: DatasetRow) -> datasets_pb2.Dataset:
    ds = datasets_pb2.Dataset(
        id=str(row.id),
        name=row.name,
        file_id=row.file_id,
        size_bytes=row.size_bytes,
        format=row.format,
        status=row.status,
        base_model=row.base_model,
        max_seq_length=row.max_seq_length,
        error_count=row.error_count,
    )
    for e in row.errors or []:
        ds.errors.add(line=e["line"], message=e["message"])
    if row.stats:
        ds.stats.CopyFrom(datasets_pb2.DatasetStats(**row.stats))
    _ts(ds, "create_time", row.created_at)
    _ts(ds, "update_time", row.updated_at)
    return ds


def cost_proto(costs: Sequence[CostRow], currency: str) -> jobs_pb2.CostSummary:
    out = jobs_pb2.CostSummary(currency_code=currency)
    for c in costs:
        amount = round(c.device_seconds * c.hourly_rate_micros / 3600)
        out.items.add(
            device_type=c.device_type,
            device_seconds=c.device_seconds,
            hourly_rate_micros=c.hourly_rate_micros,
            amount_micros=amount,
        )
        out.amount_micros += amount
    return out


def job_proto(
    row: JobRow, costs: Sequence[CostRow] | None = None, currency: str = ""
) -> jobs_pb2.TrainingJob:
    job = jobs_pb2.TrainingJob(
        id=str(row.id),
        name=row.name,
        dataset_id=str(row.dataset_id),
        base_model=row.base_model,
        method=row.method,
        hyperparameters=hp_from_json(row.hyperparameters),
        executor=row.executor,
        clone_id=str(row.clone_id) if row.clone_id else "",
        status=row.status,
        attempt=row.attempt,
        model_id=str(row.model_id) if row.model_id else "",
        worker_id=row.worker_id,
    )
    p = job.progress
    p.steps.CopyFrom(common_pb2.Progress(done=row.steps_done, total=row.total_steps, unit="steps"))
    p.epoch = row.epoch
    p.loss = row.loss
    if row.eval_loss is not None:
        p.eval_loss = row.eval_loss
    p.tokens_per_second = row.tokens_per_second
    p.eta_seconds = row.eta_seconds
    if row.error and row.status == lifecycle.FAILED:
        job.error.CopyFrom(jobs_pb2.JobError(**row.error))
    if costs is not None:
        job.cost.CopyFrom(cost_proto(costs, currency))
    _ts(job, "create_time", row.created_at)
    _ts(job, "start_time", row.start_time)
    _ts(job, "end_time", row.end_time)
    _ts(job, "update_time", row.updated_at)
    return job


def metric_proto(row: MetricRow) -> jobs_pb2.MetricPoint:
    m = jobs_pb2.MetricPoint(
        attempt=row.attempt,
        step=row.step,
        epoch=row.epoch,
        loss=row.loss,
        learning_rate=row.learning_rate,
        grad_norm=row.grad_norm,
        tokens_per_second=row.tokens_per_second,
    )
    if row.eval_loss is not None:
        m.eval_loss = row.eval_loss
    _ts(m, "create_time", row.created_at)
    return m


def checkpoint_proto(row: CheckpointRow) -> jobs_pb2.Checkpoint:
    c = jobs_pb2.Checkpoint(
        id=str(row.id),
        job_id=str(row.job_id),
        attempt=row.attempt,
        step=row.step,
        epoch=row.epoch,
        loss=row.loss,
        size_bytes=row.size_bytes,
        storage_path=row.storage_path,
    )
    if row.eval_loss is not None:
        c.eval_loss = row.eval_loss
    _ts(c, "create_time", row.created_at)
    return c


def model_proto(row: ModelRow) -> models_pb2.ModelArtifact:
    m = models_pb2.ModelArtifact(
        id=str(row.id),
        name=row.name,
        job_id=str(row.job_id),
        clone_id=str(row.clone_id) if row.clone_id else "",
        base_model=row.base_model,
        method=row.method,
        kind=row.kind,
        size_bytes=row.size_bytes,
        steps=row.steps,
        final_loss=row.final_loss,
    )
    for f in row.files:
        m.files.add(
            name=f["name"], file_id=f["file_id"], size_bytes=f["size_bytes"], sha256=f["sha256"]
        )
    if row.final_eval_loss is not None:
        m.final_eval_loss = row.final_eval_loss
    _ts(m, "create_time", row.created_at)
    return m


def clone_proto(row: CloneRow) -> clones_pb2.Clone:
    c = clones_pb2.Clone(
        id=str(row.id),
        name=row.name,
        persona_prompt=row.persona_prompt,
        base_model=row.base_model,
        active_model_id=str(row.active_model_id) if row.active_model_id else "",
        knowledge_base_id=row.knowledge_base_id,
        status=clone_status(row),
    )
    _ts(c, "create_time", row.created_at)
    _ts(c, "update_time", row.updated_at)
    return c


def notification_proto(row: NotificationRow) -> notifications_pb2.Notification:
    n = notifications_pb2.Notification(
        id=str(row.id),
        kind=row.kind,
        title=row.title,
        body=row.body,
        job_id=row.job_id,
        dataset_id=row.dataset_id,
        model_id=row.model_id,
        read=row.read,
    )
    _ts(n, "create_time", row.created_at)
    return n
