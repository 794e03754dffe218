"""Commands of chats, files and knowledge bases."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
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

from aivera.chat.v1 import chat_pb2, projects_pb2
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
    source_lines,
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
SourcesOpt = typer.Option(
    "--sources",
    help="Источники подробно: рамки, текст блоков, изображения со ссылками / "
    "expand the sources: boxes, block text, images with signed URLs.",
)
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
    folder: Annotated[str, typer.Option("--folder", help="Папка проекта / a project folder.")] = "",
    json_: bool = JsonOpt,
) -> None:
    """Создать чат и сделать его активным / create a chat and make it active."""

    async def go(c: AsyncClient) -> None:
        chat = await c.create_chat(
            title, clone_id=clone, knowledge_base_ids=kb or [], folder_id=folder
        )
        c.set_active_chat(chat.id)
        if json_:
            print_json(chat)
        else:
            out.print(t("chat.created", title=chat.title, id=chat.id), markup=False)

    run(go)


@chat_app.command("list")
def chat_list(
    archived: Annotated[
        bool, typer.Option("--archived", help="Только архивные / archived chats only.")
    ] = False,
    json_: bool = JsonOpt,
) -> None:
    """Чаты, недавние первыми; * — активный / your chats, * marks the active one."""

    async def go(c: AsyncClient) -> None:
        chats = await c.list_chats(
            archived=chat_pb2.ARCHIVED_FILTER_ARCHIVED
            if archived
            else chat_pb2.ARCHIVED_FILTER_ACTIVE
        )
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


@chat_app.command("rename")
def chat_rename(
    title: Annotated[str, typer.Argument(help="Новое название / the new title")],
    chat_id: Annotated[str | None, ChatOpt] = None,
    json_: bool = JsonOpt,
) -> None:
    """Переименовать чат / rename a chat."""

    async def go(c: AsyncClient) -> None:
        chat = await c.update_chat(active_chat(c, chat_id), title=title)
        if json_:
            print_json(chat)
        else:
            out.print(t("chat.renamed", title=chat.title), markup=False)

    run(go)


def _archive(chat_id: str | None, archived: bool, json_: bool) -> None:
    async def go(c: AsyncClient) -> None:
        chat = await c.update_chat(active_chat(c, chat_id), archived=archived)
        if json_:
            print_json(chat)
        else:
            key = "chat.archived" if archived else "chat.unarchived"
            out.print(t(key, title=chat.title), markup=False)

    run(go)


@chat_app.command("archive")
def chat_archive(chat_id: Annotated[str | None, ChatOpt] = None, json_: bool = JsonOpt) -> None:
    """Убрать чат в архив (скрыт из списка, но работает) / archive a chat."""
    _archive(chat_id, True, json_)


@chat_app.command("unarchive")
def chat_unarchive(chat_id: Annotated[str | None, ChatOpt] = None, json_: bool = JsonOpt) -> None:
    """Вернуть чат из архива / unarchive a chat."""
    _archive(chat_id, False, json_)


@chat_app.command("delete")
def chat_delete(chat_id: Annotated[str, typer.Argument(help="Чат / chat id")]) -> None:
    """Удалить чат (его ход, если идёт, останавливается) / delete a chat."""

    async def go(c: AsyncClient) -> None:
        await c.delete_chat(chat_id)
        if c.credentials.active_chat_id == chat_id:
            c.set_active_chat("")
        out.print(t("chat.deleted"), markup=False)

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
    sources: Annotated[bool, SourcesOpt] = False,
    images: Annotated[
        list[str] | None,
        typer.Option(
            "--image",
            help="Изображение для модели: путь (загружается) или id файла / an image "
            "(JPEG/PNG/WebP) the model sees: a path (uploaded) or a file id.",
        ),
    ] = None,
) -> None:
    """Отправить сообщение и смотреть ответ вживую; после обрыва связи наблюдение
    возобновляется само; Ctrl-C отменяет ход / send a message and watch the answer live;
    a dropped connection reattaches by itself; Ctrl-C cancels the turn."""
    profile_value = _profile(profile)
    image_ids: list[str] = []

    async def pick(c: AsyncClient, cid: str) -> None:
        for source in images or []:
            path = Path(source)
            is_path = await asyncio.to_thread(path.is_file)
            image_ids.append(await upload_with_progress(c, path, "images") if is_path else source)

    def events(c: AsyncClient, cid: str, view: ChatView) -> AsyncIterator[chat_pb2.ChatEvent]:
        return c.send_message(
            cid,
            text,
            file_ids=files or [],
            model_profile=profile_value,
            on_reconnect=_reconnecting(view),
            image_file_ids=image_ids,
        )

    _run_turn(chat_id, events, as_json=json_, sources=sources, pick=pick)


def _profile(profile: str | None) -> chat_pb2.ModelProfile.ValueType:
    if profile is not None and profile not in PROFILES:
        raise typer.BadParameter("simple | complex", param_hint="--profile")
    return PROFILES[profile] if profile else chat_pb2.MODEL_PROFILE_UNSPECIFIED


def _run_turn(
    chat_id: str | None,
    start: Callable[[AsyncClient, str, ChatView], AsyncIterator[chat_pb2.ChatEvent]],
    *,
    as_json: bool,
    sources: bool,
    pick: Callable[[AsyncClient, str], Awaitable[None]] | None = None,
) -> None:
    """Runs a turn (send, regenerate, edit) and shows it live; Ctrl-C cancels it. `pick`
    runs first (e.g. finding the latest message)."""
    view = ChatView(live=out.is_terminal and not as_json, echo=not as_json, sources=sources)
    target: dict[str, str] = {}

    async def go(c: AsyncClient) -> int:
        cid = target["chat"] = active_chat(c, chat_id)
        if pick is not None:
            await pick(c, cid)
        events = start(c, cid, view)
        try:
            return await show_turn(view, events, as_json=as_json)
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


@chat_app.command("regenerate")
def chat_regenerate(
    message_id: Annotated[
        str | None, typer.Argument(help="Ответ (по умолчанию последний) / the latest answer.")
    ] = None,
    chat_id: Annotated[str | None, ChatOpt] = None,
    profile: Annotated[
        str | None, typer.Option("--profile", help="simple | complex, только для этого хода.")
    ] = None,
    json_: Annotated[
        bool, typer.Option("--json", help="События построчно в JSON / events as JSON lines.")
    ] = False,
    sources: Annotated[bool, SourcesOpt] = False,
) -> None:
    """Получить последний ответ заново (прежний сохраняется как вариант) / answer the
    latest question again; the previous answer stays as an alternative."""
    profile_value = _profile(profile)
    chosen: dict[str, str] = {}

    async def pick(c: AsyncClient, cid: str) -> None:
        if message_id:
            chosen["id"] = message_id
            return
        last = await c.list_messages(cid, tail=2)
        answers = [m for m in last if m.role == chat_pb2.MESSAGE_ROLE_ASSISTANT]
        if not answers:
            raise typer.BadParameter(t("chat.no_answer"), param_hint="MESSAGE_ID")
        chosen["id"] = answers[-1].id

    def events(c: AsyncClient, cid: str, view: ChatView) -> AsyncIterator[chat_pb2.ChatEvent]:
        return c.regenerate_message(
            cid, chosen["id"], model_profile=profile_value, on_reconnect=_reconnecting(view)
        )

    _run_turn(chat_id, events, as_json=json_, sources=sources, pick=pick)


@chat_app.command("edit")
def chat_edit(
    text: Annotated[str, typer.Argument(help="Новый текст / the new text")],
    message_id: Annotated[
        str | None,
        typer.Option("--message", help="Сообщение (по умолчанию последнее ваше) / message id."),
    ] = None,
    chat_id: Annotated[str | None, ChatOpt] = None,
    profile: Annotated[
        str | None, typer.Option("--profile", help="simple | complex, только для этого хода.")
    ] = None,
    json_: Annotated[
        bool, typer.Option("--json", help="События построчно в JSON / events as JSON lines.")
    ] = False,
    sources: Annotated[bool, SourcesOpt] = False,
) -> None:
    """Заменить последнее сообщение и получить ответ на него (прежние сохраняются) /
    replace your latest message and get it answered."""
    profile_value = _profile(profile)
    chosen: dict[str, str] = {}

    async def pick(c: AsyncClient, cid: str) -> None:
        if message_id:
            chosen["id"] = message_id
            return
        last = await c.list_messages(cid, tail=2)
        mine = [m for m in last if m.role == chat_pb2.MESSAGE_ROLE_USER]
        if not mine:
            raise typer.BadParameter(t("chat.no_user_message"), param_hint="--message")
        chosen["id"] = mine[-1].id

    def events(c: AsyncClient, cid: str, view: ChatView) -> AsyncIterator[chat_pb2.ChatEvent]:
        return c.edit_message(
            cid, chosen["id"], text, model_profile=profile_value, on_reconnect=_reconnecting(view)
        )

    _run_turn(chat_id, events, as_json=json_, sources=sources, pick=pick)


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
    sources: Annotated[bool, SourcesOpt] = False,
    all_: Annotated[
        bool,
        typer.Option(
            "--all", help="С заменёнными ответами и сообщениями / with superseded messages."
        ),
    ] = False,
    json_: bool = JsonOpt,
) -> None:
    """Сообщения чата с источниками ответов / the chat's messages with their sources."""

    async def go(c: AsyncClient) -> None:
        messages = await c.list_messages(
            active_chat(c, chat_id), tail=tail, include_superseded=all_
        )
        if json_:
            print_json(messages)
            return
        urls: dict[str, str] = {}
        if sources:
            for m in messages:
                for img in m.images:
                    urls[img.file_id] = await c.download_url(img.file_id)
        for m in messages:
            role = enum_name(chat_pb2.MessageRole, m.role, "MESSAGE_ROLE_")
            head = f"{t('role.' + role)} · {ts(m.create_time)}"
            if m.superseded:
                head += " · " + t("chat.superseded")
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
                for line in source_lines(m, expand=sources, urls=urls):
                    out.print(line, style="dim", markup=False, soft_wrap=True)
            else:
                out.print(m.content, markup=False)
                for img in m.images:
                    line = f"🖼  {img.description or img.file_id} {img.width}×{img.height}"
                    out.print(line, style="dim", markup=False, soft_wrap=True)
            out.print()

    run(go)


