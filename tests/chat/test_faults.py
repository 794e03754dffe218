"""Nothing lost to the database, nothing lost to a shutdown: the module's own Postgres
cluster is stopped and started at each stage of a turn, and replicas are stopped mid-turn.
Each test asserts the answer is stored in full, the chat takes the next turn (no stuck
lock), and WatchTurn replays exactly what the live stream sent."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, cast

import grpc
import pytest

from aivera.chat.v1 import chat_pb2, chat_pb2_grpc
from services.chat.config import ChatSettings
from services.chat.server import make_spec as chat_spec
from services.common.devpg import LocalPostgres, free_port, temporary_cluster
from services.common.server import App
from tests.chat.conftest import Mesh, User, build_mesh
from tests.helpers.errors import reason
from tests.helpers.faults import database_down, kill, killed_on_exit
from tests.helpers.gemini import GeminiServer, Reply
from tests.helpers.services import channel, running

KEY = "AIzaSyTEST0000000000000000000000000003"
ROOT = Path(__file__).resolve().parents[2]
TOKENS = [f"w{n} " for n in range(16)]
ANSWER = "".join(TOKENS)


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalPostgres]:
    with temporary_cluster("aivera-chat-faults-") as pg:
        yield pg


@pytest.fixture(scope="module")
async def mesh(cluster: LocalPostgres) -> AsyncIterator[Mesh]:
    async with build_mesh(
        cluster.create_database("chat_faults"), turn_finish_retry_seconds=0.5
    ) as m:
        yield m


@pytest.fixture
def gemini(mesh: Mesh) -> GeminiServer:
    mesh.gemini.reset()
    mesh.gemini.valid_keys = None
    return mesh.gemini


async def _tokens(call: Any, n: int, seen: list[chat_pb2.ChatEvent]) -> None:
    count = 0
    async for event in call:
        seen.append(event)
        count += event.HasField("llm_token")
        if count == n:
            return


async def _settled(mesh: Mesh, user: User, chat_id: str, timeout: float = 30) -> list[Any]:
    """Messages once none is IN_PROGRESS; tolerates the database coming back."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            msgs = await mesh.messages(user, chat_id)
            if all(m.status != chat_pb2.MESSAGE_STATUS_IN_PROGRESS for m in msgs):
                return msgs
        except grpc.aio.AioRpcError as e:
            if e.code() != grpc.StatusCode.UNAVAILABLE:
                raise
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("turn did not settle")
        await asyncio.sleep(0.1)


async def _replay(stub: Any, user: User, chat_id: str, turn_id: str) -> list[chat_pb2.ChatEvent]:
    call = stub.WatchTurn(
        chat_pb2.WatchTurnRequest(chat_id=chat_id, turn_id=turn_id), metadata=user.md
    )
    return [e async for e in call]


def _check(events: list[chat_pb2.ChatEvent]) -> None:
    assert events[0].HasField("accepted")
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert events[-1].WhichOneof("event") in ("final", "error")


async def _next_turn_works(mesh: Mesh, gemini: GeminiServer, user: User, chat_id: str) -> None:
    gemini.script(Reply.text("Дальше."))
    events = await mesh.send(user, chat_id, "Следующий")
    assert events[-1].final.message.content == "Дальше."


async def test_database_down_before_accept_is_unavailable(
    mesh: Mesh, gemini: GeminiServer, cluster: LocalPostgres
) -> None:
    user = await mesh.new_user(KEY)
    chat = await mesh.stub.CreateChat(chat_pb2.CreateChatRequest(), metadata=user.md)
    async with database_down(cluster):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await mesh.send(user, chat.id, "Вопрос")
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert reason(info.value) == "DATABASE_UNAVAILABLE"
    await _settled(mesh, user, chat.id)
    assert await mesh.messages(user, chat.id) == []
    await _next_turn_works(mesh, gemini, user, chat.id)


async def test_database_down_mid_stream_then_back_before_the_end(
    mesh: Mesh, gemini: GeminiServer, cluster: LocalPostgres
) -> None:
    user = await mesh.new_user(KEY)
    chat = await mesh.stub.CreateChat(chat_pb2.CreateChatRequest(), metadata=user.md)
    gemini.script(Reply.tokens(TOKENS, delay=0.15))
    call = mesh.stub.SendMessage(
        chat_pb2.SendMessageRequest(chat_id=chat.id, text="Вопрос"), metadata=user.md
    )
    seen: list[chat_pb2.ChatEvent] = []
    await _tokens(call, 2, seen)
    async with database_down(cluster):
        await _tokens(call, 3, seen)  # tokens keep coming while Postgres is down
    seen += [e async for e in call]
    _check(seen)
    assert seen[-1].final.message.content == ANSWER
    stored = await _settled(mesh, user, chat.id)
    assert (stored[-1].content, stored[-1].status) == (ANSWER, chat_pb2.MESSAGE_STATUS_COMPLETE)
    assert await _replay(mesh.stub, user, chat.id, seen[0].message_id) == seen
    await _next_turn_works(mesh, gemini, user, chat.id)


