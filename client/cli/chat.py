"""Commands of chats, files and knowledge bases."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.live import Live
from rich.markdown import Markdown
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from aivera.chat.v1 import chat_pb2
from aivera.rag.v1 import rag_pb2
from client.cli.base import JsonOpt, active_chat, run
from client.cli.render import (
    ChatView,
    enum_name,
    err,
    out,
    print_json,
    print_json_line,
    size,
    table,
    to_dict,
    ts,
)
from client.messages import t
from client.sdk import BUCKETS, AsyncClient

chat_app = typer.Typer(help="Чаты / chats.", no_args_is_help=True)
file_app = typer.Typer(help="Файлы / files.", no_args_is_help=True)
kb_app = typer.Typer(help="Базы знаний / knowledge bases.", no_args_is_help=True)

ChatOpt = typer.Option("--chat", help="Чат (по умолчанию активный) / chat id (default: active).")
PROFILES = {"simple": chat_pb2.MODEL_PROFILE_SIMPLE, "complex": chat_pb2.MODEL_PROFILE_COMPLEX}


def transfer_progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=False,
    )


async def upload_with_progress(c: AsyncClient, path: Path, bucket: str) -> str:
    """Upload `path` with a progress bar (bytes and rate); returns the file id."""
    total = await asyncio.to_thread(os.path.getsize, path)
    with transfer_progress() as bar:
        task = bar.add_task(path.name, total=total)
        f = await c.upload(
            path, bucket=bucket, progress=lambda done: bar.update(task, completed=done)
        )
        bar.update(task, completed=total)
    return f.id


# ---- chat -----------------------------------------------------------------------------


@chat_app.command("new")
def chat_new(
    title: Annotated[str, typer.Argument(help="Название / title")] = "",
    clone: Annotated[str, typer.Option("--clone", help="Чат с клоном / talk to a clone.")] = "",
    kb: Annotated[
        list[str] | None, typer.Option("--kb", help="База знаний / knowledge base id.")
    ] = None,
    json_: bool = JsonOpt,
) -> None:
    """Создать чат и сделать его активным / create a chat and make it active."""

    async def go(c: AsyncClient) -> None:
        chat = await c.create_chat(title, clone_id=clone, knowledge_base_ids=kb or [])
        c.set_active_chat(chat.id)
        if json_:
            print_json(chat)
        else:
            out.print(t("chat.created", title=chat.title, id=chat.id), markup=False)

    run(go)


@chat_app.command("list")
def chat_list(json_: bool = JsonOpt) -> None:
    """Чаты, недавние первыми; * — активный / your chats, * marks the active one."""

    async def go(c: AsyncClient) -> None:
        chats = await c.list_chats()
        if json_:
            print_json(chats)
            return
        active = c.credentials.active_chat_id
        rows = [
            (
                "*" if ch.id == active else "",
                ch.id,
                ch.title,
                ts(ch.last_message_time if ch.HasField("last_message_time") else ch.create_time),
            )
            for ch in chats
        ]
        out.print(table(["", "id", t("col.title"), t("col.last_activity")], rows))

    run(go)


@chat_app.command("use")
def chat_use(chat_id: str) -> None:
    """Сделать чат активным / make a chat the active one."""

    async def go(c: AsyncClient) -> None:
        chat = await c.get_chat(chat_id)
        c.set_active_chat(chat.id)
        out.print(t("chat.using", title=chat.title, id=chat.id), markup=False)

    run(go)


@chat_app.command("show")
def chat_show(chat_id: Annotated[str | None, ChatOpt] = None, json_: bool = JsonOpt) -> None:
    """Чат и его вложения / a chat with its attachments."""

    async def go(c: AsyncClient) -> None:
        chat = await c.get_chat(active_chat(c, chat_id))
        if json_:
            print_json(chat)
            return
        out.print(f"{chat.title} ({chat.id})", style="bold", markup=False)
        rows = [
            (
                a.file_id,
                a.filename,
                enum_name(chat_pb2.AttachmentStatus, a.status, "ATTACHMENT_STATUS_"),
                a.error_message,
            )
            for a in chat.attachments
        ]
        if rows:
            out.print(table(["file", t("col.name"), t("col.status"), ""], rows))

    run(go)


async def show_turn(
    view: ChatView, events: AsyncIterator[chat_pb2.ChatEvent], *, as_json: bool
) -> int:
    """Shows a turn's events (live region on a terminal, lines elsewhere, or JSON lines);
    1 when the turn ended with an error."""
    if as_json:
        async for ev in events:
            view.apply(ev)
            print_json_line(ev)
        return 1 if view.error is not None else 0
    if view.live:
        with Live(view.renderable(), console=out, transient=True, refresh_per_second=12) as live:
            async for ev in events:
                view.apply(ev)
                live.update(view.renderable())
    else:
        async for ev in events:
            view.apply(ev)
    view.finish()
    return 1 if view.error is not None else 0


def _reconnecting(view: ChatView) -> Callable[[int, int], None]:
    def note(attempt: int, last: int) -> None:
        if not view.live:
            err.print(t("chat.reconnecting", attempt=attempt, seq=last), style="yellow")

    return note


def _stopped_watching(view: ChatView) -> Callable[[], None]:
    def interrupted() -> None:
        if view.live and view.text:
            out.print(view.text, markup=False)  # the live region is gone; keep the partial text
        elif view.text and view.echo:
            out.print()
        err.print(t("chat.watch_stopped", turn=view.turn_id or "<turn-id>"), style="yellow")

    return interrupted


@chat_app.command("send")
def chat_send(
    text: Annotated[str, typer.Argument(help="Сообщение / the message")],
    chat_id: Annotated[str | None, ChatOpt] = None,
    files: Annotated[list[str] | None, typer.Option("--file", help="id файла / file id.")] = None,
    profile: Annotated[
        str | None, typer.Option("--profile", help="simple | complex, только для этого хода.")
    ] = None,
    json_: Annotated[
        bool, typer.Option("--json", help="События построчно в JSON / events as JSON lines.")
    ] = False,
) -> None:
    """Отправить сообщение и смотреть ответ вживую; после обрыва связи наблюдение
    возобновляется само; Ctrl-C отменяет ход / send a message and watch the answer live;
    a dropped connection reattaches by itself; Ctrl-C cancels the turn."""
    if profile is not None and profile not in PROFILES:
        raise typer.BadParameter("simple | complex", param_hint="--profile")
    view = ChatView(live=out.is_terminal and not json_, echo=not json_)
    target: dict[str, str] = {}

    async def go(c: AsyncClient) -> int:
        cid = target["chat"] = active_chat(c, chat_id)
        events = c.send_message(
            cid,
            text,
            file_ids=files or [],
            model_profile=PROFILES[profile] if profile else chat_pb2.MODEL_PROFILE_UNSPECIFIED,
            on_reconnect=_reconnecting(view),
        )
        try:
            return await show_turn(view, events, as_json=json_)
        except asyncio.CancelledError:
            # Ctrl-C is the user's "stop": the turn itself is cancelled (a dropped
            # connection is not: the SDK reattaches), its partial answer stored.
            if view.turn_id:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(c.cancel_turn(cid, view.turn_id), 10)
                    target["cancelled"] = view.turn_id
            raise

    def interrupted() -> None:
        if "cancelled" not in target:
            _stopped_watching(view)()
            return
        if view.live and view.text:
            out.print(view.text, markup=False)  # the live region is gone; keep the partial text
        elif view.text and view.echo:
            out.print()
        err.print(t("chat.cancelled"), style="yellow")

    run(go, on_interrupt=interrupted)


@chat_app.command("watch")
def chat_watch(
    turn_id: Annotated[str, typer.Argument(help="Ход: message_id его событий / turn id.")],
    chat_id: Annotated[str | None, ChatOpt] = None,
    after: Annotated[
        int, typer.Option("--after", min=0, help="После события seq / after this seq.")
    ] = 0,
    json_: Annotated[
        bool, typer.Option("--json", help="События построчно в JSON / events as JSON lines.")
    ] = False,
) -> None:
    """Смотреть ход (с начала или после --after) до его конца, с любой реплики /
    replay and follow a turn to its end."""
    view = ChatView(live=out.is_terminal and not json_, echo=not json_)

    async def go(c: AsyncClient) -> int:
        cid = active_chat(c, chat_id)
        events = c.watch_turn_resilient(
            cid, turn_id, after_seq=after, on_reconnect=_reconnecting(view)
        )
        return await show_turn(view, events, as_json=json_)

    run(go, on_interrupt=_stopped_watching(view))


@chat_app.command("cancel")
def chat_cancel(
    turn_id: Annotated[str, typer.Argument(help="Ход / turn id.")],
    chat_id: Annotated[str | None, ChatOpt] = None,
) -> None:
    """Остановить ход; частичный ответ сохраняется / stop a running turn."""

    async def go(c: AsyncClient) -> None:
        await c.cancel_turn(active_chat(c, chat_id), turn_id)
        err.print(t("chat.cancelled"), style="yellow")

    run(go)


@chat_app.command("history")
def chat_history(
    chat_id: Annotated[str | None, ChatOpt] = None,
    tail: Annotated[
        int | None, typer.Option("--tail", "-n", min=1, help="Последние N / last N.")
    ] = None,
    json_: bool = JsonOpt,
) -> None:
    """Сообщения чата / the chat's messages."""

    async def go(c: AsyncClient) -> None:
        messages = await c.list_messages(active_chat(c, chat_id), tail=tail)
        if json_:
            print_json(messages)
            return
        for m in messages:
            role = enum_name(chat_pb2.MessageRole, m.role, "MESSAGE_ROLE_")
            head = f"{t('role.' + role)} · {ts(m.create_time)}"
            if m.models_used:
                head += " · " + ", ".join(m.models_used)
            if m.status not in (
                chat_pb2.MESSAGE_STATUS_COMPLETE,
                chat_pb2.MESSAGE_STATUS_UNSPECIFIED,
            ):
                head += " · " + enum_name(chat_pb2.MessageStatus, m.status, "MESSAGE_STATUS_")
            out.print(head, style="bold cyan" if role == "user" else "bold green", markup=False)
            if m.role == chat_pb2.MESSAGE_ROLE_ASSISTANT:
                out.print(Markdown(m.content or (m.error.message if m.HasField("error") else "")))
            else:
                out.print(m.content, markup=False)
            out.print()

    run(go)


