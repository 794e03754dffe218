"""Handlers of aivera.training.v1.BillingService: the caller's quota and monthly costs,
and an admin's per-user quota."""

from __future__ import annotations

from typing import Any

from aivera.training.v1 import billing_pb2
from services.common import context as ctx
from services.common import pages
from services.training.billing import Billing
from services.training.convert import month_proto, quota_proto

B = billing_pb2


class BillingService:
    def __init__(self, billing: Billing, currency: str) -> None:
        self.billing = billing
        self.currency = currency

    async def GetQuota(self, request: B.GetQuotaRequest, context: Any) -> B.Quota:
        user = ctx.require_user_id()
        view = await self.billing.quota(self.billing.store, user)
        return quota_proto(view, self.currency)

    async def ListCostSummaries(
        self, request: B.ListCostSummariesRequest, context: Any
    ) -> B.ListCostSummariesResponse:
        user = ctx.require_user_id()
        page = pages.request(request.page_size, request.page_token)
        months, token = await self.billing.monthly(user, page)
        return B.ListCostSummariesResponse(
            cost_summaries=[month_proto(m, self.currency) for m in months],
            next_page_token=token,
        )

    async def UpdateQuota(self, request: B.UpdateQuotaRequest, context: Any) -> B.Quota:
        admin = ctx.require_user_id()
        view = await self.billing.update(
            admin,
            request.user_id,
            max_active_jobs=request.max_active_jobs,
            gpu_hours_per_month=request.gpu_hours_per_month,
            monthly_budget_micros=request.monthly_budget_micros,
            paths=list(request.update_mask.paths),
        )
        return quota_proto(view, self.currency)