async def test_database_down_at_the_final_write_spools_then_stores(
    mesh: Mesh, gemini: GeminiServer, cluster: LocalPostgres
) -> None:
    user = await mesh.new_user(KEY)
    chat = await mesh.stub.CreateChat(chat_pb2.CreateChatRequest(), metadata=user.md)
    gemini.script(Reply.tokens(TOKENS, delay=0.05))
    call = mesh.stub.SendMessage(
        chat_pb2.SendMessageRequest(chat_id=chat.id, text="Вопрос"), metadata=user.md
    )
    seen: list[chat_pb2.ChatEvent] = []
    await _tokens(call, 2, seen)
    spool = cast(ChatSettings, mesh.chat.settings).spool_dir
    async with database_down(cluster):
        # The turn ends while Postgres is down: the final write is retried, then the
        # turn is spooled to disk and the stream still gets its terminal event.
        seen += [e async for e in call]
        assert seen[-1].final.message.content == ANSWER
        assert len(list(spool.glob("*.json"))) == 1
    stored = await _settled(mesh, user, chat.id)
    assert (stored[-1].content, stored[-1].status) == (ANSWER, chat_pb2.MESSAGE_STATUS_COMPLETE)
    assert list(spool.glob("*.json")) == []
    _check(seen)
    assert await _replay(mesh.stub, user, chat.id, seen[0].message_id) == seen
    await _next_turn_works(mesh, gemini, user, chat.id)


async def test_a_restart_while_spooled_loses_nothing(
    mesh: Mesh, gemini: GeminiServer, cluster: LocalPostgres, tmp_path: Path
) -> None:
    """The turn is spooled, the replica stops while Postgres is still down, a new replica
    starts on the same disk once it is back: the answer is stored before it serves."""
    settings = cast(ChatSettings, mesh.chat.settings).model_copy(
        update={"chat_spool_dir": tmp_path / "spool"}
    )
    user = await mesh.new_user(KEY)
    chat = await mesh.stub.CreateChat(chat_pb2.CreateChatRequest(), metadata=user.md)
    gemini.script(Reply.tokens(TOKENS, delay=0.05))
    async with running(chat_spec(settings), settings) as replica, channel(replica) as ch:
        stub = chat_pb2_grpc.ChatServiceStub(ch)
        call = stub.SendMessage(
            chat_pb2.SendMessageRequest(chat_id=chat.id, text="Вопрос"), metadata=user.md
        )
        seen: list[chat_pb2.ChatEvent] = []
        await _tokens(call, 1, seen)
        await asyncio.to_thread(cluster.stop)
        seen += [e async for e in call]
        assert seen[-1].final.message.content == ANSWER
    try:
        assert len(list((tmp_path / "spool").glob("*.json"))) == 1
    finally:
        await asyncio.to_thread(cluster.start, fast=True)
    async with running(chat_spec(settings), settings):
        assert list((tmp_path / "spool").glob("*.json")) == []
    stored = await _settled(mesh, user, chat.id)
    assert (stored[-1].content, stored[-1].status) == (ANSWER, chat_pb2.MESSAGE_STATUS_COMPLETE)
    assert await _replay(mesh.stub, user, chat.id, seen[0].message_id) == seen
    await _next_turn_works(mesh, gemini, user, chat.id)


