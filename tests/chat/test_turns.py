"""SendMessage over the loopback Gemini server: streaming, storage, prompts, models, tools."""

from __future__ import annotations

import asyncio
import io
from typing import cast

import grpc
import pytest
from google.protobuf import field_mask_pb2, struct_pb2
from PIL import Image

from aivera.chat.v1 import chat_pb2
from tests.chat.conftest import Mesh, code_of
from tests.helpers.errors import error_info, localized, reason
from tests.helpers.gemini import GeminiServer, Reply

KEY = "AIzaSyTEST0000000000000000000000000001"


def kinds(events: list[chat_pb2.ChatEvent]) -> list[str]:
    return [str(e.WhichOneof("event")) for e in events]


def check_stream(events: list[chat_pb2.ChatEvent]) -> None:
    """accepted first, seq without gaps, one terminal event, last."""
    assert events[0].WhichOneof("event") == "accepted"
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert len({e.message_id for e in events}) == 1
    terminal = [k for k in kinds(events) if k in ("final", "error")]
    assert len(terminal) == 1 and kinds(events)[-1] == terminal[0]


async def test_simple_turn_streams_tokens_and_stores_messages(
    mesh: Mesh, gemini: GeminiServer
) -> None:
    user = await mesh.new_user(KEY)
    chat = await mesh.stub.CreateChat(chat_pb2.CreateChatRequest(title=""), metadata=user.md)
    assert chat.title == "Новый чат"
    gemini.script(Reply.tokens(["Бетон ", "класса ", "B25."], prompt_tokens=30, output_tokens=3))
    events = await mesh.send(user, chat.id, "Какой бетон?")
    check_stream(events)
    tokens = [e.llm_token.text for e in events if e.HasField("llm_token")]
    assert tokens == ["Бетон ", "класса ", "B25."]
    assert {e.llm_token.model for e in events if e.HasField("llm_token")} == {"gemini-2.5-flash"}
    final = events[-1].final.message
    assert final.content == "Бетон класса B25."
    assert final.status == chat_pb2.MESSAGE_STATUS_COMPLETE
    assert list(final.models_used) == ["gemini-2.5-flash"]
    assert final.usage.input_tokens == 30 and final.usage.output_tokens == 3
    phases = [e.phase_started.phase for e in events if e.HasField("phase_started")]
    assert phases[0] == chat_pb2.PHASE_CONTEXT and chat_pb2.PHASE_FLASH_CALL in phases
    assert phases[-1] == chat_pb2.PHASE_SAVE
    # The key went to Gemini in the header, as the user's key.
    assert gemini.requests[-1].api_key == KEY
    assert gemini.requests[-1].method == "streamGenerateContent"
    stored = await mesh.messages(user, chat.id)
    assert [(m.role, m.status, m.content) for m in stored] == [
        (chat_pb2.MESSAGE_ROLE_USER, chat_pb2.MESSAGE_STATUS_COMPLETE, "Какой бетон?"),
        (chat_pb2.MESSAGE_ROLE_ASSISTANT, chat_pb2.MESSAGE_STATUS_COMPLETE, "Бетон класса B25."),
    ]
    assert stored[1].id == events[0].message_id == final.id
    assert events[0].accepted.user_message.id == stored[0].id
    # A second turn sends the first as history.
    gemini.script(Reply.text("Да."))
    await mesh.send(user, chat.id, "Уверен?")
    texts = gemini.requests[-1].texts()
    assert texts[0] == "Какой бетон?" and texts[1] == "Бетон класса B25."