@chat_app.command("search")
def chat_search(
    query: Annotated[str, typer.Argument(help="Что искать / words to find")],
    chat_id: Annotated[
        str | None, typer.Option("--chat", help="Только в этом чате / in this chat only.")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, max=1000)] = 20,
    json_: bool = JsonOpt,
) -> None:
    """Поиск по вашим сообщениям во всех чатах / full-text search in your messages."""

    async def go(c: AsyncClient) -> None:
        hits = await c.search_messages(query, chat_id=chat_id or "", limit=limit)
        if json_:
            print_json(hits)
            return
        if not hits:
            err.print(t("chat.search_none"), markup=False)
        for h in hits:
            m = h.message
            role = enum_name(chat_pb2.MessageRole, m.role, "MESSAGE_ROLE_")
            head = f"{h.chat_title} · {t('role.' + role)} · {ts(m.create_time)} · {m.chat_id}"
            out.print(head, style="bold", markup=False, soft_wrap=True)
            out.print(" ".join(h.snippet.split()), markup=False)
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


@chat_app.command("detach")
def chat_detach(file_id: str, chat_id: Annotated[str | None, ChatOpt] = None) -> None:
    """Открепить файл: его документ больше не ищется в чате / detach a file."""

    async def go(c: AsyncClient) -> None:
        await c.detach_file(active_chat(c, chat_id), file_id)
        out.print(t("chat.detached"), markup=False)

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


