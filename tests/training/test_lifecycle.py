"""The job state machine on its own (no Postgres): every allowed move, every refused one
(FAILED_PRECONDITION with reason JOB_STATE), and what each transition sets."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import grpc
import pytest

from aivera.training.v1 import jobs_pb2 as J
from aivera.training.v1 import notifications_pb2 as N
from services.common.errors import FailedPrecondition, Reason
from services.training import lifecycle
from services.training.lifecycle import Failure, Lease

VALIDATING, QUEUED, RUNNING = J.JOB_STATUS_VALIDATING, J.JOB_STATUS_QUEUED, J.JOB_STATUS_RUNNING
SUCCEEDED, FAILED, CANCELLED = J.JOB_STATUS_SUCCEEDED, J.JOB_STATUS_FAILED, J.JOB_STATUS_CANCELLED
ALL = (VALIDATING, QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)
LEASE = Lease(uuid.uuid4(), "w2", 30.0)
MODEL = uuid.uuid4()


@dataclass(frozen=True)
class Snap:
    """A job as the transitions read it."""

    status: int
    name: str = "job"
    attempt: int = 1
    worker_id: str = "w1"
    worker_losses: int = 0
    steps_done: int = 7


# Each named transition as a call on a job snapshot.
TRANSITIONS: dict[str, Callable[[Snap], Any]] = {
    "queue": lambda j: lifecycle.queue(j, total_steps=10, steps_per_epoch=5),
    "resume": lambda j: lifecycle.resume(j, from_step=4),
    "claim": lambda j: lifecycle.claim(j, LEASE, "cpu"),
    "succeed": lambda j: lifecycle.succeed(j, model_id=MODEL, steps=10, final_loss=0.5),
    "fail": lambda j: lifecycle.fail(j, Failure(J.JOB_ERROR_CODE_INTERNAL, "boom")),
    "time_out": lifecycle.time_out,
    "requeue": lambda j: lifecycle.requeue(j, worker_id="w1", from_step=4),
    "lose_worker": lambda j: lifecycle.lose_worker(j, max_losses=5, from_step=4),
    "cancel": lifecycle.cancel,
    "retry": lifecycle.retry,
}
# From which statuses each one is allowed (anything else is refused).
ALLOWED_FROM: dict[str, set[int]] = {
    "queue": {VALIDATING},
    "resume": {VALIDATING},
    "claim": {QUEUED},
    "succeed": {RUNNING},
    "fail": {VALIDATING, RUNNING},
    "time_out": {RUNNING},
    "requeue": {RUNNING},
    "lose_worker": {RUNNING},
    "cancel": {VALIDATING, QUEUED, RUNNING, CANCELLED},
    "retry": {FAILED, CANCELLED},
}
CASES = [(name, status) for name in TRANSITIONS for status in ALL]


@pytest.mark.parametrize(("name", "status"), CASES)
def test_each_transition_allowed_or_refused(name: str, status: int) -> None:
    job = Snap(status)
    if status in ALLOWED_FROM[name]:
        change = TRANSITIONS[name](job)
        if change is not None:
            assert lifecycle.allows(status, change.status)
        return
    with pytest.raises(FailedPrecondition) as err:
        TRANSITIONS[name](job)
    assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert err.value.reason == Reason.JOB_STATE
    assert err.value.metadata["status"] == J.JobStatus.Name(status)  # type: ignore[arg-type]


def test_terminal_statuses_go_nowhere_but_retry() -> None:
    for status in ALL:
        reachable = {to for to in ALL if lifecycle.allows(status, to)}
        if status == SUCCEEDED:
            assert reachable == set()
        elif status in (FAILED, CANCELLED):
            assert reachable == {VALIDATING}
        else:
            assert CANCELLED in reachable and VALIDATING not in reachable


def test_a_job_from_creation_to_success() -> None:
    created = lifecycle.create()
    assert created.status == VALIDATING and not created.terminal
    queued = lifecycle.queue(Snap(VALIDATING), total_steps=12, steps_per_epoch=4)
    assert queued.status == QUEUED and queued.queued
    assert (queued.total_steps, queued.steps_per_epoch) == (12, 4)
    assert queued.message == "queued: 12 steps"
    running = lifecycle.claim(Snap(QUEUED), LEASE, "cpu")
    assert running.status == RUNNING and running.lease == LEASE and not running.release
    assert running.message == "running on worker w2 (cpu)"
    done = lifecycle.succeed(Snap(RUNNING), model_id=MODEL, steps=12, final_loss=0.25)
    assert done.status == SUCCEEDED and done.terminal and done.release
    assert done.model_id == MODEL and done.error is None
    assert done.notice is not None and done.notice.kind == N.NOTIFICATION_KIND_JOB_SUCCEEDED
    assert done.notice.body == "Job 'job': finished 12 steps, final loss 0.2500"


def test_failures_carry_the_error_and_a_notice() -> None:
    failed = lifecycle.fail(
        Snap(RUNNING), Failure(J.JOB_ERROR_CODE_OUT_OF_MEMORY, "x" * 5000, step=3)
    )
    assert failed.status == FAILED and failed.release and failed.terminal
    assert failed.error is not None and failed.error.code == J.JOB_ERROR_CODE_OUT_OF_MEMORY
    assert len(failed.error.message) == lifecycle.MAX_ERROR_MESSAGE == len(failed.message)
    assert failed.error.as_json()["step"] == 3
    assert failed.notice is not None and failed.notice.kind == N.NOTIFICATION_KIND_JOB_FAILED
    timed_out = lifecycle.time_out(Snap(RUNNING))
    assert timed_out.error is not None and timed_out.error.code == J.JOB_ERROR_CODE_TIMEOUT


def test_a_lost_worker_requeues_until_the_limit() -> None:
    lost = lifecycle.lose_worker(Snap(RUNNING, worker_losses=1), max_losses=2, from_step=4)
    assert lost.status == QUEUED and lost.worker_losses == 2 and lost.release
    assert lost.message == "worker w1 lost, resuming from step 4" and lost.notice is None
    over = lifecycle.lose_worker(Snap(RUNNING, worker_losses=2), max_losses=2, from_step=4)
    assert over.status == FAILED and over.worker_losses == 3
    assert over.error == Failure(J.JOB_ERROR_CODE_WORKER_LOST, "workers were lost 3 times", 7)
    requeued = lifecycle.requeue(Snap(RUNNING), worker_id="w1", from_step=6)
    assert requeued.status == QUEUED and requeued.release and requeued.worker_losses is None
    assert requeued.message == "worker w1 stopped, resuming from step 6"


def test_cancel_is_idempotent_and_retry_starts_a_new_attempt() -> None:
    assert lifecycle.cancel(Snap(CANCELLED)) is None
    cancelled = lifecycle.cancel(Snap(RUNNING))
    assert cancelled is not None and cancelled.status == CANCELLED and cancelled.release
    assert cancelled.notice is not None
    assert cancelled.notice.kind == N.NOTIFICATION_KIND_JOB_CANCELLED
    job = Snap(FAILED, attempt=2, worker_losses=3)
    retried = lifecycle.retry(job)
    assert retried.status == VALIDATING and retried.attempt == 3
    assert retried.worker_losses == 0 and retried.restart and retried.release
    assert retried.error is None and retried.notice is None
    resumed = lifecycle.resume(replace(job, status=VALIDATING), from_step=4)
    assert resumed.status == QUEUED and resumed.message == "queued: resuming from step 4"


@pytest.mark.parametrize("status", ALL)
def test_only_finished_jobs_are_deleted(status: int) -> None:
    if status in lifecycle.TERMINAL:
        lifecycle.check_deletable(Snap(status))
        return
    with pytest.raises(FailedPrecondition) as err:
        lifecycle.check_deletable(Snap(status))
    assert err.value.reason == Reason.JOB_STATE