@chat_app.command("attach")
def chat_attach(
    file_id: str,
    chat_id: Annotated[str | None, ChatOpt] = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="Ждать индексации / wait for ingestion.")
    ] = False,
    json_: bool = JsonOpt,
) -> None:
    """Прикрепить файл к чату (индексируется в базу знаний чата) / attach a file."""

    async def go(c: AsyncClient) -> int:
        cid = active_chat(c, chat_id)
        att = await c.attach_file(cid, file_id)
        while wait and att.status == chat_pb2.ATTACHMENT_STATUS_INGESTING:
            await asyncio.sleep(1.0)
            chat = await c.get_chat(cid)
            att = next((a for a in chat.attachments if a.file_id == file_id), att)
        if json_:
            print_json(att)
        else:
            status = enum_name(chat_pb2.AttachmentStatus, att.status, "ATTACHMENT_STATUS_")
            out.print(t("chat.attached", filename=att.filename, status=status), markup=False)
            if att.error_message:
                err.print(att.error_message, style="red", markup=False)
        return 1 if att.status == chat_pb2.ATTACHMENT_STATUS_FAILED else 0

    run(go)


# ---- files ----------------------------------------------------------------------------


@file_app.command("upload")
def file_upload(
    path: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)],
    bucket: Annotated[str, typer.Option("--bucket", help=" | ".join(BUCKETS))] = "documents",
    attach: Annotated[
        bool, typer.Option("--attach", help="Сразу прикрепить к активному чату.")
    ] = False,
    json_: bool = JsonOpt,
) -> None:
    """Загрузить файл (прогресс: байты и скорость) / upload a file."""
    if bucket not in BUCKETS:
        raise typer.BadParameter(" | ".join(BUCKETS), param_hint="--bucket")

    async def go(c: AsyncClient) -> None:
        file_id = await upload_with_progress(c, path, bucket)
        f = await c.get_file(file_id)
        att = await c.attach_file(active_chat(c, None), file_id) if attach else None
        if json_:
            print_json({"file": to_dict(f), "attachment": to_dict(att) if att else None})
            return
        out.print(t("file.uploaded", filename=f.filename, size=size(f.size_bytes)), markup=False)
        out.print(f.id, markup=False)
        if att is not None:
            out.print(t("chat.attached", filename=att.filename, status="ingesting"), markup=False)

    run(go)