# ---- chat administration (admin role; registered under `aivera admin` in app.py) -------

role_app = typer.Typer(help="Роли-промпты (админ) / role prompts (admin).", no_args_is_help=True)
system_app = typer.Typer(
    help="Системные настройки чатов (админ) / chat system settings (admin).",
    no_args_is_help=True,
)
PROMPT_NAMES = {
    "llm_system": chat_pb2.SYSTEM_PROMPT_NAME_LLM_SYSTEM,
    "json_annotation": chat_pb2.SYSTEM_PROMPT_NAME_JSON_ANNOTATION,
    "html_ocr": chat_pb2.SYSTEM_PROMPT_NAME_HTML_OCR,
    "flash_extractor": chat_pb2.SYSTEM_PROMPT_NAME_FLASH_EXTRACTOR,
}
LIMITS = tuple(chat_pb2.ChatLimits.DESCRIPTOR.fields_by_name)
ContentOpt = typer.Option("--content", help="Текст / the text.")
FileOpt = typer.Option(
    "--file", exists=True, dir_okay=False, readable=True, help="Текст из файла / from a file."
)


def _content(content: str | None, path: Path | None, *, required: bool) -> str | None:
    if content is not None and path is not None:
        raise typer.BadParameter("--content | --file", param_hint="--content")
    if path is not None:
        return path.read_text(encoding="utf-8")
    if content is None and required:
        raise typer.BadParameter("--content | --file", param_hint="--content")
    return content


