"""The training worker: `python -m services.training worker`.

Any number of workers, on any machine that reaches Postgres and the storage service, take
jobs from the Postgres queue:

1. Reap: RUNNING jobs whose lease expired (their worker died) go back to QUEUED, or FAIL
   with WORKER_LOST after `training_max_worker_losses`.
2. Claim the oldest QUEUED job (a row lock that skips jobs other workers are claiming)
   and take a lease (a claim token + expiry) that a heartbeat renews every
   `training_heartbeat_seconds`.
3. Train in a thread (the executor), resuming from the job's latest checkpoint; every step
   writes a metric point, every `checkpoint_every_steps` a checkpoint to the `models`
   bucket. Every write checks the claim token, so a worker that lost its lease (or whose
   job was cancelled) stops at the next step boundary without writing anything more.
4. Upload the adapter, record the model artifact, set the clone's active model and finish.
   A job that trains an image LoRA (image_lora_id set) runs image_executor.py instead: its
   weights go to the LoRA, which follows the job's status.

Between jobs the worker also runs LOCAL image generations (generation_worker.py): an idle
worker takes a QUEUED generation before it looks for a job, and never one while a job runs.

SIGTERM: the running job stops at the next step and goes straight back to QUEUED (another
worker resumes it from its last checkpoint without waiting for the lease to expire).

HTTP (`worker_http`, port 9096): `/healthz` for the Deployment's probes (200 while the
worker reaches the queue) and Prometheus `/metrics`.

Status changes are `lifecycle` transitions applied by the store; SQL lives in store.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aivera.training.v1 import jobs_pb2, models_pb2
from services.common import catalogue as shared_catalogue
from services.common import context as ctx
from services.common import db, logs, migrations, tracing
from services.common.channels import open_channel
from services.common.db import Connected
from services.common.errors import FailedPrecondition, NotFound, ServiceError
from services.common.identity import ServiceIdentity, require_identity
from services.common.metrics import sample_gpus
from services.common.remote import Deadlines, StorageClient
from services.training import (
    artifacts,
    basemodels,
    catalogue,
    estimates,
    image_executor,
    image_pipeline,
    lifecycle,
)
from services.training.billing import Billing
from services.training.config import TrainingSettings
from services.training.convert import checkpoint_proto, hp_from_json, metric_proto
from services.training.executors import EXECUTORS, ModelLoadError
from services.training.generation_worker import GenerationClaim, GenerationRunner
from services.training.hub import Hub, wait
from services.training.lifecycle import Failure, Lease
from services.training.plan import PlanError, make_plan
from services.training.session import NumericalInstability, Result, Session, StepPoint, Stopped
from services.training.store import QUEUE_CHANNEL, JobRow, Store
from services.training.worker_http import (
    BUSY,
    JOBS,
    QUEUE_ERRORS,
    http_port,
    mark_ok,
    start_worker_http,
)

log = logging.getLogger("aivera.training.worker")
J = jobs_pb2
MIGRATIONS = Path(__file__).parent / "migrations"


def loop_time() -> float:
    return time.monotonic()


OOM_MARKERS = ("out of memory", "can't allocate memory", "not enough memory")


def out_of_memory(exc: BaseException) -> bool:
    """A device or host allocation failure (torch's CUDA OOM error, its CPU allocator's
    failure, Python's MemoryError), not any other error."""
    if isinstance(exc, MemoryError):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc).lower() for m in OOM_MARKERS)