@file_app.command("list")
def file_list(
    bucket: Annotated[str | None, typer.Option("--bucket")] = None, json_: bool = JsonOpt
) -> None:
    """Ваши файлы / your files."""

    async def go(c: AsyncClient) -> None:
        files = await c.list_files(bucket)
        if json_:
            print_json(files)
            return
        rows = [
            (f.id, f.filename, size(f.size_bytes), f.content_type, ts(f.create_time)) for f in files
        ]
        out.print(
            table(["id", t("col.name"), t("col.size"), t("col.type"), t("col.created")], rows)
        )

    run(go)


@file_app.command("download")
def file_download(file_id: str, dest: Annotated[Path, typer.Argument()] = Path(".")) -> None:
    """Скачать файл / download a file."""

    async def go(c: AsyncClient) -> None:
        meta = await c.get_file(file_id)
        with transfer_progress() as bar:
            task = bar.add_task(meta.filename, total=meta.size_bytes)
            f = await c.download(file_id, dest, progress=lambda d: bar.update(task, completed=d))
        out.print(t("file.downloaded", filename=f.filename), markup=False)

    run(go)


# ---- knowledge bases ------------------------------------------------------------------


@kb_app.command("create")
def kb_create(
    name: str,
    description: Annotated[str, typer.Option("--description", "-d")] = "",
    json_: bool = JsonOpt,
) -> None:
    """Создать базу знаний / create a knowledge base."""

    async def go(c: AsyncClient) -> None:
        kb = await c.create_knowledge_base(name, description)
        if json_:
            print_json(kb)
        else:
            out.print(t("kb.created", name=kb.name, id=kb.id), markup=False)

    run(go)


