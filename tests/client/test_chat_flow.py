"""The CLI's chat and file flows against the real auth, storage, RAG and chat services
(and the loopback Gemini server): a streamed answer, the model profile naming the models, file
upload and attach, history, Ctrl-C cancelling a turn, a turn outliving its stream
(reattach after a network drop, `chat watch`, CancelTurn); the numbered sources under an
answer (`--sources` with the crops' signed URLs), regenerate and edit, images, search,
managing chats, chat administration and projects."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from rich.console import Console

from aivera.chat.v1 import chat_pb2
from client import AsyncClient, Credentials, Endpoints, NotFound
from client.cli import chat as chat_cli
from client.cli import render
from client.errors import EXIT_AUTH, EXIT_NOT_FOUND, EXIT_USAGE
from tests.client.conftest import Cli
from tests.client.mesh import Mesh, start_mesh
from tests.helpers.gemini import Reply

KEY = "AIzaSyCLIENT000000000000000000000000001"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
async def mesh(database_url: str) -> AsyncIterator[Mesh]:
    async with start_mesh(database_url, access_token_ttl_seconds=3600) as m:
        yield m


@pytest.fixture
def gemini(mesh: Mesh) -> Reply:
    mesh.gemini.reset()
    mesh.gemini.valid_keys = None
    return mesh.gemini  # type: ignore[return-value]


def admin_client(mesh: Mesh) -> AsyncClient:
    return AsyncClient(Endpoints.resolve(env=mesh.env()), store=False, credentials=Credentials())


async def signed_in(mesh: Mesh, tmp_path: Path, *, key: bool = True) -> Cli:
    """A new user signed in with the CLI (and a Gemini key set through it)."""
    async with admin_client(mesh) as admin:
        await admin.login(mesh.bootstrap_token)
        created = await admin.create_user("c-" + uuid.uuid4().hex[:10])
    cli = Cli(tmp_path / "cfg", {**mesh.env(), "AIVERA_LANG": ""})
    r = await cli("login", input=created.static_token + "\n")
    assert r.exit_code == 0, r.output
    if key:
        r = await cli("key", "set", input=KEY + "\n")
        assert r.exit_code == 0, r.output
    return cli


async def test_send_streams_the_answer(mesh: Mesh, gemini: object, tmp_path: Path) -> None:
    cli = await signed_in(mesh, tmp_path)
    r = await cli("chat", "send", "Привет")
    assert r.exit_code == EXIT_USAGE and "chat new" in r.output  # no active chat yet
    r = await cli("chat", "new", "Бетон")
    assert r.exit_code == 0 and "Бетон" in r.output
    mesh.gemini.script(Reply.tokens(["Бетон ", "класса ", "B25."], output_tokens=3))
    r = await cli("chat", "send", "Какой бетон?")
    assert r.exit_code == 0, r.output
    assert "Бетон класса B25." in r.stdout
    assert "Модели: gemini-2.5-flash" in r.stdout and "профиль simple" in r.stdout
    assert "» " in r.stderr  # phase status lines
    # the events as JSON lines
    mesh.gemini.script(Reply.tokens(["Да", "."]))
    r = await cli("chat", "send", "Точно?", "--json")
    events = [json.loads(line) for line in r.stdout.splitlines()]
    assert "accepted" in events[0] and "final" in events[-1]
    assert "".join(e["llm_token"]["text"] for e in events if "llm_token" in e) == "Да."
    # history
    r = await cli("chat", "history", "--tail", "2", "--json")
    msgs = json.loads(r.stdout)
    assert [m["content"] for m in msgs] == ["Точно?", "Да."]
    r = await cli("chat", "history")
    assert "Какой бетон?" in r.stdout and "Ассистент" in r.stdout
    r = await cli("chat", "list", "--json")
    assert [c["title"] for c in json.loads(r.stdout)] == ["Бетон"]


async def test_model_profile_changes_the_models_named(
    mesh: Mesh, gemini: object, tmp_path: Path
) -> None:
    cli = await signed_in(mesh, tmp_path)
    r = await cli("kb", "create", "Проект", "--json")
    assert r.exit_code == 0, r.output
    kb = json.loads(r.stdout)["id"]
    doc = tmp_path / "kzh.md"
    doc.write_text("# Конструкции\n\nБетон класса B25 для фундаментов.\n")
    assert (await cli("kb", "add", kb, str(doc))).exit_code == 0
    assert (await cli("chat", "new", "Документ", "--kb", kb)).exit_code == 0
    mesh.gemini.script(Reply.text("простой ответ"))
    r = await cli("chat", "send", "Вопрос")
    assert "Модели: gemini-2.5-flash ·" in r.stdout
    r = await cli("settings", "set-model", "complex")
    assert r.exit_code == 0 and "complex" in r.stdout
    r = await cli("me", "--json")
    assert json.loads(r.stdout)["settings"]["model_profile"] == "MODEL_PROFILE_COMPLEX"
    # A new chat: a follow-up in the same one would add the query rewrite call.
    assert (await cli("chat", "new", "Документ 2", "--kb", kb)).exit_code == 0
    mesh.gemini.script(Reply.text("Блок b-text: бетон B25."), Reply.tokens(["Ответ ", "pro."]))
    r = await cli("chat", "send", "Вопрос")
    assert r.exit_code == 0, r.output
    assert "Ответ pro." in r.stdout
    assert "Модели: gemini-2.5-flash, gemini-2.5-pro · профиль complex" in r.stdout
    assert (await cli("settings", "set-model", "fast")).exit_code == EXIT_USAGE


async def test_role_setting(mesh: Mesh, gemini: object, tmp_path: Path) -> None:
    cli = await signed_in(mesh, tmp_path, key=False)
    r = await cli("settings", "roles", "--json")
    roles = json.loads(r.stdout)
    assert roles, "the chat service seeds role prompts"
    name = roles[0]["name"]
    r = await cli("settings", "set-role", name)
    assert r.exit_code == 0, r.output
    r = await cli("me", "--json")
    me = json.loads(r.stdout)
    assert me["role_name"] == name and me["provider_key"].get("is_set") is not True
    assert (await cli("settings", "set-role", "none")).exit_code == 0
    assert json.loads((await cli("me", "--json")).stdout)["role_name"] == ""
    assert (await cli("settings", "set-role", "нет-такой-роли")).exit_code == EXIT_NOT_FOUND


async def test_upload_and_attach(mesh: Mesh, gemini: object, tmp_path: Path) -> None:
    cli = await signed_in(mesh, tmp_path)
    doc = tmp_path / "notes.md"
    doc.write_text("# Заметки\n\nБетон B25, арматура A500C.\n" * 2000)
    assert (await cli("chat", "new", "С файлом")).exit_code == 0
    r = await cli("file", "upload", str(doc), "--json")
    assert r.exit_code == 0, r.output
    f = json.loads(r.stdout)["file"]
    assert f["filename"] == "notes.md" and int(f["size_bytes"]) == doc.stat().st_size
    r = await cli("chat", "attach", f["id"], "--json")
    assert r.exit_code == 0, r.output
    att = json.loads(r.stdout)
    assert att["file_id"] == f["id"]
    r = await cli("chat", "show", "--json")
    assert [a["file_id"] for a in json.loads(r.stdout)["attachments"]] == [f["id"]]
    # a human-readable upload shows a progress bar on stderr
    r = await cli("file", "upload", str(doc))
    assert r.exit_code == 0 and "notes.md" in r.stdout
    r = await cli("file", "list", "--json")
    assert len(json.loads(r.stdout)) == 2
    r = await cli("chat", "attach", str(uuid.uuid4()))
    assert r.exit_code == EXIT_NOT_FOUND
    r = await cli("chat", "use", str(uuid.uuid4()))
    assert r.exit_code == EXIT_NOT_FOUND


async def test_closing_the_stream_leaves_the_turn_running_cancel_turn_stops_it(
    mesh: Mesh, gemini: object, tmp_path: Path
) -> None:
    cli = await signed_in(mesh, tmp_path)
    creds = Credentials(**json.loads(cli.credentials.read_text()))
    async with AsyncClient(Endpoints.resolve(env=mesh.env()), store=False, credentials=creds) as c:
        chat = await c.create_chat("Отмена")
        mesh.gemini.script(Reply.tokens(["Часть ", "ответа"], hang=True))
        tokens = 0
        events = c.send_message(chat.id, "Долгий вопрос")
        seen = []
        async for ev in events:
            seen.append(ev)
            tokens += ev.HasField("llm_token")
            if tokens == 2:
                break
        await events.aclose()  # type: ignore[attr-defined]
        await asyncio.sleep(0.3)  # the turn goes on without a watcher
        msgs = await c.list_messages(chat.id)
        assert msgs[-1].status == chat_pb2.MESSAGE_STATUS_IN_PROGRESS
        turn_id = seen[0].message_id
        await c.cancel_turn(chat.id, turn_id)
        rest = [ev async for ev in c.watch_turn_resilient(chat.id, turn_id, after_seq=seen[-1].seq)]
        assert rest[-1].error.reason == "CANCELLED"
        assert [e.seq for e in seen + rest] == list(range(1, len(seen) + len(rest) + 1))
        msgs = await c.list_messages(chat.id)
        assert msgs[-1].status == chat_pb2.MESSAGE_STATUS_INCOMPLETE
        assert msgs[-1].content == "Часть ответа"
        with pytest.raises(NotFound):
            await c.get_chat(str(uuid.uuid4()))
        with pytest.raises(NotFound):
            await c.cancel_turn(chat.id, str(uuid.uuid4()))


class DroppingProxy:
    """A TCP proxy on loopback whose open connections `drop()` cuts (a network drop);
    new connections go through as before."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.writers: list[asyncio.StreamWriter] = []
        self.port = 0
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> DroppingProxy:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.drop()
        assert self.server is not None
        self.server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self.writers += [writer, up_writer]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            # A dropped connection (drop() below) ends the pipe: that is the point.
            try:
                with contextlib.suppress(ConnectionError, OSError):
                    while data := await src.read(65536):
                        dst.write(data)
                        await dst.drain()
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def drop(self) -> None:
        for w in self.writers:
            transport = w.transport
            transport.abort()
        self.writers.clear()


