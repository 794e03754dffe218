"""What a turn persists, as a protocol: the pipeline runs against `TurnStore`, which the
Postgres store (services.chat.store.Store) implements and a test can implement in memory.

A turn reads its context once (`turn_context`), stores the user message and the running
answer together (`begin_turn`, the turn lock), writes the growing answer and a heartbeat
while it runs (`flush_turn`) and stores the outcome once (`finish_turn`); files sent with
the message go through the attachment methods (`AttachmentStore`).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Protocol

from services.chat.attachments import AttachmentStore
from services.chat.store import MessageRow, TurnContext, TurnOutcome


class TurnStore(AttachmentStore, Protocol):
    async def turn_context(
        self, user_id: str, chat_id: uuid.UUID, *, history: int, stale_seconds: float
    ) -> TurnContext | None:
        """The user's chat and what a turn needs; None for a chat that is missing,
        deleted or another user's."""
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
    ) -> tuple[MessageRow, MessageRow]:
        """(user message, IN_PROGRESS answer); raises `store.turn_in_progress()` while a
        live turn runs in the chat."""
        ...

    async def flush_turn(self, message_id: uuid.UUID, content: str) -> bool:
        """Partial answer + heartbeat; False when the chat was deleted meanwhile."""
        ...

    async def finish_turn(self, message_id: uuid.UUID, outcome: TurnOutcome) -> MessageRow:
        """Stores the outcome; returns the answer with its images and search results."""
        ...
