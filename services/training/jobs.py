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
from services.common import pages, tracing
from services.common.errors import (
    FailedPrecondition,
    InvalidArgument,
    Reason,
    ResourceExhausted,
    ServiceError,
    not_found,
)
from services.common.identity import ServiceIdentity, grant_now
from services.common.protoutil import parse_uuid
from services.common.remote import StorageClient
from services.training import (
    basemodels,
    catalogue,
    checks,
    clones,
    convert,
    datasets,
    estimates,
    hyper,
    lifecycle,
)
from services.training.billing import Billing
from services.training.catalogue import HardwareClass
from services.training.config import TrainingSettings
from services.training.hub import Beat, Heartbeat, Hub
from services.training.lifecycle import Failure
from services.training.plan import PlanError, make_plan
from services.training.store import (
    EVENTS_CHANNEL,
    CheckpointRow,
    CloneRow,
    CostRow,
    DatasetRow,
    JobRow,
    MetricRow,
    ModelRow,
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
class Prepared:
    """A checked CreateJob request with its effective settings."""

    name: str
    dataset: DatasetRow
    clone: CloneRow | None
    base_model: str
    method: int
    executor: int
    hp: jobs_pb2.Hyperparameters
    hardware: HardwareClass
    init: ModelRow | None = None

    @property
    def simulated(self) -> bool:
        return self.executor == J.EXECUTOR_SIMULATE


@dataclass(frozen=True, slots=True)
class Estimated:
    """EstimateJob's answer: the effective settings, the estimate and, when the caller's
    quota has no room for it, why."""

    hp: jobs_pb2.Hyperparameters
    estimate: estimates.Estimate
    quota_message: str


@dataclass(frozen=True, slots=True)
class Finished:
    """The end of a watch stream: the job reached a terminal status."""

    sequence: int
    detail: JobDetail


@dataclass(frozen=True, slots=True)
class CostChanged:
    """What a job that has not ended has cost so far, when it changed since the stream
    last said (live only, like a heartbeat: it carries the last stored sequence)."""

    sequence: int
    costs: list[CostRow]


class CostWatch:
    """One watch stream's look at its job's cost: at most once per `every` seconds (a
    query per stream, however fast events come), reported only when it changed. A job
    not yet claimed has no cost, so says nothing."""

    def __init__(self, store: Store, job_id: uuid.UUID, every: float) -> None:
        self._store = store
        self._job_id = job_id
        self._every = every
        self._due = 0.0
        self._last: list[CostRow] = []

    async def changed(self) -> list[CostRow] | None:
        now = asyncio.get_running_loop().time()
        if now < self._due:
            return None
        self._due = now + self._every
        costs = (await self._store.costs([self._job_id]))[self._job_id]
        if costs == self._last:
            return None
        self._last = costs
        return costs


WatchItem = J.JobEvent | Heartbeat | CostChanged | Finished


def executor_name(value: int) -> str:
    return J.Executor.Name(value) if value in J.Executor.values() else str(value)  # type: ignore[arg-type]


def image_lora_job(job: JobRow) -> None:
    """Refuse RetryJob on a job that trains an image LoRA: the LoRA is started again
    (ImageLoraService.StartTraining), which makes a new job."""
    if job.image_lora_id is not None:
        raise FailedPrecondition(
            "the job trains an image LoRA: retry it with ImageLoraService.StartTraining",
            reason=Reason.JOB_STATE,
            metadata={"image_lora": str(job.image_lora_id)},
        )


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
        billing: Billing,
        identity: ServiceIdentity | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.storage = storage
        self.hub = hub
        self.spawn = spawn
        self.billing = billing
        self.identity = identity

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

    # -- create, estimate and validate -----------------------------------------------------
    async def _prepare(
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
        hardware_class: str,
        init_model_id: str = "",
        field_prefix: str = "",
    ) -> Prepared:
        """Every check of CreateJob but the quota, and the effective settings."""
        f = field_prefix
        name = checks.name(name, f + "name", required=False)
        if method not in (J.TRAINING_METHOD_UNSPECIFIED, *METHODS):
            raise InvalidArgument("method must be LORA or QLORA", field=f + "method")
        method = method or J.TRAINING_METHOD_LORA
        default_executor = EXECUTORS[self.settings.training_executor]
        executor = executor or default_executor
        enabled = {EXECUTORS[e] for e in self.settings.training_executors_enabled}
        if executor not in enabled | {default_executor}:
            raise InvalidArgument(
                f"executor {executor_name(executor)} is not enabled on this server",
                field=f + "executor",
            )
        if (
            executor == J.EXECUTOR_SIMULATE
            and self.settings.aivera_env == "prod"
            and not self.settings.training_allow_simulate_in_prod
        ):
            # Simulated jobs are never billed: in production they must be asked for on
            # purpose (TRAINING_ALLOW_SIMULATE_IN_PROD), never slip through as training.
            raise InvalidArgument(
                "the simulate executor is disabled in production", field=f + "executor"
            )
        hardware = catalogue.hardware_class(self.settings, hardware_class, f + "hardware_class")
        dataset = await datasets.owned(self.store, user, dataset_id, f + "dataset_id")
        clone = await clones.owned(self.store, user, clone_id, f + "clone_id") if clone_id else None
        init = None
        if init_model_id:
            init = await self.store.get_model(
                user, parse_uuid(init_model_id, field=f + "init_model_id")
            )
            if init is None:
                raise not_found("model", init_model_id)
        base_model = base_model or (
            clone.base_model if clone else init.base_model if init else dataset.base_model
        )
        base_model = checks.base_model(self.settings, base_model, f + "base_model")
        if clone is not None and base_model != clone.base_model:
            raise InvalidArgument(
                f"base_model {base_model!r} differs from the clone's {clone.base_model!r}",
                field=f + "base_model",
            )
        try:
            facts = await asyncio.to_thread(basemodels.facts, base_model, self.settings)
        except (OSError, ValueError) as exc:
            raise InvalidArgument(
                f"base_model {base_model!r} cannot be loaded: {exc}",
                field=f + "base_model",
                reason=Reason.BASE_MODEL_UNAVAILABLE,
            ) from None
        if init is not None:
            hyperparameters = await self._continue_from(
                init, base_model, executor, hyperparameters, f
            )
        hp = hyper.effective(
            hyperparameters,
            context_length=facts.context_length,
            linear_modules=facts.linear_modules,
            dataset_max_seq_length=dataset.max_seq_length,
            checkpoint_every_default=self.settings.training_checkpoint_every_steps,
            prefix=f + "hyperparameters.",
        )
        if dataset.status != datasets_pb2.DATASET_STATUS_READY:
            raise FailedPrecondition(
                "the dataset is not READY",
                reason=Reason.DATASET_NOT_READY,
                metadata={"dataset_id": str(dataset.id)},
            )
        return Prepared(name, dataset, clone, base_model, method, executor, hp, hardware, init)

    async def _continue_from(
        self,
        init: ModelRow,
        base_model: str,
        executor: int,
        requested: jobs_pb2.Hyperparameters,
        f: str,
    ) -> jobs_pb2.Hyperparameters:
        """The request's hyperparameters with the starting model's adapter shape (rank,
        alpha, target modules); asking for another shape is INVALID_ARGUMENT."""
        if init.base_model != base_model:
            raise InvalidArgument(
                f"the model adapts {init.base_model!r}, not {base_model!r}",
                field=f + "init_model_id",
            )
        if init.simulated and executor != J.EXECUTOR_SIMULATE:
            raise InvalidArgument(
                "a simulated model has no weights to continue from", field=f + "init_model_id"
            )
        source = await self.store.job_by_id(init.job_id)
        assert source is not None  # a model's job row is never removed (soft delete)
        shape = convert.hp_from_json(source.hyperparameters)
        hp = jobs_pb2.Hyperparameters()
        hp.CopyFrom(requested)
        for name in ("lora_rank", "lora_alpha"):
            asked = getattr(requested, name)
            if asked and asked != getattr(shape, name):
                raise InvalidArgument(
                    f"{name} must be the starting model's ({getattr(shape, name)})",
                    field=f"{f}hyperparameters.{name}",
                )
            setattr(hp, name, getattr(shape, name))
        if requested.target_modules and sorted(requested.target_modules) != sorted(
            shape.target_modules
        ):
            raise InvalidArgument(
                "target_modules must be the starting model's",
                field=f + "hyperparameters.target_modules",
            )
        del hp.target_modules[:]
        hp.target_modules.extend(shape.target_modules)
        return hp

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
        hardware_class: str = "",
        init_model_id: str = "",
    ) -> JobDetail:
        p = await self._prepare(
            user,
            name=name,
            dataset_id=dataset_id,
            clone_id=clone_id,
            base_model=base_model,
            method=method,
            executor=executor,
            hyperparameters=hyperparameters,
            hardware_class=hardware_class,
            init_model_id=init_model_id,
        )
        expected: estimates.Estimate | None = None
        if not p.simulated:
            before = await self.billing.quota(self.store, user)
            if self.billing.limited(before, gpu=p.hardware.is_gpu):
                # A limit applies: what this job is expected to use must fit in it too.
                expected = await self._estimate(p)
        # The job's validation and its worker read and write storage long after this
        # request: on a grant taken now (void if the user's sessions end meanwhile).
        grant = await grant_now(self.identity)
        async with self.store.transaction() as tx:
            await tx.lock_user(user)
            # Under the lock DeleteDataset takes too: a dataset deleted since the checks
            # above is not trained on.
            if await tx.dataset_deleted(p.dataset.id):
                raise not_found("dataset", dataset_id)
            quota = await self.billing.quota(tx, user)
            limit = quota.limits.max_active_jobs
            active = quota.usage.active_jobs
            if active >= limit:
                raise ResourceExhausted(
                    f"you already have {active} unfinished jobs (limit {limit})",
                    reason=Reason.TOO_MANY_ACTIVE_JOBS,
                    metadata={"limit": str(limit)},
                )
            if not p.simulated:
                self.billing.check(
                    quota,
                    gpu=p.hardware.is_gpu,
                    extra_gpu_hours=expected.gpu_hours if expected else 0.0,
                    extra_micros=expected.cost_micros if expected else 0,
                )
            label = "qlora" if p.method == J.TRAINING_METHOD_QLORA else "lora"
            job = await tx.insert_job(
                user_id=user,
                name=p.name or f"{p.dataset.name} ({label})",
                dataset_id=p.dataset.id,
                base_model=p.base_model,
                method=p.method,
                hyperparameters=convert.hp_to_json(p.hp),
                executor=p.executor,
                clone_id=p.clone.id if p.clone else None,
                created=lifecycle.create(),
                hardware_class=p.hardware.name,
                init_model_id=p.init.id if p.init else None,
            )
            trace = tracing.carrier()
            if trace:  # the worker that runs the job continues this request's trace
                await tx.save_trace_context(job.id, trace)
            detail = await self._detail(tx, job)
        if grant is not None:
            await self.store.put_grant(job.id, user, grant)
        self.spawn(self.validate(job.id, user), f"validate-job-{job.id}")
        return detail

    async def _estimate(self, p: Prepared) -> estimates.Estimate:
        """The job's plan from the dataset's real tokens, and what it would use."""
        raw = await self.storage.download(p.dataset.file_id)
        tok = await asyncio.to_thread(basemodels.tokenizer, p.base_model, self.settings)
        try:
            plan = await asyncio.to_thread(make_plan, raw, tok, p.hp)
        except PlanError as exc:
            raise FailedPrecondition(
                f"the dataset cannot be trained with these settings: {exc}",
                reason=Reason.DATASET_NOT_READY,
                metadata={"dataset_id": str(p.dataset.id)},
            ) from None
        arch = await asyncio.to_thread(catalogue.arch_of, p.base_model, self.settings)
        return estimates.estimate(
            plan,
            p.hp,
            arch=arch,
            method=p.method,
            hardware=p.hardware,
            simulated=p.simulated,
            simulate_step_seconds=self.settings.training_simulate_step_seconds,
        )

    async def estimate(self, user: str, request: jobs_pb2.CreateJobRequest) -> Estimated:
        """What CreateJob with `request` would run and cost; nothing is created."""
        p = await self._prepare(
            user,
            name=request.name,
            dataset_id=request.dataset_id,
            clone_id=request.clone_id,
            base_model=request.base_model,
            method=request.method,
            executor=request.executor,
            hyperparameters=request.hyperparameters,
            hardware_class=request.hardware_class,
            init_model_id=request.init_model_id,
            field_prefix="job.",
        )
        est = await self._estimate(p)
        quota = await self.billing.quota(self.store, user)
        why = ""
        if quota.usage.active_jobs >= quota.limits.max_active_jobs:
            limit = quota.limits.max_active_jobs
            why = f"{quota.usage.active_jobs} unfinished jobs (limit {limit})"
        elif not p.simulated:
            why = self.billing.why_over(
                quota,
                gpu=p.hardware.is_gpu,
                extra_gpu_hours=est.gpu_hours,
                extra_micros=est.cost_micros,
            )
        return Estimated(p.hp, est, why)

    async def validate(self, job_id: uuid.UUID, user: str) -> None:
        """VALIDATING → QUEUED with the total steps, or FAILED (DATASET_INVALID, …)."""
        job = await self.store.job_by_id(job_id)
        if job is None or job.dataset_id is None:
            return  # gone, or an image LoRA job (created QUEUED)
        hp = convert.hp_from_json(job.hyperparameters)
        failure: Failure | None = None
        total = per_epoch = 0
        try:
            file_id = await self.store.dataset_file(job.dataset_id)
            with ctx.acting_for(user, grant=await self.store.grant_of(job_id)):
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

    async def retry(
        self,
        user: str,
        raw_id: str,
        hyperparameters: jobs_pb2.Hyperparameters | None = None,
        paths: list[str] | None = None,
    ) -> JobDetail:
        """A new attempt of a FAILED or CANCELLED job: back to the queue from its last
        checkpoint, or validated again when it failed before its plan was known. With
        `paths` (`hyperparameters.<field>`), those take the new values and the attempt
        starts over from step 0, validated again."""
        changed = None
        image_lora_job(await owned(self.store, user, raw_id))
        if paths:
            job = await owned(self.store, user, raw_id)
            changed = await self._changed_hp(
                job, hyperparameters or jobs_pb2.Hyperparameters(), paths
            )
        # A new attempt runs on a grant taken now (the old one may have ended).
        grant = await grant_now(self.identity)
        async with self.store.transaction() as tx:
            job = await owned(tx, user, raw_id, lock=True)
            image_lora_job(job)
            assert job.dataset_id is not None  # a text job's
            change = lifecycle.retry(job)
            if await tx.dataset_deleted(job.dataset_id):
                raise FailedPrecondition(
                    "the job's dataset was deleted", reason=Reason.DATASET_NOT_READY
                )
            planned = job.total_steps > 0 and changed is None
            job = await tx.apply(job.id, change)
            if changed is not None:
                await tx.restart_plan(job.id, convert.hp_to_json(changed), job.attempt)
                job = await owned(tx, user, raw_id)
            if planned:
                from_step = await tx.last_checkpoint_step(job.id)
                job = await tx.apply(job.id, lifecycle.resume(job, from_step=from_step))
            detail = await self._detail(tx, job)
        if grant is not None:
            await self.store.put_grant(job.id, user, grant)
        if not planned:
            self.spawn(self.validate(job.id, user), f"validate-job-{job.id}")
        return detail

    async def _changed_hp(
        self, job: JobRow, requested: jobs_pb2.Hyperparameters, paths: list[str]
    ) -> jobs_pb2.Hyperparameters:
        """The job's hyperparameters with the named fields from `requested`, checked as
        CreateJob checks them."""
        merged = convert.hp_from_json(job.hyperparameters)
        fields = jobs_pb2.Hyperparameters.DESCRIPTOR.fields_by_name
        for path in paths:
            name = path.removeprefix("hyperparameters.")
            field = fields.get(name)
            if not path.startswith("hyperparameters.") or field is None:
                raise InvalidArgument(
                    f"update_mask has {path!r}: only hyperparameters.<field>",
                    field="update_mask",
                )
            # Untyped views: the field is named at run time.
            src: Any = requested
            dst: Any = merged
            if name == "target_modules":  # the one repeated field
                del dst.target_modules[:]
                dst.target_modules.extend(src.target_modules)
            elif field.has_presence and not src.HasField(name):
                dst.ClearField(name)
            else:
                setattr(dst, name, getattr(src, name))
        if job.init_model_id is not None:
            init = await self.store.model_by_id(job.init_model_id)
            if init is not None:
                merged = await self._continue_from(init, job.base_model, job.executor, merged, "")
        assert job.dataset_id is not None  # image LoRA jobs are refused before
        dataset = await self.store.dataset_by_id(job.dataset_id)
        assert dataset is not None
        facts = await asyncio.to_thread(basemodels.facts, job.base_model, self.settings)
        return hyper.effective(
            merged,
            context_length=facts.context_length,
            linear_modules=facts.linear_modules,
            dataset_max_seq_length=dataset.max_seq_length,
            checkpoint_every_default=self.settings.training_checkpoint_every_steps,
        )

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
        cost = CostWatch(self.store, job.id, self.settings.training_watch_heartbeat_seconds)
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
                if (costs := await cost.changed()) is not None:
                    yield CostChanged(cursor, costs)
                if await beat.wait(woken):
                    yield Heartbeat(cursor)