async def test_system_instruction_order_and_role(mesh: Mesh, gemini: GeminiServer) -> None:
    user = await mesh.new_user(KEY)
    admin = await mesh.admin_user()
    chat = await mesh.stub.CreateChat(chat_pb2.CreateChatRequest(), metadata=user.md)
    prompts = {
        chat_pb2.SystemPromptName.Name(p.name): p.content
        for p in (
            await mesh.admin_stub.ListSystemPrompts(
                chat_pb2.ListSystemPromptsRequest(), metadata=admin.md
            )
        ).system_prompts
    }
    base = "\n\n".join(
        prompts[f"SYSTEM_PROMPT_NAME_{n}"].strip()
        for n in ("LLM_SYSTEM", "JSON_ANNOTATION", "HTML_OCR")
    )
    await mesh.send(user, chat.id, "Вопрос без роли")
    assert gemini.requests[-1].system_instruction == base
    roles = (await mesh.stub.ListRoles(chat_pb2.ListRolesRequest(), metadata=user.md)).roles
    engineer = next(r for r in roles if r.name == "инженер")
    await mesh.stub.UpdateSettings(
        chat_pb2.UpdateSettingsRequest(
            settings=chat_pb2.UserSettings(selected_role_prompt_id=engineer.id),
            update_mask=field_mask_pb2.FieldMask(paths=["selected_role_prompt_id"]),
        ),
        metadata=user.md,
    )
    events = await mesh.send(user, chat.id, "Вопрос с ролью")
    assert events[0].accepted.role_prompt_id == engineer.id
    assert gemini.requests[-1].system_instruction == engineer.content.strip() + "\n\n" + base
    assert events[-1].final.message.role_prompt_id == engineer.id
    assert events[-1].final.message.role_prompt_version == engineer.version


async def test_model_profile_changes_models(mesh: Mesh, gemini: GeminiServer) -> None:
    user = await mesh.new_user(KEY)
    chat = await mesh.chat_with_document(user)
    gemini.script(Reply.text("простой"))
    await mesh.send(user, chat.id, "Вопрос")
    assert [r.model for r in gemini.requests] == ["gemini-2.5-flash"]
    await mesh.stub.UpdateSettings(
        chat_pb2.UpdateSettingsRequest(
            settings=chat_pb2.UserSettings(model_profile=chat_pb2.MODEL_PROFILE_COMPLEX),
            update_mask=field_mask_pb2.FieldMask(paths=["model_profile"]),
        ),
        metadata=user.md,
    )
    gemini.reset()
    gemini.script(Reply.text("Блок b-text: бетон B25."), Reply.tokens(["Ответ ", "pro."]))
    # Each turn in a new chat: a follow-up in the same chat adds the query rewrite call.
    chat = await mesh.chat_with_document(user)
    events = await mesh.send(user, chat.id, "Вопрос")
    check_stream(events)
    assert [r.model for r in gemini.requests] == ["gemini-2.5-flash", "gemini-2.5-pro"]
    flash, pro = gemini.requests
    assert flash.system_instruction.startswith("Ты — этап извлечения данных")
    assert "b-drawing" in flash.texts()[0] and "Каталог изображений" in flash.texts()[0]
    assert pro.function_names == []
    assert any("Блок b-text: бетон B25." in t for t in pro.texts())
    final = events[-1].final.message
    assert final.content == "Ответ pro."
    assert list(final.models_used) == ["gemini-2.5-flash", "gemini-2.5-pro"]
    assert final.model_profile == chat_pb2.MODEL_PROFILE_COMPLEX
    # Only the answering model streams tokens.
    assert {e.llm_token.model for e in events if e.HasField("llm_token")} == {"gemini-2.5-pro"}
    # A per-turn override back to simple.
    gemini.reset()
    chat = await mesh.chat_with_document(user)
    await mesh.send(user, chat.id, "Ещё", model_profile=chat_pb2.MODEL_PROFILE_SIMPLE)
    assert [r.model for r in gemini.requests] == ["gemini-2.5-flash"]
    # The admin changes the flash model name.
    await mesh.system(
        allowed_models=["gemini-2.5-flash", "gemini-2.5-pro", "gemini-3-flash"],
        flash_model="gemini-3-flash",
    )
    try:
        gemini.reset()
        chat = await mesh.chat_with_document(user)
        await mesh.send(user, chat.id, "Ещё", model_profile=chat_pb2.MODEL_PROFILE_SIMPLE)
        assert [r.model for r in gemini.requests] == ["gemini-3-flash"]
    finally:
        await mesh.system(flash_model="gemini-2.5-flash")


