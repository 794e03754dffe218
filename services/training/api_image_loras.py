"""Handlers of aivera.training.v1.ImageLoraService: read the request (the update mask
too), call `ImageLoras`, answer protos."""

from __future__ import annotations

from typing import Any

from google.protobuf import empty_pb2

from aivera.training.v1 import image_loras_pb2
from services.common import context as ctx
from services.common import pages
from services.common.protoutil import mask_paths, timestamp
from services.training.api_generations import GenerationMethods
from services.training.generations import Generations
from services.training.image_lora_store import ReferenceImageRow
from services.training.image_loras import ImageLora, ImageLoras

L = image_loras_pb2
UPDATABLE = ("name", "trigger_word")


def image_proto(row: ReferenceImageRow) -> L.ReferenceImage:
    return L.ReferenceImage(
        id=str(row.id),
        file_id=row.file_id,
        caption=row.caption,
        format=row.format,  # type: ignore[arg-type]
        width=row.width,
        height=row.height,
        size_bytes=row.size_bytes,
        sha256=row.sha256,
        create_time=timestamp(row.created_at),
    )


def lora_proto(lora: ImageLora) -> L.ImageLora:
    row = lora.row
    return L.ImageLora(
        id=str(row.id),
        name=row.name,
        kind=row.kind,  # type: ignore[arg-type]
        trigger_word=row.trigger_word,
        status=row.status,  # type: ignore[arg-type]
        error=row.error,
        reference_images=[image_proto(i) for i in lora.images],
        create_time=timestamp(row.created_at),
        update_time=timestamp(row.updated_at),
        finish_time=timestamp(row.finished_at),
        executor=row.executor,  # type: ignore[arg-type]
        simulated=row.simulated,
        progress=row.progress,
        job_id=str(row.job_id) if row.job_id is not None else "",
        attempt=row.attempt,
        weights_size_bytes=row.weights_size_bytes,
        training_steps=row.training_steps,
    )


class ImageLoraService(GenerationMethods):
    def __init__(self, loras: ImageLoras, generations: Generations) -> None:
        self.loras = loras
        self.generations = generations

    async def CreateImageLora(self, request: L.CreateImageLoraRequest, context: Any) -> L.ImageLora:
        lora = await self.loras.create(
            ctx.require_user_id(),
            name=request.name,
            kind_=request.kind,
            trigger_word_=request.trigger_word,
        )
        return lora_proto(lora)

    async def GetImageLora(self, request: L.GetImageLoraRequest, context: Any) -> L.ImageLora:
        return lora_proto(await self.loras.get(ctx.require_user_id(), request.id))

    async def ListImageLoras(
        self, request: L.ListImageLorasRequest, context: Any
    ) -> L.ListImageLorasResponse:
        user = ctx.require_user_id()
        page = pages.request(request.page_size, request.page_token)
        loras, token = await self.loras.list(user, page)
        return L.ListImageLorasResponse(
            image_loras=[lora_proto(x) for x in loras], next_page_token=token
        )

    async def UpdateImageLora(self, request: L.UpdateImageLoraRequest, context: Any) -> L.ImageLora:
        user = ctx.require_user_id()
        paths = mask_paths(request.update_mask, UPDATABLE)
        lora = request.image_lora
        updated = await self.loras.update(
            user,
            lora.id,
            name=lora.name if "name" in paths else None,
            trigger_word_=lora.trigger_word if "trigger_word" in paths else None,
        )
        return lora_proto(updated)

    async def DeleteImageLora(
        self, request: L.DeleteImageLoraRequest, context: Any
    ) -> empty_pb2.Empty:
        await self.loras.delete(ctx.require_user_id(), request.id)
        return empty_pb2.Empty()

    async def AddReferenceImage(
        self, request: L.AddReferenceImageRequest, context: Any
    ) -> L.ImageLora:
        lora = await self.loras.add_image(
            ctx.require_user_id(), request.image_lora, request.file_id, request.caption
        )
        return lora_proto(lora)

    async def RemoveReferenceImage(
        self, request: L.RemoveReferenceImageRequest, context: Any
    ) -> L.ImageLora:
        lora = await self.loras.remove_image(
            ctx.require_user_id(), request.image_lora, request.reference_image
        )
        return lora_proto(lora)

    async def StartTraining(self, request: L.StartTrainingRequest, context: Any) -> L.ImageLora:
        lora = await self.loras.start(
            ctx.require_user_id(),
            request.image_lora,
            executor=request.executor,
            steps=request.steps,
        )
        return lora_proto(lora)

    async def CancelTraining(self, request: L.CancelTrainingRequest, context: Any) -> L.ImageLora:
        return lora_proto(await self.loras.cancel(ctx.require_user_id(), request.image_lora))
