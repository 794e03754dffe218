"""A running turn: its event log, the answer as it grows, and how it ends.

One turn at a time per chat is a lease in the database: the unique index on running
answers holds it, the heartbeat written every `turn_flush_interval_seconds` renews it, and
a turn whose heartbeat is older than `turn_stale_seconds` has lost it (its replica died):
the next turn or the sweep closes it. The turn runs on the server to its end whoever
watches it: `follow` streams its events from any seq, live, to SendMessage and WatchTurn
on this replica; other replicas read the same events from the log in Postgres.

Every event gets its seq when it is emitted. The flush writes the events emitted since the
last one together with the partial answer and the heartbeat (one transaction); the end of
the turn writes the outcome with the rest of the log and the terminal event (one
transaction, retried with backoff for `turn_finish_retry_seconds`, then spooled to local
disk). The terminal event reaches live watchers only once it is stored (or spooled), so
what a watcher saw live is exactly what a replay from the log gives.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from google.protobuf import duration_pb2
from google.rpc import code_pb2

from aivera.chat.v1 import chat_pb2
from aivera.common.v1 import common_pb2
from services.chat import convert
from services.chat.pipeline.persistence import TurnStore
from services.chat.providers.base import Usage
from services.chat.spool import Spool
from services.chat.store import (
    STATUS_COMPLETE,
    STATUS_ERROR,
    STATUS_INCOMPLETE,
    TURN_CANCELLED,
    TURN_DELETED,
    ImageRow,
    MessageRow,
    SearchRow,
    StoredError,
    StoredEvent,
    TurnOutcome,
)
from services.common.errors import Reason, reason_name

log = logging.getLogger("aivera.chat.turns")

# Why a turn was stopped before its end.
STOP_CANCELLED = "cancelled"  # CancelTurn
STOP_DELETED = "deleted"  # its chat was deleted
STOP_SHUTDOWN = "shutdown"  # the replica drains and the grace period is over

_STOP_ERRORS = {
    STOP_CANCELLED: (code_pb2.CANCELLED, Reason.CANCELLED, "Ход остановлен по запросу.", False),
    STOP_DELETED: (code_pb2.CANCELLED, Reason.CANCELLED, "Чат удалён: ход остановлен.", False),
    STOP_SHUTDOWN: (
        code_pb2.UNAVAILABLE,
        Reason.SHUTDOWN,
        "Сервис перезапускается: ответ остановлен, сделанное сохранено.",
        True,
    ),
}
# Errors of a turn stopped on purpose: the answer is INCOMPLETE even when empty.
_STOP_REASONS = {"CANCELLED", reason_name(Reason.SHUTDOWN)}


def is_terminal(event: chat_pb2.ChatEvent) -> bool:
    return event.WhichOneof("event") in ("final", "error")


def stop_error(why: str) -> chat_pb2.TurnError:
    code, reason, message, retryable = _STOP_ERRORS[why]
    return chat_pb2.TurnError(
        code=code, reason=reason_name(reason), message=message, retryable=retryable
    )


def _stored(event: chat_pb2.ChatEvent) -> StoredEvent:
    return StoredEvent(event.seq, event.SerializeToString(), is_terminal(event))


class Turn:
    """State, event log and end of one turn (one SendMessage)."""

    def __init__(
        self,
        store: TurnStore,
        *,
        user_id: str,
        answer: MessageRow,
        flush_interval: float,
        finish_retry_seconds: float = 10.0,
        spool: Spool | None = None,
    ) -> None:
        self.store = store
        self.user_id = user_id
        self.answer = answer
        self.chat_id = answer.chat_id
        self.message_id = answer.id
        self.flush_interval = flush_interval
        self.finish_retry_seconds = finish_retry_seconds
        self.spool = spool
        self.log: list[chat_pb2.ChatEvent] = []  # every event; log[n].seq == n + 1
        self._wake = asyncio.Event()
        self._persisted = 0  # events up to this seq are in the database
        self._write_lock = asyncio.Lock()
        self.parts: list[str] = []
        self.models_used: list[str] = []
        self.usage = Usage()
        self.images: list[ImageRow] = []
        self.search_results: list[SearchRow] = []
        self.zooms = 0
        self.finishing = False  # the outcome is being stored: a stop comes too late
        self.finished = False
        self.spooled = False
        self._finish_lock = asyncio.Lock()
        self._save_started: float | None = None
        self.task: asyncio.Task[Any] | None = None  # the pipeline, set by Turns
        self.stopped: str | None = None  # STOP_* once asked to stop
        self.started = False  # the pipeline task runs

    # -- events -------------------------------------------------------------------------
    def _append(self, event: chat_pb2.ChatEvent) -> None:
        event.message_id = str(self.message_id)
        event.seq = len(self.log) + 1
        self.log.append(event)
        wake, self._wake = self._wake, asyncio.Event()
        wake.set()

    def emit(self, **event: Any) -> None:
        if not self.finishing:
            self._append(chat_pb2.ChatEvent(**event))

    def token(self, text: str, model: str) -> None:
        if text and not self.finishing:
            self.parts.append(text)
            self._append(chat_pb2.ChatEvent(llm_token=chat_pb2.LlmToken(text=text, model=model)))

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
            self.emit(phase_finished=chat_pb2.PhaseFinished(phase=phase, duration=_since(start)))

    def saving(self) -> None:
        """The save phase starts; it finishes in the same write as the answer."""
        self.emit(
            phase_started=chat_pb2.PhaseStarted(
                phase=chat_pb2.PHASE_SAVE, description="Сохранение ответа"
            )
        )
        self._save_started = time.perf_counter()

    def model_used(self, model: str) -> None:
        if model not in self.models_used:
            self.models_used.append(model)

    @property
    def text(self) -> str:
        return "".join(self.parts)

    async def follow(self, after_seq: int = 0) -> AsyncIterator[chat_pb2.ChatEvent]:
        """The events after `after_seq`, then the live ones, up to the terminal event."""
        n = max(0, after_seq)
        while True:
            while n < len(self.log):
                event = self.log[n]
                n += 1
                yield event
                if is_terminal(event):
                    return
            await self._wake.wait()

    # -- stopping -----------------------------------------------------------------------
    def stop(self, why: str) -> None:
        """Stops the pipeline (CancelTurn, chat deleted, shutdown); it stores what it
        has and ends with an `error` event saying why."""
        if self.finishing or self.stopped is not None:
            return
        self.stopped = why
        # A pipeline that has not started yet sees `stopped` when it starts (a task
        # cancelled before its first step would never store its outcome).
        if self.started and self.task is not None and not self.task.done():
            self.task.cancel()

    def chat_deleted(self) -> None:
        self.stop(STOP_DELETED)

    @property
    def deleted(self) -> bool:
        return self.stopped == STOP_DELETED

    # -- persistence while running ------------------------------------------------------
    async def flush(self) -> str | None:
        """Writes the new events, the partial answer and the heartbeat; returns what the
        database says of the turn, None when the write failed (retried next tick)."""
        async with self._write_lock:
            if self.finishing:
                return None
            upto = len(self.log)
            events = [_stored(e) for e in self.log[self._persisted : upto]]
            try:
                state = await asyncio.wait_for(
                    self.store.flush_turn(self.message_id, self.text, events),
                    timeout=max(5.0, 5 * self.flush_interval),
                )
            except Exception as exc:  # database down: the events wait for the next flush
                log.warning("flush of turn %s failed: %s", self.message_id, exc)
                return None
            self._persisted = max(self._persisted, upto)
            return state

    async def flusher(self) -> None:
        """Flushes every `flush_interval` until cancelled; stops the turn when its chat
        was deleted or CancelTurn reached another replica."""
        while True:
            await asyncio.sleep(self.flush_interval)
            # Shielded: stopping the flusher never cuts a write in the middle of its
            # transaction (the final write waits for it on the write lock).
            state = await asyncio.shield(self.flush())
            if state == TURN_DELETED:
                self.stop(STOP_DELETED)
                return
            if state == TURN_CANCELLED:
                self.stop(STOP_CANCELLED)
                return

    # -- the end ------------------------------------------------------------------------
    async def finish(
        self, status: int, error: chat_pb2.TurnError | None = None
    ) -> MessageRow | None:
        """Stores the outcome with the rest of the log and the terminal event (once),
        then lets watchers see the terminal event. Returns the answer as stored, None
        when it was stored already."""
        async with self._finish_lock:
            if self.finished:
                return None
            self.finishing = True
            text = self.text
            if status != STATUS_COMPLETE:
                if error is None:
                    error = stop_error(self.stopped or STOP_CANCELLED)
                # A failure before any text is an ERROR; a turn stopped on purpose is
                # INCOMPLETE even when it had produced nothing yet.
                failed = not text and error.reason not in _STOP_REASONS
                status = STATUS_ERROR if failed else STATUS_INCOMPLETE
            stored_error = (
                None
                if error is None
                else StoredError(error.code, error.reason, error.message, error.retryable)
            )
            outcome = TurnOutcome(
                status=status,
                content=text,
                models_used=list(self.models_used),
                input_tokens=self.usage.input_tokens,
                output_tokens=self.usage.output_tokens,
                total_tokens=self.usage.total_tokens,
                error=stored_error,
                images=list(self.images),
                search_results=list(self.search_results),
            )
            row = dataclasses.replace(
                self.answer,
                status=status,
                content=text,
                models_used=tuple(self.models_used),
                input_tokens=outcome.input_tokens,
                output_tokens=outcome.output_tokens,
                total_tokens=outcome.total_tokens,
                error=stored_error,
                images=tuple(self.images),
                search_results=tuple(self.search_results),
            )
            terminal: list[chat_pb2.ChatEvent] = []
            if status == STATUS_COMPLETE:
                if self._save_started is not None:
                    terminal.append(
                        chat_pb2.ChatEvent(
                            phase_finished=chat_pb2.PhaseFinished(
                                phase=chat_pb2.PHASE_SAVE, duration=_since(self._save_started)
                            )
                        )
                    )
                terminal.append(
                    chat_pb2.ChatEvent(final=chat_pb2.TurnFinal(message=convert.message(row)))
                )
            else:
                terminal.append(chat_pb2.ChatEvent(error=error))
            for n, event in enumerate(terminal):
                event.message_id = str(self.message_id)
                event.seq = len(self.log) + n + 1
            async with self._write_lock:
                events = [_stored(e) for e in self.log[self._persisted :]]
                events += [_stored(e) for e in terminal]
                await self._store(outcome, events)
            for event in terminal:
                self._append(event)
            self.finished = True
            return row

    def abandon(self, error: chat_pb2.TurnError) -> None:
        """The outcome could not be stored (nor spooled): live watchers of this replica
        get a terminal `error` (not in the log: its replay ends through the stale sweep)."""
        if not self.finished:
            self.finished = True
            self._append(chat_pb2.ChatEvent(error=error))

    async def _store(self, outcome: TurnOutcome, events: list[StoredEvent]) -> None:
        """The final write, retried with backoff; spooled to disk when the database does
        not answer within `finish_retry_seconds`."""
        deadline = time.monotonic() + self.finish_retry_seconds
        delay = 0.1
        while True:
            try:
                await asyncio.wait_for(
                    self.store.finish_turn(self.message_id, outcome, events),
                    timeout=max(1.0, deadline - time.monotonic()),
                )
                self._persisted = len(self.log) + 1
                return
            except Exception as exc:
                if time.monotonic() + delay >= deadline:
                    if self.spool is None:
                        raise
                    await asyncio.to_thread(self.spool.put, self.message_id, outcome, events)
                    self.spooled = True
                    return
                log.warning("final write of turn %s failed (%s); retrying", self.message_id, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)


def _since(start: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(int((time.perf_counter() - start) * 1e9))
    return duration