class JobFailure(Exception):
    """Training stopped with an error the job reports (its `error`)."""

    def __init__(self, code: jobs_pb2.JobErrorCode.ValueType, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def device_type(settings: TrainingSettings) -> str:
    if settings.training_device_type:
        return settings.training_device_type
    try:
        import torch

        if torch.cuda.is_available():
            name = torch.cuda.get_device_name(0).lower()
            for known in ("h200", "h100", "a100", "l40", "l4", "a10", "t4", "v100"):
                if known in name:
                    return f"nvidia-{known}"
            return "nvidia-gpu"
    except ImportError:
        return "cpu"  # no torch on this machine
    return "cpu"


@dataclass
class Claim:
    """This worker's hold on one job: the job as claimed, the lease token every write
    checks, and the cost record billed while it runs."""

    job: JobRow
    token: uuid.UUID
    cost_id: int
    timed_out: bool = False
    over_quota: str = ""  # why the owner's month has no room left (the job stops)
    started: float = 0.0  # monotonic time training began in this claim
    base_step: int = 0  # the step it resumed from
    step_reached: int = 0  # the last step trained (reported with a failure)


class Worker:
    def __init__(self, settings: TrainingSettings, pool: Any, storage_channel: Any) -> None:
        self.settings = settings
        self.store = Store(Connected(pool))
        self.billing = Billing(self.store, settings)
        self.storage = StorageClient(storage_channel, Deadlines.from_settings(settings))
        self.worker_id = settings.worker_id
        self.device = device_type(settings)
        self.rate = settings.training_hourly_rates_micros.get(
            self.device, settings.training_default_hourly_rate_micros
        )
        self.shutdown = asyncio.Event()
        # Monotonic time this worker last reached the queue (a poll or a heartbeat).
        self.last_ok: float | None = None
        self.running_job: str | None = None
        self.running_generation: str | None = None
        self.generations = GenerationRunner(self)

    def health(self) -> tuple[bool, dict[str, object]]:
        """Ready and alive while the queue was reached recently and not shutting down."""
        window = max(3 * self.settings.training_poll_seconds, self.settings.training_lease_seconds)
        age = None if self.last_ok is None else loop_time() - self.last_ok
        ok = not self.shutdown.is_set() and age is not None and age <= window
        if self.shutdown.is_set():
            state = "stopping"
        elif age is None:
            state = "starting"
        else:
            state = "running" if self.running_job or self.running_generation else "polling"
        detail: dict[str, object] = {"state": state, "worker_id": self.worker_id}
        if age is not None:
            detail["last_ok_seconds_ago"] = round(age, 3)
        if self.running_job:
            detail["job_id"] = self.running_job
        if self.running_generation:
            detail["generation_id"] = self.running_generation
        return ok, detail

    def _reached_queue(self) -> None:
        self.last_ok = loop_time()
        mark_ok()

    # -- queue ----------------------------------------------------------------------------
    async def reap(self) -> int:
        """Requeue (or fail) RUNNING jobs whose lease has expired."""
        async with self.store.transaction() as tx:
            jobs = await tx.expired_leases()
            for job in jobs:
                from_step = await tx.last_checkpoint_step(job.id)
                change = lifecycle.lose_worker(
                    job, max_losses=self.settings.training_max_worker_losses, from_step=from_step
                )
                await tx.apply(job.id, change)
        return len(jobs)

    def rate_for(self, job: JobRow) -> int:
        """The job's hardware class price when this worker is that class's device, else
        this device's own rate: a job is billed for the device that ran it."""
        return self.rate_of_class(job.hardware_class)

    def rate_of_class(self, hardware_class: str) -> int:
        """The class's price when this worker is that class's device, else this device's
        own rate (jobs and LOCAL generations alike)."""
        spec = self.settings.training_hardware_classes.get(hardware_class)
        if spec is not None and spec.device_type == self.device:
            return spec.hourly_rate_micros
        return self.rate

    async def claim(self) -> Claim | None:
        lease = Lease(uuid.uuid4(), self.worker_id, self.settings.training_lease_seconds)
        async with self.store.transaction() as tx:
            job = await tx.next_queued(self.settings.training_worker_hardware_classes)
            if job is None:
                return None
            job = await tx.apply(job.id, lifecycle.claim(job, lease, self.device))
            cost_id = await tx.open_cost(
                job=job,
                worker_id=self.worker_id,
                device_type=self.device,
                rate=self.rate_for(job),
                simulated=job.executor == J.EXECUTOR_SIMULATE,
            )
        return Claim(job=job, token=lease.token, cost_id=cost_id, step_reached=job.steps_done)

    async def _locked_if_ours(self, tx: Store, claim: Claim) -> JobRow | None:
        """The job, locked, while this claim still holds it (not cancelled or taken over)."""
        job = await tx.lock_job(claim.job.id)
        return job if job is not None and job.claim_token == claim.token else None

    async def heartbeat(self, claim: Claim, stop: Any) -> None:
        """Renew the lease and the cost; set `stop` when the job is no longer ours."""
        while not stop.is_set():
            await asyncio.sleep(self.settings.training_heartbeat_seconds)
            try:
                ok = await self.store.renew_lease(
                    claim.job.id, claim.token, self.settings.training_lease_seconds
                )
                await self.store.bill(claim.cost_id, claim.token)
                spent = await self.store.device_seconds(claim.job.id)
            except Exception as exc:  # a Postgres blip: the lease may survive it
                log.warning("heartbeat failed: %s", exc)
                QUEUE_ERRORS.inc()
                continue
            self._reached_queue()
            sample_gpus()
            if not ok:
                log.info("job %s is no longer ours (cancelled or lease lost)", claim.job.id)
                stop.set()
            elif spent > self.settings.training_max_job_seconds:
                claim.timed_out = True
                stop.set()
            elif await self._over_quota(claim):
                stop.set()
            if self.shutdown.is_set():
                stop.set()

    async def _over_quota(self, claim: Claim) -> bool:
        """Whether the owner's monthly GPU hours or budget ran out (a simulated job is
        never billed, so never stopped for it)."""
        if claim.job.executor == J.EXECUTOR_SIMULATE:
            return False
        try:
            view = await self.billing.quota(self.store, claim.job.user_id)
        except Exception as exc:  # a Postgres blip: check again at the next beat
            log.warning("quota check failed: %s", exc)
            return False
        claim.over_quota = self.billing.why_over(view, gpu=self.device != "cpu")
        return bool(claim.over_quota)

    # -- one job --------------------------------------------------------------------------
    async def run_job(self, claim: Claim) -> None:
        job = claim.job
        session_stop = threading.Event()
        beat = asyncio.create_task(self.heartbeat(claim, session_stop))
        self.running_job = str(job.id)
        BUSY.set(1)
        outcome = "failed"
        # The job's spans join the trace of the request that created it (tracing on).
        attrs = {"training.attempt": job.attempt, "training.worker": self.worker_id}
        try:
            trace = await self.store.trace_context(job.id) if tracing.enabled() else {}
            # On the grant the job was created with: the user's token is long gone. An
            # image LoRA job's is the one StartTraining stored under the LoRA's id.
            grant = await self.store.grant_of(job.image_lora_id or job.id)
            with (
                ctx.acting_for(job.user_id, grant=grant),
                tracing.continued(trace, "training.job", attrs),
            ):
                if job.image_lora_id is not None:
                    finished = await self._train_image(claim, session_stop)
                else:
                    result = await self._train(claim, session_stop)
                    if result is not None:
                        await self._succeed(claim, result)
                    finished = result is not None
                if finished:
                    outcome = "succeeded"
                else:
                    outcome = "stopped"
                    await self._stopped(claim)
        except JobFailure as exc:
            outcome = "failed"
            await self._fail(claim, Failure(exc.code, exc.message, claim.step_reached))
        except Exception as exc:
            outcome = "failed"
            log.exception("job %s failed", job.id)
            await self._fail(
                claim,
                Failure(
                    J.JOB_ERROR_CODE_INTERNAL, f"{type(exc).__name__}: {exc}", claim.step_reached
                ),
            )
        finally:
            JOBS.labels(outcome).inc()
            BUSY.set(0)
            self.running_job = None
            session_stop.set()
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat
            try:
                await self.store.bill(claim.cost_id, claim.token)
            except Exception as exc:
                log.warning("could not record the final cost of %s: %s", job.id, exc)

    async def _train_image(self, claim: Claim, session_stop: threading.Event) -> bool:
        """An image LoRA job (image_executor.py): True when it finished (the LoRA READY),
        False when it stopped early."""
        try:
            return await image_executor.run(self, claim, session_stop)
        except image_executor.ImageJobError as exc:
            raise JobFailure(exc.code, exc.message) from None
        except NumericalInstability as exc:
            raise JobFailure(J.JOB_ERROR_CODE_NUMERICAL_INSTABILITY, str(exc)) from None
        except (MemoryError, RuntimeError) as exc:
            if out_of_memory(exc):
                raise JobFailure(
                    J.JOB_ERROR_CODE_OUT_OF_MEMORY,
                    "the device ran out of memory: lower image_lora_batch_size or image_lora_rank",
                ) from None
            raise

    async def _train(self, claim: Claim, session_stop: threading.Event) -> Result | None:
        """Run the executor from the job's latest checkpoint; None when it stopped early
        (cancelled, lease lost, timed out or shutting down)."""
        job = claim.job
        assert job.dataset_id is not None  # a text job (image LoRA jobs: _train_image)
        loop = asyncio.get_running_loop()
        hp = hp_from_json(job.hyperparameters)
        try:
            raw = await self.storage.download(await self.store.dataset_file(job.dataset_id))
        except (NotFound, FailedPrecondition):
            # The dataset's storage file was deleted (its dataset row cannot be while the
            # job is unfinished): the job cannot read its data again.
            raise JobFailure(
                J.JOB_ERROR_CODE_DATASET_INVALID, "the dataset's file was deleted from storage"
            ) from None
        except ServiceError as exc:
            raise JobFailure(J.JOB_ERROR_CODE_STORAGE_ERROR, exc.message) from None
        try:
            path = await asyncio.to_thread(basemodels.resolve, job.base_model, self.settings)
            tok = await asyncio.to_thread(basemodels.tokenizer, job.base_model, self.settings)
        except (OSError, ValueError) as exc:
            raise JobFailure(J.JOB_ERROR_CODE_MODEL_LOAD_FAILED, str(exc)) from None
        try:
            plan = await asyncio.to_thread(make_plan, raw, tok, hp)
        except PlanError as exc:
            raise JobFailure(J.JOB_ERROR_CODE_DATASET_INVALID, str(exc)) from None
        plan.total_steps = job.total_steps or plan.total_steps
        if job.executor != J.EXECUTOR_SIMULATE:
            await self._check_memory(job, hp)
        last = await self.store.latest_checkpoint(job.id)
        resume = None
        if last is not None:
            try:
                resume = await self.storage.download(last.file_id)
            except ServiceError as exc:
                raise JobFailure(J.JOB_ERROR_CODE_STORAGE_ERROR, exc.message) from None
            await self._log(claim, f"resuming from checkpoint at step {last.step}")
        init_adapter = None
        if last is None and job.init_model_id is not None:
            init_adapter = await self._starting_adapter(job.init_model_id)

        def call(coro: Any) -> Any:
            return asyncio.run_coroutine_threadsafe(coro, loop).result()

        def on_step(point: StepPoint) -> None:
            claim.step_reached = point.step
            if not call(self._record_step(claim, point, plan.total_steps)):
                session_stop.set()

        def on_checkpoint(point: StepPoint, blob: bytes) -> None:
            if not call(self._save_checkpoint(claim, point, blob)):
                session_stop.set()

        session = Session(
            plan=plan,
            hp=hp,
            method=job.method,
            model_path=path,
            pad_token_id=int(tok.pad_token_id),
            resume=resume,
            on_step=on_step,
            on_checkpoint=on_checkpoint,
            log=lambda text: call(self._log(claim, text)),
            stop=session_stop,
            torch_threads=self.settings.training_torch_threads,
            simulate_step_seconds=self.settings.training_simulate_step_seconds,
            init_adapter=init_adapter,
        )
        runner = EXECUTORS[job.executor]
        claim.base_step = last.step if last is not None else 0
        claim.started = loop_time()
        try:
            return await asyncio.to_thread(runner, session)
        except Stopped:
            return None
        except NumericalInstability as exc:
            raise JobFailure(J.JOB_ERROR_CODE_NUMERICAL_INSTABILITY, str(exc)) from None
        except ModelLoadError as exc:
            raise JobFailure(J.JOB_ERROR_CODE_MODEL_LOAD_FAILED, str(exc)) from None
        except ServiceError as exc:
            raise JobFailure(J.JOB_ERROR_CODE_STORAGE_ERROR, exc.message) from None
        except (MemoryError, RuntimeError) as exc:
            if out_of_memory(exc):
                raise JobFailure(
                    J.JOB_ERROR_CODE_OUT_OF_MEMORY,
                    "the device ran out of memory: lower batch_size or max_seq_length, or "
                    "enable gradient_checkpointing or QLORA",
                ) from None
            raise

    def device_memory(self, job: JobRow) -> int:
        """Memory of this worker's device for the job: its hardware class's when this
        worker is that class's device, else the CUDA device's; 0 when unknown (CPU)."""
        spec = self.settings.training_hardware_classes.get(job.hardware_class)
        if spec is not None and spec.device_type == self.device:
            return int(spec.memory_gib * 1024**3)
        if self.device.startswith("nvidia"):
            import torch

            if torch.cuda.is_available():
                return int(torch.cuda.get_device_properties(0).total_memory)
        return 0

    async def _check_memory(self, job: JobRow, hp: jobs_pb2.Hyperparameters) -> None:
        """Fail fast with OUT_OF_MEMORY when the catalogue's estimate says the job cannot
        fit this device, before minutes of model loading end the same way."""
        available = self.device_memory(job)
        if not available:
            return
        arch = await asyncio.to_thread(catalogue.arch_of, job.base_model, self.settings)
        need = shared_catalogue.training_memory_bytes(
            arch,
            estimates.method_name(job.method),
            int(hp.max_seq_length),
            batch_size=int(hp.batch_size),
            lora_rank=int(hp.lora_rank),
            gradient_checkpointing=hp.gradient_checkpointing,
        )
        if need > available:
            raise JobFailure(
                J.JOB_ERROR_CODE_OUT_OF_MEMORY,
                f"the job needs about {need / 1024**3:.1f} GiB and the device has "
                f"{available / 1024**3:.1f} GiB: lower batch_size or max_seq_length, or enable "
                "gradient_checkpointing or QLORA",
            )

    async def _starting_adapter(self, model_id: uuid.UUID) -> bytes:
        """The weights of the model a job continues from (STORAGE_ERROR when its files
        are gone, e.g. purged after the model was deleted)."""
        model = await self.store.model_by_id(model_id)
        files = {f["name"]: f["file_id"] for f in (model.files if model else [])}
        if model is None or "adapter_model.safetensors" not in files:
            raise JobFailure(J.JOB_ERROR_CODE_STORAGE_ERROR, "the starting model's files are gone")
        try:
            return await self.storage.download(files["adapter_model.safetensors"])
        except ServiceError as exc:
            raise JobFailure(J.JOB_ERROR_CODE_STORAGE_ERROR, exc.message) from None

    async def _log(self, claim: Claim, text: str, level: int = J.LOG_LEVEL_INFO) -> None:
        async with self.store.transaction() as tx:
            if await self._locked_if_ours(tx, claim):
                event = J.JobEvent(log=J.LogLine(level=level, text=text))  # type: ignore[arg-type]
                await tx.append_event(claim.job.id, claim.job.attempt, event)

    async def _record_step(self, claim: Claim, p: StepPoint, total: int) -> bool:
        job = claim.job
        done_here = p.step - claim.base_step
        elapsed = loop_time() - claim.started
        eta = int(elapsed / done_here * (total - p.step)) if done_here > 0 else 0
        async with self.store.transaction() as tx:
            if not await self._locked_if_ours(tx, claim):
                return False
            metric = await tx.record_step(job.id, job.attempt, p, eta)
            await tx.append_event(job.id, job.attempt, J.JobEvent(metric=metric_proto(metric)))
        return True

    async def _save_checkpoint(self, claim: Claim, p: StepPoint, blob: bytes) -> bool:
        job = claim.job
        if await self.store.claim_token(job.id) != claim.token:
            return False  # no upload for a job that is no longer ours
        upload = await artifacts.upload_checkpoint(
            self.storage, user_id=job.user_id, job_id=job.id, step=p.step, blob=blob
        )
        async with self.store.transaction() as tx:
            if not await self._locked_if_ours(tx, claim):
                return False
            row = await tx.insert_checkpoint(
                job_id=job.id,
                attempt=job.attempt,
                point=p,
                size_bytes=len(blob),
                storage_path=upload.storage_path,
                file_id=upload.file.id,
            )
            event = J.JobEvent(checkpoint=checkpoint_proto(row))
            await tx.append_event(job.id, job.attempt, event)
        return True

    async def _stopped(self, claim: Claim) -> None:
        """Cancelled, lease lost, timed out or shutting down."""
        async with self.store.transaction() as tx:
            job = await self._locked_if_ours(tx, claim)
            if job is None:
                return  # cancelled or taken over: nothing more to write
            await tx.bill(claim.cost_id, claim.token)
            if claim.timed_out:
                await tx.apply(job.id, lifecycle.time_out(job))
                return
            if claim.over_quota:
                failure = Failure(
                    J.JOB_ERROR_CODE_QUOTA_EXCEEDED,
                    f"the monthly quota ran out ({claim.over_quota})",
                    claim.step_reached,
                )
                await tx.apply(job.id, lifecycle.fail(job, failure))
                return
            from_step = await tx.last_checkpoint_step(job.id)
            change = lifecycle.requeue(job, worker_id=self.worker_id, from_step=from_step)
            await tx.apply(job.id, change)

    async def _fail(self, claim: Claim, failure: Failure) -> None:
        async with self.store.transaction() as tx:
            job = await self._locked_if_ours(tx, claim)
            if job is not None:
                await tx.bill(
                    claim.cost_id, claim.token
                )  # the final cost comes with the final status
                await tx.apply(job.id, lifecycle.fail(job, failure))

    async def _succeed(self, claim: Claim, result: Result) -> None:
        job = claim.job
        try:
            files = await artifacts.upload_adapter(self.storage, job_id=job.id, files=result.files)
        except ServiceError as exc:
            raise JobFailure(J.JOB_ERROR_CODE_STORAGE_ERROR, exc.message) from None
        async with self.store.transaction() as tx:
            locked = await self._locked_if_ours(tx, claim)
            if locked is None:
                return
            model = await tx.insert_model(
                user_id=job.user_id,
                name=job.name,
                job_id=job.id,
                clone_id=job.clone_id,
                base_model=job.base_model,
                method=job.method,
                kind=models_pb2.MODEL_KIND_LORA_ADAPTER,
                files=files,
                steps=result.steps,
                final_loss=result.final_loss,
                final_eval_loss=result.final_eval_loss,
                simulated=job.executor == J.EXECUTOR_SIMULATE,
            )
            if job.clone_id is not None:
                await tx.set_clone_model(job.clone_id, model.id)
            await tx.bill(claim.cost_id, claim.token)  # the final cost comes with the final status
            change = lifecycle.succeed(
                locked, model_id=model.id, steps=result.steps, final_loss=result.final_loss
            )
            await tx.apply(job.id, change)

    # -- main loop ------------------------------------------------------------------------
    async def run(self, hub: Hub | None = None) -> None:
        log.info("worker %s (%s) polling for jobs", self.worker_id, self.device)
        with contextlib.ExitStack() as stack:
            woken: asyncio.Event | None = None
            if hub is not None:
                woken = stack.enter_context(hub.subscribe(QUEUE_CHANNEL, "*"))
            while not self.shutdown.is_set():
                generation: GenerationClaim | None = None
                claim: Claim | None = None
                try:
                    await self.reap()
                    await self.generations.reap()
                    # Generations first: seconds long, and their users wait on them.
                    generation = await self.generations.claim()
                    if generation is None:
                        claim = await self.claim()
                    self._reached_queue()
                except Exception as exc:  # Postgres down or restarting: try again later
                    log.warning("queue unavailable: %s", exc)
                    QUEUE_ERRORS.inc()
                if generation is not None:
                    await self.generations.run(generation)
                    continue
                if claim is not None:
                    log.info("claimed job %s", claim.job.id)
                    # The job loads its own model: the generation pipeline leaves the device.
                    await asyncio.to_thread(image_pipeline.release)
                    await self.run_job(claim)
                    continue
                if woken is not None:
                    await wait(woken, self.settings.training_poll_seconds)
                else:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(
                            self.shutdown.wait(), self.settings.training_poll_seconds
                        )


class _Probe:
    """What `/healthz` asks: not ready until the worker exists (migrations, pool)."""

    def __init__(self) -> None:
        self.worker: Worker | None = None

    def health(self) -> tuple[bool, dict[str, object]]:
        if self.worker is None:
            return False, {"state": "starting"}
        return self.worker.health()


async def run_worker(settings: TrainingSettings) -> None:
    logs.configure("training-worker", settings.log_level)
    tracing.configure("training-worker")
    probe = _Probe()
    # HTTP first, so the startup probe gets a 503 (not a refused connection) while
    # migrations run and Postgres is reached.
    runner, port = await start_worker_http(probe, settings.http_host, http_port())
    log.info("worker health and metrics on %s:%d", settings.http_host, port)
    try:
        dsn = settings.dsn()
        await migrations.migrate(dsn, "training", MIGRATIONS)
        pool = await db.create_pool(
            dsn, schema="training", service="training-worker", min_size=1, max_size=4
        )
        # The worker is part of the training service: it proves it with a credential of
        # its own (its Secret) registered under the same service name.
        require_identity("training", settings)
        identity = (
            ServiceIdentity("training", settings.service_secret(), settings.auth_addr)
            if settings.service_secret()
            else None
        )
        channel = open_channel(settings.storage_addr, identity=identity)
        hub = Hub(dsn, channels=(QUEUE_CHANNEL,))
        await hub.start()
        worker = probe.worker = Worker(settings, pool, channel)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, worker.shutdown.set)
        try:
            await worker.run(hub)
        finally:
            await hub.stop()
            await channel.close()
            if identity is not None:
                await identity.close()
            await pool.close()
    finally:
        await runner.cleanup()
        tracing.shutdown()


__all__ = ["Worker", "run_worker"]
