"""Handlers of aivera.training.v1.TrainingService: read the request, call `Jobs`, answer
protos (the event stream included)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from google.protobuf import empty_pb2

from aivera.training.v1 import jobs_pb2
from services.common import context as ctx
from services.common import pages
from services.training.convert import (
    checkpoint_proto,
    cost_proto,
    estimate_proto,
    job_proto,
    metric_proto,
)
from services.training.hub import Heartbeat
from services.training.jobs import CostChanged, Finished, JobDetail, Jobs

J = jobs_pb2


class TrainingService:
    def __init__(self, jobs: Jobs, currency: str) -> None:
        self.jobs = jobs
        self.currency = currency

    def _job(self, detail: JobDetail) -> J.TrainingJob:
        return job_proto(detail.job, detail.costs, self.currency)

    async def CreateJob(self, request: J.CreateJobRequest, context: Any) -> J.TrainingJob:
        detail = await self.jobs.create(
            ctx.require_user_id(),
            name=request.name,
            dataset_id=request.dataset_id,
            clone_id=request.clone_id,
            base_model=request.base_model,
            method=request.method,
            executor=request.executor,
            hyperparameters=request.hyperparameters,
            hardware_class=request.hardware_class,
            init_model_id=request.init_model_id,
        )
        return self._job(detail)

    async def EstimateJob(self, request: J.EstimateJobRequest, context: Any) -> J.JobEstimate:
        out = await self.jobs.estimate(ctx.require_user_id(), request.job)
        return estimate_proto(out.hp, out.estimate, out.quota_message, self.currency)

    async def GetJob(self, request: J.GetJobRequest, context: Any) -> J.TrainingJob:
        return self._job(await self.jobs.get(ctx.require_user_id(), request.id))

    async def ListJobs(self, request: J.ListJobsRequest, context: Any) -> J.ListJobsResponse:
        user = ctx.require_user_id()
        page = pages.request(
            request.page_size, request.page_token, filter=f"status={request.status}"
        )
        details, token = await self.jobs.list_jobs(user, request.status, page)
        return J.ListJobsResponse(jobs=[self._job(d) for d in details], next_page_token=token)

    async def CancelJob(self, request: J.CancelJobRequest, context: Any) -> J.TrainingJob:
        return self._job(await self.jobs.cancel(ctx.require_user_id(), request.id))

    async def RetryJob(self, request: J.RetryJobRequest, context: Any) -> J.TrainingJob:
        detail = await self.jobs.retry(
            ctx.require_user_id(),
            request.id,
            request.hyperparameters,
            list(request.update_mask.paths),
        )
        return self._job(detail)

    async def DeleteJob(self, request: J.DeleteJobRequest, context: Any) -> empty_pb2.Empty:
        await self.jobs.delete(ctx.require_user_id(), request.id)
        return empty_pb2.Empty()

    async def WatchJob(self, request: J.WatchJobRequest, context: Any) -> AsyncIterator[J.JobEvent]:
        items = self.jobs.watch(ctx.require_user_id(), request.id, request.after_sequence)
        async for item in items:
            if isinstance(item, J.JobEvent):
                yield item
            elif isinstance(item, Finished):
                final = J.JobEvent(
                    sequence=item.sequence,
                    attempt=item.detail.job.attempt,
                    final=self._job(item.detail),
                )
                final.create_time.GetCurrentTime()
                yield final
            elif isinstance(item, Heartbeat):
                beat = J.JobEvent(sequence=item.sequence, heartbeat=empty_pb2.Empty())
                beat.create_time.GetCurrentTime()
                yield beat
            elif isinstance(item, CostChanged):
                cost = J.JobEvent(
                    sequence=item.sequence, cost=cost_proto(item.costs, self.currency)
                )
                cost.create_time.GetCurrentTime()
                yield cost

    async def ListMetrics(
        self, request: J.ListMetricsRequest, context: Any
    ) -> J.ListMetricsResponse:
        user = ctx.require_user_id()
        page = pages.request(
            request.page_size,
            request.page_token,
            filter=f"job={request.job_id};from_step={request.from_step}",
        )
        rows, token = await self.jobs.metrics(user, request.job_id, request.from_step, page)
        return J.ListMetricsResponse(
            metric_points=[metric_proto(r) for r in rows], next_page_token=token
        )

    async def ListCheckpoints(
        self, request: J.ListCheckpointsRequest, context: Any
    ) -> J.ListCheckpointsResponse:
        user = ctx.require_user_id()
        page = pages.request(request.page_size, request.page_token, filter=f"job={request.job_id}")
        rows, token = await self.jobs.checkpoints(user, request.job_id, page)
        return J.ListCheckpointsResponse(
            checkpoints=[checkpoint_proto(r) for r in rows], next_page_token=token
        )
