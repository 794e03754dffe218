"""One turn from request to terminal event: checks made before anything is stored, the
stored user message and `accepted`, the pipeline in a task whose events are streamed, and
the outcome stored whatever happens (answer, failure, client gone, chat deleted)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aivera.chat.v1 import chat_pb2
from services.chat import convert, prompts
from services.chat.attachments import SUPPORTED_TYPES, attach, wait_ready
from services.chat.deps import Deps
from services.chat.pipeline.base import TurnInput, search_context, tool_loop
from services.chat.pipeline.complex import run_complex
from services.chat.pipeline.simple import run_simple
from services.chat.providers.base import (
    CODE_INTERNAL,
    CODE_UNAVAILABLE,
    Provider,
    ProviderError,
    key_missing,
)
from services.chat.providers.local import LocalProvider
from services.chat.store import STATUS_COMPLETE, STATUS_INCOMPLETE
from services.chat.tools import ToolRunner
from services.chat.turns import Turn
from services.common.errors import (
    FailedPrecondition,
    InvalidArgument,
    ResourceExhausted,
    ServiceError,
    not_found,
)
from services.common.protoutil import parse_uuid

log = logging.getLogger("aivera.chat.turns")


@dataclass
class Prepared:
    user_id: str
    chat: Any
    inp: TurnInput
    provider: Provider
    local: bool
    file_ids: list[str]
    role_id: str
    role_version: int
    max_zooms: int
    max_attachments: int


async def prepare(deps: Deps, user_id: str, request: chat_pb2.SendMessageRequest) -> Prepared:
    """Everything checked before the user message is stored (errors here are statuses)."""
    store = deps.store
    chat_id = parse_uuid(request.chat_id, field="chat_id")
    chat = await store.get_chat(user_id, chat_id)
    if chat is None:
        raise not_found("chat", request.chat_id)
    system = await store.system_settings()
    text = request.text.strip()
    if not text:
        raise InvalidArgument("text must not be empty", field="text")
    if len(request.text) > system["max_message_chars"]:
        raise InvalidArgument(
            f"text is longer than {system['max_message_chars']} characters", field="text"
        )
    file_ids: list[str] = []
    for raw in request.file_ids:
        file_ids.append(str(parse_uuid(raw, field="file_ids")))
    if file_ids:
        existing = {str(a["file_id"]) for a in await store.list_attachments(chat_id)}
        new = [f for f in dict.fromkeys(file_ids) if f not in existing]
        for file_id in new:
            _, content_type = await deps.files.file_info(file_id)
            if content_type.split(";")[0] not in SUPPORTED_TYPES:
                raise InvalidArgument(
                    f"file {file_id!r} has an unsupported type ({content_type})", field="file_ids"
                )
        if len(existing) + len(new) > system["max_attachments_per_chat"]:
            raise ResourceExhausted(
                f"a chat may have at most {system['max_attachments_per_chat']} attachments"
            )
    user = await store.user_settings(user_id)
    profile = (
        request.model_profile or (user and user["model_profile"]) or system["default_model_profile"]
    )
    role_id = str(user["role_id"]) if user and user["role_id"] else ""
    role_text: str | None = None
    role_version = 0
    if role_id:
        role = await store.get_role(uuid.UUID(role_id))
        if role is not None and role["is_active"]:
            role_text, role_version = role["content"], role["version"]
        else:
            role_id = ""
    kb_ids = [str(k) for k in chat["knowledge_base_ids"]]
    if chat["attachments_knowledge_base_id"]:
        kb_ids.append(str(chat["attachments_knowledge_base_id"]))
    persona: str | None = None
    provider: Provider
    local = False
    if chat["clone_id"]:
        clone = await deps.clones.clone(str(chat["clone_id"]))
        if clone.status == 2 and not clone.active_model_id:  # CLONE_STATUS_TRAINING
            raise FailedPrecondition("the clone's adapter is not ready yet (still training)")
        adapter = None
        if clone.active_model_id:
            adapter = (clone.active_model_id, await adapter_dir(deps, clone.active_model_id))
        provider = deps.local.provider(adapter)
        persona = clone.persona or None
        if clone.knowledge_base_id:
            kb_ids.append(clone.knowledge_base_id)
        local = True
        profile = chat_pb2.MODEL_PROFILE_SIMPLE
    else:
        key = await deps.keys.gemini_key(user_id)
        if key is None:
            if not system["local_model_enabled"]:
                raise FailedPrecondition(key_missing().message)
            provider = deps.local.provider()
            local = True
        else:
            provider = deps.gemini(key)
    inp = TurnInput(
        text=text,
        profile=int(profile),
        prompts=await store.active_system_prompts(),
        role=role_text,
        persona=persona,
        history=[],  # read once the user message is stored (run)
        kb_ids=list(dict.fromkeys(kb_ids)),
        flash_model=system["flash_model"],
        pro_model=system["pro_model"],
        max_tool_iterations=system["max_tool_iterations"],
        top_k=deps.settings.search_top_k,
    )
    return Prepared(
        user_id=user_id,
        chat=chat,
        inp=inp,
        provider=provider,
        local=local,
        file_ids=file_ids,
        role_id=role_id,
        role_version=role_version,
        max_zooms=system["max_zooms_per_turn"],
        max_attachments=system["max_attachments_per_chat"],
    )


async def adapter_dir(deps: Deps, model_id: str) -> Path:
    """The clone adapter's folder, fetched from storage once per replica."""
    folder = deps.adapters_dir / model_id
    if (folder / "adapter_config.json").exists():
        return folder
    files = await deps.clones.adapter_files(model_id)
    if not any(name == "adapter_config.json" for name, _, _ in files):
        raise FailedPrecondition("the clone's adapter is not ready (no adapter files)")
    tmp = deps.adapters_dir / f".{model_id}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True, exist_ok=True)
    for name, file_id, _ in files:
        data = await deps.files.download(file_id)
        await asyncio.to_thread((tmp / Path(name).name).write_bytes, data)
    with contextlib.suppress(OSError):  # another turn got there first
        tmp.rename(folder)
    return folder