async def test_sdk_reattaches_after_a_network_drop_and_prints_nothing_twice(
    mesh: Mesh, gemini: object, tmp_path: Path
) -> None:
    cli = await signed_in(mesh, tmp_path)
    creds = Credentials(**json.loads(cli.credentials.read_text()))
    tokens = [f"t{n} " for n in range(10)]
    async with DroppingProxy(mesh.chat.grpc_port) as proxy:
        env = {**mesh.env(), "AIVERA_CHAT_ADDR": f"127.0.0.1:{proxy.port}"}
        async with AsyncClient(Endpoints.resolve(env=env), store=False, credentials=creds) as c:
            chat = await c.create_chat("Обрыв")
            mesh.gemini.script(Reply.tokens(tokens, delay=0.1))
            reconnects: list[tuple[int, int]] = []
            seen = []
            async for ev in c.send_message(
                chat.id,
                "Вопрос",
                backoff=0.05,
                on_reconnect=lambda n, last: reconnects.append((n, last)),
            ):
                seen.append(ev)
                if sum(e.HasField("llm_token") for e in seen) == 3 and not reconnects:
                    proxy.drop()  # the network goes away mid-stream
            assert reconnects and reconnects[0][1] == seen[reconnects[0][1] - 1].seq
            assert [e.seq for e in seen] == list(range(1, len(seen) + 1))
            assert "".join(e.llm_token.text for e in seen if e.HasField("llm_token")) == "".join(
                tokens
            )
            assert seen[-1].final.message.content == "".join(tokens)


