"""Notifications of a user (jobs finished, datasets validated): listed, watched live and
marked read. They are written by the store with the change they report, in the same
transaction, so a watcher never sees one without the other."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator

from services.common import pages
from services.common.errors import InvalidArgument, NotFound
from services.common.protoutil import parse_uuid
from services.training.config import TrainingSettings
from services.training.hub import Beat, Heartbeat, Hub
from services.training.store import NOTIFICATIONS_CHANNEL, NotificationRow, Store

MAX_MARK = 1000
UNREAD_REPLAY = 100  # unread ones a new watch stream starts with, at most
# Rows committed slightly out of creation order are found by re-reading this far back
# (those already sent are skipped).
_OVERLAP = dt.timedelta(seconds=1)


class Notifications:
    def __init__(self, store: Store, settings: TrainingSettings, hub: Hub) -> None:
        self.store = store
        self.settings = settings
        self.hub = hub

    async def list_notifications(
        self, user: str, unread_only: bool, page: pages.PageRequest
    ) -> tuple[list[NotificationRow], str]:
        return await self.store.list_notifications(user, unread_only, page)

    async def watch(
        self, user: str, *, include_unread: bool
    ) -> AsyncIterator[NotificationRow | Heartbeat]:
        """New notifications as they come (after the unread ones, if asked), with
        heartbeats while idle. Never ends by itself."""
        beat = Beat(self.settings.training_watch_heartbeat_seconds)
        with self.hub.subscribe(NOTIFICATIONS_CHANNEL, user) as woken:
            since = await self.store.clock()
            seen: set[uuid.UUID] = set()
            if include_unread:
                for row in await self.store.unread_notifications(user, UNREAD_REPLAY):
                    seen.add(row.id)
                    yield row
            while True:
                rows = await self.store.notifications_since(user, since - _OVERLAP)
                for row in rows:
                    if row.id not in seen:
                        seen.add(row.id)
                        beat.sent()
                        yield row
                if rows:
                    since = max(since, rows[-1].created_at)
                if await beat.wait(woken):
                    yield Heartbeat()

    async def mark_read(self, user: str, ids: list[str], all: bool) -> int:
        """How many of them were unread. Either `ids` (all the user's) or `all`."""
        if all == bool(ids):
            raise InvalidArgument("give either ids or all, not both or neither", field="ids")
        if all:
            return await self.store.mark_read(user, None)
        if len(ids) > MAX_MARK:
            raise InvalidArgument(f"at most {MAX_MARK} ids", field="ids")
        wanted = list({parse_uuid(i, field="ids") for i in ids})
        async with self.store.transaction() as tx:
            if await tx.count_own_notifications(user, wanted) != len(wanted):
                raise NotFound("a notification was not found")
            return await tx.mark_read(user, wanted)
