"""A running turn: its events, the answer as it grows, and how it ends.

One turn at a time per chat is enforced by the database (the unique index on running
answers, see store.begin_turn), not by process memory, since chat runs as replicas. While
the turn runs, the partial answer and a heartbeat are written every
`turn_flush_interval_seconds`; the write also tells the turn when its chat was deleted.
Whatever ends the turn (answer, failure, client gone), `finish` stores the outcome once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from google.protobuf import duration_pb2

from aivera.chat.v1 import chat_pb2
from aivera.common.v1 import common_pb2
from services.chat.pipeline.persistence import TurnStore
from services.chat.providers.base import Usage
from services.chat.store import (
    STATUS_COMPLETE,
    STATUS_ERROR,
    STATUS_INCOMPLETE,
    ImageRow,
    MessageRow,
    SearchRow,
    StoredError,
    TurnOutcome,
)

log = logging.getLogger("aivera.chat.turns")


class Turn:
    """State and event sink of one turn (one SendMessage)."""

    def __init__(
        self,
        store: TurnStore,
        *,
        chat_id: uuid.UUID,
        message_id: uuid.UUID,
        flush_interval: float,
    ) -> None:
        self.store = store
        self.chat_id = chat_id
        self.message_id = message_id
        self.flush_interval = flush_interval
        self.events: asyncio.Queue[chat_pb2.ChatEvent | None] = asyncio.Queue()
        self.parts: list[str] = []
        self.models_used: list[str] = []
        self.usage = Usage()
        self.images: list[ImageRow] = []
        self.search_results: list[SearchRow] = []
        self.zooms = 0
        self.finished = False
        self._finish_lock = asyncio.Lock()
        self._flushed_len = 0
        self._on_deleted: Callable[[], object] | None = None
        self.deleted = False  # the chat was deleted while the turn ran

    # -- events -------------------------------------------------------------------------
    def emit(self, **event: Any) -> None:
        self.events.put_nowait(chat_pb2.ChatEvent(**event))

    def token(self, text: str, model: str) -> None:
        if text:
            self.parts.append(text)
            self.events.put_nowait(
                chat_pb2.ChatEvent(llm_token=chat_pb2.LlmToken(text=text, model=model))
            )

    def warning(self, code: str, message: str) -> None:
        self.emit(warning=chat_pb2.TurnWarning(code=code, message=message))

    def progress(
        self, phase: chat_pb2.Phase.ValueType, done: int, total: int, unit: str, message: str = ""
    ) -> None:
        self.emit(
            phase_progress=chat_pb2.PhaseProgress(
                phase=phase,
                progress=common_pb2.Progress(done=done, total=total, unit=unit),
                message=message,
            )
        )

    @contextlib.asynccontextmanager
    async def phase(self, phase: chat_pb2.Phase.ValueType, description: str) -> AsyncIterator[None]:
        self.emit(phase_started=chat_pb2.PhaseStarted(phase=phase, description=description))
        start = time.perf_counter()
        try:
            yield
        finally:
            duration = duration_pb2.Duration()
            duration.FromNanoseconds(int((time.perf_counter() - start) * 1e9))
            self.emit(phase_finished=chat_pb2.PhaseFinished(phase=phase, duration=duration))

    def model_used(self, model: str) -> None:
        if model not in self.models_used:
            self.models_used.append(model)

    @property
    def text(self) -> str:
        return "".join(self.parts)

    # -- persistence while running ------------------------------------------------------
    def on_deleted(self, callback: Callable[[], object]) -> None:
        self._on_deleted = callback

    def chat_deleted(self) -> None:
        """Stops the turn because its chat was deleted."""
        self.deleted = True
        if not self.finished and self._on_deleted is not None:
            self._on_deleted()

    async def flusher(self) -> None:
        """Writes the partial answer and heartbeat until cancelled."""
        while True:
            await asyncio.sleep(self.flush_interval)
            text = self.text
            try:
                alive = await self.store.flush_turn(self.message_id, text)
            except Exception as exc:  # a missed flush is retried on the next tick
                log.warning("flush of turn %s failed: %s", self.message_id, exc)
                continue
            self._flushed_len = len(text)
            if not alive:
                self.chat_deleted()
                return

    # -- the end ------------------------------------------------------------------------
    async def finish(
        self, status: int, error: chat_pb2.TurnError | None = None
    ) -> MessageRow | None:
        """Stores the outcome (once); returns the stored message, or None when it was
        already stored."""
        async with self._finish_lock:
            if self.finished:
                return None
            self.finished = True
            text = self.text
            if status != STATUS_COMPLETE:
                # A failure before any text is an ERROR; a cancelled turn (no error) is
                # INCOMPLETE even when it had produced nothing yet.
                status = STATUS_ERROR if error is not None and not text else STATUS_INCOMPLETE
            outcome = TurnOutcome(
                status=status,
                content=text,
                models_used=list(self.models_used),
                input_tokens=self.usage.input_tokens,
                output_tokens=self.usage.output_tokens,
                total_tokens=self.usage.total_tokens,
                error=None
                if error is None
                else StoredError(error.code, error.reason, error.message, error.retryable),
                images=list(self.images),
                search_results=list(self.search_results),
            )
            return await self.store.finish_turn(self.message_id, outcome)
