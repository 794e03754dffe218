"""Attachments: a storage file attached to a chat is ingested into the chat's own
knowledge base (created on first use) in the background; turns search it once READY."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

from services.chat.deps import Deps
from services.chat.store import ATTACHMENT_FAILED, ATTACHMENT_INGESTING
from services.common import context as ctx
from services.common.errors import InvalidArgument, ResourceExhausted

log = logging.getLogger("aivera.chat.attachments")

SUPPORTED_TYPES = (
    "application/pdf",
    "text/markdown",
    "text/html",
    "application/json",
    "text/plain",
)


async def attach(deps: Deps, user_id: str, chat: Any, file_id: str, max_attachments: int) -> Any:
    """The attachment of `file_id` to the chat (the existing one when already attached);
    a new one starts ingesting in the background."""
    store = deps.store
    chat_id = chat["id"]
    filename, content_type = await deps.files.file_info(file_id)
    if content_type.split(";")[0].strip() not in SUPPORTED_TYPES:
        raise InvalidArgument(
            f"file type {content_type or 'unknown'} cannot be attached (pdf, md, html, json, txt)",
            field="file_id",
        )
    existing = [a for a in await store.list_attachments(chat_id) if str(a["file_id"]) == file_id]
    if existing:
        return existing[0]
    if await store.count_attachments(chat_id) >= max_attachments:
        raise ResourceExhausted(f"a chat may have at most {max_attachments} attachments")
    kb_id = chat["attachments_knowledge_base_id"]
    if kb_id is None:
        kb_id = await store.set_attachments_kb(
            chat_id, await deps.documents.create_chat_kb(str(chat_id))
        )
    row, created = await store.add_attachment(chat_id, uuid.UUID(file_id), filename)
    if created:
        deps.spawn(_ingest(deps, user_id, row["id"], str(kb_id), file_id), name=f"ingest-{file_id}")
    return row


async def _ingest(
    deps: Deps, user_id: str, attachment_id: uuid.UUID, kb_id: str, file_id: str
) -> None:
    with ctx.acting_for(user_id):
        try:
            async for document_id, status, error in deps.documents.ingest(kb_id, file_id):
                await deps.store.set_attachment_state(attachment_id, status, document_id, error)
                if status != ATTACHMENT_INGESTING:
                    return
        except Exception as exc:
            log.warning("ingest of %s failed: %s", file_id, exc)
            await deps.store.set_attachment_state(
                attachment_id, ATTACHMENT_FAILED, "", f"ingestion failed: {type(exc).__name__}"
            )


async def wait_ready(
    deps: Deps, chat_id: uuid.UUID, attachment_ids: list[uuid.UUID], timeout: float
) -> tuple[list[Any], list[Any], list[Any]]:
    """(ready, failed, still ingesting) after waiting up to `timeout` seconds."""
    deadline = time.monotonic() + timeout
    wanted = set(attachment_ids)
    while True:
        rows = [a for a in await deps.store.list_attachments(chat_id) if a["id"] in wanted]
        waiting = [a for a in rows if a["status"] == ATTACHMENT_INGESTING]
        if not waiting or time.monotonic() >= deadline:
            ready = [a for a in rows if a["status"] == 2]
            failed = [a for a in rows if a["status"] == ATTACHMENT_FAILED]
            return ready, failed, waiting
        await asyncio.sleep(0.2)