def prompt_create(
    name: Annotated[str, typer.Argument(help=" | ".join(PROMPT_NAMES))],
    content: Annotated[str | None, ContentOpt] = None,
    file: Annotated[Path | None, FileOpt] = None,
    description: Annotated[str, typer.Option("--description", "-d")] = "",
    activate: Annotated[
        bool, typer.Option("--activate", help="Сразу активной / active at once.")
    ] = False,
    json_: bool = JsonOpt,
) -> None:
    """Новая версия системного промпта / a new version of a system prompt."""
    if name not in PROMPT_NAMES:
        raise typer.BadParameter(" | ".join(PROMPT_NAMES), param_hint="NAME")
    text = _content(content, file, required=True) or ""

    async def go(c: AsyncClient) -> None:
        p = await c.create_system_prompt_version(
            PROMPT_NAMES[name], text, description=description, activate=activate
        )
        if json_:
            print_json(p)
        else:
            out.print(
                t("admin.prompt_created", name=name, version=p.version, id=p.id), markup=False
            )

    run(go)


@role_app.command("list")
def role_list(json_: bool = JsonOpt) -> None:
    """Все роли, и неактивные / every role prompt, inactive ones too."""

    async def go(c: AsyncClient) -> None:
        roles = await c.list_role_prompts()
        if json_:
            print_json(roles)
            return
        rows = [(r.id, r.name, r.version, "✓" if r.is_active else "", r.description) for r in roles]
        out.print(
            table(
                ["id", t("col.name"), t("col.version"), t("col.active"), t("col.description")], rows
            )
        )

    run(go)


@role_app.command("create")
def role_create(
    name: str,
    content: Annotated[str | None, ContentOpt] = None,
    file: Annotated[Path | None, FileOpt] = None,
    description: Annotated[str, typer.Option("--description", "-d")] = "",
    json_: bool = JsonOpt,
) -> None:
    """Создать роль (активна, версия 1) / create a role prompt."""
    text = _content(content, file, required=True) or ""

    async def go(c: AsyncClient) -> None:
        r = await c.create_role_prompt(name, text, description=description)
        if json_:
            print_json(r)
        else:
            out.print(t("admin.role_saved", name=r.name, version=r.version, id=r.id), markup=False)

    run(go)