def _image(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


def _red_share(image: Image.Image) -> float:
    pixels = list(image.getdata())
    red = sum(1 for r, g, b in pixels if r > 180 and g < 60 and b < 60)
    return red / len(pixels)


async def test_tool_loop_request_images_zoom_answer(mesh: Mesh, gemini: GeminiServer) -> None:
    user = await mesh.new_user(KEY)
    chat = await mesh.chat_with_document(user)
    gemini.script(
        Reply.call("request_images", {"block_ids": ["b-drawing"]}),
        Reply.call(
            "zoom",
            {"page": 1, "box": {"left": 0.2, "top": 0.45, "right": 0.3, "bottom": 0.5}, "scale": 3},
        ),
        Reply.tokens(["На чертеже ", "красный узел."]),
    )
    events = await mesh.send(user, chat.id, "Что на чертеже?")
    check_stream(events)
    assert len(gemini.requests) == 3
    first, second, third = gemini.requests
    assert first.function_names == ["request_images", "zoom"]
    assert '"id": "b-drawing"' in first.texts()[-1]
    # The crop of the red block reached the model as a real image.
    crops = second.inline_images()
    assert len(crops) == 1 and crops[0][0] == "image/png"
    crop = _image(crops[0][1])
    assert _red_share(crop) > 0.7
    assert second.function_responses()[0]["name"] == "request_images"
    zooms = third.inline_images()[1:]
    assert len(zooms) == 1
    zoom = _image(zooms[0][1])
    # A real high-resolution render: the region is 10% of the page width at 3× the page
    # image's resolution, and shows the blue mark that the page image barely has.
    page_width = mesh.rag.docs[next(iter(mesh.rag.docs))].width
    assert zoom.width == pytest.approx(0.1 * page_width * 3, rel=0.05)
    blue = sum(1 for r, g, b in list(zoom.getdata()) if b > 180 and r < 80 and g < 80)
    assert blue > 100
    tool_calls = [e.tool_call for e in events if e.HasField("tool_call")]
    assert [(t.name, t.iteration) for t in tool_calls] == [("request_images", 1), ("zoom", 2)]
    # A Struct list value reads back as a ListValue.
    block_ids = cast(struct_pb2.ListValue, tool_calls[0].arguments["block_ids"])
    assert list(block_ids) == ["b-drawing"]
    produced = [e.image_produced for e in events if e.HasField("image_produced")]
    assert [p.image.kind for p in produced] == [
        chat_pb2.IMAGE_KIND_VIEWPORT,
        chat_pb2.IMAGE_KIND_ZOOM,
    ]
    assert [p.tool_call_id for p in produced] == [t.id for t in tool_calls]
    assert all(p.url.startswith("http://127.0.0.1:") for p in produced)
    phases = {e.phase_started.phase for e in events if e.HasField("phase_started")}
    assert {
        chat_pb2.PHASE_DOCUMENT_SEARCH,
        chat_pb2.PHASE_IMAGE_DOWNLOAD,
        chat_pb2.PHASE_CROPS,
        chat_pb2.PHASE_ZOOMS,
    } <= phases
    final = events[-1].final.message
    assert final.content == "На чертеже красный узел."
    stored = (await mesh.messages(user, chat.id))[-1]
    assert [(i.kind, i.width, i.height, i.file_id) for i in stored.images] == [
        (p.image.kind, p.image.width, p.image.height, p.image.file_id) for p in produced
    ]
    assert stored.images[0].size_bytes > 0 and stored.images[1].scale == 3
    assert stored.images[1].box.normalized.left == pytest.approx(0.2)
    assert {s.block_id for s in stored.search_results} == {"b-title", "b-text", "b-drawing"}
    drawing = next(s for s in stored.search_results if s.block_id == "b-drawing")
    assert drawing.box.normalized.top == pytest.approx(0.45)
    assert drawing.box.pixels.right == int(0.6 * page_width)
    assert drawing.page == 1 and drawing.text == "Chertezh uzla 1"


async def test_tool_iteration_limit(mesh: Mesh, gemini: GeminiServer) -> None:
    user = await mesh.new_user(KEY)
    chat = await mesh.chat_with_document(user)
    await mesh.system(limits_max_tool_iterations=1)
    try:
        gemini.script(
            Reply.call("request_images", {"block_ids": ["nope"]}), Reply.text("Ответ без картинок")
        )
        events = await mesh.send(user, chat.id, "Вопрос")
    finally:
        await mesh.system(limits_max_tool_iterations=6)
    warnings = [e.warning.code for e in events if e.HasField("warning")]
    assert warnings == ["BLOCK_NOT_FOUND", "TOOL_ITERATION_LIMIT"]
    assert gemini.requests[1].function_names == []  # the last call has no tools
    assert events[-1].final.message.content == "Ответ без картинок"


# -- failures -------------------------------------------------------------------------------
async def test_no_key_without_local_model_is_failed_precondition(
    mesh: Mesh, gemini: GeminiServer
) -> None:
    user = await mesh.new_user()
    chat = await mesh.stub.CreateChat(chat_pb2.CreateChatRequest(), metadata=user.md)
    await mesh.system(local_model_enabled=False)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await mesh.send(user, chat.id, "Привет")
    finally:
        await mesh.system(local_model_enabled=True)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    # Programs branch on the reason; the user reads the localized text, which tells them
    # to set a key (the status message is for developers).
    assert reason(info.value) == "PROVIDER_KEY_MISSING"
    assert error_info(info.value).domain == "chat.aivera.dev"
    assert "ключ Gemini" in localized(info.value).message
    assert "Gemini key" in (info.value.details() or "")
    assert await mesh.messages(user, chat.id) == []  # nothing stored
    assert gemini.requests == []


async def test_bad_key_is_an_error_event_naming_the_key(mesh: Mesh, gemini: GeminiServer) -> None:
    user = await mesh.new_user("AIzaSyWRONG000000000000000000000000009")
    gemini.valid_keys = {KEY}
    chat = await mesh.stub.CreateChat(chat_pb2.CreateChatRequest(), metadata=user.md)
    events = await mesh.send(user, chat.id, "Привет")
    check_stream(events)
    error = events[-1].error
    assert (error.code, error.reason, error.retryable) == (9, "PROVIDER_KEY_INVALID", False)
    assert "Ключ Gemini API" in error.message and "WRONG" not in error.message
    stored = await mesh.messages(user, chat.id)
    assert [m.status for m in stored] == [
        chat_pb2.MESSAGE_STATUS_COMPLETE,
        chat_pb2.MESSAGE_STATUS_ERROR,
    ]
    assert stored[0].content == "Привет" and stored[1].error.reason == "PROVIDER_KEY_INVALID"


async def test_429_is_retried_then_resource_exhausted(mesh: Mesh, gemini: GeminiServer) -> None:
    user = await mesh.new_user(KEY)
    chat = await mesh.stub.CreateChat(chat_pb2.CreateChatRequest(), metadata=user.md)
    gemini.script(Reply.rate_limited(), Reply.rate_limited(), Reply.text("После ретраев"))
    events = await mesh.send(user, chat.id, "Раз")
    assert events[-1].final.message.content == "После ретраев"
    assert len(gemini.requests) == 3
    gemini.reset()
    gemini.script(Reply.rate_limited(), Reply.rate_limited(), Reply.rate_limited())
    events = await mesh.send(user, chat.id, "Два")
    check_stream(events)
    error = events[-1].error
    assert (error.code, error.reason, error.retryable) == (8, "PROVIDER_RATE_LIMITED", True)
    assert len(gemini.requests) == 3  # provider_retry_attempts
    stored = await mesh.messages(user, chat.id)
    assert stored[-1].status == chat_pb2.MESSAGE_STATUS_ERROR
    assert stored[-2].content == "Два"


@pytest.mark.parametrize("drop", [False, True])
async def test_failure_mid_stream_keeps_partial_answer(
    mesh: Mesh, gemini: GeminiServer, drop: bool
) -> None:
    user = await mesh.new_user(KEY)
    chat = await mesh.stub.CreateChat(chat_pb2.CreateChatRequest(), metadata=user.md)
    gemini.script(Reply.tokens(["Начало ", "ответа ", "потеряно"], fail_after=2, drop=drop))
    events = await mesh.send(user, chat.id, "Вопрос")
    check_stream(events)
    assert [e.llm_token.text for e in events if e.HasField("llm_token")] == ["Начало ", "ответа "]
    error = events[-1].error
    assert (error.code, error.reason, error.retryable) == (14, "PROVIDER_UNAVAILABLE", True)
    assert len(gemini.requests) == 1  # no retry once tokens were sent
    stored = (await mesh.messages(user, chat.id))[-1]
    assert stored.status == chat_pb2.MESSAGE_STATUS_INCOMPLETE
    assert stored.content == "Начало ответа "
    assert stored.error.reason == "PROVIDER_UNAVAILABLE"


async def test_cancel_turn_stops_and_stores_incomplete(mesh: Mesh, gemini: GeminiServer) -> None:
    user = await mesh.new_user(KEY)
    chat = await mesh.stub.CreateChat(chat_pb2.CreateChatRequest(), metadata=user.md)
    gemini.script(Reply.tokens(["Часть ", "ответа"], hang=True))
    call = mesh.stub.SendMessage(
        chat_pb2.SendMessageRequest(chat_id=chat.id, text="Долгий вопрос"), metadata=user.md
    )
    seen = []
    async for event in call:
        seen.append(event)
        if sum(1 for e in seen if e.HasField("llm_token")) == 2:
            break
    # While the turn runs: the partial answer is listed IN_PROGRESS, and a second
    # SendMessage is refused.
    for _ in range(100):
        running = (await mesh.messages(user, chat.id))[-1]
        if running.content == "Часть ответа":
            break
        await asyncio.sleep(0.05)
    assert running.status == chat_pb2.MESSAGE_STATUS_IN_PROGRESS
    assert running.content == "Часть ответа" and running.id == seen[0].message_id
    assert (
        await code_of(
            mesh.stub.SendMessage(
                chat_pb2.SendMessageRequest(chat_id=chat.id, text="Второй"), metadata=user.md
            )
        )
        == grpc.StatusCode.FAILED_PRECONDITION
    )
    await mesh.stub.CancelTurn(
        chat_pb2.CancelTurnRequest(chat_id=chat.id, turn_id=seen[0].message_id),
        metadata=user.md,
    )
    # The stream ends with the terminal `error` CANCELLED, seq without gaps.
    seen += [event async for event in call]
    assert [e.seq for e in seen] == list(range(1, len(seen) + 1))
    assert seen[-1].error.reason == "CANCELLED" and not seen[-1].error.retryable
    stored = await mesh.wait_settled(user, chat.id)
    assert [m.content for m in stored] == ["Долгий вопрос", "Часть ответа"]
    assert stored[-1].status == chat_pb2.MESSAGE_STATUS_INCOMPLETE
    assert stored[-1].error.reason == "CANCELLED"
    for _ in range(50):
        if gemini.disconnects:
            break
        await asyncio.sleep(0.05)
    assert gemini.disconnects == 1  # the provider stream was closed
    assert len(gemini.requests) == 1  # no further LLM call
    # The chat takes a new turn afterwards.
    gemini.script(Reply.text("Снова"))
    events = await mesh.send(user, chat.id, "Ещё раз")
    assert events[-1].final.message.content == "Снова"


async def test_bad_input_before_acceptance(mesh: Mesh, gemini: GeminiServer) -> None:
    user = await mesh.new_user(KEY)
    chat = await mesh.stub.CreateChat(chat_pb2.CreateChatRequest(), metadata=user.md)
    for text in ("", "   "):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await mesh.send(user, chat.id, text)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    await mesh.system(limits_max_message_chars=10)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await mesh.send(user, chat.id, "x" * 11)
    finally:
        await mesh.system(limits_max_message_chars=20000)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await mesh.send(user, "not-a-uuid", "x")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert await mesh.messages(user, chat.id) == []


async def test_complex_flash_collects_images_for_pro(mesh: Mesh, gemini: GeminiServer) -> None:
    user = await mesh.new_user(KEY)
    chat = await mesh.chat_with_document(user)
    gemini.script(
        Reply.call("request_images", {"block_ids": ["b-drawing"]}),
        Reply.text("b-drawing: красный узел на странице 1."),
        Reply.tokens(["Узел ", "красный."]),
    )
    events = await mesh.send(
        user, chat.id, "Какого цвета узел?", model_profile=chat_pb2.MODEL_PROFILE_COMPLEX
    )
    check_stream(events)
    flash1, flash2, pro = gemini.requests
    assert [flash1.model, flash2.model, pro.model] == [
        "gemini-2.5-flash",
        "gemini-2.5-flash",
        "gemini-2.5-pro",
    ]
    assert flash1.function_names == ["request_images", "zoom"] and pro.function_names == []
    # The pro stage gets the crop the flash stage asked for, and its notes.
    assert len(pro.inline_images()) == 1
    assert _red_share(_image(pro.inline_images()[0][1])) > 0.7
    assert any("красный узел на странице 1" in t for t in pro.texts())
    assert pro.texts()[-1].endswith("Какого цвета узел?")
    phases = [e.phase_started.phase for e in events if e.HasField("phase_started")]
    assert (
        phases.count(chat_pb2.PHASE_FLASH_CALL) == 2 and phases.count(chat_pb2.PHASE_PRO_CALL) == 1
    )
    final = events[-1].final.message
    assert final.content == "Узел красный." and len(final.images) == 1


async def test_turn_cut_short_by_a_crash_does_not_block_the_chat(
    mesh: Mesh, gemini: GeminiServer
) -> None:
    import uuid as _uuid

    user = await mesh.new_user(KEY)
    chat = await mesh.stub.CreateChat(chat_pb2.CreateChatRequest(), metadata=user.md)
    store = mesh.chat.spec.deps.store  # type: ignore[attr-defined]
    # A running answer whose replica died long ago (stale heartbeat).
    await store.pool.execute(
        """INSERT INTO messages (id, chat_id, role, status, content, heartbeat_time)
           VALUES ($1, $2, 2, 4, 'обрыв', now() - interval '1 hour')""",
        _uuid.uuid4(),
        _uuid.UUID(chat.id),
    )
    events = await mesh.send(user, chat.id, "Снова")
    assert events[-1].HasField("final")
    stored = await mesh.messages(user, chat.id)
    assert (stored[0].content, stored[0].status) == (
        "обрыв",
        chat_pb2.MESSAGE_STATUS_INCOMPLETE,
    )


async def test_cancel_right_after_acceptance(mesh: Mesh, gemini: GeminiServer) -> None:
    user = await mesh.new_user(KEY)
    chat = await mesh.stub.CreateChat(chat_pb2.CreateChatRequest(), metadata=user.md)
    gemini.script(Reply.tokens(["поздно"], start_delay=2.0, hang=True))
    call = mesh.stub.SendMessage(
        chat_pb2.SendMessageRequest(chat_id=chat.id, text="Отмена"), metadata=user.md
    )
    async for event in call:
        assert event.HasField("accepted")
        break
    await mesh.stub.CancelTurn(
        chat_pb2.CancelTurnRequest(chat_id=chat.id, turn_id=event.message_id), metadata=user.md
    )
    rest = [e async for e in call]
    assert rest[-1].error.reason == "CANCELLED"
    stored = await mesh.wait_settled(user, chat.id)
    assert [(m.content, m.status) for m in stored] == [
        ("Отмена", chat_pb2.MESSAGE_STATUS_COMPLETE),
        ("", chat_pb2.MESSAGE_STATUS_INCOMPLETE),
    ]
    assert stored[1].error.reason == "CANCELLED"


async def test_second_turn_while_one_runs_is_turn_in_progress(
    mesh: Mesh, gemini: GeminiServer
) -> None:
    user = await mesh.new_user(KEY)
    chat = await mesh.stub.CreateChat(chat_pb2.CreateChatRequest(), metadata=user.md)
    gemini.script(Reply.tokens(["Идёт"], hang=True))
    call = mesh.stub.SendMessage(
        chat_pb2.SendMessageRequest(chat_id=chat.id, text="Первый"), metadata=user.md
    )
    async for event in call:
        if event.HasField("llm_token"):
            break
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await mesh.send(user, chat.id, "Второй")
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert reason(info.value) == "TURN_IN_PROGRESS"
    assert "ещё формируется" in localized(info.value).message
    await mesh.stub.CancelTurn(
        chat_pb2.CancelTurnRequest(chat_id=chat.id, turn_id=event.message_id), metadata=user.md
    )
    call.cancel()
    stored = await mesh.wait_settled(user, chat.id)
    assert [m.content for m in stored] == ["Первый", "Идёт"]  # nothing of the second
    # The database lock itself: a running answer without a heartbeat is not seen as a
    # live turn by the context check, yet the unique index refuses a second one.
    import uuid as _uuid

    await mesh.chat.pool.execute(
        "INSERT INTO messages (id, chat_id, role, status) VALUES ($1, $2, $3, $4)",
        _uuid.uuid4(),
        _uuid.UUID(chat.id),
        chat_pb2.MESSAGE_ROLE_ASSISTANT,
        chat_pb2.MESSAGE_STATUS_IN_PROGRESS,
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await mesh.send(user, chat.id, "Третий")
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert reason(info.value) == "TURN_IN_PROGRESS"
    assert [m.content for m in await mesh.messages(user, chat.id)][:2] == ["Первый", "Идёт"]
    assert len(await mesh.messages(user, chat.id)) == 3


async def test_a_turn_asks_rag_once(mesh: Mesh, gemini: GeminiServer) -> None:
    """The hits carry their blocks and page images: a turn makes one Search and no
    GetDocument, cropping included, in both profiles. Only a zoom asks for the document
    (its source PDF, which no hit names), once."""
    user = await mesh.new_user(KEY)
    rag = mesh.rag
    for profile in (chat_pb2.MODEL_PROFILE_SIMPLE, chat_pb2.MODEL_PROFILE_COMPLEX):
        # A first question each time (a follow-up would add the query rewrite call).
        chat = await mesh.chat_with_document(user)
        searches, documents = rag.count("Search"), rag.count("GetDocument")
        gemini.reset()
        gemini.script(
            Reply.call("request_images", {"block_ids": ["b-drawing", "b-text"]}),
            *(
                [Reply.text("b-drawing: узел.")]
                if profile == chat_pb2.MODEL_PROFILE_COMPLEX
                else []
            ),
            Reply.text("Ответ."),
        )
        events = await mesh.send(user, chat.id, "Что на чертеже?", model_profile=profile)
        assert events[-1].HasField("final"), events[-1]
        assert len(events[-1].final.message.images) == 2  # both crops were made
        assert len(events[-1].final.message.search_results) == 3
        assert rag.count("Search") - searches == 1
        assert rag.count("GetDocument") - documents == 0
    searches, documents = rag.count("Search"), rag.count("GetDocument")
    gemini.reset()
    box = {"left": 0.2, "top": 0.45, "right": 0.3, "bottom": 0.5}
    gemini.script(
        Reply.call("zoom", {"page": 1, "box": box, "scale": 2}),
        Reply.call("zoom", {"page": 1, "box": box, "scale": 3}),
        Reply.text("Ответ."),
    )
    chat = await mesh.chat_with_document(user)
    events = await mesh.send(user, chat.id, "Увеличь")
    assert [i.kind for i in events[-1].final.message.images] == [chat_pb2.IMAGE_KIND_ZOOM] * 2
    assert rag.count("Search") - searches == 1
    assert rag.count("GetDocument") - documents == 1
