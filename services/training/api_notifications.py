"""Handlers of aivera.training.v1.NotificationService: read the request, call
`Notifications`, answer protos (the live stream included)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from google.protobuf import empty_pb2

from aivera.training.v1 import notifications_pb2
from services.common import context as ctx
from services.common import pages
from services.training.convert import notification_proto
from services.training.hub import Heartbeat
from services.training.notifications import Notifications

N = notifications_pb2


class NotificationService:
    def __init__(self, notifications: Notifications) -> None:
        self.notifications = notifications

    async def ListNotifications(
        self, request: N.ListNotificationsRequest, context: Any
    ) -> N.ListNotificationsResponse:
        user = ctx.require_user_id()
        page = pages.request(
            request.page_size, request.page_token, filter=f"unread_only={request.unread_only}"
        )
        rows, token = await self.notifications.list_notifications(user, request.unread_only, page)
        return N.ListNotificationsResponse(
            notifications=[notification_proto(r) for r in rows], next_page_token=token
        )

    async def WatchNotifications(
        self, request: N.WatchNotificationsRequest, context: Any
    ) -> AsyncIterator[N.NotificationEvent]:
        items = self.notifications.watch(
            ctx.require_user_id(), include_unread=request.include_unread
        )
        async for item in items:
            if isinstance(item, Heartbeat):
                yield N.NotificationEvent(heartbeat=empty_pb2.Empty())
            else:
                yield N.NotificationEvent(notification=notification_proto(item))

    async def MarkRead(self, request: N.MarkReadRequest, context: Any) -> N.MarkReadResponse:
        marked = await self.notifications.mark_read(
            ctx.require_user_id(), list(request.ids), request.all
        )
        return N.MarkReadResponse(marked_count=marked)