async def run(deps: Deps, prepared: Prepared) -> AsyncGenerator[chat_pb2.ChatEvent, None]:
    """Stores the user message, then streams the turn's events (seq from 1)."""
    chat_id = prepared.chat["id"]
    user_row, answer_row = await deps.store.begin_turn(
        chat_id,
        text=prepared.inp.text,
        file_ids=prepared.file_ids,
        model_profile=prepared.inp.profile,
        role_prompt_id=prepared.role_id,
        role_prompt_version=prepared.role_version,
        stale_seconds=deps.settings.turn_stale_seconds,
    )
    # History is what came before this turn.
    prepared.inp.history = [
        (r["role"], r["content"]) for r in await deps.store.history(chat_id, user_row["seq"], 20)
    ]
    message_id = str(answer_row["id"])
    turn = Turn(
        deps.store,
        chat_id=chat_id,
        message_id=answer_row["id"],
        flush_interval=deps.settings.turn_flush_interval_seconds,
    )
    accepted = chat_pb2.ChatEvent(
        message_id=message_id,
        seq=1,
        accepted=chat_pb2.TurnAccepted(
            user_message=convert.message(user_row),
            model_profile=prepared.inp.profile,  # type: ignore[arg-type]
            role_prompt_id=prepared.role_id,
        ),
    )
    # Pipeline events queue up behind `accepted`, which is always sent first.
    task = asyncio.create_task(_pipeline(deps, prepared, turn), name=f"turn-{message_id}")
    key = str(chat_id)
    deps.running[key] = turn
    turn.on_deleted(task.cancel)
    queue = turn.events
    seq = 1
    try:
        yield accepted
        while True:
            event = await queue.get()
            if event is None:
                return
            seq += 1
            event.message_id = message_id
            event.seq = seq
            yield event
    finally:
        # The client went away (or the stream ended): stop the pipeline; it stores what
        # it has as INCOMPLETE on its way out.
        if not task.done():
            task.cancel()
            # Also covers a task cancelled before it started running.
            deps.spawn(_settle(task, turn), name="turn-settle")
        if deps.running.get(key) is turn:
            del deps.running[key]


async def _settle(task: asyncio.Task[None], turn: Turn) -> None:
    """Waits for a cancelled pipeline, then makes sure its answer is stored."""
    with contextlib.suppress(BaseException):
        await task
    await turn.finish(STATUS_INCOMPLETE)


def _turn_error(code: int, reason: str, message: str, retryable: bool) -> chat_pb2.TurnError:
    return chat_pb2.TurnError(code=code, reason=reason, message=message, retryable=retryable)


