"""A turn through the pipeline without Postgres or gRPC: `Turns` runs against an in-memory
implementation of the persistence protocol (`TurnStore`) and in-process doubles of the
other services and the model."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import io
import uuid
from collections.abc import AsyncIterator, Coroutine, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
from PIL import Image

from aivera.chat.v1 import chat_pb2
from services.chat.attachments import Attachments
from services.chat.clients import (
    Artifact,
    Block,
    Clone,
    DocumentInfo,
    Hit,
    IngestUpdate,
    PageInfo,
    StoredImage,
)
from services.chat.config import ChatSettings
from services.chat.pipeline.persistence import TurnStore
from services.chat.pipeline.runner import Turns
from services.chat.providers.base import Chunk, FunctionCall, LlmRequest, Usage
from services.chat.providers.local import LocalModels
from services.chat.store import (
    STATUS_COMPLETE,
    STATUS_IN_PROGRESS,
    TURN_RUNNING,
    AttachmentRow,
    ChatRow,
    ImageRow,
    MessageRow,
    RoleRef,
    StoredEvent,
    SystemSettingsRow,
    TurnContext,
    TurnOutcome,
    WatchedTurn,
    turn_in_progress,
)
from services.common.errors import FailedPrecondition, Reason, ServiceError

USER = "user-1"
NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
SYSTEM = SystemSettingsRow(
    allowed_models=("flash", "pro"),
    flash_model="flash",
    pro_model="pro",
    local_model_enabled=False,
    default_model_profile=chat_pb2.MODEL_PROFILE_SIMPLE,
    max_message_chars=1000,
    max_attachments_per_chat=5,
    max_tool_iterations=3,
    max_zooms_per_turn=2,
    update_time=None,
)
PAGE = PageInfo(1, "page-image", 200, 100)
BOX = {
    "page": 1,
    "normalized": {"left": 0.5, "top": 0.0, "right": 1.0, "bottom": 1.0},
    "pixels": {"left": 100, "top": 0, "right": 200, "bottom": 100},
}


class MemoryStore:
    """TurnStore in memory: one chat, its messages and attachments."""

    def __init__(self, chat: ChatRow) -> None:
        self.chat = chat
        self.messages: list[MessageRow] = []
        self.running = False
        self.flushes: list[str] = []
        self.events: list[StoredEvent] = []

    async def turn_context(
        self,
        user_id: str,
        chat_id: uuid.UUID,
        *,
        history: int,
        stale_seconds: float,
        before_seq: int | None = None,
    ) -> TurnContext | None:
        if user_id != self.chat.user_id or chat_id != self.chat.id:
            return None
        done = [
            m
            for m in self.messages
            if m.content
            and m.status != STATUS_IN_PROGRESS
            and not m.superseded
            and (before_seq is None or m.seq < before_seq)
        ]
        return TurnContext(
            chat=self.chat,
            system=SYSTEM,
            model_profile=None,
            role=RoleRef(uuid.uuid4(), "Ты инженер.", 2),
            prompts={"llm_system": "LLM", "json_annotation": "JSON", "html_ocr": "OCR"},
            attached_file_ids=frozenset(),
            history=tuple((m.role, m.content) for m in done[-history:]),
            turn_running=self.running,
        )

    def _message(self, role: int, status: int, content: str = "", **kw: Any) -> MessageRow:
        return MessageRow(
            id=uuid.uuid4(),
            chat_id=self.chat.id,
            seq=len(self.messages) + 1,
            role=role,
            content=content,
            status=status,
            models_used=(),
            input_tokens=0,
            output_tokens=0,
            total_tokens=0,
            error=None,
            file_ids=(),
            model_profile=kw.get("model_profile", 0),
            role_prompt_id=kw.get("role_prompt_id"),
            role_prompt_version=kw.get("role_prompt_version", 0),
            create_time=NOW,
        )

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
        if any(m.status == STATUS_IN_PROGRESS for m in self.messages):
            raise turn_in_progress()
        if regenerate is not None:
            user = next(m for m in self.messages if m.id == regenerate)
            for n, m in enumerate(self.messages):
                if m.seq > user.seq:
                    self.messages[n] = dataclasses.replace(m, superseded=True)
        else:
            user = self._message(chat_pb2.MESSAGE_ROLE_USER, STATUS_COMPLETE, text)
            self.messages.append(user)
        answer = self._message(
            chat_pb2.MESSAGE_ROLE_ASSISTANT,
            STATUS_IN_PROGRESS,
            model_profile=model_profile,
            role_prompt_id=uuid.UUID(role_prompt_id) if role_prompt_id else None,
            role_prompt_version=role_prompt_version,
        )
        answer = dataclasses.replace(answer, reply_to_id=user.id)
        self.messages.append(answer)
        return user, answer

    def _replace(self, message_id: uuid.UUID, **changes: Any) -> MessageRow:
        n = next(i for i, m in enumerate(self.messages) if m.id == message_id)
        self.messages[n] = dataclasses.replace(self.messages[n], **changes)
        return self.messages[n]

    async def flush_turn(
        self, message_id: uuid.UUID, content: str, events: Sequence[StoredEvent] = ()
    ) -> str:
        self.flushes.append(content)
        self.events.extend(events)
        self._replace(message_id, content=content)
        return TURN_RUNNING

    async def finish_turn(
        self, message_id: uuid.UUID, outcome: TurnOutcome, events: Sequence[StoredEvent] = ()
    ) -> MessageRow:
        self.events.extend(events)
        return self._replace(
            message_id,
            status=outcome.status,
            content=outcome.content,
            models_used=tuple(outcome.models_used),
            input_tokens=outcome.input_tokens,
            output_tokens=outcome.output_tokens,
            total_tokens=outcome.total_tokens,
            error=outcome.error,
            images=tuple(outcome.images),
            search_results=tuple(outcome.search_results),
        )

    async def get_message(
        self, user_id: str, chat_id: uuid.UUID, message_id: uuid.UUID
    ) -> MessageRow | None:
        found = [m for m in self.messages if m.id == message_id]
        return found[0] if found and user_id == self.chat.user_id else None

    async def watched_turn(
        self, user_id: str, chat_id: uuid.UUID, message_id: uuid.UUID, stale_seconds: float
    ) -> WatchedTurn | None:
        found = [m for m in self.messages if m.id == message_id]
        return WatchedTurn(found[0], False) if found and user_id == self.chat.user_id else None

    async def turn_events(
        self, message_id: uuid.UUID, after_seq: int, limit: int = 1000
    ) -> list[StoredEvent]:
        return [e for e in self.events if e.seq > after_seq][:limit]

    async def turn_log_end(self, message_id: uuid.UUID) -> tuple[int, bool]:
        return len(self.events), any(e.terminal for e in self.events)

    async def close_turn_log(self, message_id: uuid.UUID, event: StoredEvent) -> None:
        self.events.append(event)

    async def request_cancel(self, user_id: str, chat_id: uuid.UUID, message_id: uuid.UUID) -> bool:
        return user_id == self.chat.user_id

    # Attachments: none in these turns.
    async def list_attachments(
        self, chat_id: uuid.UUID, ids: Sequence[uuid.UUID] | None = None
    ) -> list[AttachmentRow]:
        return []

    async def find_attachment(
        self, chat_id: uuid.UUID, file_id: uuid.UUID
    ) -> tuple[AttachmentRow | None, int]:
        return None, 0

    async def set_attachments_kb(self, chat_id: uuid.UUID, kb_id: str) -> str:
        return kb_id

    async def add_attachment(
        self, chat_id: uuid.UUID, file_id: uuid.UUID, filename: str
    ) -> tuple[AttachmentRow, bool]:
        raise AssertionError("no attachments in these turns")

    async def set_attachment_state(
        self, attachment_id: uuid.UUID, status: int, document_id: str = "", error: str = ""
    ) -> None:
        raise AssertionError("no attachments in these turns")


class Documents:
    """RAG: one document, one page; hits carry their blocks and page image."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def search(
        self, kb_ids: list[str], query: str, top_k: int, document_ids: list[str] | None = None
    ) -> list[Hit]:
        self.calls.append("Search")
        block = Block("b1", "doc-1", 1, "image", "Чертёж узла", BOX, 0.9)
        return [
            Hit(
                text=block.text,
                score=0.9,
                document_id="doc-1",
                page=1,
                block_ids=["b1"],
                box=BOX,
                filename="a.pdf",
                blocks=(block,),
                page_image=PAGE,
            )
        ]

    async def document(self, document_id: str, page: int) -> DocumentInfo:
        self.calls.append("GetDocument")
        return DocumentInfo(document_id, "file-1", "a.pdf", 0, PAGE)

    async def create_chat_kb(self, chat_id: str) -> str:
        raise AssertionError("not used")

    async def delete_document(self, document_id: str) -> None:
        raise AssertionError("not used")

    async def check_kb(self, kb_id: str) -> None:
        return None

    async def ingest(self, kb_id: str, file_id: str) -> AsyncIterator[IngestUpdate]:
        raise AssertionError("not used")
        yield  # pragma: no cover


