"""Wake-ups from Postgres NOTIFY: workers write events, notifications and LOCAL
generations from other processes; watchers wait on the hub and re-read the database.
Waits also time out after a short poll interval, so a lost LISTEN connection only slows
watchers down. `Beat` times the heartbeats an idle watch stream sends."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import asyncpg

from services.training.generation_store import GENERATIONS_CHANNEL
from services.training.store import (
    EVENTS_CHANNEL,
    NOTIFICATIONS_CHANNEL,
    QUEUE_CHANNEL,
    WEBHOOKS_CHANNEL,
)

log = logging.getLogger("aivera.training.hub")


class Hub:
    def __init__(
        self,
        dsn: str,
        channels: tuple[str, ...] = (
            EVENTS_CHANNEL,
            NOTIFICATIONS_CHANNEL,
            WEBHOOKS_CHANNEL,
            GENERATIONS_CHANNEL,
        ),
    ) -> None:
        self._dsn = dsn
        self._channels = channels
        self._conn: Any = None
        self._waiters: dict[tuple[str, str], set[asyncio.Event]] = defaultdict(set)

    async def start(self) -> None:
        try:
            self._conn = await asyncpg.connect(self._dsn)
            for channel in self._channels:
                await self._conn.add_listener(channel, self._on_notify)
        except (OSError, asyncpg.PostgresError) as exc:  # watchers fall back to polling
            log.warning("LISTEN unavailable (%s); watchers poll", exc)
            self._conn = None

    async def stop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close()
            self._conn = None

    def _on_notify(self, _conn: Any, _pid: int, channel: str, payload: str) -> None:
        for key in ((channel, payload), (channel, "*")):
            for event in self._waiters.get(key, ()):
                event.set()

    @contextlib.contextmanager
    def subscribe(self, channel: str, key: str) -> Any:
        event = asyncio.Event()
        self._waiters[(channel, key)].add(event)
        try:
            yield event
        finally:
            waiters = self._waiters.get((channel, key))
            if waiters is not None:
                waiters.discard(event)
                if not waiters:
                    self._waiters.pop((channel, key), None)


async def wait(event: asyncio.Event, timeout: float) -> bool:
    """True when woken, False on timeout; clears the event."""
    try:
        await asyncio.wait_for(event.wait(), timeout)
        return True
    except TimeoutError:
        return False
    finally:
        event.clear()


# Watch streams wait at most this long between two looks at the database.
POLL_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """A watch stream has been idle for a while: tell the client it is alive."""

    sequence: int = 0  # the last event sent (job streams)


class Beat:
    """Heartbeat timing of one watch stream."""

    def __init__(self, every: float) -> None:
        self.every = every
        self.idle = 0.0

    def sent(self) -> None:
        """Something went out: the stream is not idle."""
        self.idle = 0.0

    async def wait(self, woken: asyncio.Event) -> bool:
        """Wait for a wake-up or a poll interval; True when a heartbeat is due."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        await wait(woken, min(POLL_SECONDS, self.every))
        self.idle += loop.time() - started
        if self.idle >= self.every:
            self.idle = 0.0
            return True
        return False


__all__ = ["QUEUE_CHANNEL", "Beat", "Heartbeat", "Hub", "wait"]
