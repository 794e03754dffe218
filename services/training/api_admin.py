"""Handlers of aivera.training.v1.TrainingAdminService (admin role, enforced by the RPC
wrapper from the contract)."""

from __future__ import annotations

from typing import Any

from aivera.training.v1 import admin_pb2
from services.common import context as ctx
from services.common import pages
from services.training.admin import Admin
from services.training.convert import job_proto
from services.training.store import CostRow, JobRow

A = admin_pb2


class TrainingAdminService:
    def __init__(self, admin: Admin, currency: str) -> None:
        self.admin = admin
        self.currency = currency

    def _job(self, row: JobRow, costs: list[CostRow]) -> A.AdminJob:
        return A.AdminJob(
            user_id=row.user_id,
            job=job_proto(row, costs, self.currency),
            deleted=row.deleted_at is not None,
        )

    async def ListUserJobs(
        self, request: A.ListUserJobsRequest, context: Any
    ) -> A.ListUserJobsResponse:
        page = pages.request(
            request.page_size,
            request.page_token,
            filter=f"user={request.user_id};status={request.status}",
        )
        rows, token = await self.admin.list_jobs(
            ctx.require_user_id(), request.user_id, request.status, page
        )
        return A.ListUserJobsResponse(
            jobs=[self._job(r, c) for r, c in rows], next_page_token=token
        )

    async def GetUserJob(self, request: A.GetUserJobRequest, context: Any) -> A.AdminJob:
        row, costs = await self.admin.get_job(ctx.require_user_id(), request.id)
        return self._job(row, costs)

    async def ListJobEvents(
        self, request: A.ListJobEventsRequest, context: Any
    ) -> A.ListJobEventsResponse:
        page = pages.request(
            request.page_size,
            request.page_token,
            filter=f"job={request.job_id};logs={request.logs_only}",
        )
        events, token = await self.admin.events(
            ctx.require_user_id(), request.job_id, request.logs_only, page
        )
        return A.ListJobEventsResponse(events=events, next_page_token=token)
