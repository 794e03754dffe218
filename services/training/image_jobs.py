"""Image LoRAs trained on the mesh's own workers (LOCAL and SIMULATE executors) are jobs of
the training queue, like text adapters: the same claims, leases, heartbeats, checkpoints,
events (WatchJob), costs (a simulated job is never billed) and active-job limit.

An image LoRA job has `image_lora_id` set and no dataset; its hyperparameters record what it
trains (steps, rank, learning rate, the UNet attention modules), its base model the image
pipeline. It is created straight into the queue: the images were checked by StartTraining,
and the worker checks their pixels (image_executor.py). It runs on the grant StartTraining
stored under the LoRA's id (tx.put_grant(lora.id, ...)): the worker reads that one, so a new
start of the same LoRA replaces it and nothing is copied. The LoRA follows its job's
status (store.mirror_image_lora); RetryJob refuses these jobs: a LoRA is retried with
StartTraining, which makes a new job.
"""

from __future__ import annotations

import math
import uuid

from aivera.training.v1 import jobs_pb2
from services.common import tracing
from services.common.errors import Reason, ResourceExhausted
from services.training import catalogue, convert, lifecycle
from services.training.billing import Billing
from services.training.config import TrainingSettings
from services.training.image_lora_store import ImageLoraRow, ImageLoraStore
from services.training.image_pipeline import LORA_TARGETS
from services.training.store import Store

J = jobs_pb2
SEED = 42
_DEFAULTS = TrainingSettings.model_construct()


def hyperparameters(settings: TrainingSettings, steps: int) -> jobs_pb2.Hyperparameters:
    """What an image LoRA job trains, as the job shows it (alpha = rank). A checkpoint
    every `image_lora_checkpoint_every_steps`, or 4 per run when that is fewer steps
    apart: a short run is resumable too."""
    rank = settings.image_lora_rank
    every = max(1, min(settings.image_lora_checkpoint_every_steps, steps // 4))
    return J.Hyperparameters(
        max_steps=steps,
        learning_rate=settings.image_lora_learning_rate,
        lora_rank=rank,
        lora_alpha=rank,
        lora_dropout=0.0,
        target_modules=list(LORA_TARGETS),
        batch_size=settings.image_lora_batch_size,
        gradient_accumulation_steps=1,
        seed=SEED,
        checkpoint_every_steps=every,
    )


async def enqueue(
    tx: Store,
    lora: ImageLoraRow,
    *,
    steps: int,
    simulate: bool,
    settings: TrainingSettings | None = None,
) -> uuid.UUID:
    """A QUEUED training job for `lora` (inside StartTraining's transaction, which holds
    the LoRA's lock); the LoRA's `job_id` points at it. RESOURCE_EXHAUSTED when the owner
    has their limit of unfinished jobs (TOO_MANY_ACTIVE_JOBS) or, for a LOCAL job, no
    room left in the month's quota (QUOTA_EXCEEDED): nothing is written then."""
    settings = settings or _DEFAULTS
    steps = steps or settings.image_lora_local_steps
    user = lora.user_id
    hardware = catalogue.hardware_class(
        settings, settings.image_lora_hardware_class, "image_lora_hardware_class"
    )
    billing = Billing(tx, settings)
    await tx.lock_user(user)  # the active-job limit holds under concurrent starts
    quota = await billing.quota(tx, user)
    limit, active = quota.limits.max_active_jobs, quota.usage.active_jobs
    if active >= limit:
        raise ResourceExhausted(
            f"you already have {active} unfinished training jobs (limit {limit})",
            reason=Reason.TOO_MANY_ACTIVE_JOBS,
            metadata={"limit": str(limit)},
        )
    if not simulate:
        billing.check(quota, gpu=hardware.is_gpu)
    hp = hyperparameters(settings, steps)
    job = await tx.insert_job(
        user_id=user,
        name=f"{lora.name} (image LoRA)",
        dataset_id=None,
        base_model=settings.image_base_model,
        method=J.TRAINING_METHOD_LORA,
        hyperparameters=convert.hp_to_json(hp),
        executor=J.EXECUTOR_SIMULATE if simulate else J.EXECUTOR_PEFT,
        clone_id=None,
        created=lifecycle.create(),
        hardware_class=hardware.name,
        image_lora_id=lora.id,
    )
    trace = tracing.carrier()
    if trace:  # the worker that runs the job continues this request's trace
        await tx.save_trace_context(job.id, trace)
    await tx.link_image_lora_job(lora.id, job.id, steps=steps, simulated=simulate)
    images = await ImageLoraStore(tx).count_images(lora.id)
    per_epoch = max(1, math.ceil(images / max(1, hp.batch_size)))
    await tx.apply(job.id, lifecycle.queue(job, total_steps=steps, steps_per_epoch=per_epoch))
    return job.id


async def cancel(tx: Store, lora: ImageLoraRow) -> None:
    """Cancel the LoRA's job if it has not ended, as CancelJob does: its worker stops at
    the next step and writes nothing more."""
    if lora.job_id is None:
        return
    job = await tx.lock_job(lora.job_id)
    if job is None or job.status not in lifecycle.ACTIVE:
        return
    change = lifecycle.cancel(job)
    if change is not None:
        await tx.apply(job.id, change)


__all__ = ["cancel", "enqueue", "hyperparameters"]
