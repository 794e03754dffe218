"""The training queue's gauges (`aivera_training_jobs` by status, the oldest queued job's
age), refreshed by the training service from Postgres: dashboards show queue depth and
job states, and an alert fires when jobs wait too long for a worker."""

from __future__ import annotations

import asyncio
import logging

from aivera.training.v1 import jobs_pb2
from services.common import metrics
from services.training.store import Store

log = logging.getLogger("aivera.training.queue")

# Every status is exported, 0 included, so a status that empties drops to 0 on the
# dashboards instead of keeping its last count.
_STATUSES = {
    number: name.removeprefix("JOB_STATUS_").lower()
    for name, number in jobs_pb2.JobStatus.items()
    if number != jobs_pb2.JOB_STATUS_UNSPECIFIED
}


async def refresh(store: Store) -> None:
    counts, oldest = await store.queue_stats()
    for number, name in _STATUSES.items():
        metrics.TRAINING_JOBS.labels(name).set(counts.get(number, 0))
    metrics.TRAINING_QUEUE_OLDEST_AGE.set(oldest)


async def keep_fresh(store: Store, interval_seconds: float = 15.0) -> None:
    """Refresh the gauges every `interval_seconds` until cancelled (a service task)."""
    while True:
        try:
            await refresh(store)
        except Exception as exc:  # a database blip: the next round tries again
            log.warning("queue gauges not refreshed: %s", exc)
        await asyncio.sleep(interval_seconds)