@role_app.command("update")
def role_update(
    role_id: str,
    name: Annotated[str | None, typer.Option("--name")] = None,
    content: Annotated[str | None, ContentOpt] = None,
    file: Annotated[Path | None, FileOpt] = None,
    description: Annotated[str | None, typer.Option("--description", "-d")] = None,
    active: Annotated[
        bool | None,
        typer.Option("--active/--inactive", help="Доступна пользователям / users may pick it."),
    ] = None,
    json_: bool = JsonOpt,
) -> None:
    """Изменить роль (новый текст — новая версия) / change a role prompt."""
    text = _content(content, file, required=False)

    async def go(c: AsyncClient) -> None:
        r = await c.update_role_prompt(
            role_id, name=name, content=text, description=description, is_active=active
        )
        if json_:
            print_json(r)
        else:
            out.print(t("admin.role_saved", name=r.name, version=r.version, id=r.id), markup=False)

    run(go)


def _print_system(s: chat_pb2.SystemSettings) -> None:
    profile = enum_name(chat_pb2.ModelProfile, s.default_model_profile, "MODEL_PROFILE_")
    rows = [
        ("allowed_models", ", ".join(s.allowed_models)),
        ("flash_model", s.flash_model),
        ("pro_model", s.pro_model),
        ("local_model_enabled", str(s.local_model_enabled).lower()),
        ("default_model_profile", profile),
        *((f"limits.{name}", str(getattr(s.limits, name))) for name in LIMITS),
    ]
    out.print(table(["", ""], rows, header=False))


@system_app.command("show")
def system_show(json_: bool = JsonOpt) -> None:
    """Системные настройки / the system settings."""

    async def go(c: AsyncClient) -> None:
        s = await c.get_system_settings()
        if json_:
            print_json(s)
        else:
            _print_system(s)

    run(go)


@system_app.command("set")
def system_set(
    allowed_models: Annotated[
        str | None, typer.Option("--allowed-models", help="Через запятую / comma-separated.")
    ] = None,
    flash_model: Annotated[str | None, typer.Option("--flash-model")] = None,
    pro_model: Annotated[str | None, typer.Option("--pro-model")] = None,
    local_model: Annotated[
        bool | None, typer.Option("--local-model/--no-local-model", help="SmolLM2 без ключа.")
    ] = None,
    default_profile: Annotated[
        str | None, typer.Option("--default-profile", help="simple | complex")
    ] = None,
    limits: Annotated[
        list[str] | None,
        typer.Option("--limit", help="name=value: " + ", ".join(LIMITS)),
    ] = None,
    json_: bool = JsonOpt,
) -> None:
    """Изменить системные настройки (только названные) / change the named settings."""
    settings = chat_pb2.SystemSettings()
    paths: list[str] = []
    if allowed_models is not None:
        settings.allowed_models.extend(m.strip() for m in allowed_models.split(",") if m.strip())
        paths.append("allowed_models")
    if flash_model is not None:
        settings.flash_model = flash_model
        paths.append("flash_model")
    if pro_model is not None:
        settings.pro_model = pro_model
        paths.append("pro_model")
    if local_model is not None:
        settings.local_model_enabled = local_model
        paths.append("local_model_enabled")
    if default_profile is not None:
        settings.default_model_profile = _profile(default_profile)
        paths.append("default_model_profile")
    for item in limits or []:
        key, _, value = item.partition("=")
        if key not in LIMITS or not value.strip().lstrip("-").isdigit():
            raise typer.BadParameter(f"name=value, name: {', '.join(LIMITS)}", param_hint="--limit")
        setattr(settings.limits, key, int(value))
        paths.append(f"limits.{key}")
    if not paths:
        raise typer.BadParameter(t("admin.nothing_to_change"))

    async def go(c: AsyncClient) -> None:
        s = await c.update_system_settings(settings, paths)
        if json_:
            print_json(s)
        else:
            _print_system(s)

    run(go)


# ---- projects -------------------------------------------------------------------------

project_app = typer.Typer(
    help="Проекты: папки документов и чатов / projects: folders of documents and chats.",
    no_args_is_help=True,
)


def _tree_lines(node: projects_pb2.FolderNode, depth: int = 0) -> list[str]:
    pad = "  " * depth
    lines = [f"{pad}📁 {node.folder.name}  {node.folder.id}"]
    for d in node.documents:
        lines.append(f"{pad}  📄 {d.filename or d.document_id}  {d.document_id}")
    for c in node.chats:
        lines.append(f"{pad}  💬 {c.title}  {c.id}")
    for child in node.children:
        lines.extend(_tree_lines(child, depth + 1))
    return lines