class Files:
    """Storage: the page image is left white, right red; stored images are kept."""

    def __init__(self) -> None:
        self.stored: list[bytes] = []

    async def file_info(self, file_id: str) -> tuple[str, str]:
        return "a.pdf", "application/pdf"

    async def download(self, file_id: str) -> bytes:
        assert file_id == PAGE.image_file_id
        image = Image.new("RGB", (PAGE.width, PAGE.height), "white")
        image.paste((220, 0, 0), (100, 0, 200, 100))
        out = io.BytesIO()
        image.save(out, format="PNG")
        return out.getvalue()

    async def store_image(self, data: bytes, filename: str, labels: dict[str, str]) -> StoredImage:
        self.stored.append(data)
        return StoredImage(str(uuid.uuid4()), len(data))

    async def signed_url(self, file_id: str, ttl: int) -> tuple[str, dt.datetime | None]:
        return f"http://files/{file_id}", None


class Keys:
    def __init__(self, key: str | None) -> None:
        self.key = key

    async def gemini_key(self, user_id: str) -> str | None:
        return self.key


class Clones:
    async def clone(self, clone_id: str) -> Clone:
        raise AssertionError("not a clone chat")

    async def artifact(self, model_id: str) -> Artifact:
        raise AssertionError("not a clone chat")


