"""Handlers of aivera.training.v1.ModelService: read the request, call `Models`, answer
protos."""

from __future__ import annotations

from typing import Any

from google.protobuf import empty_pb2

from aivera.training.v1 import models_pb2
from services.common import context as ctx
from services.common import pages
from services.common.protoutil import timestamp
from services.training.artifacts import Models
from services.training.convert import model_proto

M = models_pb2


class ModelService:
    def __init__(self, models: Models) -> None:
        self.models = models

    async def ListModels(self, request: M.ListModelsRequest, context: Any) -> M.ListModelsResponse:
        user = ctx.require_user_id()
        page = pages.request(
            request.page_size, request.page_token, filter=f"clone={request.clone_id}"
        )
        rows, token = await self.models.list_models(user, request.clone_id, page)
        return M.ListModelsResponse(models=[model_proto(r) for r in rows], next_page_token=token)

    async def GetModel(self, request: M.GetModelRequest, context: Any) -> M.ModelArtifact:
        return model_proto(await self.models.get(ctx.require_user_id(), request.id))

    async def CreateModelDownloadUrl(
        self, request: M.CreateModelDownloadUrlRequest, context: Any
    ) -> M.CreateModelDownloadUrlResponse:
        urls, expire = await self.models.download_urls(
            ctx.require_user_id(), request.id, request.ttl_seconds
        )
        out = M.CreateModelDownloadUrlResponse(expire_time=timestamp(expire))
        for u in urls:
            out.urls.add(name=u.name, url=u.url, size_bytes=u.size_bytes)
        return out

    async def UpdateModel(self, request: M.UpdateModelRequest, context: Any) -> M.ModelArtifact:
        row = await self.models.rename(
            ctx.require_user_id(), request.model, list(request.update_mask.paths)
        )
        return model_proto(row)

    async def DeleteModel(self, request: M.DeleteModelRequest, context: Any) -> empty_pb2.Empty:
        await self.models.delete(ctx.require_user_id(), request.id)
        return empty_pb2.Empty()

    async def PromoteCheckpoint(
        self, request: M.PromoteCheckpointRequest, context: Any
    ) -> M.ModelArtifact:
        row = await self.models.promote(
            ctx.require_user_id(), request.job_id, request.checkpoint_id, request.name
        )
        return model_proto(row)