async def test_shutdown_checkpoints_a_turn_another_replica_replays(
    mesh: Mesh, gemini: GeminiServer, tmp_path: Path
) -> None:
    """SIGTERM's drain (App.stop) on the replica running a turn longer than the grace
    period: the partial answer is stored, the log ends with `error` SHUTDOWN, and another
    replica replays it all; the chat takes the next turn at once."""
    settings = cast(ChatSettings, mesh.chat.settings).model_copy(
        update={"chat_spool_dir": tmp_path / "spool"}
    )
    user = await mesh.new_user(KEY)
    chat = await mesh.stub.CreateChat(chat_pb2.CreateChatRequest(), metadata=user.md)
    gemini.script(Reply.tokens(["Часть ", "ответа "], hang=True))
    replica: App
    async with running(chat_spec(settings), settings) as replica, channel(replica) as ch:
        stub = chat_pb2_grpc.ChatServiceStub(ch)
        call = stub.SendMessage(
            chat_pb2.SendMessageRequest(chat_id=chat.id, text="Долго"), metadata=user.md
        )
        seen: list[chat_pb2.ChatEvent] = []
        await _tokens(call, 2, seen)
        await replica.stop(grace=0.5)
        call.cancel()
    replay = await _replay(mesh.stub, user, chat.id, seen[0].message_id)
    assert replay[: len(seen)] == seen
    _check(replay)
    assert replay[-1].error.reason == "SHUTDOWN" and replay[-1].error.retryable
    stored = await _settled(mesh, user, chat.id, timeout=5)
    assert (stored[-1].content, stored[-1].status) == (
        "Часть ответа ",
        chat_pb2.MESSAGE_STATUS_INCOMPLETE,
    )
    await _next_turn_works(mesh, gemini, user, chat.id)


def _chat_process(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """`python -m services.chat` with `env`, its output in `log`."""
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "services.chat"], env=env, cwd=ROOT, stdout=out, stderr=out
        )


async def _wait_serving(port: int, timeout: float = 60) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = asyncio.get_running_loop().time() + timeout
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while asyncio.get_running_loop().time() < deadline:
            with contextlib.suppress(grpc.aio.AioRpcError):
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            await asyncio.sleep(0.2)
    raise AssertionError("the chat process never reported SERVING")


async def test_sigterm_to_a_chat_process_mid_turn_checkpoints_it_for_another_replica(
    mesh: Mesh, gemini: GeminiServer, tmp_path: Path
) -> None:
    """A real `python -m services.chat` process gets SIGTERM while a turn runs longer than
    its grace period: it exits cleanly after storing the partial answer and the terminal
    `error` SHUTDOWN (before its pool closes); the in-process replica replays the turn."""
    s = cast(ChatSettings, mesh.chat.settings)
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "gen")]),
        "AIVERA_ENV": "test",
        "DATABASE_URL": s.database_url.get_secret_value() if s.database_url else "",
        "AIVERA_SERVICE_SECRET": s.service_secret(),
        "AUTH_ADDR": s.auth_addr,
        "STORAGE_ADDR": s.storage_addr,
        "RAG_ADDR": s.rag_addr,
        "TRAINING_ADDR": s.training_addr,
        "GEMINI_BASE_URL": s.gemini_base_url or "",
        "CHAT_PORT": str(port),
        "CHAT_HTTP_PORT": str(free_port()),
        "GRPC_HOST": "127.0.0.1",
        "HTTP_HOST": "127.0.0.1",
        "SHUTDOWN_GRACE_SECONDS": "1",
        "TURN_FLUSH_INTERVAL_SECONDS": "0.1",
        "CHAT_SPOOL_DIR": str(tmp_path / "spool"),
        "HEALTH_CHECK_INTERVAL_SECONDS": "0.2",
    }
    proc = _chat_process(env, tmp_path / "chat.log")
    user = await mesh.new_user(KEY)
    chat = await mesh.stub.CreateChat(chat_pb2.CreateChatRequest(), metadata=user.md)
    with killed_on_exit(proc):
        await _wait_serving(port)
        gemini.script(Reply.tokens(["Часть ", "ответа "], hang=True))
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = chat_pb2_grpc.ChatServiceStub(ch)
            call = stub.SendMessage(
                chat_pb2.SendMessageRequest(chat_id=chat.id, text="Долго"), metadata=user.md
            )
            seen: list[chat_pb2.ChatEvent] = []
            await _tokens(call, 2, seen)
            code = await asyncio.to_thread(kill, proc, signal.SIGTERM)
            call.cancel()
    output = (tmp_path / "chat.log").read_text(errors="replace")
    assert code == 0, output
    assert "pool is closed" not in output and "Traceback" not in output, output
    replay = await _replay(mesh.stub, user, chat.id, seen[0].message_id)
    assert replay[: len(seen)] == seen
    _check(replay)
    assert replay[-1].error.reason == "SHUTDOWN"
    stored = await _settled(mesh, user, chat.id, timeout=5)
    assert (stored[-1].content, stored[-1].status) == (
        "Часть ответа ",
        chat_pb2.MESSAGE_STATUS_INCOMPLETE,
    )
    await _next_turn_works(mesh, gemini, user, chat.id)