@kb_app.command("list")
def kb_list(json_: bool = JsonOpt) -> None:
    """Базы знаний / knowledge bases."""

    async def go(c: AsyncClient) -> None:
        kbs = await c.list_knowledge_bases()
        if json_:
            print_json(kbs)
            return
        rows = [(k.id, k.name, k.document_count, k.chunk_count) for k in kbs]
        out.print(table(["id", t("col.name"), t("col.documents"), t("col.chunks")], rows))

    run(go)


@kb_app.command("add")
def kb_add(
    kb_id: str,
    source: Annotated[str, typer.Argument(help="Путь к файлу или id файла / a path or a file id")],
    json_: bool = JsonOpt,
) -> None:
    """Добавить документ (загрузка и индексация с прогрессом) / add a document."""

    path = Path(source)
    is_path = path.is_file()

    async def go(c: AsyncClient) -> int:
        file_id = await upload_with_progress(c, path, "documents") if is_path else source
        done: rag_pb2.Document | None = None
        with err.status(t("kb.ingesting")) as status:
            async for ev in c.ingest(kb_id, file_id):
                kind = ev.WhichOneof("event")
                if kind == "phase":
                    stage = enum_name(rag_pb2.IngestStage, ev.phase.stage, "INGEST_STAGE_")
                    p = ev.phase.progress
                    status.update(
                        f"{t('kb.ingesting')}: {stage} {p.done}/{p.total}"
                        if p.total
                        else f"{t('kb.ingesting')}: {stage}"
                    )
                elif kind == "warning":
                    err.print(f"⚠ {ev.warning.message}", style="yellow", markup=False)
                elif kind == "done":
                    done = ev.done.document
        if done is None:
            return 1
        if json_:
            print_json(done)
        else:
            st = enum_name(rag_pb2.DocumentStatus, done.status, "DOCUMENT_STATUS_")
            out.print(
                t("kb.added", filename=done.filename, status=st, chunks=done.chunk_count),
                markup=False,
            )
            if done.error:
                err.print(done.error, style="red", markup=False)
        return 1 if done.status == rag_pb2.DOCUMENT_STATUS_FAILED else 0

    run(go)


@kb_app.command("search")
def kb_search(
    query: str,
    kb: Annotated[list[str], typer.Option("--kb", help="База знаний (можно несколько) / kb id.")],
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, max=50)] = 5,
    json_: bool = JsonOpt,
) -> None:
    """Поиск по базам знаний / search knowledge bases."""

    async def go(c: AsyncClient) -> None:
        hits = await c.search(kb, query, top_k=top_k)
        if json_:
            print_json(hits)
            return
        for h in hits:
            out.print(f"{h.score:.3f}  {h.filename} p.{h.page}", style="bold", markup=False)
            out.print(h.text.strip()[:500], markup=False)
            out.print()

    run(go)
