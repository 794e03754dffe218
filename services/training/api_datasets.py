"""Handlers of aivera.training.v1.DatasetService: read the request, call `Datasets`,
answer protos."""

from __future__ import annotations

from typing import Any

from google.protobuf import empty_pb2

from aivera.training.v1 import datasets_pb2
from services.common import context as ctx
from services.common import pages
from services.training.convert import dataset_proto
from services.training.datasets import Datasets

D = datasets_pb2


class DatasetService:
    def __init__(self, datasets: Datasets) -> None:
        self.datasets = datasets

    async def CreateDataset(self, request: D.CreateDatasetRequest, context: Any) -> D.Dataset:
        row = await self.datasets.create(
            ctx.require_user_id(),
            name=request.name,
            file_id=request.file_id,
            base_model=request.base_model,
            max_seq_length=request.max_seq_length,
            description=request.description,
        )
        return dataset_proto(row)

    async def UpdateDataset(self, request: D.UpdateDatasetRequest, context: Any) -> D.Dataset:
        row = await self.datasets.update(
            ctx.require_user_id(), request.dataset, list(request.update_mask.paths)
        )
        return dataset_proto(row)

    async def GetDataset(self, request: D.GetDatasetRequest, context: Any) -> D.Dataset:
        return dataset_proto(await self.datasets.get(ctx.require_user_id(), request.id))

    async def ListDatasets(
        self, request: D.ListDatasetsRequest, context: Any
    ) -> D.ListDatasetsResponse:
        user = ctx.require_user_id()
        page = pages.request(
            request.page_size, request.page_token, filter=f"status={request.status}"
        )
        rows, token = await self.datasets.list_datasets(user, request.status, page)
        return D.ListDatasetsResponse(
            datasets=[dataset_proto(r) for r in rows], next_page_token=token
        )

    async def DeleteDataset(self, request: D.DeleteDatasetRequest, context: Any) -> empty_pb2.Empty:
        await self.datasets.delete(ctx.require_user_id(), request.id)
        return empty_pb2.Empty()

    async def PreviewDataset(
        self, request: D.PreviewDatasetRequest, context: Any
    ) -> D.PreviewDatasetResponse:
        examples = await self.datasets.preview(ctx.require_user_id(), request.id, request.limit)
        return D.PreviewDatasetResponse(examples=examples)
