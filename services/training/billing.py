"""Quotas and costs: a user's limits (an admin's per-user values over the server
defaults), this month's usage (billed GPU hours and spending, from the cost records of
non-simulated jobs), the refusal when a new job would start over them, and the costs by
month. LOCAL image generations on the workers are billed the same way (their own cost
records). Months are UTC calendar months."""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

from services.common import logs, pages
from services.common.errors import InvalidArgument, Reason, ResourceExhausted
from services.training.config import TrainingSettings
from services.training.store import MonthCostRow, QuotaRow, Store

log = logging.getLogger("aivera.training.billing")
QUOTA_FIELDS = ("max_active_jobs", "gpu_hours_per_month", "monthly_budget_micros")


def month_start(now: dt.datetime) -> dt.datetime:
    now = now.astimezone(dt.UTC)
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


@dataclass(frozen=True, slots=True)
class Limits:
    max_active_jobs: int
    gpu_hours_per_month: float  # 0: unlimited
    monthly_budget_micros: int  # 0: no budget


@dataclass(frozen=True, slots=True)
class Usage:
    month: dt.datetime
    active_jobs: int
    gpu_hours: float
    spent_micros: int


@dataclass(frozen=True, slots=True)
class QuotaView:
    user_id: str
    limits: Limits
    usage: Usage


def limits_of(settings: TrainingSettings, row: QuotaRow | None) -> Limits:
    """The user's own limits where an admin set them, the server defaults elsewhere."""
    own = row or QuotaRow("", None, None, None)
    return Limits(
        max_active_jobs=(
            settings.training_max_active_jobs
            if own.max_active_jobs is None
            else own.max_active_jobs
        ),
        gpu_hours_per_month=(
            settings.training_gpu_hours_per_month
            if own.gpu_hours_per_month is None
            else own.gpu_hours_per_month
        ),
        monthly_budget_micros=(
            settings.training_monthly_budget_micros
            if own.monthly_budget_micros is None
            else own.monthly_budget_micros
        ),
    )


def over_quota(
    limits: Limits, usage: Usage, *, extra_gpu_hours: float = 0.0, extra_micros: int = 0
) -> str:
    """Why `extra` more would go over the month's limits ("" when it fits)."""
    if limits.gpu_hours_per_month and (
        usage.gpu_hours + extra_gpu_hours > limits.gpu_hours_per_month
        or usage.gpu_hours >= limits.gpu_hours_per_month
    ):
        return (
            f"GPU hours this month: {usage.gpu_hours:.2f} used"
            + (f" + {extra_gpu_hours:.2f} expected" if extra_gpu_hours else "")
            + f" of {limits.gpu_hours_per_month:g}"
        )
    if limits.monthly_budget_micros and (
        usage.spent_micros + extra_micros > limits.monthly_budget_micros
        or usage.spent_micros >= limits.monthly_budget_micros
    ):
        return (
            f"budget this month: {usage.spent_micros / 1e6:.2f} spent"
            + (f" + {extra_micros / 1e6:.2f} expected" if extra_micros else "")
            + f" of {limits.monthly_budget_micros / 1e6:.2f}"
        )
    return ""


class Billing:
    def __init__(self, store: Store, settings: TrainingSettings) -> None:
        self.store = store
        self.settings = settings

    async def quota(self, store: Store, user: str) -> QuotaView:
        """The user's limits and this month's usage (read through `store`, which may be a
        transaction)."""
        start = month_start(await store.clock())
        limits = limits_of(self.settings, await store.user_quota(user))
        gpu_seconds, spent = await store.month_usage(user, start)
        active = await store.count_active_jobs(user)
        return QuotaView(user, limits, Usage(start, active, gpu_seconds / 3600.0, spent))

    @staticmethod
    def why_over(
        view: QuotaView, *, gpu: bool, extra_gpu_hours: float = 0.0, extra_micros: int = 0
    ) -> str:
        """Why the month has no room for `extra` more ("" when it has); GPU hours count
        only for a job on a GPU."""
        limits = view.limits
        if not gpu:
            limits = Limits(limits.max_active_jobs, 0.0, limits.monthly_budget_micros)
        return over_quota(
            limits, view.usage, extra_gpu_hours=extra_gpu_hours, extra_micros=extra_micros
        )

    @staticmethod
    def limited(view: QuotaView, *, gpu: bool) -> bool:
        """Whether a GPU-hour (for a GPU job) or budget limit applies at all."""
        return bool(view.limits.monthly_budget_micros or (gpu and view.limits.gpu_hours_per_month))

    def check(
        self,
        view: QuotaView,
        *,
        gpu: bool,
        extra_gpu_hours: float = 0.0,
        extra_micros: int = 0,
        what: str = "job",
    ) -> None:
        """RESOURCE_EXHAUSTED (QUOTA_EXCEEDED) when the month's GPU hours (for a GPU job
        or LOCAL generation: `what`) or the budget have no room for what it is expected
        to use."""
        why = self.why_over(
            view, gpu=gpu, extra_gpu_hours=extra_gpu_hours, extra_micros=extra_micros
        )
        if why:
            raise ResourceExhausted(
                f"the monthly quota has no room for this {what} ({why})",
                reason=Reason.QUOTA_EXCEEDED,
                metadata={"month": view.usage.month.strftime("%Y-%m")},
            )

    async def update(
        self,
        admin: str,
        user: str,
        *,
        max_active_jobs: int,
        gpu_hours_per_month: float,
        monthly_budget_micros: int,
        paths: list[str],
    ) -> QuotaView:
        if not user.strip():
            raise InvalidArgument("user_id must not be empty", field="user_id")
        for path in paths:
            if path not in QUOTA_FIELDS:
                raise InvalidArgument(
                    f"update_mask has {path!r}; allowed: {', '.join(QUOTA_FIELDS)}",
                    field="update_mask",
                )
        if not paths:
            raise InvalidArgument("update_mask must name a field", field="update_mask")
        values = {
            "max_active_jobs": max_active_jobs,
            "gpu_hours_per_month": gpu_hours_per_month,
            "monthly_budget_micros": monthly_budget_micros,
        }
        for name, value in values.items():
            if value < 0 or value != value:  # negative or NaN
                raise InvalidArgument(f"{name} must not be negative", field=name)
        row = QuotaRow(
            user_id=user,
            max_active_jobs=max_active_jobs or None,
            gpu_hours_per_month=gpu_hours_per_month or None,
            monthly_budget_micros=monthly_budget_micros or None,
        )
        async with self.store.transaction() as tx:
            await tx.set_user_quota(row, paths, admin)
            view = await self.quota(tx, user)
        # The audit trail: who changed whose limits to what (no secret in it).
        log.info(
            "quota updated",
            extra=logs.fields(
                audit="training.quota.update",
                admin=admin,
                target_user=user,
                changed={p: values[p] for p in paths},
            ),
        )
        return view

    async def monthly(
        self, user: str, page: pages.PageRequest
    ) -> tuple[list[list[MonthCostRow]], str]:
        return await self.store.monthly_costs(user, page)