async def test_cli_chat_watch_replays_a_turn(mesh: Mesh, gemini: object, tmp_path: Path) -> None:
    cli = await signed_in(mesh, tmp_path)
    assert (await cli("chat", "new", "Повтор")).exit_code == 0
    mesh.gemini.script(Reply.tokens(["Один ", "два."]))
    r = await cli("chat", "send", "Вопрос", "--json")
    assert r.exit_code == 0, r.output
    events = [json.loads(line) for line in r.stdout.splitlines() if line.strip()]
    turn_id = events[0]["messageId"] if "messageId" in events[0] else events[0]["message_id"]
    r = await cli("chat", "watch", turn_id, "--json")
    assert r.exit_code == 0, r.output
    assert [json.loads(line) for line in r.stdout.splitlines() if line.strip()] == events
    r = await cli("chat", "watch", turn_id, "--after", "2", "--json")
    replay = [json.loads(line) for line in r.stdout.splitlines() if line.strip()]
    assert replay == events[2:]
    r = await cli("chat", "watch", turn_id)
    assert r.exit_code == 0 and "Один два." in r.stdout
    r = await cli("chat", "watch", str(uuid.uuid4()))
    assert r.exit_code == EXIT_NOT_FOUND


async def test_ctrl_c_cancels_the_turn_cleanly(mesh: Mesh, gemini: object, tmp_path: Path) -> None:
    """`aivera chat send` as a process; SIGINT after the first tokens."""
    cli = await signed_in(mesh, tmp_path)
    assert (await cli("chat", "new", "Ctrl-C")).exit_code == 0
    mesh.gemini.script(Reply.tokens(["Первая ", "часть"], hang=True))
    env = {
        **os.environ,
        **mesh.env(),
        "AIVERA_CONFIG_DIR": str(cli.config_dir),
        "AIVERA_LANG": "",
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "gen")]),
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "client.cli",
        "chat",
        "send",
        "Долгий вопрос",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=ROOT,
    )
    assert proc.stdout is not None and proc.stderr is not None
    seen = b""
    while b"\xd1\x87\xd0\xb0\xd1\x81\xd1\x82\xd1\x8c" not in seen:  # «часть»
        chunk = await asyncio.wait_for(proc.stdout.read(64), 20)
        assert chunk, "the answer never streamed"
        seen += chunk
    proc.send_signal(signal.SIGINT)
    _, errs = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 130, errs.decode()
    assert "Ход отменён" in errs.decode()
    assert "Traceback" not in errs.decode()
    chat_id = json.loads(cli.credentials.read_text())["active_chat_id"]
    r = None
    for _ in range(100):
        r = await cli("chat", "history", "--chat", chat_id, "--json")
        msgs = json.loads(r.stdout)
        if msgs[-1]["status"] != "MESSAGE_STATUS_IN_PROGRESS":
            break
        await asyncio.sleep(0.05)
    assert msgs[-1]["status"] == "MESSAGE_STATUS_INCOMPLETE"
    assert msgs[-1]["content"] == "Первая часть"


