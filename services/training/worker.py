"""The training worker: `python -m services.training worker`.

Any number of workers, on any machine that reaches Postgres and the storage service, take
jobs from the Postgres queue:

1. Reap: RUNNING jobs whose lease expired (their worker died) go back to QUEUED, or FAIL
   with WORKER_LOST after `training_max_worker_losses`.
2. Claim the oldest QUEUED job with `FOR UPDATE SKIP LOCKED` and take a lease (a claim
   token + expiry) that a heartbeat renews every `training_heartbeat_seconds`.
3. Train in a thread (the executor), resuming from the job's latest checkpoint; every step
   writes a metric point, every `checkpoint_every_steps` a checkpoint to the `models`
   bucket. Every write checks the claim token, so a worker that lost its lease (or whose
   job was cancelled) stops at the next step boundary without writing anything more.
4. Upload the adapter, record the model artifact, set the clone's active model and finish.

SIGTERM: the running job stops at the next step and goes straight back to QUEUED (another
worker resumes it from its last checkpoint without waiting for the lease to expire).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import signal
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aivera.storage.v1 import storage_pb2
from aivera.training.v1 import jobs_pb2, models_pb2
from services.common import context as ctx
from services.common import db, logs, migrations
from services.common.channels import open_channel
from services.common.errors import ServiceError
from services.training import basemodels, store
from services.training.config import TrainingSettings
from services.training.executors import EXECUTORS, ModelLoadError
from services.training.hub import Hub, wait
from services.training.plan import PlanError, make_plan
from services.training.session import NumericalInstability, Result, Session, StepPoint, Stopped
from services.training.storage_io import Storage, storage_path

log = logging.getLogger("aivera.training.worker")
J = jobs_pb2
MIGRATIONS = Path(__file__).parent / "migrations"


def loop_time() -> float:
    return time.monotonic()


class JobFailure(Exception):
    def __init__(self, code: int, message: str) -> None:
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
    job: dict[str, Any]  # the row
    token: uuid.UUID
    cost_id: int
    timed_out: bool = False
    started: float = 0.0  # monotonic time training began in this claim
    base_step: int = 0  # the step it resumed from


class Worker:
    def __init__(self, settings: TrainingSettings, pool: Any, storage_channel: Any) -> None:
        self.settings = settings
        self.pool = pool
        self.channel = storage_channel
        self.worker_id = settings.worker_id
        self.device = device_type(settings)
        self.rate = settings.training_hourly_rates_micros.get(
            self.device, settings.training_default_hourly_rate_micros
        )
        self.shutdown = asyncio.Event()

    # -- queue ----------------------------------------------------------------------------
    async def reap(self) -> int:
        """Requeue (or fail) RUNNING jobs whose lease has expired."""
        n = 0
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                """SELECT * FROM training_jobs WHERE status = $1 AND lease_expires_at < now()
                   FOR UPDATE SKIP LOCKED""",
                J.JOB_STATUS_RUNNING,
            )
            for row in rows:
                n += 1
                last = await conn.fetchval(
                    "SELECT max(step) FROM checkpoints WHERE job_id = $1", row["id"]
                )
                if row["worker_losses"] + 1 > self.settings.training_max_worker_losses:
                    error: dict[str, Any] = {
                        "code": J.JOB_ERROR_CODE_WORKER_LOST,
                        "message": f"workers were lost {row['worker_losses'] + 1} times",
                        "step": row["steps_done"],
                    }
                    await store.set_status(
                        conn,
                        row["id"],
                        J.JOB_STATUS_FAILED,
                        error["message"],
                        error=error,
                        extra_sql=", claim_token = NULL, worker_losses = worker_losses + 1",
                    )
                    continue
                await store.set_status(
                    conn,
                    row["id"],
                    J.JOB_STATUS_QUEUED,
                    f"worker {row['worker_id']} lost, resuming from step {last or 0}",
                    extra_sql=""", claim_token = NULL, lease_expires_at = NULL,
                                  worker_losses = worker_losses + 1,
                                  queued_at = clock_timestamp()""",
                )
        return n

    async def claim(self) -> Claim | None:
        token = uuid.uuid4()
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                """SELECT id FROM training_jobs WHERE status = $1 AND deleted_at IS NULL
                   ORDER BY queued_at, id LIMIT 1 FOR UPDATE SKIP LOCKED""",
                J.JOB_STATUS_QUEUED,
            )
            if row is None:
                return None
            job = await store.set_status(
                conn,
                row["id"],
                J.JOB_STATUS_RUNNING,
                f"running on worker {self.worker_id} ({self.device})",
                extra_sql=""", claim_token = $5, worker_id = $6,
                    lease_expires_at = now() + make_interval(secs => $7),
                    start_time = coalesce(start_time, clock_timestamp())""",
                extra_args=(token, self.worker_id, self.settings.training_lease_seconds),
            )
            cost_id = await conn.fetchval(
                """INSERT INTO cost_records (job_id, attempt, worker_id, device_type,
                                             hourly_rate_micros)
                   VALUES ($1, $2, $3, $4, $5) RETURNING id""",
                job["id"],
                job["attempt"],
                self.worker_id,
                self.device,
                self.rate,
            )
        return Claim(job=dict(job), token=token, cost_id=cost_id)

    async def _still_ours(self, conn: Any, claim: Claim) -> bool:
        owner = await conn.fetchval(
            "SELECT claim_token FROM training_jobs WHERE id = $1 FOR UPDATE", claim.job["id"]
        )
        return bool(owner == claim.token)

    async def _bill(self, conn: Any, claim: Claim) -> None:
        await conn.execute(
            """UPDATE cost_records SET device_seconds =
                   extract(epoch FROM clock_timestamp() - started_at),
                   updated_at = clock_timestamp()
               WHERE id = $1""",
            claim.cost_id,
        )

    async def heartbeat(self, claim: Claim, stop: Any) -> None:
        """Renew the lease and the cost; set `stop` when the job is no longer ours."""
        while not stop.is_set():
            await asyncio.sleep(self.settings.training_heartbeat_seconds)
            try:
                async with self.pool.acquire() as conn:
                    ok = await conn.fetchval(
                        """UPDATE training_jobs SET
                               lease_expires_at = now() + make_interval(secs => $3)
                           WHERE id = $1 AND claim_token = $2 AND status = $4 RETURNING true""",
                        claim.job["id"],
                        claim.token,
                        self.settings.training_lease_seconds,
                        J.JOB_STATUS_RUNNING,
                    )
                    await self._bill(conn, claim)
                    spent = await conn.fetchval(
                        "SELECT sum(device_seconds) FROM cost_records WHERE job_id = $1",
                        claim.job["id"],
                    )
            except Exception as exc:  # a Postgres blip: the lease may survive it
                log.warning("heartbeat failed: %s", exc)
                continue
            if not ok:
                log.info("job %s is no longer ours (cancelled or lease lost)", claim.job["id"])
                stop.set()
            elif spent and spent > self.settings.training_max_job_seconds:
                claim.timed_out = True
                stop.set()
            if self.shutdown.is_set():
                stop.set()

    # -- one job --------------------------------------------------------------------------
    async def run_job(self, claim: Claim) -> None:
        job = claim.job
        job_id, user = job["id"], job["user_id"]
        loop = asyncio.get_running_loop()
        storage = Storage(self.channel, self.settings.internal_token())
        hp = store.hp_from_json(job["hyperparameters"])
        session_stop = threading.Event()
        beat = asyncio.create_task(self.heartbeat(claim, session_stop))
        step_reached = int(job["steps_done"])
        try:
            with ctx.acting_for(user):
                try:
                    file_id = await self.pool.fetchval(
                        "SELECT file_id FROM datasets WHERE id = $1", job["dataset_id"]
                    )
                    raw = await storage.download(file_id)
                except ServiceError as exc:
                    raise JobFailure(J.JOB_ERROR_CODE_STORAGE_ERROR, exc.message) from None
                try:
                    path = await asyncio.to_thread(
                        basemodels.resolve, job["base_model"], self.settings
                    )
                    tok = await asyncio.to_thread(
                        basemodels.tokenizer, job["base_model"], self.settings
                    )
                except (OSError, ValueError) as exc:
                    raise JobFailure(J.JOB_ERROR_CODE_MODEL_LOAD_FAILED, str(exc)) from None
                try:
                    plan = await asyncio.to_thread(make_plan, raw, tok, hp)
                except PlanError as exc:
                    raise JobFailure(J.JOB_ERROR_CODE_DATASET_INVALID, str(exc)) from None
                plan.total_steps = int(job["total_steps"]) or plan.total_steps
                last = await self.pool.fetchrow(
                    """SELECT * FROM checkpoints WHERE job_id = $1
                       ORDER BY step DESC, created_at DESC LIMIT 1""",
                    job_id,
                )
                resume = None
                if last is not None:
                    try:
                        resume = await storage.download(last["file_id"])
                    except ServiceError as exc:
                        raise JobFailure(J.JOB_ERROR_CODE_STORAGE_ERROR, exc.message) from None
                    await self._log(claim, f"resuming from checkpoint at step {last['step']}")

                def call(coro: Any) -> Any:
                    return asyncio.run_coroutine_threadsafe(coro, loop).result()

                def on_step(point: StepPoint) -> None:
                    nonlocal step_reached
                    step_reached = point.step
                    if not call(self._record_step(claim, point, plan.total_steps)):
                        session_stop.set()

                def on_checkpoint(point: StepPoint, blob: bytes) -> None:
                    if not call(self._save_checkpoint(claim, storage, point, blob)):
                        session_stop.set()

                session = Session(
                    plan=plan,
                    hp=hp,
                    method=job["method"],
                    model_path=path,
                    pad_token_id=int(tok.pad_token_id),
                    resume=resume,
                    on_step=on_step,
                    on_checkpoint=on_checkpoint,
                    log=lambda text: call(self._log(claim, text)),
                    stop=session_stop,
                    torch_threads=self.settings.training_torch_threads,
                    simulate_step_seconds=self.settings.training_simulate_step_seconds,
                )
                runner = EXECUTORS[job["executor"]]
                claim.base_step = int(last["step"]) if last is not None else 0
                claim.started = loop_time()
                try:
                    result = await asyncio.to_thread(runner, session)
                except Stopped:
                    await self._stopped(claim)
                    return
                except NumericalInstability as exc:
                    raise JobFailure(J.JOB_ERROR_CODE_NUMERICAL_INSTABILITY, str(exc)) from None
                except ModelLoadError as exc:
                    raise JobFailure(J.JOB_ERROR_CODE_MODEL_LOAD_FAILED, str(exc)) from None
                except ServiceError as exc:
                    raise JobFailure(J.JOB_ERROR_CODE_STORAGE_ERROR, exc.message) from None
                except MemoryError:
                    raise JobFailure(J.JOB_ERROR_CODE_OUT_OF_MEMORY, "out of memory") from None
                except RuntimeError as exc:
                    if "out of memory" in str(exc).lower():
                        raise JobFailure(
                            J.JOB_ERROR_CODE_OUT_OF_MEMORY, "the device ran out of memory"
                        ) from None
                    raise
                await self._succeed(claim, storage, result)
        except JobFailure as exc:
            await self._fail(claim, exc.code, exc.message, step_reached)
        except Exception as exc:
            log.exception("job %s failed", job_id)
            await self._fail(
                claim, J.JOB_ERROR_CODE_INTERNAL, f"{type(exc).__name__}: {exc}", step_reached
            )
        finally:
            session_stop.set()
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat
            try:
                async with self.pool.acquire() as conn:
                    await self._bill(conn, claim)
            except Exception as exc:
                log.warning("could not record the final cost of %s: %s", job_id, exc)

    async def _log(self, claim: Claim, text: str, level: int = J.LOG_LEVEL_INFO) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            if await self._still_ours(conn, claim):
                await store.append_event(
                    conn,
                    claim.job["id"],
                    claim.job["attempt"],
                    log=J.LogLine(level=level, text=text),  # type: ignore[arg-type]
                )

    async def _record_step(self, claim: Claim, p: StepPoint, total: int) -> bool:
        job_id, attempt = claim.job["id"], claim.job["attempt"]
        done_here = p.step - claim.base_step
        elapsed = loop_time() - claim.started
        eta = int(elapsed / done_here * (total - p.step)) if done_here > 0 else 0
        async with self.pool.acquire() as conn, conn.transaction():
            if not await self._still_ours(conn, claim):
                return False
            row = await conn.fetchrow(
                """INSERT INTO metrics_points (job_id, attempt, step, epoch, loss, learning_rate,
                       grad_norm, tokens_per_second, eval_loss)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING *""",
                job_id,
                attempt,
                p.step,
                p.epoch,
                p.loss,
                p.learning_rate,
                p.grad_norm,
                p.tokens_per_second,
                p.eval_loss,
            )
            await conn.execute(
                """UPDATE training_jobs SET steps_done = $2, epoch = $3, loss = $4,
                       eval_loss = coalesce($5, eval_loss), tokens_per_second = $6,
                       eta_seconds = $7, updated_at = clock_timestamp() WHERE id = $1""",
                job_id,
                p.step,
                p.epoch,
                p.loss,
                p.eval_loss,
                p.tokens_per_second,
                eta,
            )
            await store.append_event(conn, job_id, attempt, metric=store.metric_proto(row))
        return True

    async def _save_checkpoint(
        self, claim: Claim, storage: Storage, p: StepPoint, blob: bytes
    ) -> bool:
        job = claim.job
        async with self.pool.acquire() as conn:
            owner = await conn.fetchval(
                "SELECT claim_token FROM training_jobs WHERE id = $1", job["id"]
            )
        if owner != claim.token:
            return False
        file = await storage.upload(
            storage_pb2.BUCKET_MODELS,
            f"checkpoint-{job['id']}-step-{p.step}.tar",
            blob,
            labels={"purpose": "checkpoint", "job_id": str(job["id"])},
        )
        async with self.pool.acquire() as conn, conn.transaction():
            if not await self._still_ours(conn, claim):
                return False
            row = await conn.fetchrow(
                """INSERT INTO checkpoints (id, job_id, attempt, step, epoch, loss, eval_loss,
                       size_bytes, storage_path, file_id)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING *""",
                uuid.uuid4(),
                job["id"],
                job["attempt"],
                p.step,
                p.epoch,
                p.loss,
                p.eval_loss,
                len(blob),
                storage_path(storage_pb2.BUCKET_MODELS, job["user_id"], file),
                file.id,
            )
            await store.append_event(
                conn, job["id"], job["attempt"], checkpoint=store.checkpoint_proto(row)
            )
        return True

    async def _stopped(self, claim: Claim) -> None:
        """Cancelled, lease lost, timed out or shutting down."""
        job = claim.job
        async with self.pool.acquire() as conn, conn.transaction():
            if not await self._still_ours(conn, claim):
                return  # cancelled or taken over: nothing more to write
            if claim.timed_out:
                error: dict[str, Any] = {
                    "code": J.JOB_ERROR_CODE_TIMEOUT,
                    "message": "the job ran longer than the maximum duration",
                }
                await store.set_status(
                    conn,
                    job["id"],
                    J.JOB_STATUS_FAILED,
                    error["message"],
                    error=error,
                    extra_sql=", claim_token = NULL",
                )
                return
            last = await conn.fetchval(
                "SELECT max(step) FROM checkpoints WHERE job_id = $1", job["id"]
            )
            await store.set_status(
                conn,
                job["id"],
                J.JOB_STATUS_QUEUED,
                f"worker {self.worker_id} stopped, resuming from step {last or 0}",
                extra_sql=""", claim_token = NULL, lease_expires_at = NULL,
                              queued_at = clock_timestamp()""",
            )

    async def _fail(self, claim: Claim, code: int, message: str, step: int) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            if not await self._still_ours(conn, claim):
                return
            error: dict[str, Any] = {"code": code, "message": message[:2000], "step": step}
            await store.set_status(
                conn,
                claim.job["id"],
                J.JOB_STATUS_FAILED,
                message[:2000],
                error=error,
                extra_sql=", claim_token = NULL",
            )

    async def _succeed(self, claim: Claim, storage: Storage, result: Result) -> None:
        job = claim.job
        files: list[dict[str, Any]] = []
        for name in ("adapter_model.safetensors", "adapter_config.json"):
            content = result.files[name]
            try:
                f = await storage.upload(
                    storage_pb2.BUCKET_MODELS,
                    name,
                    content,
                    labels={"purpose": "adapter", "job_id": str(job["id"])},
                )
            except ServiceError as exc:
                raise JobFailure(J.JOB_ERROR_CODE_STORAGE_ERROR, exc.message) from None
            files.append(
                {
                    "name": name,
                    "file_id": f.id,
                    "size_bytes": len(content),
                    "sha256": hashlib.sha256(content).hexdigest(),
                }
            )
        model_id = uuid.uuid4()
        async with self.pool.acquire() as conn, conn.transaction():
            if not await self._still_ours(conn, claim):
                return
            await conn.execute(
                """INSERT INTO model_artifacts (id, user_id, name, job_id, clone_id, base_model,
                       method, kind, files, size_bytes, steps, final_loss, final_eval_loss)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)""",
                model_id,
                job["user_id"],
                job["name"],
                job["id"],
                job["clone_id"],
                job["base_model"],
                job["method"],
                models_pb2.MODEL_KIND_LORA_ADAPTER,
                files,
                sum(f["size_bytes"] for f in files),
                result.steps,
                result.final_loss,
                result.final_eval_loss,
            )
            if job["clone_id"] is not None:
                await conn.execute(
                    """UPDATE clones SET active_model_id = $2, updated_at = clock_timestamp()
                       WHERE id = $1 AND deleted_at IS NULL""",
                    job["clone_id"],
                    model_id,
                )
            await store.set_status(
                conn,
                job["id"],
                J.JOB_STATUS_SUCCEEDED,
                f"finished {result.steps} steps, final loss {result.final_loss:.4f}",
                extra_sql=", model_id = $5, claim_token = NULL, lease_expires_at = NULL",
                extra_args=(model_id,),
            )

    # -- main loop ------------------------------------------------------------------------
    async def run(self, hub: Hub | None = None) -> None:
        log.info("worker %s (%s) polling for jobs", self.worker_id, self.device)
        with contextlib.ExitStack() as stack:
            woken: asyncio.Event | None = None
            if hub is not None:
                woken = stack.enter_context(hub.subscribe(store.QUEUE_CHANNEL, "*"))
            while not self.shutdown.is_set():
                try:
                    await self.reap()
                    claim = await self.claim()
                except Exception as exc:  # Postgres down or restarting: try again later
                    log.warning("queue unavailable: %s", exc)
                    claim = None
                if claim is not None:
                    log.info("claimed job %s", claim.job["id"])
                    await self.run_job(claim)
                    continue
                if woken is not None:
                    await wait(woken, self.settings.training_poll_seconds)
                else:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(
                            self.shutdown.wait(), self.settings.training_poll_seconds
                        )


async def run_worker(settings: TrainingSettings) -> None:
    logs.configure("training-worker", settings.log_level)
    dsn = settings.dsn()
    await migrations.migrate(dsn, "training", MIGRATIONS)
    pool = await db.create_pool(
        dsn, schema="training", service="training-worker", min_size=1, max_size=4
    )
    channel = open_channel(settings.storage_addr, internal_token=settings.internal_token())
    hub = Hub(dsn, channels=(store.QUEUE_CHANNEL,))
    await hub.start()
    worker = Worker(settings, pool, channel)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.shutdown.set)
    try:
        await worker.run(hub)
    finally:
        await hub.stop()
        await channel.close()
        await pool.close()


__all__ = ["Worker", "run_worker"]
