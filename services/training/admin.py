"""An admin's view of every user's training (seed 000's missing piece: reading another
user's job logs took a service key). Reads only; every call writes one audit line in the
JSON log naming the admin, the user and the job looked at."""

from __future__ import annotations

import logging

from aivera.training.v1 import jobs_pb2
from services.common import logs, pages
from services.common.errors import not_found
from services.common.protoutil import parse_uuid
from services.training.store import CostRow, JobRow, Store

log = logging.getLogger("aivera.training.admin")


def audit(action: str, admin: str, **fields: str) -> None:
    log.info(
        "admin %s",
        action,
        extra=logs.fields(audit=f"training.admin.{action}", admin=admin, **fields),
    )


class Admin:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def list_jobs(
        self, admin: str, user_id: str, status: int, page: pages.PageRequest
    ) -> tuple[list[tuple[JobRow, list[CostRow]]], str]:
        audit("list_jobs", admin, target_user=user_id or "*")
        rows, token = await self.store.list_all_jobs(user_id or None, status, page)
        costs = await self.store.costs([r.id for r in rows])
        return [(r, costs[r.id]) for r in rows], token

    async def _job(self, raw_id: str, field: str) -> JobRow:
        job = await self.store.job_by_id(parse_uuid(raw_id, field=field))
        if job is None:
            raise not_found("job", raw_id)
        return job

    async def get_job(self, admin: str, raw_id: str) -> tuple[JobRow, list[CostRow]]:
        job = await self._job(raw_id, "id")
        audit("get_job", admin, target_user=job.user_id, job_id=str(job.id))
        return job, (await self.store.costs([job.id]))[job.id]

    async def events(
        self, admin: str, raw_id: str, logs_only: bool, page: pages.PageRequest
    ) -> tuple[list[jobs_pb2.JobEvent], str]:
        job = await self._job(raw_id, "job_id")
        audit("list_job_events", admin, target_user=job.user_id, job_id=str(job.id))
        events, next_after = await self.store.events_page(job.id, page)
        if logs_only:
            events = [e for e in events if e.HasField("log")]
        token = "" if next_after is None else pages.encode((next_after,), scope=page.scope)
        return events, token
