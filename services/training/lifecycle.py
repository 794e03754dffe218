"""The job state machine: which status a job may move to from where, and what each named
transition sets on the job. Pure logic, no I/O: a transition reads a snapshot of the job
(locked by the caller's transaction) and returns a `Change` that `Store.apply` writes
with its event, so a refused transition writes nothing.

    create ──▶ VALIDATING ──queue──▶ QUEUED ──claim──▶ RUNNING ──succeed──▶ SUCCEEDED
                  │                    ▲                  │
                  │                    └─requeue, lose_worker (under the limit)
                  │                                       │
                  └──fail──────────▶ FAILED ◀──fail, time_out, lose_worker (over it)
    VALIDATING, QUEUED, RUNNING ──cancel──▶ CANCELLED   (cancelling it again: no change)
    FAILED, CANCELLED ──retry──▶ VALIDATING ──resume──▶ QUEUED   (from the last checkpoint)

A disallowed transition is FAILED_PRECONDITION with reason JOB_STATE. Terminal statuses
notify the user; moving to QUEUED wakes the workers (both done by the store).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias

from aivera.training.v1 import jobs_pb2, notifications_pb2
from services.common.errors import FailedPrecondition, Reason

J = jobs_pb2
Status: TypeAlias = jobs_pb2.JobStatus.ValueType
ErrorCode: TypeAlias = jobs_pb2.JobErrorCode.ValueType

VALIDATING = J.JOB_STATUS_VALIDATING
QUEUED = J.JOB_STATUS_QUEUED
RUNNING = J.JOB_STATUS_RUNNING
SUCCEEDED = J.JOB_STATUS_SUCCEEDED
FAILED = J.JOB_STATUS_FAILED
CANCELLED = J.JOB_STATUS_CANCELLED

ACTIVE: tuple[Status, ...] = (VALIDATING, QUEUED, RUNNING)
TERMINAL: tuple[Status, ...] = (SUCCEEDED, FAILED, CANCELLED)

# Every allowed move; anything else is refused.
ALLOWED: dict[Status, frozenset[Status]] = {
    VALIDATING: frozenset({QUEUED, FAILED, CANCELLED}),
    QUEUED: frozenset({RUNNING, CANCELLED}),
    RUNNING: frozenset({QUEUED, SUCCEEDED, FAILED, CANCELLED}),
    SUCCEEDED: frozenset(),
    FAILED: frozenset({VALIDATING}),
    CANCELLED: frozenset({VALIDATING}),
}

# Error messages are stored and shown; a runaway traceback is cut here.
MAX_ERROR_MESSAGE = 2000

_NOTICES: dict[Status, tuple[notifications_pb2.NotificationKind.ValueType, str]] = {
    SUCCEEDED: (notifications_pb2.NOTIFICATION_KIND_JOB_SUCCEEDED, "Training finished"),
    FAILED: (notifications_pb2.NOTIFICATION_KIND_JOB_FAILED, "Training failed"),
    CANCELLED: (notifications_pb2.NOTIFICATION_KIND_JOB_CANCELLED, "Training cancelled"),
}


class Job(Protocol):
    """What the transitions read of a job (a `store.JobRow` is one)."""

    @property
    def name(self) -> str: ...
    @property
    def status(self) -> int: ...
    @property
    def attempt(self) -> int: ...
    @property
    def worker_id(self) -> str: ...
    @property
    def worker_losses(self) -> int: ...
    @property
    def steps_done(self) -> int: ...


@dataclass(frozen=True, slots=True)
class Failure:
    """Why a job failed (the job's `error`)."""

    code: ErrorCode
    message: str
    step: int = 0

    def as_json(self) -> dict[str, Any]:
        return {"code": int(self.code), "message": self.message, "step": self.step}


@dataclass(frozen=True, slots=True)
class Lease:
    """A worker's claim on a running job, renewed by its heartbeat."""

    token: uuid.UUID
    worker_id: str
    seconds: float


@dataclass(frozen=True, slots=True)
class Notice:
    """The notification a terminal status sends the job's owner."""

    kind: notifications_pb2.NotificationKind.ValueType
    title: str
    body: str


@dataclass(frozen=True, slots=True)
class Change:
    """A decided transition: the new status, the message of its StatusChanged event, and
    what else it sets on the job (None / False: unchanged)."""

    status: Status
    message: str
    error: Failure | None = None  # the job's error: set when FAILED, cleared otherwise
    attempt: int | None = None
    worker_losses: int | None = None
    total_steps: int | None = None
    steps_per_epoch: int | None = None
    lease: Lease | None = None  # take the lease (and the start time, if not set yet)
    release: bool = False  # drop the claim token and the lease
    restart: bool = False  # clear the start time: a new attempt starts
    model_id: uuid.UUID | None = None
    notice: Notice | None = None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def queued(self) -> bool:
        return self.status == QUEUED


def status_name(status: int) -> str:
    return J.JobStatus.Name(status) if status in J.JobStatus.values() else str(status)  # type: ignore[arg-type]


def allows(status: int, to: Status) -> bool:
    return to in ALLOWED.get(status, frozenset())  # type: ignore[call-overload]


def _check(job: Job, sources: tuple[Status, ...], to: Status, rule: str) -> None:
    """Refuse the transition unless the job is in one of its `sources` (every named
    transition stays inside the ALLOWED graph)."""
    if job.status not in sources or not allows(job.status, to):
        name = status_name(job.status)
        raise FailedPrecondition(
            f"the job is {name}; {rule}", reason=Reason.JOB_STATE, metadata={"status": name}
        )


def _notice(job: Job, status: Status, message: str) -> Notice | None:
    entry = _NOTICES.get(status)
    if entry is None:
        return None
    kind, title = entry
    return Notice(kind, title, f"Job {job.name!r}: {message}")


def _failed(job: Job, failure: Failure, **fields: Any) -> Change:
    failure = Failure(failure.code, failure.message[:MAX_ERROR_MESSAGE], failure.step)
    return Change(
        FAILED,
        failure.message,
        error=failure,
        release=True,
        notice=_notice(job, FAILED, failure.message),
        **fields,
    )


# -- the transitions ------------------------------------------------------------------------
def create() -> Change:
    """A new job starts VALIDATING (its first event)."""
    return Change(VALIDATING, "validating")


def queue(job: Job, *, total_steps: int, steps_per_epoch: int) -> Change:
    """Validation passed: wait for a worker, with the plan's step counts."""
    _check(job, (VALIDATING,), QUEUED, "only a validating job can be queued")
    return Change(
        QUEUED,
        f"queued: {total_steps} steps",
        total_steps=total_steps,
        steps_per_epoch=steps_per_epoch,
    )


def resume(job: Job, *, from_step: int) -> Change:
    """A retried job whose plan is known goes back to the queue at once."""
    _check(job, (VALIDATING,), QUEUED, "only a validating job can be queued")
    return Change(QUEUED, f"queued: resuming from step {from_step}")


def claim(job: Job, lease: Lease, device: str) -> Change:
    """A worker takes a queued job."""
    _check(job, (QUEUED,), RUNNING, "only a queued job can be claimed")
    return Change(RUNNING, f"running on worker {lease.worker_id} ({device})", lease=lease)


def succeed(job: Job, *, model_id: uuid.UUID | None, steps: int, final_loss: float) -> Change:
    """Training finished: with its model artifact (none for an image LoRA, whose weights
    the LoRA holds)."""
    _check(job, (RUNNING,), SUCCEEDED, "only a running job can succeed")
    message = f"finished {steps} steps, final loss {final_loss:.4f}"
    return Change(
        SUCCEEDED,
        message,
        model_id=model_id,
        release=True,
        notice=_notice(job, SUCCEEDED, message),
    )


def fail(job: Job, failure: Failure) -> Change:
    """Validation or training stopped with an error."""
    _check(job, (VALIDATING, RUNNING), FAILED, "only a validating or running job can fail")
    return _failed(job, failure)


def time_out(job: Job) -> Change:
    """The job ran past the maximum duration (all attempts together)."""
    _check(job, (RUNNING,), FAILED, "only a running job can time out")
    return _failed(
        job, Failure(J.JOB_ERROR_CODE_TIMEOUT, "the job ran longer than the maximum duration")
    )


def requeue(job: Job, *, worker_id: str, from_step: int) -> Change:
    """The worker stopped (shutting down): another resumes it without waiting for the
    lease to expire."""
    _check(job, (RUNNING,), QUEUED, "only a running job can be requeued")
    return Change(
        QUEUED, f"worker {worker_id} stopped, resuming from step {from_step}", release=True
    )


def lose_worker(job: Job, *, max_losses: int, from_step: int) -> Change:
    """The lease expired (the worker died): requeue, or fail after `max_losses`."""
    _check(job, (RUNNING,), QUEUED, "only a running job can lose its worker")
    losses = job.worker_losses + 1
    if losses > max_losses:
        failure = Failure(
            J.JOB_ERROR_CODE_WORKER_LOST, f"workers were lost {losses} times", job.steps_done
        )
        return _failed(job, failure, worker_losses=losses)
    return Change(
        QUEUED,
        f"worker {job.worker_id} lost, resuming from step {from_step}",
        worker_losses=losses,
        release=True,
    )


def cancel(job: Job) -> Change | None:
    """Stop an unfinished job; None when it is cancelled already (cancel is idempotent)."""
    if job.status == CANCELLED:
        return None
    _check(job, ACTIVE, CANCELLED, "only unfinished jobs can be cancelled")
    return Change(
        CANCELLED,
        "cancelled by user",
        release=True,
        notice=_notice(job, CANCELLED, "cancelled by user"),
    )


def retry(job: Job) -> Change:
    """A new attempt of a failed or cancelled job: validated again (or resumed at once
    by `resume` when its plan is known)."""
    _check(job, (FAILED, CANCELLED), VALIDATING, "only FAILED or CANCELLED jobs can be retried")
    return Change(
        VALIDATING,
        "retrying",
        attempt=job.attempt + 1,
        worker_losses=0,
        release=True,
        restart=True,
    )


def check_deletable(job: Job) -> None:
    """Only finished jobs are deleted (a running one is cancelled first)."""
    if job.status not in TERMINAL:
        name = status_name(job.status)
        raise FailedPrecondition(
            f"the job is {name}, not finished: cancel it first",
            reason=Reason.JOB_STATE,
            metadata={"status": name},
        )
