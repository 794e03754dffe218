"""Handlers of the generation methods of aivera.training.v1.ImageLoraService
(GenerateImages, GetGeneration, ListGenerations): read the request, call `Generations`,
answer protos. ImageLoraService inherits them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from aivera.training.v1 import image_loras_pb2
from services.common import context as ctx
from services.common import pages
from services.common.protoutil import timestamp
from services.training.convert import cost_proto
from services.training.generations import Done, Generation, Generations, Image, Progress, Queued

L = image_loras_pb2


def image_proto(image: Image) -> L.GeneratedImage:
    row = image.row
    return L.GeneratedImage(
        index=row.position,
        file_id=row.file_id,
        url=image.url,
        url_expire_time=timestamp(image.url_expire),
        width=row.width,
        height=row.height,
    )


def generation_proto(gen: Generation, currency: str = "") -> L.Generation:
    row = gen.row
    # Device time is a LOCAL generation's alone (REPLICATE bills the key's account).
    cost = cost_proto(gen.cost, currency) if row.executor == L.IMAGE_LORA_EXECUTOR_LOCAL else None
    return L.Generation(
        id=str(row.id),
        image_lora=str(row.image_lora_id),
        prompt=row.prompt,
        lora_scale=row.lora_scale,
        num_outputs=row.num_outputs,
        aspect_ratio=row.aspect_ratio,  # type: ignore[arg-type]
        seed=row.seed,
        status=row.status,  # type: ignore[arg-type]
        error=row.error,
        images=[image_proto(i) for i in gen.images],
        executor=row.executor,  # type: ignore[arg-type]
        simulated=row.simulated,
        create_time=timestamp(row.created_at),
        finish_time=timestamp(row.finished_at),
        cost=cost,
    )


class GenerationMethods:
    generations: Generations

    @property
    def currency(self) -> str:
        return self.generations.settings.training_currency

    async def GenerateImages(
        self, request: L.GenerateImagesRequest, context: Any
    ) -> AsyncIterator[L.GenerateImagesEvent]:
        events = self.generations.generate(
            ctx.require_user_id(),
            image_lora=request.image_lora,
            prompt=request.prompt,
            scale=request.lora_scale if request.HasField("lora_scale") else None,
            outputs=request.num_outputs,
            ratio=request.aspect_ratio,
            seed_=request.seed if request.HasField("seed") else None,
        )
        async for event in events:
            if isinstance(event, Queued):
                yield L.GenerateImagesEvent(
                    queued=generation_proto(event.generation, self.currency)
                )
            elif isinstance(event, Progress):
                yield L.GenerateImagesEvent(
                    progress=L.GenerationProgress(
                        status=event.status,  # type: ignore[arg-type]
                        fraction=event.fraction,
                    )
                )
            elif isinstance(event, Image):
                yield L.GenerateImagesEvent(image=image_proto(event))
            elif isinstance(event, Done):
                yield L.GenerateImagesEvent(done=generation_proto(event.generation, self.currency))

    async def GetGeneration(self, request: L.GetGenerationRequest, context: Any) -> L.Generation:
        return generation_proto(
            await self.generations.get(ctx.require_user_id(), request.id), self.currency
        )

    async def ListGenerations(
        self, request: L.ListGenerationsRequest, context: Any
    ) -> L.ListGenerationsResponse:
        user = ctx.require_user_id()
        page = pages.request(request.page_size, request.page_token, filter=request.image_lora)
        gens, token = await self.generations.list(user, request.image_lora, page)
        return L.ListGenerationsResponse(
            generations=[generation_proto(g, self.currency) for g in gens], next_page_token=token
        )
