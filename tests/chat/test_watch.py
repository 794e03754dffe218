"""A turn outlives its client: WatchTurn replays and follows (on any replica), CancelTurn
stops it, another user's turn is NOT_FOUND."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import grpc
import pytest

from aivera.chat.v1 import chat_pb2, chat_pb2_grpc
from services.chat.config import ChatSettings
from services.chat.server import make_spec as chat_spec
from services.common.server import App
from tests.chat.conftest import Mesh, User
from tests.helpers.errors import reason
from tests.helpers.gemini import GeminiServer, Reply
from tests.helpers.services import channel, running

KEY = "AIzaSyTEST0000000000000000000000000002"
TOKENS = [f"t{n} " for n in range(12)]


def check_turn(events: list[chat_pb2.ChatEvent]) -> None:
    """A whole turn: accepted first, seq from 1 without gaps, one terminal event last."""
    assert events[0].HasField("accepted")
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    terminal = [e for e in events if e.WhichOneof("event") in ("final", "error")]
    assert len(terminal) == 1 and terminal[0] is events[-1]


def watch(
    stub: chat_pb2_grpc.ChatServiceStub, user: User, chat_id: str, turn_id: str, after: int = 0
) -> Any:
    return stub.WatchTurn(
        chat_pb2.WatchTurnRequest(chat_id=chat_id, turn_id=turn_id, after_seq=after),
        metadata=user.md,
    )


@pytest.fixture(scope="module")
async def replica(mesh: Mesh) -> AsyncIterator[App]:
    """A second chat replica on the same database."""
    settings = cast(ChatSettings, mesh.chat.settings)
    second = settings.model_copy(update={"chat_spool_dir": settings.spool_dir.parent / "spool2"})
    async with running(chat_spec(second), second) as app:
        yield app


async def test_disconnect_does_not_stop_the_turn_and_reattach_replays_the_rest(
    mesh: Mesh, gemini: GeminiServer
) -> None:
    user = await mesh.new_user(KEY)
    chat = await mesh.stub.CreateChat(chat_pb2.CreateChatRequest(), metadata=user.md)
    gemini.script(Reply.tokens(TOKENS, delay=0.05))
    call = mesh.stub.SendMessage(
        chat_pb2.SendMessageRequest(chat_id=chat.id, text="Долгий ответ"), metadata=user.md
    )
    seen: list[chat_pb2.ChatEvent] = []
    async for event in call:
        seen.append(event)
        if sum(1 for e in seen if e.HasField("llm_token")) == 3:
            break
    call.cancel()  # the client goes away mid-stream
    turn_id, last = seen[0].message_id, seen[-1].seq
    # Reattach after the last seq seen: the rest, nothing twice, nothing missing.
    rest = [e async for e in watch(mesh.stub, user, chat.id, turn_id, last)]
    whole = seen + rest
    check_turn(whole)
    assert "".join(e.llm_token.text for e in whole if e.HasField("llm_token")) == "".join(TOKENS)
    assert whole[-1].final.message.content == "".join(TOKENS)
    # The turn ran to its end on the server and is stored.
    stored = await mesh.wait_settled(user, chat.id)
    assert (stored[-1].status, stored[-1].content) == (
        chat_pb2.MESSAGE_STATUS_COMPLETE,
        "".join(TOKENS),
    )
    assert gemini.disconnects == 0
    # A replay of the finished turn is exactly what the live streams sent.
    replay = [e async for e in watch(mesh.stub, user, chat.id, turn_id)]
    assert replay == whole
    assert [e async for e in watch(mesh.stub, user, chat.id, turn_id, whole[-1].seq)] == []


async def test_watch_from_another_replica_live_and_cancel_there(
    mesh: Mesh, gemini: GeminiServer, replica: App
) -> None:
    user = await mesh.new_user(KEY)
    chat = await mesh.stub.CreateChat(chat_pb2.CreateChatRequest(), metadata=user.md)
    gemini.script(Reply.tokens(TOKENS, delay=0.05))
    async with channel(replica) as ch:
        other = chat_pb2_grpc.ChatServiceStub(ch)
        live = [e async for e in mesh.stub.SendMessage(
            chat_pb2.SendMessageRequest(chat_id=chat.id, text="Вопрос"), metadata=user.md
        ) if e.seq <= 2]  # fmt: skip
        turn_id = live[0].message_id
        # Started while the turn runs on the first replica, from its first event.
        remote = [e async for e in watch(other, user, chat.id, turn_id)]
        check_turn(remote)
        assert remote[-1].final.message.content == "".join(TOKENS)
        local = [e async for e in watch(mesh.stub, user, chat.id, turn_id)]
        assert remote == local

        # CancelTurn on the replica that does not run the turn stops it at its next flush.
        gemini.script(Reply.tokens(["a ", "b "], hang=True))
        call = mesh.stub.SendMessage(
            chat_pb2.SendMessageRequest(chat_id=chat.id, text="Ещё"), metadata=user.md
        )
        first = [e async for e in _until_tokens(call, 2)]
        await other.CancelTurn(
            chat_pb2.CancelTurnRequest(chat_id=chat.id, turn_id=first[0].message_id),
            metadata=user.md,
        )
        rest = [e async for e in call]
        check_turn(first + rest)
        assert rest[-1].error.reason == "CANCELLED"
        replay = [e async for e in watch(other, user, chat.id, first[0].message_id)]
        assert replay == first + rest
        stored = await mesh.wait_settled(user, chat.id)
        assert (stored[-1].content, stored[-1].status) == (
            "a b ",
            chat_pb2.MESSAGE_STATUS_INCOMPLETE,
        )


async def _until_tokens(call: Any, n: int) -> AsyncIterator[chat_pb2.ChatEvent]:
    count = 0
    async for event in call:
        yield event
        count += event.HasField("llm_token")
        if count == n:
            return


async def test_another_users_turn_is_not_found(mesh: Mesh, gemini: GeminiServer) -> None:
    owner, other = await mesh.new_user(KEY), await mesh.new_user(KEY)
    chat = await mesh.stub.CreateChat(chat_pb2.CreateChatRequest(), metadata=owner.md)
    gemini.script(Reply.tokens(["x"], hang=True))
    call = mesh.stub.SendMessage(
        chat_pb2.SendMessageRequest(chat_id=chat.id, text="Моё"), metadata=owner.md
    )
    events = [e async for e in _until_tokens(call, 1)]
    turn_id = events[0].message_id
    # One call streams, the other is awaited: the loop tells them apart at runtime.
    stub_calls: tuple[Callable[[], Any], ...] = (
        lambda: watch(mesh.stub, other, chat.id, turn_id),
        lambda: mesh.stub.CancelTurn(
            chat_pb2.CancelTurnRequest(chat_id=chat.id, turn_id=turn_id), metadata=other.md
        ),
    )
    for stub_call in stub_calls:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            result = stub_call()
            if hasattr(result, "__aiter__"):
                [e async for e in result]
            else:
                await result
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        assert reason(info.value) == "NOT_FOUND"
    # The other user's chat id with the owner's turn id is not found either.
    other_chat = await mesh.stub.CreateChat(chat_pb2.CreateChatRequest(), metadata=other.md)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        [e async for e in watch(mesh.stub, other, other_chat.id, turn_id)]
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as info:
        [e async for e in watch(mesh.stub, owner, chat.id, turn_id, -1)]
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as info:
        [e async for e in watch(mesh.stub, owner, chat.id, "not-a-uuid")]
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # The owner's turn still runs; the owner cancels it.
    await mesh.stub.CancelTurn(
        chat_pb2.CancelTurnRequest(chat_id=chat.id, turn_id=turn_id), metadata=owner.md
    )
    assert [e async for e in call][-1].error.reason == "CANCELLED"
    # Cancelling a finished turn does nothing.
    await mesh.stub.CancelTurn(
        chat_pb2.CancelTurnRequest(chat_id=chat.id, turn_id=turn_id), metadata=owner.md
    )


async def test_a_turn_whose_replica_died_ends_its_log(mesh: Mesh, gemini: GeminiServer) -> None:
    """A running answer with a stale heartbeat and no terminal event in its log: WatchTurn
    ends with an `error` SHUTDOWN event, the same for every watcher."""
    import uuid

    user = await mesh.new_user(KEY)
    chat = await mesh.stub.CreateChat(chat_pb2.CreateChatRequest(), metadata=user.md)
    turn_id = uuid.uuid4()
    await mesh.chat.pool.execute(
        """INSERT INTO messages (id, chat_id, role, status, content, heartbeat_time)
           VALUES ($1, $2, 2, 4, 'обрыв', now() - interval '1 hour')""",
        turn_id,
        uuid.UUID(chat.id),
    )
    first = [e async for e in watch(mesh.stub, user, chat.id, str(turn_id))]
    assert [e.WhichOneof("event") for e in first] == ["error"]
    assert first[0].seq == 1 and first[0].error.reason == "SHUTDOWN"
    again = await asyncio.wait_for(
        _collect(watch(mesh.stub, user, chat.id, str(turn_id))), timeout=5
    )
    assert again == first


async def _collect(call: Any) -> list[chat_pb2.ChatEvent]:
    return [e async for e in call]


async def test_the_event_log_is_stored_in_batches_and_read_back_by_seq(
    mesh: Mesh, gemini: GeminiServer
) -> None:
    """One row per flushed batch: read back split by seq from any point; a repeated,
    longer write of an ended log does not change its end."""
    import uuid

    from services.chat.store import Store, StoredEvent, _append_events

    user = await mesh.new_user(KEY)
    chat = await mesh.stub.CreateChat(chat_pb2.CreateChatRequest(), metadata=user.md)
    gemini.script(Reply.tokens(TOKENS, delay=0.05))
    live = [
        e
        async for e in mesh.stub.SendMessage(
            chat_pb2.SendMessageRequest(chat_id=chat.id, text="Ответ"), metadata=user.md
        )
    ]
    check_turn(live)
    store = Store(mesh.chat)
    turn = uuid.UUID(live[0].message_id)
    batches = await mesh.chat.pool.fetchval(
        "SELECT count(*) FROM turn_events WHERE message_id = $1", turn
    )
    assert 1 < batches < len(live)  # flushed in batches while it ran, not row per event
    for after in (0, 1, len(live) // 2, len(live) - 1, len(live)):
        logged = await store.turn_events(turn, after)
        assert [e.seq for e in logged] == [e.seq for e in live[after:]]
        assert [chat_pb2.ChatEvent.FromString(e.event) for e in logged] == live[after:]
        assert [e.terminal for e in logged] == [e is live[-1] for e in live[after:]]
    assert await store.turn_log_end(turn) == (len(live), True)
    # A late, longer write of the same batch (a replica that lost its lease) cannot
    # replace a log that has ended.
    longer = [StoredEvent(n, b"late", terminal=False) for n in range(1, len(live) + 3)]
    async with mesh.chat.pool.acquire() as conn:
        await _append_events(conn, turn, longer)
    again = await store.turn_events(turn, 0)
    assert [chat_pb2.ChatEvent.FromString(e.event) for e in again] == live
