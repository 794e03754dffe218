"""Handlers of aivera.training.v1.WebhookService: read the request, call `Webhooks`,
answer protos (a secret only in the create and rotate answers)."""

from __future__ import annotations

from typing import Any

from google.protobuf import empty_pb2

from aivera.training.v1 import webhooks_pb2
from services.common import context as ctx
from services.common import pages
from services.training.convert import delivery_proto, webhook_proto
from services.training.webhooks import Webhooks

W = webhooks_pb2


class WebhookService:
    def __init__(self, webhooks: Webhooks) -> None:
        self.webhooks = webhooks

    async def CreateWebhook(
        self, request: W.CreateWebhookRequest, context: Any
    ) -> W.CreateWebhookResponse:
        made = await self.webhooks.create(
            ctx.require_user_id(),
            url=request.url,
            event_kinds=list(request.event_kinds),
            description=request.description,
        )
        return W.CreateWebhookResponse(webhook=webhook_proto(made.webhook), secret=made.secret)

    async def GetWebhook(self, request: W.GetWebhookRequest, context: Any) -> W.Webhook:
        return webhook_proto(await self.webhooks.owned(ctx.require_user_id(), request.id))

    async def ListWebhooks(
        self, request: W.ListWebhooksRequest, context: Any
    ) -> W.ListWebhooksResponse:
        page = pages.request(request.page_size, request.page_token)
        rows, token = await self.webhooks.list_webhooks(ctx.require_user_id(), page)
        return W.ListWebhooksResponse(
            webhooks=[webhook_proto(r) for r in rows], next_page_token=token
        )

    async def DeleteWebhook(self, request: W.DeleteWebhookRequest, context: Any) -> empty_pb2.Empty:
        await self.webhooks.delete(ctx.require_user_id(), request.id)
        return empty_pb2.Empty()

    async def RotateWebhookSecret(
        self, request: W.RotateWebhookSecretRequest, context: Any
    ) -> W.RotateWebhookSecretResponse:
        made = await self.webhooks.rotate(ctx.require_user_id(), request.id)
        return W.RotateWebhookSecretResponse(
            webhook=webhook_proto(made.webhook), secret=made.secret
        )

    async def ListWebhookDeliveries(
        self, request: W.ListWebhookDeliveriesRequest, context: Any
    ) -> W.ListWebhookDeliveriesResponse:
        page = pages.request(
            request.page_size, request.page_token, filter=f"webhook={request.webhook_id}"
        )
        rows, token = await self.webhooks.deliveries(
            ctx.require_user_id(), request.webhook_id, page
        )
        return W.ListWebhookDeliveriesResponse(
            deliveries=[delivery_proto(d, a) for d, a in rows], next_page_token=token
        )
