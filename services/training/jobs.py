"""Training jobs as the API sees them: created (checked against the dataset, the clone,
the base model and the user's active-job limit), validated into the queue in the
background, cancelled, retried, deleted, watched, and their metrics and checkpoints.
Status changes go through `lifecycle`; the workers (worker.py) do the training."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from aivera.training.v1 import datasets_pb2, jobs_pb2
from services.common import context as ctx
from services.common import pages
from services.common.errors import (
    FailedPrecondition,
    InvalidArgument,
    Reason,
    ResourceExhausted,
    ServiceError,
    not_found,
)
from services.common.protoutil import parse_uuid
from services.common.remote import StorageClient
from services.training import basemodels, checks, clones, convert, datasets, hyper, lifecycle
from services.training.config import TrainingSettings
from services.training.hub import Beat, Heartbeat, Hub
from services.training.lifecycle import Failure
from services.training.plan import PlanError, make_plan
from services.training.store import (
    EVENTS_CHANNEL,
    CheckpointRow,
    CostRow,
    JobRow,
    MetricRow,
    Store,
)

log = logging.getLogger("aivera.training.jobs")
J = jobs_pb2
Spawn = Callable[[Coroutine[Any, Any, None], str], object]

EXECUTORS: dict[str, jobs_pb2.Executor.ValueType] = {
    "peft": J.EXECUTOR_PEFT,
    "simulate": J.EXECUTOR_SIMULATE,
}
METHODS = (J.TRAINING_METHOD_LORA, J.TRAINING_METHOD_QLORA)


@dataclass(frozen=True, slots=True)
class JobDetail:
    """A job with its costs so far."""

    job: JobRow
    costs: list[CostRow]


@dataclass(frozen=True, slots=True)
class Finished:
    """The end of a watch stream: the job reached a terminal status."""

    sequence: int
    detail: JobDetail


WatchItem = J.JobEvent | Heartbeat | Finished


def executor_name(value: int) -> str:
    return J.Executor.Name(value) if value in J.Executor.values() else str(value)  # type: ignore[arg-type]


async def owned(
    store: Store, user: str, raw_id: str, field: str = "id", *, lock: bool = False
) -> JobRow:
    """The user's job; NOT_FOUND for a missing, deleted or another user's one."""
    row = await store.get_job(user, parse_uuid(raw_id, field=field), lock=lock)
    if row is None:
        raise not_found("job", raw_id)
    return row


class Jobs:
    def __init__(
        self,
        store: Store,
        settings: TrainingSettings,
        storage: StorageClient,
        hub: Hub,
        spawn: Spawn,
    ) -> None:
        self.store = store
        self.settings = settings
        self.storage = storage
        self.hub = hub
        self.spawn = spawn

    # -- reads ----------------------------------------------------------------------------
    async def get(self, user: str, raw_id: str) -> JobDetail:
        return await self._detail(self.store, await owned(self.store, user, raw_id))

    async def list_jobs(
        self, user: str, status: int, page: pages.PageRequest
    ) -> tuple[list[JobDetail], str]:
        rows, token = await self.store.list_jobs(user, status, page)
        costs = await self.store.costs([r.id for r in rows])
        return [JobDetail(r, costs[r.id]) for r in rows], token

    async def metrics(
        self, user: str, job_id: str, from_step: int, page: pages.PageRequest
    ) -> tuple[list[MetricRow], str]:
        job = await owned(self.store, user, job_id, "job_id")
        return await self.store.list_metrics(job.id, from_step, page)

    async def checkpoints(
        self, user: str, job_id: str, page: pages.PageRequest
    ) -> tuple[list[CheckpointRow], str]:
        job = await owned(self.store, user, job_id, "job_id")
        return await self.store.list_checkpoints(job.id, page)

    @staticmethod
    async def _detail(store: Store, job: JobRow) -> JobDetail:
        return JobDetail(job, (await store.costs([job.id]))[job.id])

    # -- create and validate ----------------------------------------------------------------
    async def create(
        self,
        user: str,
        *,
        name: str,
        dataset_id: str,
        clone_id: str,
        base_model: str,
        method: int,
        executor: int,
        hyperparameters: jobs_pb2.Hyperparameters,
    ) -> JobDetail:
        name = checks.name(name, required=False)
        if method not in (J.TRAINING_METHOD_UNSPECIFIED, *METHODS):
            raise InvalidArgument("method must be LORA or QLORA", field="method")
        method = method or J.TRAINING_METHOD_LORA
        default_executor = EXECUTORS[self.settings.training_executor]
        executor = executor or default_executor
        enabled = {EXECUTORS[e] for e in self.settings.training_executors_enabled}
        if executor not in enabled | {default_executor}:
            raise InvalidArgument(
                f"executor {executor_name(executor)} is not enabled on this server",
                field="executor",
            )
        dataset = await datasets.owned(self.store, user, dataset_id, "dataset_id")
        clone = await clones.owned(self.store, user, clone_id, "clone_id") if clone_id else None
        base_model = base_model or (clone.base_model if clone else dataset.base_model)
        base_model = checks.base_model(self.settings, base_model)
        if clone is not None and base_model != clone.base_model:
            raise InvalidArgument(
                f"base_model {base_model!r} differs from the clone's {clone.base_model!r}",
                field="base_model",
            )
        try:
            facts = await asyncio.to_thread(basemodels.facts, base_model, self.settings)
        except (OSError, ValueError) as exc:
            raise InvalidArgument(
                f"base_model {base_model!r} cannot be loaded: {exc}",
                field="base_model",
                reason=Reason.BASE_MODEL_UNAVAILABLE,
            ) from None
        hp = hyper.effective(
            hyperparameters,
            context_length=facts.context_length,
            linear_modules=facts.linear_modules,
            dataset_max_seq_length=dataset.max_seq_length,
            checkpoint_every_default=self.settings.training_checkpoint_every_steps,
        )
        if dataset.status != datasets_pb2.DATASET_STATUS_READY:
            raise FailedPrecondition(
                "the dataset is not READY",
                reason=Reason.DATASET_NOT_READY,
                metadata={"dataset_id": str(dataset.id)},
            )
        limit = self.settings.training_max_active_jobs
        async with self.store.transaction() as tx:
            await tx.lock_user(user)
            active = await tx.count_active_jobs(user)
            if active >= limit:
                raise ResourceExhausted(
                    f"you already have {active} unfinished jobs (limit {limit})",
                    reason=Reason.TOO_MANY_ACTIVE_JOBS,
                    metadata={"limit": str(limit)},
                )
            label = "qlora" if method == J.TRAINING_METHOD_QLORA else "lora"
            job = await tx.insert_job(
                user_id=user,
                name=name or f"{dataset.name} ({label})",
                dataset_id=dataset.id,
                base_model=base_model,
                method=method,
                hyperparameters=convert.hp_to_json(hp),
                executor=executor,
                clone_id=clone.id if clone else None,
                created=lifecycle.create(),
            )
            detail = await self._detail(tx, job)
        self.spawn(self.validate(job.id, user), f"validate-job-{job.id}")
        return detail

    async def validate(self, job_id: uuid.UUID, user: str) -> None:
        """VALIDATING → QUEUED with the total steps, or FAILED (DATASET_INVALID, …)."""
        job = await self.store.job_by_id(job_id)
        if job is None:
            return
        hp = convert.hp_from_json(job.hyperparameters)
        failure: Failure | None = None
        total = per_epoch = 0
        try:
            file_id = await self.store.dataset_file(job.dataset_id)
            with ctx.acting_for(user):
                raw = await self.storage.download(file_id)
            tok = await asyncio.to_thread(basemodels.tokenizer, job.base_model, self.settings)
            plan = await asyncio.to_thread(make_plan, raw, tok, hp)
            total, per_epoch = plan.total_steps, plan.steps_per_epoch
        except PlanError as exc:
            failure = Failure(J.JOB_ERROR_CODE_DATASET_INVALID, str(exc))
        except ServiceError as exc:
            failure = Failure(J.JOB_ERROR_CODE_STORAGE_ERROR, exc.message)
        except (OSError, ValueError) as exc:
            failure = Failure(J.JOB_ERROR_CODE_MODEL_LOAD_FAILED, str(exc))
        async with self.store.transaction() as tx:
            job = await tx.lock_job(job_id)
            if job is None or job.status != lifecycle.VALIDATING:
                return  # cancelled meanwhile
            if failure is not None:
                await tx.apply(job.id, lifecycle.fail(job, failure))
            else:
                change = lifecycle.queue(job, total_steps=total, steps_per_epoch=per_epoch)
                await tx.apply(job.id, change)

    async def resume_pending(self) -> None:
        """Restart the validations a previous process left unfinished."""
        for job_id, user in await self.store.jobs_in_status(lifecycle.VALIDATING):
            self.spawn(self.validate(job_id, user), f"validate-job-{job_id}")

    # -- state changes ----------------------------------------------------------------------
    async def cancel(self, user: str, raw_id: str) -> JobDetail:
        """Unfinished → CANCELLED (a running job's worker stops at its next step);
        cancelling a cancelled job again changes nothing."""
        async with self.store.transaction() as tx:
            job = await owned(tx, user, raw_id, lock=True)
            change = lifecycle.cancel(job)
            if change is not None:
                job = await tx.apply(job.id, change)
            return await self._detail(tx, job)

    async def retry(self, user: str, raw_id: str) -> JobDetail:
        """A new attempt of a FAILED or CANCELLED job: back to the queue from its last
        checkpoint, or validated again when it failed before its plan was known."""
        async with self.store.transaction() as tx:
            job = await owned(tx, user, raw_id, lock=True)
            change = lifecycle.retry(job)
            if await tx.dataset_deleted(job.dataset_id):
                raise FailedPrecondition(
                    "the job's dataset was deleted", reason=Reason.DATASET_NOT_READY
                )
            planned = job.total_steps > 0
            job = await tx.apply(job.id, change)
            if planned:
                from_step = await tx.last_checkpoint_step(job.id)
                job = await tx.apply(job.id, lifecycle.resume(job, from_step=from_step))
            detail = await self._detail(tx, job)
        if not planned:
            self.spawn(self.validate(job.id, user), f"validate-job-{job.id}")
        return detail

    async def delete(self, user: str, raw_id: str) -> None:
        async with self.store.transaction() as tx:
            job = await owned(tx, user, raw_id, lock=True)
            lifecycle.check_deletable(job)
            await tx.delete_job(job.id)

    # -- the event stream -------------------------------------------------------------------
    async def watch(self, user: str, raw_id: str, after: int) -> AsyncIterator[WatchItem]:
        """The job's stored events after `after`, then live ones, with heartbeats while
        idle; ends with `Finished` once the job is terminal."""
        job = await owned(self.store, user, raw_id)
        if after < 0 or after > job.last_seq:
            raise InvalidArgument(
                f"after_sequence must be between 0 and {job.last_seq}", field="after_sequence"
            )
        cursor = after
        beat = Beat(self.settings.training_watch_heartbeat_seconds)
        with self.hub.subscribe(EVENTS_CHANNEL, str(job.id)) as woken:
            while True:
                status = await self.store.job_status(job.id)
                if status is None:
                    raise not_found("job", raw_id)
                events = await self.store.events_after(job.id, cursor)
                for event in events:
                    cursor = event.sequence
                    yield event
                if events:
                    beat.sent()
                if status in lifecycle.TERMINAL:
                    # The terminal status and its event were written together: every event
                    # up to the status read above has been sent.
                    final = await self.store.job_by_id(job.id)
                    assert final is not None
                    yield Finished(cursor, await self._detail(self.store, final))
                    return
                if await beat.wait(woken):
                    yield Heartbeat(cursor)
