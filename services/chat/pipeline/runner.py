"""One turn from request to terminal event, top to bottom:

1. `prepare` — the checks made before anything is stored, on the turn's context read in
   one store query (chat, settings, role, prompts, attached files, history, whether a turn
   runs): the chat, the text, the files, then the model (a clone's adapter, the user's
   Gemini key, or the local model). Errors here are statuses with an ErrorInfo reason
   (TURN_IN_PROGRESS, PROVIDER_KEY_MISSING, CLONE_NOT_READY, …).
2. `run` — stores the user message with the running answer (the turn lock), yields
   `accepted`, then the events of the pipeline task.
3. the pipeline task — attaches files sent along, runs the simple, complex or local
   pipeline, and stores the outcome whatever happens (answer, failure, client gone, chat
   deleted); failures become the terminal `error` event.

`Turns` depends on the `TurnStore` protocol, not on Postgres.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import uuid
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
from google.rpc import code_pb2

from aivera.chat.v1 import chat_pb2
from aivera.training.v1 import clones_pb2
from services.chat import convert
from services.chat.attachments import Attachments, Spawn, too_many
from services.chat.clients import Clones, Documents, Files, Keys
from services.chat.config import ChatSettings
from services.chat.pipeline.base import TurnInput
from services.chat.pipeline.complex import run_complex
from services.chat.pipeline.local import run_local
from services.chat.pipeline.persistence import TurnStore
from services.chat.pipeline.simple import run_simple
from services.chat.providers.base import Provider, ProviderError
from services.chat.providers.local import LocalModels
from services.chat.store import (
    STATUS_COMPLETE,
    STATUS_INCOMPLETE,
    ChatRow,
    MessageRow,
    TurnContext,
    turn_in_progress,
)
from services.chat.tools import ToolRunner
from services.chat.turns import Turn
from services.common import context as ctx
from services.common import messages
from services.common.errors import (
    FailedPrecondition,
    InvalidArgument,
    Reason,
    ServiceError,
    not_found,
    reason_name,
)
from services.common.protoutil import parse_uuid

log = logging.getLogger("aivera.chat.turns")

HISTORY_MESSAGES = 20  # earlier messages with text a model sees


@dataclass(frozen=True)
class Model:
    """Who answers a turn."""

    provider: Provider
    local: bool
    persona: str | None = None  # a clone's persona
    knowledge_base_id: str = ""  # a clone's knowledge base


@dataclass
class Prepared:
    user_id: str
    chat: ChatRow
    inp: TurnInput
    model: Model
    file_ids: list[str]
    role_id: str
    role_version: int
    max_zooms: int
    max_attachments: int


class Turns:
    """Runs the turns of this replica (one at a time per chat, across replicas)."""

    def __init__(
        self,
        *,
        store: TurnStore,
        keys: Keys,
        documents: Documents,
        files: Files,
        clones: Clones,
        attachments: Attachments,
        local: LocalModels,
        gemini: Callable[[str], Provider],
        settings: ChatSettings,
        adapters_dir: Path,
        spawn: Spawn,
    ) -> None:
        self.store = store
        self.keys = keys
        self.documents = documents
        self.files = files
        self.clones = clones
        self.attachments = attachments
        self.local = local
        self.gemini = gemini
        self.settings = settings
        self.adapters_dir = adapters_dir
        self.spawn = spawn
        # Running turns of this replica by chat id (DeleteChat stops them).
        self.running: dict[str, Turn] = {}

    def stop(self, chat_id: uuid.UUID) -> None:
        """Stops the chat's running turn on this replica (its chat was deleted); a turn
        on another replica stops at its next flush."""
        turn = self.running.get(str(chat_id))
        if turn is not None:
            turn.chat_deleted()

    # -- 1. before anything is stored ------------------------------------------------------
    async def prepare(self, user_id: str, request: chat_pb2.SendMessageRequest) -> Prepared:
        chat_id = parse_uuid(request.chat_id, field="chat_id")
        context = await self.store.turn_context(
            user_id,
            chat_id,
            history=HISTORY_MESSAGES,
            stale_seconds=self.settings.turn_stale_seconds,
        )
        if context is None:
            raise not_found("chat", request.chat_id)
        system = context.system
        text = request.text.strip()
        if not text:
            raise InvalidArgument("text must not be empty", field="text")
        if len(request.text) > system.max_message_chars:
            raise InvalidArgument(
                f"text is longer than {system.max_message_chars} characters",
                field="text",
                metadata={"limit": "max_message_chars", "value": str(system.max_message_chars)},
            )
        if context.turn_running:
            raise turn_in_progress()
        file_ids = await self._new_files(request, context)
        model = await self._model(user_id, context)
        profile = chat_pb2.ModelProfile.ValueType(
            request.model_profile or context.model_profile or system.default_model_profile
        )
        if model.local:
            profile = chat_pb2.MODEL_PROFILE_SIMPLE
        kb_ids = [str(k) for k in context.chat.knowledge_base_ids]
        if context.chat.attachments_knowledge_base_id:
            kb_ids.append(str(context.chat.attachments_knowledge_base_id))
        if model.knowledge_base_id:
            kb_ids.append(model.knowledge_base_id)
        role = context.role
        inp = TurnInput(
            text=text,
            profile=profile,
            prompts=dict(context.prompts),
            role=role.content if role else None,
            persona=model.persona,
            history=list(context.history),
            kb_ids=list(dict.fromkeys(kb_ids)),
            flash_model=system.flash_model,
            pro_model=system.pro_model,
            max_tool_iterations=system.max_tool_iterations,
            top_k=self.settings.search_top_k,
        )
        return Prepared(
            user_id=user_id,
            chat=context.chat,
            inp=inp,
            model=model,
            file_ids=file_ids,
            role_id=str(role.id) if role else "",
            role_version=role.version if role else 0,
            max_zooms=system.max_zooms_per_turn,
            max_attachments=system.max_attachments_per_chat,
        )

    async def _new_files(
        self, request: chat_pb2.SendMessageRequest, context: TurnContext
    ) -> list[str]:
        """The request's file ids; files not attached yet are checked (owner, type) and
        counted against the chat's attachment limit."""
        file_ids = [str(parse_uuid(raw, field="file_ids")) for raw in request.file_ids]
        new = [f for f in dict.fromkeys(file_ids) if f not in context.attached_file_ids]
        for file_id in new:
            await self.attachments.check_type(file_id, field="file_ids")
        limit = context.system.max_attachments_per_chat
        if len(context.attached_file_ids) + len(new) > limit:
            raise too_many(limit)
        return file_ids

    async def _model(self, user_id: str, context: TurnContext) -> Model:
        """A clone chat answers with the clone's adapter on the local base model; other
        chats with Gemini under the user's key, or the local model when the user has no
        key and the admin allows it."""
        chat = context.chat
        if chat.clone_id:
            clone = await self.clones.clone(str(chat.clone_id))
            if clone.status == clones_pb2.CLONE_STATUS_TRAINING and not clone.active_model_id:
                raise FailedPrecondition(
                    "the clone's adapter is not ready yet (still training)",
                    reason=Reason.CLONE_NOT_READY,
                )
            adapter = None
            if clone.active_model_id:
                adapter = (clone.active_model_id, await self._adapter_dir(clone.active_model_id))
            return Model(
                self.local.provider(adapter),
                local=True,
                persona=clone.persona or None,
                knowledge_base_id=clone.knowledge_base_id,
            )
        key = await self.keys.gemini_key(user_id)
        if key is not None:
            return Model(self.gemini(key), local=False)
        if not context.system.local_model_enabled:
            raise FailedPrecondition(
                "the caller has no Gemini key and the local model is disabled: "
                "set a key (SetProviderKey)",
                reason=Reason.PROVIDER_KEY_MISSING,
            )
        return Model(self.local.provider(), local=True)

    async def _adapter_dir(self, model_id: str) -> Path:
        """The clone adapter's folder, fetched from storage once per replica."""
        folder = self.adapters_dir / model_id
        if (folder / "adapter_config.json").exists():
            return folder
        files = await self.clones.adapter_files(model_id)
        if not any(name == "adapter_config.json" for name, _, _ in files):
            raise FailedPrecondition(
                "the clone's adapter is not ready (no adapter files)",
                reason=Reason.MODEL_NOT_READY,
            )
        tmp = self.adapters_dir / f".{model_id}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True, exist_ok=True)
        for name, file_id, _ in files:
            data = await self.files.download(file_id)
            await asyncio.to_thread((tmp / Path(name).name).write_bytes, data)
        with contextlib.suppress(OSError):  # another turn got there first
            tmp.rename(folder)
        return folder

    # -- 2. the stored turn and its stream -------------------------------------------------
    async def run(self, prepared: Prepared) -> AsyncGenerator[chat_pb2.ChatEvent, None]:
        """Stores the user message, then streams the turn's events (seq from 1)."""
        chat_id = prepared.chat.id
        user_row, answer_row = await self.store.begin_turn(
            chat_id,
            text=prepared.inp.text,
            file_ids=prepared.file_ids,
            model_profile=prepared.inp.profile,
            role_prompt_id=prepared.role_id,
            role_prompt_version=prepared.role_version,
            stale_seconds=self.settings.turn_stale_seconds,
        )
        message_id = str(answer_row.id)
        turn = Turn(
            self.store,
            chat_id=chat_id,
            message_id=answer_row.id,
            flush_interval=self.settings.turn_flush_interval_seconds,
        )
        accepted = chat_pb2.ChatEvent(
            message_id=message_id,
            seq=1,
            accepted=chat_pb2.TurnAccepted(
                user_message=convert.message(user_row),
                model_profile=prepared.inp.profile,
                role_prompt_id=prepared.role_id,
            ),
        )
        # Pipeline events queue up behind `accepted`, which is always sent first.
        task = asyncio.create_task(self._pipeline(prepared, turn), name=f"turn-{message_id}")
        key = str(chat_id)
        self.running[key] = turn
        turn.on_deleted(task.cancel)
        seq = 1
        try:
            yield accepted
            while True:
                event = await turn.events.get()
                if event is None:
                    return
                seq += 1
                event.message_id = message_id
                event.seq = seq
                yield event
        finally:
            # The client went away (or the stream ended): stop the pipeline; it stores
            # what it has as INCOMPLETE on its way out.
            if not task.done():
                task.cancel()
                # Also covers a task cancelled before it started running.
                self.spawn(_settle(task, turn), name="turn-settle")
            if self.running.get(key) is turn:
                del self.running[key]

    # -- 3. the pipeline task --------------------------------------------------------------
    async def _pipeline(self, prepared: Prepared, turn: Turn) -> None:
        flusher = asyncio.create_task(turn.flusher())

        async def store_outcome(
            status: int, error: chat_pb2.TurnError | None = None
        ) -> MessageRow | None:
            # Shielded in its own task: the write finishes even when this turn is cancelled.
            stored: MessageRow | None = await asyncio.shield(
                self.spawn(turn.finish(status, error), name="turn-finish")
            )
            return stored

        provider = prepared.model.provider
        try:
            inp = prepared.inp
            tools = ToolRunner(
                turn,
                self.documents,
                self.files,
                max_zooms=prepared.max_zooms,
                url_ttl=self.settings.image_url_ttl_seconds,
                user_labels={"chat_id": str(turn.chat_id), "message_id": str(turn.message_id)},
            )
            async with turn.phase(chat_pb2.PHASE_CONTEXT, "Подготовка контекста"):
                if prepared.file_ids:
                    await self._attach_files(prepared, turn)
            if prepared.model.local:
                await run_local(turn, inp, provider, self.documents, tools)
            elif inp.profile == chat_pb2.MODEL_PROFILE_COMPLEX:
                await run_complex(turn, inp, provider, self.documents, tools)
            else:
                await run_simple(turn, inp, provider, self.documents, tools)
            async with turn.phase(chat_pb2.PHASE_SAVE, "Сохранение ответа"):
                row = await store_outcome(STATUS_COMPLETE)
            if row is not None:
                turn.emit(final=chat_pb2.TurnFinal(message=convert.message(row)))
        except asyncio.CancelledError:
            error = None
            if turn.deleted:
                error = _turn_error(
                    code_pb2.CANCELLED, Reason.CANCELLED, "Чат удалён: ход остановлен.", False
                )
                turn.emit(error=error)
            self.spawn(turn.finish(STATUS_INCOMPLETE, error), name="turn-finish-cancelled")
            raise
        except Exception as exc:
            error = turn_error(exc)
            if error.code == code_pb2.INTERNAL and not isinstance(exc, ProviderError):
                log.exception("turn %s failed", turn.message_id)
            await store_outcome(STATUS_INCOMPLETE, error)
            turn.emit(error=error)
        finally:
            flusher.cancel()
            turn.events.put_nowait(None)
            close = getattr(provider, "aclose", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(close())

    async def _attach_files(self, prepared: Prepared, turn: Turn) -> None:
        """Attaches the files sent with the message and waits (a while) until they are
        searchable; failed or slow ones become warnings."""
        chat = prepared.chat
        attached = []
        for file_id in prepared.file_ids:
            row, kb_id = await self.attachments.attach(
                prepared.user_id, chat, file_id, prepared.max_attachments
            )
            attached.append(row)
            if kb_id and chat.attachments_knowledge_base_id is None:
                chat = dataclasses.replace(chat, attachments_knowledge_base_id=uuid.UUID(kb_id))
            if kb_id and kb_id not in prepared.inp.kb_ids:
                prepared.inp.kb_ids.append(kb_id)
        ready, failed, waiting = await self.attachments.wait_ready(
            chat.id, [a.id for a in attached], self.settings.attachment_wait_seconds
        )
        for row in failed:
            turn.warning(
                "FILE_UNREADABLE",
                f"Файл {row.filename} не удалось прочитать: {row.error_message}",
            )
            prepared.inp.notes.append(f"Файл «{row.filename}» не удалось прочитать.")
        for row in waiting:
            turn.warning("ATTACHMENT_NOT_READY", f"Файл {row.filename} ещё обрабатывается.")
        turn.progress(chat_pb2.PHASE_CONTEXT, len(ready), len(attached), "files")


async def _settle(task: asyncio.Task[None], turn: Turn) -> None:
    """Waits for a cancelled pipeline, then makes sure its answer is stored."""
    with contextlib.suppress(BaseException):
        await task
    await turn.finish(STATUS_INCOMPLETE)


def _turn_error(code: int, reason: int, message: str, retryable: bool) -> chat_pb2.TurnError:
    return chat_pb2.TurnError(
        code=code, reason=reason_name(reason), message=message, retryable=retryable
    )


def turn_error(exc: Exception) -> chat_pb2.TurnError:
    """The terminal `error` event of a turn that failed after acceptance."""
    if isinstance(exc, ProviderError):
        return _turn_error(exc.code, exc.reason, exc.message, exc.retryable)
    if isinstance(exc, ServiceError):
        # Another service failed: its reason (DEPENDENCY_UNAVAILABLE when it is down), in
        # the words the user's language has for that reason.
        retryable = exc.code == grpc.StatusCode.UNAVAILABLE
        return _turn_error(exc.code.value[0], exc.reason, _localized(exc.reason), retryable)
    return _turn_error(code_pb2.INTERNAL, Reason.INTERNAL, _localized(Reason.INTERNAL), True)


def _localized(reason: int) -> str:
    return messages.localized(
        reason, messages.locale_of(ctx.language()), request_id=ctx.request_id()
    )