async def _pipeline(deps: Deps, prepared: Prepared, turn: Turn) -> None:
    flusher = asyncio.create_task(turn.flusher())

    async def store_outcome(status: int, error: chat_pb2.TurnError | None = None) -> Any:
        # Shielded in its own task: the write finishes even when this turn is cancelled.
        return await asyncio.shield(deps.spawn(turn.finish(status, error), name="turn-finish"))

    try:
        inp = prepared.inp
        tools = ToolRunner(
            turn,
            deps.documents,
            deps.files,
            max_zooms=prepared.max_zooms,
            url_ttl=deps.settings.image_url_ttl_seconds,
            user_labels={"chat_id": str(turn.chat_id), "message_id": str(turn.message_id)},
        )
        async with turn.phase(chat_pb2.PHASE_CONTEXT, "Подготовка контекста"):
            if prepared.file_ids:
                await _attach_files(deps, prepared, turn)
        if prepared.local:
            await _run_local(turn, inp, prepared.provider, deps, tools)
        elif inp.profile == chat_pb2.MODEL_PROFILE_COMPLEX:
            await run_complex(turn, inp, prepared.provider, deps.documents, tools)
        else:
            await run_simple(turn, inp, prepared.provider, deps.documents, tools)
        async with turn.phase(chat_pb2.PHASE_SAVE, "Сохранение ответа"):
            row = await store_outcome(STATUS_COMPLETE)
        turn.emit(
            final=chat_pb2.TurnFinal(message=convert.message(row, turn.images, turn.search_results))
        )
    except asyncio.CancelledError:
        error = None
        if turn.deleted:
            error = _turn_error(1, "CANCELLED", "Чат удалён: ход остановлен.", False)
            turn.emit(error=error)
        deps.spawn(turn.finish(STATUS_INCOMPLETE, error), name="turn-finish-cancelled")
        raise
    except ProviderError as exc:
        error = _turn_error(exc.code, exc.reason, exc.message, exc.retryable)
        await store_outcome(STATUS_INCOMPLETE, error)
        turn.emit(error=error)
    except ServiceError as exc:
        error = _turn_error(
            CODE_UNAVAILABLE,
            "DEPENDENCY_UNAVAILABLE",
            f"Сервис недоступен: {exc.message}",
            True,
        )
        await store_outcome(STATUS_INCOMPLETE, error)
        turn.emit(error=error)
    except Exception:
        log.exception("turn %s failed", turn.message_id)
        error = _turn_error(CODE_INTERNAL, "INTERNAL", "Внутренняя ошибка сервера.", True)
        await store_outcome(STATUS_INCOMPLETE, error)
        turn.emit(error=error)
    finally:
        flusher.cancel()
        turn.events.put_nowait(None)
        close = getattr(prepared.provider, "aclose", None)
        if close is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(close())


async def _attach_files(deps: Deps, prepared: Prepared, turn: Turn) -> None:
    chat_id = turn.chat_id
    attachments = []
    for file_id in prepared.file_ids:
        attachments.append(
            await attach(deps, prepared.user_id, prepared.chat, file_id, prepared.max_attachments)
        )
    kb = (await deps.store.get_chat(prepared.user_id, chat_id))["attachments_knowledge_base_id"]
    if kb and str(kb) not in prepared.inp.kb_ids:
        prepared.inp.kb_ids.append(str(kb))
    ready, failed, waiting = await wait_ready(
        deps, chat_id, [a["id"] for a in attachments], deps.settings.attachment_wait_seconds
    )
    for row in failed:
        turn.warning(
            "FILE_UNREADABLE",
            f"Файл {row['filename']} не удалось прочитать: {row['error_message']}",
        )
        prepared.inp.notes.append(f"Файл «{row['filename']}» не удалось прочитать.")
    for row in waiting:
        turn.warning("ATTACHMENT_NOT_READY", f"Файл {row['filename']} ещё обрабатывается.")
    turn.progress(chat_pb2.PHASE_CONTEXT, len(ready), len(attachments), "files")


async def _run_local(
    turn: Turn, inp: TurnInput, provider: Provider, deps: Deps, tools: ToolRunner
) -> None:
    """Local model turns follow the simple order without tools."""
    blocks = await search_context(turn, inp, deps.documents, tools)
    system = prompts.answer_system_instruction(inp.prompts, inp.role, inp.persona)
    contents = prompts.history_contents(inp.history)
    contents.append(prompts.simple_user_content(inp.text, blocks, inp.notes))
    model = provider.model_name if isinstance(provider, LocalProvider) else provider.name
    await tool_loop(
        turn,
        provider,
        tools,
        model=model,
        system=system,
        contents=contents,
        phase=chat_pb2.PHASE_LOCAL_CALL,
        max_iterations=0,
        stream_tokens=True,
        tool_specs=[],
    )
