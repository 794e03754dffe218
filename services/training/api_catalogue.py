"""Handlers of aivera.training.v1.CatalogueService: the allowed base models and the
hardware classes, paged by position (both lists are small and change only with the
server's settings)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

from aivera.training.v1 import catalogue_pb2
from services.common import pages
from services.training import catalogue
from services.training.config import TrainingSettings
from services.training.convert import base_model_proto, hardware_class_proto

C = catalogue_pb2
T = TypeVar("T")


def _page(items: Sequence[T], size: int, token: str) -> tuple[list[T], str]:
    """One page of a list held in memory; the token is the next position."""
    page = pages.request(size, token)
    start = int(page.after[0]) if page.after else 0
    rows = list(enumerate(items))[start : start + page.limit]
    chosen, next_token = pages.take(rows, page, key=lambda r: (r[0] + 1,))
    return [item for _, item in chosen], next_token


class CatalogueService:
    def __init__(self, settings: TrainingSettings) -> None:
        self.settings = settings

    async def ListBaseModels(
        self, request: C.ListBaseModelsRequest, context: Any
    ) -> C.ListBaseModelsResponse:
        models = await catalogue.base_models(self.settings)
        chosen, token = _page(models, request.page_size, request.page_token)
        return C.ListBaseModelsResponse(
            base_models=[base_model_proto(m) for m in chosen], next_page_token=token
        )

    async def ListHardwareClasses(
        self, request: C.ListHardwareClassesRequest, context: Any
    ) -> C.ListHardwareClassesResponse:
        classes = catalogue.hardware_classes(self.settings)
        chosen, token = _page(classes, request.page_size, request.page_token)
        currency = self.settings.training_currency
        return C.ListHardwareClassesResponse(
            hardware_classes=[hardware_class_proto(h, currency) for h in chosen],
            next_page_token=token,
        )
