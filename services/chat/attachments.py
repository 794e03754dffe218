"""Attachments: a storage file attached to a chat is ingested into the chat's own
knowledge base (created on first use) in the background; turns search it once READY.
`Attachments` serves AttachFile and the files a SendMessage brings along."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from aivera.chat.v1 import chat_pb2
from services.chat.clients import Documents, Files
from services.chat.store import AttachmentRow, ChatRow
from services.common.errors import InvalidArgument, Reason, ResourceExhausted

log = logging.getLogger("aivera.chat.attachments")

SUPPORTED_TYPES = (
    "application/pdf",
    "text/markdown",
    "text/html",
    "application/json",
    "text/plain",
)
POLL_SECONDS = 0.2  # how often wait_ready looks at ingesting attachments

# Runs a background task (App.spawn): (coroutine, name=...) -> task.
Spawn = Callable[..., "asyncio.Task[Any]"]


class AttachmentStore(Protocol):
    """What attachments persist (implemented by services.chat.store.Store)."""

    async def list_attachments(
        self, chat_id: uuid.UUID, ids: Sequence[uuid.UUID] | None = None
    ) -> list[AttachmentRow]: ...

    async def find_attachment(
        self, chat_id: uuid.UUID, file_id: uuid.UUID
    ) -> tuple[AttachmentRow | None, int]: ...

    async def set_attachments_kb(self, chat_id: uuid.UUID, kb_id: str) -> str: ...

    async def add_attachment(
        self, chat_id: uuid.UUID, file_id: uuid.UUID, filename: str
    ) -> tuple[AttachmentRow, bool]: ...

    async def set_attachment_state(
        self, attachment_id: uuid.UUID, status: int, document_id: str = "", error: str = ""
    ) -> None: ...


def too_many(limit: int) -> ResourceExhausted:
    return ResourceExhausted(
        f"a chat may have at most {limit} attachments",
        metadata={"limit": "max_attachments_per_chat", "value": str(limit)},
    )


class Attachments:
    def __init__(
        self,
        store: AttachmentStore,
        documents: Documents,
        files: Files,
        spawn: Spawn,
    ) -> None:
        self.store = store
        self.documents = documents
        self.files = files
        self.spawn = spawn

    async def check_type(self, file_id: str, *, field: str) -> str:
        """The file's name; NOT_FOUND for another user's file, INVALID_ARGUMENT
        (UNSUPPORTED_FORMAT) for a type that cannot be ingested."""
        filename, content_type = await self.files.file_info(file_id)
        if content_type.split(";")[0].strip() not in SUPPORTED_TYPES:
            raise InvalidArgument(
                f"file type {content_type or 'unknown'} cannot be attached "
                "(pdf, md, html, json, txt)",
                field=field,
                reason=Reason.UNSUPPORTED_FORMAT,
            )
        return filename

    async def attach(
        self, user_id: str, chat: ChatRow, file_id: str, max_attachments: int
    ) -> tuple[AttachmentRow, str]:
        """(the attachment of `file_id`, the chat's attachments knowledge base): the
        existing attachment when already attached; a new one starts ingesting in the
        background."""
        filename = await self.check_type(file_id, field="file_id")
        existing, count = await self.store.find_attachment(chat.id, uuid.UUID(file_id))
        kb = str(chat.attachments_knowledge_base_id or "")
        if existing is not None:
            return existing, kb
        if count >= max_attachments:
            raise too_many(max_attachments)
        if not kb:
            kb = await self.store.set_attachments_kb(
                chat.id, await self.documents.create_chat_kb(str(chat.id))
            )
        row, created = await self.store.add_attachment(chat.id, uuid.UUID(file_id), filename)
        if created:
            self.spawn(self._ingest(user_id, row.id, kb, file_id), name=f"ingest-{file_id}")
        return row, kb

    async def _ingest(
        self, user_id: str, attachment_id: uuid.UUID, kb_id: str, file_id: str
    ) -> None:
        # The task inherits the request's caller: the one call it makes (RAG's ingest
        # stream) starts at once, with a delegation for the user; RAG takes its own grant
        # for the rest of the ingest.
        try:
            async for update in self.documents.ingest(kb_id, file_id):
                await self.store.set_attachment_state(
                    attachment_id, update.status, update.document_id, update.error
                )
                if update.status != chat_pb2.ATTACHMENT_STATUS_INGESTING:
                    return
        except Exception as exc:
            log.warning("ingest of %s failed: %s", file_id, exc)
            await self.store.set_attachment_state(
                attachment_id,
                chat_pb2.ATTACHMENT_STATUS_FAILED,
                "",
                f"ingestion failed: {type(exc).__name__}",
            )

    async def wait_ready(
        self, chat_id: uuid.UUID, attachment_ids: list[uuid.UUID], timeout: float
    ) -> tuple[list[AttachmentRow], list[AttachmentRow], list[AttachmentRow]]:
        """(ready, failed, still ingesting) after waiting up to `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            rows = await self.store.list_attachments(chat_id, attachment_ids)
            waiting = [a for a in rows if a.status == chat_pb2.ATTACHMENT_STATUS_INGESTING]
            if not waiting or time.monotonic() >= deadline:
                ready = [a for a in rows if a.status == chat_pb2.ATTACHMENT_STATUS_READY]
                failed = [a for a in rows if a.status == chat_pb2.ATTACHMENT_STATUS_FAILED]
                return ready, failed, waiting
            await asyncio.sleep(POLL_SECONDS)
