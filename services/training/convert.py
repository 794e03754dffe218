"""Protos from the store's rows (what the servicers answer and the workers put in job
events), and the hyperparameters' JSON form in the jobs table."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from google.protobuf import json_format

from aivera.common.v1 import common_pb2
from aivera.training.v1 import (
    billing_pb2,
    catalogue_pb2,
    clones_pb2,
    datasets_pb2,
    jobs_pb2,
    models_pb2,
    notifications_pb2,
    webhooks_pb2,
)
from services.common import catalogue as shared
from services.common.protoutil import timestamp
from services.training import lifecycle
from services.training.billing import QuotaView
from services.training.catalogue import BaseModelInfo, HardwareClass
from services.training.clones import clone_status
from services.training.estimates import Estimate
from services.training.store import (
    AttemptRow,
    CheckpointRow,
    CloneRow,
    CostRow,
    DatasetRow,
    DeliveryRow,
    JobRow,
    MetricRow,
    ModelRow,
    MonthCostRow,
    NotificationRow,
    WebhookRow,
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
        description=row.description,
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
        dataset_id=str(row.dataset_id) if row.dataset_id else "",
        base_model=row.base_model,
        method=row.method,
        hyperparameters=hp_from_json(row.hyperparameters),
        executor=row.executor,
        clone_id=str(row.clone_id) if row.clone_id else "",
        status=row.status,
        attempt=row.attempt,
        model_id=str(row.model_id) if row.model_id else "",
        worker_id=row.worker_id,
        hardware_class=row.hardware_class,
        init_model_id=str(row.init_model_id) if row.init_model_id else "",
        image_lora=str(row.image_lora_id) if row.image_lora_id else "",
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
        simulated=row.simulated,
        checkpoint_id=str(row.checkpoint_id) if row.checkpoint_id else "",
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
        clone_id=row.clone_id,
    )
    _ts(n, "create_time", row.created_at)
    return n


_METHODS = {shared.LORA: J.TRAINING_METHOD_LORA, shared.QLORA: J.TRAINING_METHOD_QLORA}


def base_model_proto(m: BaseModelInfo) -> catalogue_pb2.BaseModel:
    out = catalogue_pb2.BaseModel(
        name=m.name,
        display_name=m.display_name,
        family=m.family,
        parameter_count=m.arch.parameters,
        context_length=m.arch.context_length,
        license=m.license,
        methods=[_METHODS[x] for x in m.methods],
        chat_template=m.chat_template,
        served_locally=m.served_locally,
        is_default=m.is_default,
        hidden_size=m.arch.hidden_size,
        num_layers=m.arch.num_layers,
        vocab_size=m.arch.vocab_size,
    )
    for method, length, size in m.memory():
        out.memory_requirements.add(
            method=_METHODS[method], max_seq_length=length, min_gpu_memory_bytes=size
        )
    return out


def hardware_class_proto(h: HardwareClass, currency: str) -> catalogue_pb2.HardwareClass:
    return catalogue_pb2.HardwareClass(
        name=h.name,
        device_type=h.spec.device_type,
        gpu_count=h.spec.gpu_count,
        memory_bytes=h.memory_bytes,
        hourly_rate_micros=h.spec.hourly_rate_micros,
        currency_code=currency,
        node_selector=h.spec.node_selector,
        is_default=h.is_default,
    )


def estimate_proto(
    hp: jobs_pb2.Hyperparameters, e: Estimate, quota_message: str, currency: str
) -> jobs_pb2.JobEstimate:
    return jobs_pb2.JobEstimate(
        hyperparameters=hp,
        hardware_class=e.hardware_class,
        train_examples=e.train_examples,
        eval_examples=e.eval_examples,
        tokens_per_epoch=e.tokens_per_epoch,
        trained_tokens_per_epoch=e.trained_tokens_per_epoch,
        steps_per_epoch=e.steps_per_epoch,
        total_steps=e.total_steps,
        total_tokens=e.total_tokens,
        expected_seconds=e.expected_seconds,
        expected_cost_micros=e.cost_micros,
        currency_code=currency,
        memory_required_bytes=e.memory_required,
        memory_available_bytes=e.memory_available,
        fits_in_memory=e.fits,
        within_quota=not quota_message,
        quota_message=quota_message,
    )


def quota_proto(q: QuotaView, currency: str) -> billing_pb2.Quota:
    return billing_pb2.Quota(
        user_id=q.user_id,
        max_active_jobs=q.limits.max_active_jobs,
        gpu_hours_per_month=q.limits.gpu_hours_per_month,
        monthly_budget_micros=q.limits.monthly_budget_micros,
        currency_code=currency,
        month=q.usage.month.strftime("%Y-%m"),
        active_jobs=q.usage.active_jobs,
        gpu_hours_used=q.usage.gpu_hours,
        spent_micros=q.usage.spent_micros,
    )


def month_proto(rows: Sequence[MonthCostRow], currency: str) -> billing_pb2.MonthlyCostSummary:
    out = billing_pb2.MonthlyCostSummary(
        month=rows[0].month.strftime("%Y-%m"),
        currency_code=currency,
        job_count=rows[0].job_count,
    )
    for r in rows:
        out.items.add(
            device_type=r.device_type,
            device_seconds=r.device_seconds,
            hourly_rate_micros=r.hourly_rate_micros,
            amount_micros=r.amount_micros,
        )
        out.amount_micros += r.amount_micros
        if r.device_type != "cpu":
            out.gpu_hours += r.device_seconds / 3600.0
    return out


def webhook_proto(row: WebhookRow) -> webhooks_pb2.Webhook:
    w = webhooks_pb2.Webhook(
        id=str(row.id),
        url=row.url,
        event_kinds=row.event_kinds,  # type: ignore[arg-type]
        description=row.description,
        secret_hint=row.secret_hint,
    )
    _ts(w, "create_time", row.created_at)
    _ts(w, "update_time", row.updated_at)
    return w


def delivery_proto(
    row: DeliveryRow, attempts: Sequence[AttemptRow]
) -> webhooks_pb2.WebhookDelivery:
    d = webhooks_pb2.WebhookDelivery(
        id=str(row.id),
        webhook_id=str(row.webhook_id),
        notification_id=str(row.notification_id),
        event_type=row.event_type,
        status=row.status,  # type: ignore[arg-type]
    )
    for a in attempts:
        attempt = d.attempts.add(
            response_code=a.response_code, error=a.error, duration_ms=a.duration_ms
        )
        _ts(attempt, "create_time", a.created_at)
    if row.status == 1:
        _ts(d, "next_attempt_time", row.next_attempt_at)
    _ts(d, "create_time", row.created_at)
    return d
