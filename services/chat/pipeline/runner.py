"""One turn from request to terminal event, top to bottom:

1. `prepare` — the checks made before anything is stored, on the turn's context read in
   one store query (chat, settings, role, prompts, attached files, history, whether a turn
   runs): the chat, the text, the files, then the model (a clone's adapter, the user's
   Gemini key, or the local model), the images sent along. Errors here are statuses with
   an ErrorInfo reason (TURN_IN_PROGRESS, PROVIDER_KEY_MISSING, CLONE_NOT_READY, …).
   RegenerateMessage answers the chat's latest user message again and EditMessage
   answers its new text instead, each with the history before that message; what they
   replace is kept as superseded (NOT_LATEST_MESSAGE for an older message).
2. `start` — stores the user message with the running answer (the turn's lease), emits
   `accepted` and starts the pipeline task, which runs to its end on the server whoever
   watches; `run` (SendMessage) and `watch` (WatchTurn) stream the turn's events,
   `cancel` (CancelTurn) stops it, `drain` checkpoints the running turns at shutdown.
3. the pipeline task — attaches files sent along, rewrites a follow-up into a standalone
   search query (services.chat.followup), runs the simple, complex or local pipeline,
   and stores the outcome whatever happens (answer, failure, CancelTurn, chat deleted,
   shutdown); failures and stops become the terminal `error` event.

`Turns` depends on the `TurnStore` protocol, not on Postgres.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import uuid
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from google.rpc import code_pb2

from aivera.chat.v1 import chat_pb2
from aivera.training.v1 import clones_pb2
from services.chat import convert, followup, user_images
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
from services.chat.serving import Serving
from services.chat.spool import Spool
from services.chat.store import (
    ROLE_ASSISTANT,
    ROLE_USER,
    STATUS_COMPLETE,
    STATUS_IN_PROGRESS,
    STATUS_INCOMPLETE,
    ChatRow,
    ImageRow,
    MessageRow,
    StoredEvent,
    TurnContext,
    not_latest,
    turn_in_progress,
)
from services.chat.tools import ToolRunner
from services.chat.turns import (
    STOP_CANCELLED,
    STOP_DELETED,
    STOP_SHUTDOWN,
    Turn,
    stop_error,
)
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
    regenerate: uuid.UUID | None = None  # RegenerateMessage: the user message answered again
    edit: uuid.UUID | None = None  # EditMessage: the user message replaced
    images: list[user_images.UserImage] = dataclasses.field(default_factory=list)


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
        spool: Spool | None = None,
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
        self.spool = spool
        # Who serves clones and the default model (services.chat.serving).
        self.serving = Serving(
            local=local, clones=clones, files=files, adapters_dir=adapters_dir, settings=settings
        )
        # Running turns of this replica by chat id (DeleteChat stops them) and by turn
        # (message) id (WatchTurn, CancelTurn); their pipeline tasks (drain).
        self.running: dict[str, Turn] = {}
        self.by_message: dict[str, Turn] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    def stop(self, chat_id: uuid.UUID) -> None:
        """Stops the chat's running turn on this replica (its chat was deleted); a turn
        on another replica stops at its next flush."""
        turn = self.running.get(str(chat_id))
        if turn is not None:
            turn.stop(STOP_DELETED)

    # -- 1. before anything is stored ------------------------------------------------------
    async def prepare(self, user_id: str, request: chat_pb2.SendMessageRequest) -> Prepared:
        """SendMessage."""
        chat_id = parse_uuid(request.chat_id, field="chat_id")
        return await self._prepare(
            user_id,
            chat_id,
            request.text,
            list(request.file_ids),
            request.model_profile,
            check_text=True,
            image_ids=list(request.image_file_ids),
        )

    async def prepare_regenerate(
        self, user_id: str, request: chat_pb2.RegenerateMessageRequest
    ) -> Prepared:
        """RegenerateMessage: the answer's user message again, with the history before it."""
        chat_id = parse_uuid(request.chat_id, field="chat_id")
        message_id = parse_uuid(request.message_id, field="message_id")
        answer = await self.store.get_message(user_id, chat_id, message_id)
        if answer is None:
            raise not_found("message", request.message_id)
        if answer.role != ROLE_ASSISTANT or answer.reply_to_id is None:
            raise InvalidArgument("message_id must be an answer", field="message_id")
        if answer.superseded:
            raise not_latest()
        user = await self.store.get_message(user_id, chat_id, answer.reply_to_id)
        if user is None:
            raise not_found("message", request.message_id)
        return await self._prepare(
            user_id,
            chat_id,
            user.content,
            [],
            request.model_profile,
            check_text=False,
            before_seq=user.seq,
            regenerate=user.id,
            sent_images=user.images,
        )

    async def prepare_edit(self, user_id: str, request: chat_pb2.EditMessageRequest) -> Prepared:
        """EditMessage: the new text instead of the latest user message, with the history
        before it."""
        chat_id = parse_uuid(request.chat_id, field="chat_id")
        message_id = parse_uuid(request.message_id, field="message_id")
        old = await self.store.get_message(user_id, chat_id, message_id)
        if old is None:
            raise not_found("message", request.message_id)
        if old.role != ROLE_USER:
            raise InvalidArgument("message_id must be a user message", field="message_id")
        if old.superseded:
            raise not_latest()
        return await self._prepare(
            user_id,
            chat_id,
            request.text,
            [str(f) for f in old.file_ids],
            request.model_profile,
            check_text=True,
            before_seq=old.seq,
            edit=old.id,
            sent_images=old.images,
        )

    async def _prepare(
        self,
        user_id: str,
        chat_id: uuid.UUID,
        raw_text: str,
        raw_file_ids: list[str],
        requested_profile: int,
        *,
        check_text: bool,
        before_seq: int | None = None,
        regenerate: uuid.UUID | None = None,
        edit: uuid.UUID | None = None,
        image_ids: list[str] | None = None,
        sent_images: Sequence[ImageRow] = (),
    ) -> Prepared:
        context = await self.store.turn_context(
            user_id,
            chat_id,
            history=HISTORY_MESSAGES,
            stale_seconds=self.settings.turn_stale_seconds,
            before_seq=before_seq,
        )
        if context is None:
            raise not_found("chat", str(chat_id))
        system = context.system
        text = raw_text.strip()
        if not text:
            raise InvalidArgument("text must not be empty", field="text")
        # A regenerated message was accepted once: a lower limit set since does not
        # refuse it.
        if check_text and len(raw_text) > system.max_message_chars:
            raise InvalidArgument(
                f"text is longer than {system.max_message_chars} characters",
                field="text",
                metadata={"limit": "max_message_chars", "value": str(system.max_message_chars)},
            )
        if context.turn_running:
            raise turn_in_progress()
        file_ids = await self._new_files(raw_file_ids, context)
        images = await self._images(image_ids or [], sent_images)
        model = await self._model(user_id, context)
        profile = chat_pb2.ModelProfile.ValueType(
            requested_profile or context.model_profile or system.default_model_profile
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
            images=[i.part() for i in images],
            project_documents=list(context.folder_documents),
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
            regenerate=regenerate,
            edit=edit,
            images=images,
        )

    async def _images(
        self, raw_ids: list[str], sent: Sequence[ImageRow]
    ) -> list[user_images.UserImage]:
        """The images of the message: the request's (checked), or those the user sent
        with the message being answered again or edited (fetched again)."""
        if raw_ids:
            return await user_images.load(
                self.files,
                raw_ids,
                max_images=self.settings.chat_max_images_per_message,
                max_pixels=self.settings.chat_max_image_pixels,
                max_bytes=self.settings.chat_max_image_bytes,
            )
        return [
            user_images.UserImage(
                row.file_id,
                row.description,
                await self.files.download(row.file_id),
                row.mime_type,
                row.width,
                row.height,
            )
            for row in sent
            if row.kind == chat_pb2.IMAGE_KIND_USER
        ]

    async def _new_files(self, raw_ids: list[str], context: TurnContext) -> list[str]:
        """The request's file ids; files not attached yet are checked (owner, type) and
        counted against the chat's attachment limit."""
        file_ids = [str(parse_uuid(raw, field="file_ids")) for raw in raw_ids]
        new = [f for f in dict.fromkeys(file_ids) if f not in context.attached_file_ids]
        for file_id in new:
            await self.attachments.check_type(file_id, field="file_ids")
        limit = context.system.max_attachments_per_chat
        if len(context.attached_file_ids) + len(new) > limit:
            raise too_many(limit)
        return file_ids

    async def _model(self, user_id: str, context: TurnContext) -> Model:
        """A clone chat answers with its adapter on its own base model (in process, or on
        the base model's inference server: services.chat.serving); other chats with
        Gemini under the user's key, or the local model when the user has no key and the
        admin allows it."""
        chat = context.chat
        if chat.clone_id:
            clone = await self.clones.clone(str(chat.clone_id))
            if clone.status == clones_pb2.CLONE_STATUS_TRAINING and not clone.active_model_id:
                raise FailedPrecondition(
                    "the clone's adapter is not ready yet (still training)",
                    reason=Reason.CLONE_NOT_READY,
                )
            return Model(
                await self.serving.for_clone(clone),
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
        return Model(await self.serving.default(), local=True)

    # -- 2. the stored turn and its stream -------------------------------------------------
    async def start(self, prepared: Prepared) -> Turn:
        """Stores the user message with the running answer (the turn's lease) and starts
        the pipeline, which runs to its end whoever watches it. `accepted` is seq 1."""
        chat_id = prepared.chat.id
        if self.spool is not None and self.spool.pending():
            # A turn spooled while the database was down still holds its chat's lease.
            await self.spool.drain(self.store)
        user_row, answer_row = await self.store.begin_turn(
            chat_id,
            text=prepared.inp.text,
            file_ids=prepared.file_ids,
            model_profile=prepared.inp.profile,
            role_prompt_id=prepared.role_id,
            role_prompt_version=prepared.role_version,
            stale_seconds=self.settings.turn_stale_seconds,
            regenerate=prepared.regenerate,
            edit=prepared.edit,
            images=[] if prepared.regenerate else [i.row() for i in prepared.images],
        )
        turn = Turn(
            self.store,
            user_id=prepared.user_id,
            answer=answer_row,
            flush_interval=self.settings.turn_flush_interval_seconds,
            finish_retry_seconds=self.settings.turn_finish_retry_seconds,
            spool=self.spool,
        )
        turn.emit(
            accepted=chat_pb2.TurnAccepted(
                user_message=convert.message(user_row),
                model_profile=prepared.inp.profile,
                role_prompt_id=prepared.role_id,
            )
        )
        key, message_key = str(chat_id), str(answer_row.id)
        self.running[key] = turn
        self.by_message[message_key] = turn
        # Not an App task: the service's stop cancels those before `drain` runs, while a
        # turn gets the grace period and is checkpointed through the still open pool.
        task = asyncio.create_task(self._pipeline(prepared, turn), name=f"turn-{message_key}")
        turn.task = task
        self.tasks.add(task)

        def done(_: asyncio.Task[None]) -> None:
            self.tasks.discard(task)
            if self.running.get(key) is turn:
                del self.running[key]
            if self.by_message.get(message_key) is turn:
                del self.by_message[message_key]

        task.add_done_callback(done)
        return turn

    async def run(self, prepared: Prepared) -> AsyncGenerator[chat_pb2.ChatEvent, None]:
        """SendMessage: starts the turn and streams its events (seq from 1). Closing the
        stream does not stop the turn (CancelTurn does)."""
        # Shielded: a client gone while the turn is being stored still gets a turn that
        # runs (not an IN_PROGRESS answer nobody runs, holding the chat until it is stale).
        turn = await asyncio.shield(self.start(prepared))
        async for event in turn.follow(0):
            yield event

    # -- watching, cancelling, draining ----------------------------------------------------
    async def watch(
        self, user_id: str, chat_id: uuid.UUID, turn_id: uuid.UUID, after_seq: int
    ) -> AsyncGenerator[chat_pb2.ChatEvent, None]:
        """WatchTurn: the turn's events after `after_seq` up to its terminal event. A turn
        of this replica is followed in memory (even while the database is down); any
        other is read from the log in Postgres, polled every turn_watch_poll_seconds."""
        local = self.by_message.get(str(turn_id))
        if local is not None and local.user_id == user_id and local.chat_id == chat_id:
            async for event in local.follow(after_seq):
                yield event
            return
        stale = self.settings.turn_stale_seconds
        watched = await self.store.watched_turn(user_id, chat_id, turn_id, stale)
        if watched is None:
            raise not_found("turn", str(turn_id))
        last = after_seq
        while True:
            for stored in await self.store.turn_events(turn_id, last):
                event = chat_pb2.ChatEvent.FromString(stored.event)
                last = stored.seq
                yield event
                if stored.terminal:
                    return
            local = self.by_message.get(str(turn_id))
            if local is not None:  # it moved here? follow it in memory from now on
                async for event in local.follow(last):
                    yield event
                return
            if watched.message.status != STATUS_IN_PROGRESS or watched.stale:
                # Ended (or lost its replica): the log is complete. Without a terminal
                # event in it, it is closed with one derived from the stored answer,
                # once for all watchers.
                end, ended = await self.store.turn_log_end(turn_id)
                if end > last:
                    continue
                if ended:  # the caller has seen the whole turn already
                    return
                await self._close_log(turn_id, end, watched.message)
                continue
            await asyncio.sleep(self.settings.turn_watch_poll_seconds)
            refreshed = await self.store.watched_turn(user_id, chat_id, turn_id, stale)
            if refreshed is None:  # the chat was deleted meanwhile
                raise not_found("turn", str(turn_id))
            watched = refreshed

    async def _close_log(self, turn_id: uuid.UUID, end: int, message: MessageRow) -> None:
        seq = end + 1
        if message.status == STATUS_COMPLETE:
            event = chat_pb2.ChatEvent(final=chat_pb2.TurnFinal(message=convert.message(message)))
        elif message.error is not None:
            e = message.error
            event = chat_pb2.ChatEvent(
                error=chat_pb2.TurnError(
                    code=e.code, reason=e.reason, message=e.message, retryable=e.retryable
                )
            )
        else:  # its replica died (a crash, or a sweep of a stale turn)
            event = chat_pb2.ChatEvent(error=stop_error(STOP_SHUTDOWN))
        event.message_id = str(turn_id)
        event.seq = seq
        await self.store.close_turn_log(
            turn_id, StoredEvent(seq, event.SerializeToString(), terminal=True)
        )

    async def cancel(self, user_id: str, chat_id: uuid.UUID, turn_id: uuid.UUID) -> None:
        """CancelTurn: stops the turn here, or flags it for the replica that runs it."""
        local = self.by_message.get(str(turn_id))
        if local is not None and local.user_id == user_id and local.chat_id == chat_id:
            local.stop(STOP_CANCELLED)
            return
        if not await self.store.request_cancel(user_id, chat_id, turn_id):
            raise not_found("turn", str(turn_id))

    async def drain(self, deadline: float) -> None:
        """Shutdown: lets running turns finish until `deadline` (loop time), then stops
        the rest with reason SHUTDOWN; each stores its partial answer and terminal event
        (or spools them) before this returns, while the pool is still open."""
        loop = asyncio.get_running_loop()
        if self.tasks:
            log.info("draining: %d running turn(s)", len(self.tasks))
            await asyncio.wait(set(self.tasks), timeout=max(0.0, deadline - loop.time()))
        for turn in list(self.by_message.values()):
            turn.stop(STOP_SHUTDOWN)
        if self.tasks:
            log.info("draining: %d turn(s) checkpointed", len(self.tasks))
            await asyncio.wait(set(self.tasks), timeout=self.settings.turn_finish_retry_seconds + 5)

    # -- 3. the pipeline task --------------------------------------------------------------
    async def _pipeline(self, prepared: Prepared, turn: Turn) -> None:
        """Runs the pipeline, then stores the outcome whatever happened: the answer, a
        failure (terminal `error`), or a stop (CancelTurn, chat deleted, shutdown)."""
        flusher = asyncio.create_task(turn.flusher())
        provider = prepared.model.provider
        status, error = STATUS_COMPLETE, None
        turn.started = True
        try:
            if turn.stopped:
                raise asyncio.CancelledError
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
            if inp.searchable:
                # A follow-up searches with a standalone query: the flash model's rewrite
                # with the user's key, the local heuristic otherwise.
                inp.query = await followup.search_query(
                    turn,
                    None if prepared.model.local else provider,
                    model=inp.flash_model,
                    history=inp.history,
                    text=inp.text,
                )
            if prepared.model.local:
                await run_local(turn, inp, provider, self.documents, tools)
            elif inp.profile == chat_pb2.MODEL_PROFILE_COMPLEX:
                await run_complex(turn, inp, provider, self.documents, tools)
            else:
                await run_simple(turn, inp, provider, self.documents, tools)
            turn.saving()
        except asyncio.CancelledError:
            # Stopped on purpose (turn.stopped says why), or the loop is going away.
            status, error = STATUS_INCOMPLETE, stop_error(turn.stopped or STOP_SHUTDOWN)
        except Exception as exc:
            status, error = STATUS_INCOMPLETE, turn_error(exc)
            if error.code == code_pb2.INTERNAL and not isinstance(exc, ProviderError):
                log.exception("turn %s failed", turn.message_id)
        finally:
            flusher.cancel()
            with contextlib.suppress(BaseException):
                await flusher
            close = getattr(provider, "aclose", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    await close()
        try:
            await turn.finish(status, error)
        except BaseException as exc:
            log.exception("turn %s: the outcome could not be stored", turn.message_id)
            # Watchers on this replica still get an end; the stale sweep closes the answer.
            turn.abandon(
                _turn_error(code_pb2.INTERNAL, Reason.INTERNAL, _localized(Reason.INTERNAL), True)
            )
            if isinstance(exc, asyncio.CancelledError):
                raise

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
