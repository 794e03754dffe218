"""What a turn persists, as a protocol: the pipeline runs against `TurnStore`, which the
Postgres store (services.chat.store.Store) implements and a test can implement in memory.

A turn reads its context once (`turn_context`), stores the user message and the running
answer together (`begin_turn`, the turn lock), writes the growing answer and a heartbeat
while it runs with its new events (`flush_turn`) and stores the outcome with the rest of
its event log once (`finish_turn`); files sent with
the message go through the attachment methods (`AttachmentStore`).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Protocol

from services.chat.attachments import AttachmentStore
from services.chat.store import (
    ImageRow,
    MessageRow,
    StoredEvent,
    TurnContext,
    TurnOutcome,
    WatchedTurn,
)


class TurnStore(AttachmentStore, Protocol):
    async def turn_context(
        self,
        user_id: str,
        chat_id: uuid.UUID,
        *,
        history: int,
        stale_seconds: float,
        before_seq: int | None = None,
    ) -> TurnContext | None:
        """The user's chat and what a turn needs (the history: current messages, before
        `before_seq` when given); None for a chat that is missing, deleted or another
        user's."""
        ...

    async def get_message(
        self, user_id: str, chat_id: uuid.UUID, message_id: uuid.UUID
    ) -> MessageRow | None:
        """A message of the user's chat with its images and search results; None when
        missing or another user's."""
        ...

    async def begin_turn(
        self,
        chat_id: uuid.UUID,
        *,
        text: str,
        file_ids: Sequence[str],
        model_profile: int,
        role_prompt_id: str,
        role_prompt_version: int,
        stale_seconds: float,
        regenerate: uuid.UUID | None = None,
        edit: uuid.UUID | None = None,
        images: Sequence[ImageRow] = (),
    ) -> tuple[MessageRow, MessageRow]:
        """(user message, IN_PROGRESS answer); raises `store.turn_in_progress()` while a
        live turn runs in the chat. `regenerate`: answer this user message again (its
        answers superseded); `edit`: supersede this user message and what follows and
        store `text` as the new one; both raise `store.not_latest()` when a newer user
        message exists. `images`: the images the user sent, stored with a new user
        message."""
        ...

    async def flush_turn(
        self, message_id: uuid.UUID, content: str, events: Sequence[StoredEvent] = ()
    ) -> str:
        """Appends events to the turn's log, writes the partial answer and the heartbeat
        (the lease); returns TURN_RUNNING, TURN_CANCELLED or TURN_DELETED."""
        ...

    async def finish_turn(
        self, message_id: uuid.UUID, outcome: TurnOutcome, events: Sequence[StoredEvent] = ()
    ) -> MessageRow:
        """Stores the outcome and the rest of the log, terminal event included, at once;
        idempotent. Returns the answer with its images and search results."""
        ...

    # -- watching and cancelling (WatchTurn, CancelTurn) ----------------------------------
    async def watched_turn(
        self, user_id: str, chat_id: uuid.UUID, message_id: uuid.UUID, stale_seconds: float
    ) -> WatchedTurn | None:
        """The user's turn; None when missing, deleted or another user's."""
        ...

    async def turn_events(
        self, message_id: uuid.UUID, after_seq: int, limit: int = 1000
    ) -> list[StoredEvent]:
        """The logged events after `after_seq`, in order."""
        ...

    async def turn_log_end(self, message_id: uuid.UUID) -> tuple[int, bool]:
        """(last seq of the log, 0 when empty; whether it holds the terminal event)."""
        ...

    async def close_turn_log(self, message_id: uuid.UUID, event: StoredEvent) -> None:
        """Appends the terminal event of a turn that lost its replica (first one wins)."""
        ...

    async def request_cancel(self, user_id: str, chat_id: uuid.UUID, message_id: uuid.UUID) -> bool:
        """Flags the user's running turn to stop; False when not the user's."""
        ...