class ScriptedModel:
    """A provider: first asks for the block's image, then answers in two tokens."""

    name = "gemini"

    def __init__(self) -> None:
        self.requests: list[LlmRequest] = []

    async def stream(self, request: LlmRequest) -> AsyncIterator[Chunk]:
        self.requests.append(request)
        if len(self.requests) == 1:
            yield Chunk(calls=[FunctionCall("request_images", {"block_ids": ["b1"]})])
            return
        for text in ("Узел ", "красный."):
            yield Chunk(text=text)
        yield Chunk(usage=Usage(12, 2, 14))


def spawn(coro: Coroutine[Any, Any, Any], *, name: str = "") -> asyncio.Task[Any]:
    return asyncio.create_task(coro, name=name or None)


def make_turns(store: TurnStore, key: str | None = "key") -> tuple[Turns, Documents, ScriptedModel]:
    documents, files, model = Documents(), Files(), ScriptedModel()
    turns = Turns(
        store=store,
        keys=Keys(key),
        documents=documents,
        files=files,
        clones=Clones(),
        attachments=Attachments(store, documents, files, spawn),
        local=LocalModels(Path("/nonexistent"), name="local"),
        gemini=lambda key: model,
        settings=ChatSettings(aivera_env="test", turn_flush_interval_seconds=0.01),
        adapters_dir=Path("/nonexistent"),
        spawn=spawn,
    )
    return turns, documents, model


def a_chat() -> ChatRow:
    return ChatRow(
        id=uuid.uuid4(),
        user_id=USER,
        title="Чат",
        clone_id=None,
        knowledge_base_ids=(uuid.uuid4(),),
        attachments_knowledge_base_id=None,
        archived=False,
        create_time=NOW,
        update_time=NOW,
        last_message_time=None,
    )


async def test_a_turn_runs_against_the_store_protocol() -> None:
    store = MemoryStore(a_chat())
    turns, documents, model = make_turns(store)
    request = chat_pb2.SendMessageRequest(chat_id=str(store.chat.id), text="Какой узел?")
    prepared = await turns.prepare(USER, request)
    events = [e async for e in turns.run(prepared)]
    # The event log holds exactly what the stream sent.
    await asyncio.gather(*turns.tasks)
    assert [chat_pb2.ChatEvent.FromString(e.event) for e in store.events] == events
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "accepted" and kinds[-1] == "final"
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    # One search; the crop came from the page image the hit carried.
    assert documents.calls == ["Search"]
    produced = [e.image_produced for e in events if e.HasField("image_produced")]
    assert len(produced) == 1 and produced[0].image.kind == chat_pb2.IMAGE_KIND_VIEWPORT
    crop = Image.open(io.BytesIO(model.requests[1].contents[-1].parts[-1].image or b""))
    assert crop.convert("RGB").getpixel((crop.width // 2, crop.height // 2)) == (220, 0, 0)
    # The prompt: role before the system prompts, the block in the context.
    assert model.requests[0].system_instruction == "Ты инженер.\n\nLLM\n\nJSON\n\nOCR"
    assert '"id": "b1"' in (model.requests[0].contents[0].parts[0].text or "")
    final = events[-1].final.message
    assert final.content == "Узел красный." and final.status == chat_pb2.MESSAGE_STATUS_COMPLETE
    assert final.usage.total_tokens == 14 and list(final.models_used) == ["flash"]
    assert [s.block_id for s in final.search_results] == ["b1"] and len(final.images) == 1
    assert final.role_prompt_version == 2
    user, answer = store.messages
    assert (user.content, answer.content, answer.status) == (
        "Какой узел?",
        "Узел красный.",
        STATUS_COMPLETE,
    )
    # A second turn sees the first as history.
    model.requests.clear()
    again = await turns.prepare(USER, request)
    assert again.inp.history == [
        (chat_pb2.MESSAGE_ROLE_USER, "Какой узел?"),
        (chat_pb2.MESSAGE_ROLE_ASSISTANT, "Узел красный."),
    ]


async def test_checks_before_anything_is_stored() -> None:
    store = MemoryStore(a_chat())
    request = chat_pb2.SendMessageRequest(chat_id=str(store.chat.id), text="Вопрос")
    # Another user's chat reads as missing.
    turns, _, _ = make_turns(store)
    with pytest.raises(ServiceError) as missing:
        await turns.prepare("someone-else", request)
    assert missing.value.code == grpc.StatusCode.NOT_FOUND
    # A running turn.
    store.running = True
    with pytest.raises(FailedPrecondition) as busy:
        await turns.prepare(USER, request)
    assert busy.value.reason == Reason.TURN_IN_PROGRESS
    store.running = False
    # No key, and the local model is off.
    turns, _, _ = make_turns(store, key=None)
    with pytest.raises(FailedPrecondition) as no_key:
        await turns.prepare(USER, request)
    assert no_key.value.reason == Reason.PROVIDER_KEY_MISSING
    assert store.messages == []