class Gateway(grpc.GenericRpcHandler):
    """A native gRPC proxy routing by package (`/aivera.<svc>.v1.X/M` → that service), as
    Envoy's gRPC listener does: the client's single-address (gateway) mode."""

    def __init__(self, upstreams: dict[str, str]) -> None:
        self.channels = {svc: grpc.aio.insecure_channel(addr) for svc, addr in upstreams.items()}
        self.calls: list[str] = []

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method: str = details.method
        svc = method.split(".")[1] if method.startswith("/aivera.") else ""
        upstream = self.channels.get(svc)
        if upstream is None:
            return None
        self.calls.append(method)

        async def forward(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
            md = [(k, v) for k, v in context.invocation_metadata() if not k.startswith(":")]
            call = upstream.stream_stream(method)(requests, metadata=md)
            try:
                async for item in call:
                    yield item
            except grpc.aio.AioRpcError as e:
                await context.abort(e.code(), e.details() or "")

        return grpc.stream_stream_rpc_method_handler(forward)

    async def close(self) -> None:
        for ch in self.channels.values():
            await ch.close()


async def test_gateway_mode_one_address(mesh: Mesh, gemini: object, tmp_path: Path) -> None:
    gw = Gateway({k.split("_")[1].lower(): v for k, v in mesh.env().items()})
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((gw,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with admin_client(mesh) as admin:
            await admin.login(mesh.bootstrap_token)
            created = await admin.create_user("g-" + uuid.uuid4().hex[:10])
        cli = Cli(tmp_path / "cfg", {"AIVERA_LANG": ""})  # no per-service addresses
        r = await cli("login", "--server", f"127.0.0.1:{port}", input=created.static_token)
        assert r.exit_code == 0, r.output
        assert json.loads(cli.credentials.read_text())["server"] == f"127.0.0.1:{port}"
        assert (await cli("key", "set", input=KEY)).exit_code == 0
        assert (await cli("chat", "new", "Через шлюз")).exit_code == 0
        mesh.gemini.script(Reply.tokens(["Через ", "шлюз."]))
        r = await cli("chat", "send", "Привет")
        assert r.exit_code == 0, r.output
        assert "Через шлюз." in r.stdout
        services = {m.split("/")[1] for m in gw.calls}
        assert {"aivera.auth.v1.AuthService", "aivera.chat.v1.ChatService"} <= services
    finally:
        await server.stop(grace=None)
        await gw.close()


async def test_terminal_shows_live_status_then_markdown(
    mesh: Mesh, gemini: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a terminal: a live region while streaming, then the answer as Markdown."""
    cli = await signed_in(mesh, tmp_path)
    assert (await cli("chat", "new", "TTY")).exit_code == 0
    screen = io.StringIO()
    tty = Console(file=screen, force_terminal=True, width=100, color_system=None)
    monkeypatch.setattr(chat_cli, "out", tty)
    monkeypatch.setattr(render, "out", tty)
    mesh.gemini.script(Reply.tokens(["# Итог\n\n", "Бетон **B25**", "."], delay=0.05))
    r = await cli("chat", "send", "Какой бетон?")
    assert r.exit_code == 0, r.output
    shown = screen.getvalue()
    assert "Бетон B25." in shown and "**" not in shown.split("Итог")[-1]  # rendered Markdown
    assert "Модели: gemini-2.5-flash" in shown
    assert r.stdout == ""  # everything went to the terminal console


async def test_kb_create_add_search(mesh: Mesh, gemini: object, tmp_path: Path) -> None:
    """Against the real RAG service: a Markdown document ingested, then found."""
    cli = await signed_in(mesh, tmp_path, key=False)
    r = await cli("kb", "create", "Нормы", "--json")
    assert r.exit_code == 0, r.output
    kb = json.loads(r.stdout)
    doc = tmp_path / "norms.md"
    doc.write_text("# Нормы\n\nЗащитный слой 25 мм.\n")
    r = await cli("kb", "add", kb["id"], str(doc), "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["status"] == "DOCUMENT_STATUS_READY"
    r = await cli("kb", "search", "защитный слой", "--kb", kb["id"], "--top-k", "2", "--json")
    assert r.exit_code == 0, r.output
    hits = json.loads(r.stdout)
    assert hits and hits[0]["filename"] == "norms.md" and "25 мм" in hits[0]["text"]
    r = await cli("kb", "search", "бетон", "--kb", str(uuid.uuid4()))
    assert r.exit_code == EXIT_NOT_FOUND


async def test_admin_prompts(mesh: Mesh, gemini: object, tmp_path: Path) -> None:
    cli = Cli(tmp_path / "cfg", {**mesh.env(), "AIVERA_LANG": ""})
    assert (await cli("login", input=mesh.bootstrap_token)).exit_code == 0
    r = await cli("admin", "prompt", "list", "--json")
    assert r.exit_code == 0, r.output
    prompts = json.loads(r.stdout)
    assert {p["name"] for p in prompts} >= {"SYSTEM_PROMPT_NAME_LLM_SYSTEM"}
    active = next(p for p in prompts if p["name"] == "SYSTEM_PROMPT_NAME_LLM_SYSTEM")
    r = await cli("admin", "prompt", "activate", active["id"])
    assert r.exit_code == 0 and "llm_system" in r.stdout
    assert (await cli("admin", "prompt", "activate", str(uuid.uuid4()))).exit_code == (
        EXIT_NOT_FOUND
    )
    r = await cli("admin", "prompt", "list")
    assert "llm_system" in r.stdout


async def test_stream_refused_before_start_is_refreshed_and_repeated(
    mesh: Mesh, gemini: object, tmp_path: Path
) -> None:
    cli = await signed_in(mesh, tmp_path)
    creds = Credentials(**json.loads(cli.credentials.read_text()))
    creds.access_token = creds.access_token[:-4] + "AAAA"  # the server will refuse it
    async with AsyncClient(Endpoints.resolve(env=mesh.env()), store=False, credentials=creds) as c:
        chat = await c.create_chat("Повтор")  # unary: refreshed and repeated
        assert c.session.refresh_count == 1
        c.session.creds.access_token = c.session.creds.access_token[:-4] + "AAAA"
        mesh.gemini.script(Reply.tokens(["Ок."]))
        events = [e async for e in c.send_message(chat.id, "Привет")]
        assert c.session.refresh_count == 2
        assert events[0].HasField("accepted") and events[-1].HasField("final")
        # only one user message: the refused stream stored nothing
        assert [m.content for m in await c.list_messages(chat.id)] == ["Привет", "Ок."]


# -- chat as a product: sources, regenerate/edit, images, search, management, projects --


async def _chat_with_document(cli: Cli, tmp_path: Path) -> None:
    r = await cli("kb", "create", "Проект", "--json")
    kb = json.loads(r.stdout)["id"]
    doc = tmp_path / "kzh.md"
    doc.write_text("# Конструкции\n\nБетон класса B25 для фундаментов.\n")
    assert (await cli("kb", "add", kb, str(doc))).exit_code == 0
    assert (await cli("chat", "new", "Документ", "--kb", kb)).exit_code == 0


async def test_answer_lists_its_sources(mesh: Mesh, gemini: object, tmp_path: Path) -> None:
    cli = await signed_in(mesh, tmp_path)
    await _chat_with_document(cli, tmp_path)
    mesh.gemini.script(Reply.text("Бетон B25 [1]."))
    r = await cli("chat", "send", "Какой бетон?")
    assert r.exit_code == 0, r.output
    assert "Источники:" in r.stdout
    assert "[1] kzh.md, с. 1, блок " in r.stdout
    assert "«" not in r.stdout  # collapsed: no block text
    # --sources expands: the cited block's text.
    mesh.gemini.script(Reply.text("запрос"), Reply.text("Да, B25 [1]."))
    r = await cli("chat", "send", "Точно?", "--sources")
    assert r.exit_code == 0, r.output
    assert "[1] kzh.md, с. 1, блок " in r.stdout and "«" in r.stdout
    # History shows the same list under each answer.
    r = await cli("chat", "history")
    assert r.stdout.count("Источники:") == 2
    r = await cli("chat", "history", "--json")
    answer = json.loads(r.stdout)[1]
    assert answer["citations"][0]["marker"] == 1
    assert answer["citations"][0]["filename"] == "kzh.md"


async def test_crops_are_listed_with_signed_urls(
    mesh: Mesh, gemini: object, tmp_path: Path
) -> None:
    from fpdf import FPDF

    cli = await signed_in(mesh, tmp_path)
    pdf = FPDF(unit="pt", format="A4")
    pdf.add_page()
    pdf.set_font("helvetica", size=14)
    pdf.text(60, 80, "Beton klassa B25")
    path = tmp_path / "kzh.pdf"
    path.write_bytes(bytes(pdf.output()))
    r = await cli("kb", "create", "PDF", "--json")
    kb = json.loads(r.stdout)["id"]
    assert (await cli("kb", "add", kb, str(path))).exit_code == 0
    assert (await cli("chat", "new", "Чертёж", "--kb", kb)).exit_code == 0
    r = await cli("kb", "search", "Beton", "--kb", kb, "--json")
    block_id = json.loads(r.stdout)[0]["block_ids"][0]
    mesh.gemini.script(
        Reply.call("request_images", {"block_ids": [block_id]}), Reply.text("B25 [1].")
    )
    r = await cli("chat", "send", "Что на листе?")
    assert r.exit_code == 0, r.output
    r = await cli("chat", "history", "--sources")
    assert r.exit_code == 0, r.output
    assert "[1] kzh.pdf, с. 1, блок " in r.stdout and "Изображения ответа:" in r.stdout
    crop = next(line for line in r.stdout.splitlines() if "viewport p.1" in line)
    assert "http" in crop  # a signed URL of the stored crop


async def test_send_with_an_image(mesh: Mesh, gemini: object, tmp_path: Path) -> None:
    from PIL import Image

    cli = await signed_in(mesh, tmp_path)
    assert (await cli("chat", "new", "Фото")).exit_code == 0
    photo = tmp_path / "photo.jpg"
    Image.new("RGB", (32, 24), (10, 200, 10)).save(photo, format="JPEG")
    mesh.gemini.script(Reply.text("Зелёный прямоугольник."))
    r = await cli("chat", "send", "Что на фото?", "--image", str(photo))
    assert r.exit_code == 0, r.output
    assert "Зелёный прямоугольник." in r.stdout
    assert mesh.gemini.requests[0].inline_images() == [("image/jpeg", photo.read_bytes())]
    r = await cli("chat", "history")
    assert "🖼  photo.jpg 32×24" in r.stdout


async def test_regenerate_and_edit(mesh: Mesh, gemini: object, tmp_path: Path) -> None:
    cli = await signed_in(mesh, tmp_path)
    assert (await cli("chat", "new", "Без документов")).exit_code == 0
    mesh.gemini.script(Reply.text("Первый ответ."))
    assert (await cli("chat", "send", "Вопрос?")).exit_code == 0
    mesh.gemini.script(Reply.text("Второй ответ."))
    r = await cli("chat", "regenerate")
    assert r.exit_code == 0, r.output
    assert "Второй ответ." in r.stdout
    r = await cli("chat", "history", "--json")
    assert [m["content"] for m in json.loads(r.stdout)] == ["Вопрос?", "Второй ответ."]
    r = await cli("chat", "history", "--all")
    assert "Первый ответ." in r.stdout and "заменено" in r.stdout
    mesh.gemini.script(Reply.text("Ответ на новый вопрос."))
    r = await cli("chat", "edit", "Новый вопрос?")
    assert r.exit_code == 0, r.output
    assert "Ответ на новый вопрос." in r.stdout
    r = await cli("chat", "history", "--json")
    assert [m["content"] for m in json.loads(r.stdout)] == [
        "Новый вопрос?",
        "Ответ на новый вопрос.",
    ]
    r = await cli("chat", "regenerate", str(uuid.uuid4()))
    assert r.exit_code == EXIT_NOT_FOUND


async def test_search_messages(mesh: Mesh, gemini: object, tmp_path: Path) -> None:
    cli = await signed_in(mesh, tmp_path)
    assert (await cli("chat", "new", "Фундаменты")).exit_code == 0
    mesh.gemini.script(Reply.text("Класс бетона B25."))
    assert (await cli("chat", "send", "Какой бетон у фундамента?")).exit_code == 0
    r = await cli("chat", "search", "бетоном")
    assert r.exit_code == 0, r.output
    assert "Фундаменты · Ассистент" in r.stdout and "«бетона»" in r.stdout
    r = await cli("chat", "search", "бетон", "--json")
    assert len(json.loads(r.stdout)) == 2
    r = await cli("chat", "search", "арматура")
    assert r.exit_code == 0 and "Ничего не найдено." in r.stderr


async def test_detach_a_file(mesh: Mesh, gemini: object, tmp_path: Path) -> None:
    cli = await signed_in(mesh, tmp_path)
    assert (await cli("chat", "new", "С файлом")).exit_code == 0
    doc = tmp_path / "notes.md"
    doc.write_text("# Заметки\n\nБетон B25.\n")
    r = await cli("file", "upload", str(doc), "--json")
    file_id = json.loads(r.stdout)["file"]["id"]
    assert (await cli("chat", "attach", file_id, "--wait")).exit_code == 0
    r = await cli("chat", "detach", file_id)
    assert r.exit_code == 0 and "откреплён" in r.stdout
    r = await cli("chat", "show", "--json")
    assert json.loads(r.stdout).get("attachments", []) == []
    assert (await cli("chat", "detach", file_id)).exit_code == EXIT_NOT_FOUND


async def test_admin_chat_commands(mesh: Mesh, gemini: object, tmp_path: Path) -> None:
    cli = Cli(tmp_path / "admin", {**mesh.env(), "AIVERA_LANG": ""})
    r = await cli("login", input=mesh.bootstrap_token + "\n")
    assert r.exit_code == 0, r.output
    prompt = tmp_path / "flash.txt"
    prompt.write_text("Собери блоки.")
    r = await cli("admin", "prompt", "create", "flash_extractor", "--file", str(prompt), "--json")
    assert r.exit_code == 0, r.output
    created = json.loads(r.stdout)
    assert created["version"] == 2 and not created.get("is_active")
    assert (await cli("admin", "prompt", "activate", created["id"])).exit_code == 0
    r = await cli("admin", "prompt", "list", "--json")
    active = {p["name"]: p["content"] for p in json.loads(r.stdout)}
    assert active["SYSTEM_PROMPT_NAME_FLASH_EXTRACTOR"] == "Собери блоки."
    assert (await cli("admin", "prompt", "create", "nope", "--content", "x")).exit_code == 2
    r = await cli("admin", "role", "create", "сметчик", "--content", "Считай объёмы.", "--json")
    role = json.loads(r.stdout)
    r = await cli("admin", "role", "update", role["id"], "--content", "Считай.", "--inactive")
    assert r.exit_code == 0 and "версия 2" in r.stdout
    r = await cli("admin", "role", "list", "--json")
    mine = next(x for x in json.loads(r.stdout) if x["id"] == role["id"])
    assert mine["content"] == "Считай." and not mine.get("is_active")
    r = await cli("admin", "system", "set", "--limit", "max_tool_iterations=4", "--no-local-model")
    assert r.exit_code == 0, r.output
    assert "limits.max_tool_iterations" in r.stdout
    r = await cli("admin", "system", "show", "--json")
    shown = json.loads(r.stdout)
    assert shown["limits"]["max_tool_iterations"] == 4 and not shown.get("local_model_enabled")
    assert (await cli("admin", "system", "set", "--limit", "bogus=1")).exit_code == 2
    r = await cli("admin", "system", "set", "--flash-model", "not-allowed")
    assert r.exit_code == 1
    assert (await cli("admin", "system", "set", "--local-model")).exit_code == 0
    # A user without the admin role is refused.
    user = await signed_in(mesh, tmp_path / "user", key=False)
    assert (await user("admin", "system", "show")).exit_code == EXIT_AUTH


async def test_projects(mesh: Mesh, gemini: object, tmp_path: Path) -> None:
    cli = await signed_in(mesh, tmp_path)
    r = await cli("kb", "create", "Библиотека", "--json")
    kb = json.loads(r.stdout)["id"]
    doc = tmp_path / "kzh.md"
    doc.write_text("# Конструкции\n\nБетон класса B25 для фундаментов.\n")
    r = await cli("kb", "add", kb, str(doc), "--json")
    document_id = json.loads(r.stdout)["id"]
    r = await cli("project", "new", "Объект А", "--json")
    folder = json.loads(r.stdout)["id"]
    r = await cli("project", "new", "КЖ", "--parent", folder, "--json")
    sub = json.loads(r.stdout)["id"]
    assert (await cli("project", "add-doc", sub, document_id)).exit_code == 0
    assert (await cli("chat", "new", "Вопросы", "--folder", folder)).exit_code == 0
    mesh.gemini.script(Reply.text("Бетон B25 [1]."))
    r = await cli("chat", "send", "Какой бетон?")
    assert r.exit_code == 0, r.output
    assert "[1] kzh.md" in r.stdout  # the folder's document was searched
    r = await cli("project", "tree")
    assert "📁 Объект А" in r.stdout and "  📁 КЖ" in r.stdout
    assert "📄 kzh.md" in r.stdout and "💬 Вопросы" in r.stdout
    r = await cli("project", "answers", document_id)
    assert r.exit_code == 0 and "Бетон B25 [1]." in r.stdout
    assert (await cli("project", "rename", sub, "КЖ-1")).exit_code == 0
    assert (await cli("project", "move", sub)).exit_code == 0
    assert (await cli("chat", "move", sub)).exit_code == 0
    r = await cli("project", "tree", sub, "--json")
    assert json.loads(r.stdout)[0]["chats"][0]["title"] == "Вопросы"
    assert (await cli("project", "remove-doc", sub, document_id)).exit_code == 0
    assert (await cli("project", "delete", sub)).exit_code == 0
    assert (await cli("project", "delete", sub)).exit_code == EXIT_NOT_FOUND
    r = await cli("project", "tree", "--json")
    assert [n["folder"]["name"] for n in json.loads(r.stdout)] == ["Объект А"]


async def test_rename_archive_delete(mesh: Mesh, gemini: object, tmp_path: Path) -> None:
    cli = await signed_in(mesh, tmp_path, key=False)
    r = await cli("chat", "new", "Старое", "--json")
    chat_id = json.loads(r.stdout)["id"]
    r = await cli("chat", "rename", "Новое")
    assert r.exit_code == 0 and "Новое" in r.stdout
    assert (await cli("chat", "archive")).exit_code == 0
    r = await cli("chat", "list", "--json")
    assert json.loads(r.stdout) == []
    r = await cli("chat", "list", "--archived", "--json")
    assert [c["title"] for c in json.loads(r.stdout)] == ["Новое"]
    assert (await cli("chat", "unarchive")).exit_code == 0
    r = await cli("chat", "list", "--json")
    assert [c["id"] for c in json.loads(r.stdout)] == [chat_id]
    assert (await cli("chat", "delete", chat_id)).exit_code == 0
    assert json.loads((await cli("chat", "list", "--json")).stdout) == []
    assert (await cli("chat", "delete", chat_id)).exit_code == EXIT_NOT_FOUND