@project_app.command("tree")
def project_tree(
    folder: Annotated[str, typer.Argument(help="Папка (по умолчанию всё) / a folder.")] = "",
    json_: bool = JsonOpt,
) -> None:
    """Дерево папок с документами и чатами / the folder tree."""

    async def go(c: AsyncClient) -> None:
        roots = await c.project_tree(folder)
        if json_:
            print_json(roots)
            return
        for root in roots:
            for line in _tree_lines(root):
                out.print(line, markup=False, soft_wrap=True)

    run(go)


@project_app.command("new")
def project_new(
    name: str,
    parent: Annotated[str, typer.Option("--parent", help="Родительская папка / parent.")] = "",
    json_: bool = JsonOpt,
) -> None:
    """Создать папку (без --parent — проект) / create a folder."""

    async def go(c: AsyncClient) -> None:
        f = await c.create_folder(name, parent_id=parent)
        if json_:
            print_json(f)
        else:
            out.print(t("project.created", name=f.name, id=f.id), markup=False)

    run(go)


@project_app.command("rename")
def project_rename(folder_id: str, name: str) -> None:
    """Переименовать папку / rename a folder."""

    async def go(c: AsyncClient) -> None:
        f = await c.update_folder(folder_id, name=name)
        out.print(t("project.saved", name=f.name), markup=False)

    run(go)


@project_app.command("move")
def project_move(
    folder_id: str,
    parent: Annotated[str, typer.Option("--parent", help="Куда; без него — наверх / to.")] = "",
) -> None:
    """Переместить папку / move a folder."""

    async def go(c: AsyncClient) -> None:
        f = await c.update_folder(folder_id, parent_id=parent)
        out.print(t("project.saved", name=f.name), markup=False)

    run(go)


@project_app.command("delete")
def project_delete(folder_id: str) -> None:
    """Удалить папку с подпапками; их чаты остаются / delete a folder (chats stay)."""

    async def go(c: AsyncClient) -> None:
        await c.delete_folder(folder_id)
        out.print(t("project.deleted"), markup=False)

    run(go)


@project_app.command("add-doc")
def project_add_doc(folder_id: str, document_id: str) -> None:
    """Положить документ в папку / put a document into a folder."""

    async def go(c: AsyncClient) -> None:
        d = await c.add_folder_document(folder_id, document_id)
        out.print(t("project.doc_added", filename=d.filename or d.document_id), markup=False)

    run(go)


@project_app.command("remove-doc")
def project_remove_doc(folder_id: str, document_id: str) -> None:
    """Убрать документ из папки / take a document out of a folder."""

    async def go(c: AsyncClient) -> None:
        await c.remove_folder_document(folder_id, document_id)
        out.print(t("project.doc_removed"), markup=False)

    run(go)


@project_app.command("answers")
def project_answers(document_id: str, json_: bool = JsonOpt) -> None:
    """Ответы, опиравшиеся на документ / answers that used a document."""

    async def go(c: AsyncClient) -> None:
        answers = await c.document_answers(document_id)
        if json_:
            print_json(answers)
            return
        for m in answers:
            out.print(f"{ts(m.create_time)} · {m.chat_id}", style="bold", markup=False)
            out.print(Markdown(m.content))
            for line in source_lines(m, expand=False):
                out.print(line, style="dim", markup=False, soft_wrap=True)
            out.print()

    run(go)


@chat_app.command("move")
def chat_move(
    folder: Annotated[str, typer.Argument(help="Папка; пусто — из папок / folder or ''.")],
    chat_id: Annotated[str | None, ChatOpt] = None,
) -> None:
    """Переместить чат в папку проекта / move a chat into a project folder."""

    async def go(c: AsyncClient) -> None:
        chat = await c.update_chat(active_chat(c, chat_id), folder_id=folder)
        out.print(t("chat.moved", title=chat.title), markup=False)

    run(go)
