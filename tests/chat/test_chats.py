"""Chats, messages, attachments, settings, roles and prompt administration."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2

from aivera.chat.v1 import chat_pb2
from aivera.storage.v1 import storage_pb2
from tests.chat.conftest import Mesh, code_of
from tests.chat.fakes import make_pdf, upload
from tests.helpers.errors import bad_field, reason
from tests.helpers.gemini import GeminiServer, Reply

KEY = "AIzaSyTEST0000000000000000000000000002"


def mask(*paths: str) -> field_mask_pb2.FieldMask:
    return field_mask_pb2.FieldMask(paths=list(paths))


async def test_chat_crud_and_listing(mesh: Mesh) -> None:
    user = await mesh.new_user()
    stub = mesh.stub
    chats = []
    for n in range(5):
        chats.append(
            await stub.CreateChat(chat_pb2.CreateChatRequest(title=f"Чат {n}"), metadata=user.md)
        )
    got = await stub.GetChat(chat_pb2.GetChatRequest(id=chats[0].id), metadata=user.md)
    assert got.title == "Чат 0" and not got.archived and got.create_time.seconds > 0
    # Newest first, paged.
    page1 = await stub.ListChats(chat_pb2.ListChatsRequest(page_size=3), metadata=user.md)
    page2 = await stub.ListChats(
        chat_pb2.ListChatsRequest(page_size=3, page_token=page1.next_page_token), metadata=user.md
    )
    assert [c.title for c in [*page1.chats, *page2.chats]] == [f"Чат {n}" for n in range(4, -1, -1)]
    assert page2.next_page_token == ""
    # Archive, rename.
    updated = await stub.UpdateChat(
        chat_pb2.UpdateChatRequest(
            chat=chat_pb2.Chat(id=chats[1].id, archived=True, title="Архив"),
            update_mask=mask("archived", "title"),
        ),
        metadata=user.md,
    )
    assert updated.archived and updated.title == "Архив"
    active = await stub.ListChats(chat_pb2.ListChatsRequest(), metadata=user.md)
    archived = await stub.ListChats(
        chat_pb2.ListChatsRequest(archived_filter=chat_pb2.ARCHIVED_FILTER_ARCHIVED),
        metadata=user.md,
    )
    everything = await stub.ListChats(
        chat_pb2.ListChatsRequest(archived_filter=chat_pb2.ARCHIVED_FILTER_ALL), metadata=user.md
    )
    assert chats[1].id not in {c.id for c in active.chats}
    assert [c.id for c in archived.chats] == [chats[1].id]
    assert len(everything.chats) == 5
    # Bad updates.
    for request in (
        chat_pb2.UpdateChatRequest(chat=chat_pb2.Chat(id=chats[0].id, title="x")),
        chat_pb2.UpdateChatRequest(chat=chat_pb2.Chat(id=chats[0].id), update_mask=mask("title")),
        chat_pb2.UpdateChatRequest(
            chat=chat_pb2.Chat(id=chats[0].id, clone_id="x"), update_mask=mask("clone_id")
        ),
    ):
        assert await code_of(stub.UpdateChat(request, metadata=user.md)) == (
            grpc.StatusCode.INVALID_ARGUMENT
        )
    assert (
        await code_of(
            stub.CreateChat(chat_pb2.CreateChatRequest(title="x" * 201), metadata=user.md)
        )
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    # Delete.
    await stub.DeleteChat(chat_pb2.DeleteChatRequest(id=chats[2].id), metadata=user.md)
    assert (
        await code_of(stub.GetChat(chat_pb2.GetChatRequest(id=chats[2].id), metadata=user.md))
        == grpc.StatusCode.NOT_FOUND
    )
    assert (
        await code_of(stub.DeleteChat(chat_pb2.DeleteChatRequest(id=chats[2].id), metadata=user.md))
        == grpc.StatusCode.NOT_FOUND
    )
    listed = await stub.ListChats(
        chat_pb2.ListChatsRequest(archived_filter=chat_pb2.ARCHIVED_FILTER_ALL), metadata=user.md
    )
    assert chats[2].id not in {c.id for c in listed.chats}
    # A knowledge base of another user is NOT_FOUND at creation.
    other = await mesh.new_user()
    kb = mesh.rag.add_kb(other.id)
    assert (
        await code_of(
            stub.CreateChat(chat_pb2.CreateChatRequest(knowledge_base_ids=[kb]), metadata=user.md)
        )
        == grpc.StatusCode.NOT_FOUND
    )


async def test_messages_paging_and_activity_order(mesh: Mesh, gemini: GeminiServer) -> None:
    user = await mesh.new_user(KEY)
    first = await mesh.stub.CreateChat(chat_pb2.CreateChatRequest(title="A"), metadata=user.md)
    second = await mesh.stub.CreateChat(chat_pb2.CreateChatRequest(title="B"), metadata=user.md)
    for n in range(3):
        gemini.script(Reply.text(f"ответ {n}"))
        await mesh.send(user, first.id, f"вопрос {n}")
    listed = await mesh.stub.ListChats(chat_pb2.ListChatsRequest(), metadata=user.md)
    assert [c.id for c in listed.chats][:2] == [first.id, second.id]  # activity first
    assert listed.chats[0].last_message_time.seconds > 0
    texts = []
    token = ""
    while True:
        page = await mesh.stub.ListMessages(
            chat_pb2.ListMessagesRequest(chat_id=first.id, page_size=4, page_token=token),
            metadata=user.md,
        )
        texts += [m.content for m in page.messages]
        token = page.next_page_token
        if not token:
            break
    expected = [x for n in range(3) for x in (f"вопрос {n}", f"ответ {n}")]
    assert texts == expected
    tail = await mesh.stub.ListMessages(
        chat_pb2.ListMessagesRequest(
            chat_id=first.id, page_size=4, order=chat_pb2.MESSAGE_ORDER_TAIL
        ),
        metadata=user.md,
    )
    assert [m.content for m in tail.messages] == expected[2:]
    older = await mesh.stub.ListMessages(
        chat_pb2.ListMessagesRequest(
            chat_id=first.id,
            page_size=4,
            order=chat_pb2.MESSAGE_ORDER_TAIL,
            page_token=tail.next_page_token,
        ),
        metadata=user.md,
    )
    assert [m.content for m in older.messages] == expected[:2] and not older.next_page_token
    assert (
        await code_of(
            mesh.stub.ListMessages(
                chat_pb2.ListMessagesRequest(chat_id=first.id, page_token="garbage!"),
                metadata=user.md,
            )
        )
        == grpc.StatusCode.INVALID_ARGUMENT
    )


async def test_settings(mesh: Mesh) -> None:
    user = await mesh.new_user()
    stub = mesh.stub
    settings = await stub.GetSettings(chat_pb2.GetSettingsRequest(), metadata=user.md)
    assert settings.model_profile == chat_pb2.MODEL_PROFILE_SIMPLE
    assert settings.selected_role_prompt_id == "" and not settings.HasField("update_time")
    roles = (await stub.ListRoles(chat_pb2.ListRolesRequest(), metadata=user.md)).roles
    assert {"инженер", "экономист", "инженер по гарантии"} <= {r.name for r in roles}
    economist = next(r for r in roles if r.name == "экономист")
    updated = await stub.UpdateSettings(
        chat_pb2.UpdateSettingsRequest(
            settings=chat_pb2.UserSettings(
                model_profile=chat_pb2.MODEL_PROFILE_COMPLEX, selected_role_prompt_id=economist.id
            ),
            update_mask=mask("model_profile", "selected_role_prompt_id"),
        ),
        metadata=user.md,
    )
    assert updated.model_profile == chat_pb2.MODEL_PROFILE_COMPLEX
    assert updated.selected_role_prompt_id == economist.id and updated.HasField("update_time")
    # Only the role, then clearing it.
    cleared = await stub.UpdateSettings(
        chat_pb2.UpdateSettingsRequest(
            settings=chat_pb2.UserSettings(), update_mask=mask("selected_role_prompt_id")
        ),
        metadata=user.md,
    )
    assert cleared.selected_role_prompt_id == ""
    assert cleared.model_profile == chat_pb2.MODEL_PROFILE_COMPLEX
    for request, code in (
        (chat_pb2.UpdateSettingsRequest(settings=chat_pb2.UserSettings()), "INVALID_ARGUMENT"),
        (
            chat_pb2.UpdateSettingsRequest(
                settings=chat_pb2.UserSettings(), update_mask=mask("model_profile")
            ),
            "INVALID_ARGUMENT",
        ),
        (
            chat_pb2.UpdateSettingsRequest(
                settings=chat_pb2.UserSettings(), update_mask=mask("update_time")
            ),
            "INVALID_ARGUMENT",
        ),
        (
            chat_pb2.UpdateSettingsRequest(
                settings=chat_pb2.UserSettings(
                    selected_role_prompt_id="00000000-0000-0000-0000-000000000000"
                ),
                update_mask=mask("selected_role_prompt_id"),
            ),
            "NOT_FOUND",
        ),
    ):
        assert (await code_of(stub.UpdateSettings(request, metadata=user.md))).name == code


async def test_role_prompts_admin(mesh: Mesh) -> None:
    admin = await mesh.admin_user()
    user = await mesh.new_user()
    stub = mesh.admin_stub
    role = await stub.CreateRolePrompt(
        chat_pb2.CreateRolePromptRequest(name="юрист", content="Ты юрист.", description="право"),
        metadata=admin.md,
    )
    assert role.version == 1 and role.is_active
    assert (
        await code_of(
            stub.CreateRolePrompt(
                chat_pb2.CreateRolePromptRequest(name="юрист", content="x"), metadata=admin.md
            )
        )
        == grpc.StatusCode.ALREADY_EXISTS
    )
    assert (
        await code_of(
            stub.CreateRolePrompt(
                chat_pb2.CreateRolePromptRequest(name="", content="x"), metadata=admin.md
            )
        )
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    await mesh.stub.UpdateSettings(
        chat_pb2.UpdateSettingsRequest(
            settings=chat_pb2.UserSettings(selected_role_prompt_id=role.id),
            update_mask=mask("selected_role_prompt_id"),
        ),
        metadata=user.md,
    )
    same = await stub.UpdateRolePrompt(
        chat_pb2.UpdateRolePromptRequest(
            role_prompt=chat_pb2.RolePrompt(id=role.id, content="Ты юрист."),
            update_mask=mask("content"),
        ),
        metadata=admin.md,
    )
    assert same.version == 1
    changed = await stub.UpdateRolePrompt(
        chat_pb2.UpdateRolePromptRequest(
            role_prompt=chat_pb2.RolePrompt(id=role.id, content="Ты опытный юрист."),
            update_mask=mask("content"),
        ),
        metadata=admin.md,
    )
    assert changed.version == 2 and changed.id == role.id
    # Deactivated: users no longer see it, and their selection reads as no role.
    await stub.UpdateRolePrompt(
        chat_pb2.UpdateRolePromptRequest(
            role_prompt=chat_pb2.RolePrompt(id=role.id, is_active=False),
            update_mask=mask("is_active"),
        ),
        metadata=admin.md,
    )
    roles = (await mesh.stub.ListRoles(chat_pb2.ListRolesRequest(), metadata=user.md)).roles
    assert "юрист" not in {r.name for r in roles}
    settings = await mesh.stub.GetSettings(chat_pb2.GetSettingsRequest(), metadata=user.md)
    assert settings.selected_role_prompt_id == ""
    every = await stub.ListRolePrompts(chat_pb2.ListRolePromptsRequest(), metadata=admin.md)
    assert "юрист" in {r.name for r in every.role_prompts}
    assert (
        await code_of(
            stub.UpdateRolePrompt(
                chat_pb2.UpdateRolePromptRequest(
                    role_prompt=chat_pb2.RolePrompt(id=role.id, name="инженер"),
                    update_mask=mask("name"),
                ),
                metadata=admin.md,
            )
        )
        == grpc.StatusCode.ALREADY_EXISTS
    )


async def test_system_prompt_versions_and_rollback(mesh: Mesh) -> None:
    admin = await mesh.admin_user()
    stub = mesh.admin_stub
    name = chat_pb2.SYSTEM_PROMPT_NAME_HTML_OCR
    active = (
        await stub.ListSystemPrompts(
            chat_pb2.ListSystemPromptsRequest(name=name), metadata=admin.md
        )
    ).system_prompts
    assert len(active) == 1 and active[0].is_active and active[0].version == 1
    draft = await stub.CreateSystemPromptVersion(
        chat_pb2.CreateSystemPromptVersionRequest(name=name, content="Черновик"), metadata=admin.md
    )
    assert draft.version == 2 and not draft.is_active
    live = await stub.CreateSystemPromptVersion(
        chat_pb2.CreateSystemPromptVersionRequest(name=name, content="Новая", activate=True),
        metadata=admin.md,
    )
    assert live.version == 3 and live.is_active
    versions = (
        await stub.ListSystemPrompts(
            chat_pb2.ListSystemPromptsRequest(name=name, include_all_versions=True),
            metadata=admin.md,
        )
    ).system_prompts
    assert [(v.version, v.is_active) for v in versions] == [(3, True), (2, False), (1, False)]
    rolled = await stub.ActivateSystemPrompt(
        chat_pb2.ActivateSystemPromptRequest(id=active[0].id), metadata=admin.md
    )
    assert rolled.version == 1 and rolled.is_active
    versions = (
        await stub.ListSystemPrompts(
            chat_pb2.ListSystemPromptsRequest(name=name, include_all_versions=True),
            metadata=admin.md,
        )
    ).system_prompts
    assert [v.version for v in versions if v.is_active] == [1]
    all_active = (
        await stub.ListSystemPrompts(chat_pb2.ListSystemPromptsRequest(), metadata=admin.md)
    ).system_prompts
    assert len(all_active) == 4
    for request in (
        chat_pb2.CreateSystemPromptVersionRequest(content="x"),
        chat_pb2.CreateSystemPromptVersionRequest(name=name, content=""),
        chat_pb2.CreateSystemPromptVersionRequest(name=name, content="x" * 100_001),
    ):
        assert await code_of(stub.CreateSystemPromptVersion(request, metadata=admin.md)) == (
            grpc.StatusCode.INVALID_ARGUMENT
        )
    assert (
        await code_of(
            stub.ActivateSystemPrompt(
                chat_pb2.ActivateSystemPromptRequest(id="00000000-0000-0000-0000-000000000000"),
                metadata=admin.md,
            )
        )
        == grpc.StatusCode.NOT_FOUND
    )


async def test_system_settings_validation(mesh: Mesh) -> None:
    admin = await mesh.admin_user()
    current = await mesh.admin_stub.GetSystemSettings(
        chat_pb2.GetSystemSettingsRequest(), metadata=admin.md
    )
    assert current.flash_model == "gemini-2.5-flash" and current.limits.max_tool_iterations > 0
    bad = [
        (chat_pb2.SystemSettings(flash_model="gpt-4"), ["flash_model"]),
        (chat_pb2.SystemSettings(limits=chat_pb2.ChatLimits()), ["limits"]),
        (chat_pb2.SystemSettings(), ["limits.max_zooms_per_turn"]),
        (chat_pb2.SystemSettings(), ["update_time"]),
        (chat_pb2.SystemSettings(allowed_models=["x"]), ["allowed_models"]),
    ]
    for settings, paths in bad:
        assert (
            await code_of(
                mesh.admin_stub.UpdateSystemSettings(
                    chat_pb2.UpdateSystemSettingsRequest(
                        settings=settings, update_mask=mask(*paths)
                    ),
                    metadata=admin.md,
                )
            )
            == grpc.StatusCode.INVALID_ARGUMENT
        )
    changed = await mesh.system(limits_max_zooms_per_turn=3)
    assert changed.limits.max_zooms_per_turn == 3 and changed.HasField("update_time")
    await mesh.system(limits_max_zooms_per_turn=8)


async def test_admin_rpcs_are_permission_denied_for_users(mesh: Mesh) -> None:
    user = await mesh.new_user()
    stub = mesh.admin_stub
    calls = [
        stub.ListSystemPrompts(chat_pb2.ListSystemPromptsRequest(), metadata=user.md),
        stub.CreateSystemPromptVersion(
            chat_pb2.CreateSystemPromptVersionRequest(
                name=chat_pb2.SYSTEM_PROMPT_NAME_LLM_SYSTEM, content="x"
            ),
            metadata=user.md,
        ),
        stub.ActivateSystemPrompt(chat_pb2.ActivateSystemPromptRequest(id="x"), metadata=user.md),
        stub.ListRolePrompts(chat_pb2.ListRolePromptsRequest(), metadata=user.md),
        stub.CreateRolePrompt(
            chat_pb2.CreateRolePromptRequest(name="x", content="x"), metadata=user.md
        ),
        stub.UpdateRolePrompt(chat_pb2.UpdateRolePromptRequest(), metadata=user.md),
        stub.GetSystemSettings(chat_pb2.GetSystemSettingsRequest(), metadata=user.md),
        stub.UpdateSystemSettings(chat_pb2.UpdateSystemSettingsRequest(), metadata=user.md),
    ]
    for call in calls:
        assert await code_of(call) == grpc.StatusCode.PERMISSION_DENIED
    assert (
        await code_of(mesh.stub.ListChats(chat_pb2.ListChatsRequest()))
        == grpc.StatusCode.UNAUTHENTICATED
    )


async def test_another_users_chat_is_not_found_everywhere(mesh: Mesh, gemini: GeminiServer) -> None:
    owner = await mesh.new_user(KEY)
    intruder = await mesh.new_user(KEY)
    chat = await mesh.chat_with_document(owner)
    await mesh.send(owner, chat.id, "Секрет")
    pdf = await upload(
        mesh.storage_stub, make_pdf(), "x.pdf", storage_pb2.BUCKET_DOCUMENTS, intruder.md
    )
    stub, md = mesh.stub, intruder.md
    calls = [
        stub.GetChat(chat_pb2.GetChatRequest(id=chat.id), metadata=md),
        stub.UpdateChat(
            chat_pb2.UpdateChatRequest(
                chat=chat_pb2.Chat(id=chat.id, title="взлом"), update_mask=mask("title")
            ),
            metadata=md,
        ),
        stub.DeleteChat(chat_pb2.DeleteChatRequest(id=chat.id), metadata=md),
        stub.ListMessages(chat_pb2.ListMessagesRequest(chat_id=chat.id), metadata=md),
        stub.SendMessage(chat_pb2.SendMessageRequest(chat_id=chat.id, text="x"), metadata=md),
        stub.AttachFile(chat_pb2.AttachFileRequest(chat_id=chat.id, file_id=pdf), metadata=md),
        stub.CreateChat(
            chat_pb2.CreateChatRequest(knowledge_base_ids=list(chat.knowledge_base_ids)),
            metadata=md,
        ),
    ]
    for call in calls:
        assert await code_of(call) == grpc.StatusCode.NOT_FOUND
    listed = await stub.ListChats(
        chat_pb2.ListChatsRequest(archived_filter=chat_pb2.ARCHIVED_FILTER_ALL), metadata=md
    )
    assert chat.id not in {c.id for c in listed.chats}
    # The owner's chat is untouched.
    assert (await mesh.messages(owner, chat.id))[0].content == "Секрет"
    # And the owner cannot attach the intruder's file.
    assert (
        await code_of(
            mesh.stub.AttachFile(
                chat_pb2.AttachFileRequest(chat_id=chat.id, file_id=pdf), metadata=owner.md
            )
        )
        == grpc.StatusCode.NOT_FOUND
    )


async def test_attachments(mesh: Mesh, gemini: GeminiServer) -> None:
    user = await mesh.new_user(KEY)
    chat = await mesh.stub.CreateChat(chat_pb2.CreateChatRequest(), metadata=user.md)
    pdf = await upload(
        mesh.storage_stub, make_pdf(), "a.pdf", storage_pb2.BUCKET_DOCUMENTS, user.md
    )
    attachment = await mesh.stub.AttachFile(
        chat_pb2.AttachFileRequest(chat_id=chat.id, file_id=pdf), metadata=user.md
    )
    assert attachment.status == chat_pb2.ATTACHMENT_STATUS_INGESTING
    assert attachment.filename == "a.pdf"
    again = await mesh.stub.AttachFile(
        chat_pb2.AttachFileRequest(chat_id=chat.id, file_id=pdf), metadata=user.md
    )
    assert again.id == attachment.id
    for _ in range(100):
        got = await mesh.stub.GetChat(chat_pb2.GetChatRequest(id=chat.id), metadata=user.md)
        if got.attachments[0].status != chat_pb2.ATTACHMENT_STATUS_INGESTING:
            break
        await asyncio.sleep(0.05)
    assert got.attachments[0].status == chat_pb2.ATTACHMENT_STATUS_READY
    assert got.attachments[0].document_id
    assert got.attachments_knowledge_base_id
    # The chat's own knowledge base is searched by turns.
    await mesh.send(user, chat.id, "Что в файле?")
    assert mesh.rag.searches[-1][0] == [got.attachments_knowledge_base_id]
    # A file sent with a message is attached and waited for; a failed one is a warning.
    bad = await upload(
        mesh.storage_stub, make_pdf(), "b.pdf", storage_pb2.BUCKET_DOCUMENTS, user.md
    )
    mesh.rag.ingest_fail.add(bad)
    events = await mesh.send(user, chat.id, "А в этом?", file_ids=[bad])
    warnings = [e.warning for e in events if e.HasField("warning")]
    assert [w.code for w in warnings] == ["FILE_UNREADABLE"] and "b.pdf" in warnings[0].message
    assert events[-1].HasField("final")
    assert list(events[0].accepted.user_message.file_ids) == [bad]
    got = await mesh.stub.GetChat(chat_pb2.GetChatRequest(id=chat.id), metadata=user.md)
    assert [a.status for a in got.attachments] == [
        chat_pb2.ATTACHMENT_STATUS_READY,
        chat_pb2.ATTACHMENT_STATUS_FAILED,
    ]
    # Unsupported type, unknown file, attachment limit.
    png = await upload(mesh.storage_stub, _png(), "p.png", storage_pb2.BUCKET_IMAGES, user.md)
    assert (
        await code_of(
            mesh.stub.AttachFile(
                chat_pb2.AttachFileRequest(chat_id=chat.id, file_id=png), metadata=user.md
            )
        )
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    assert (
        await code_of(
            mesh.stub.AttachFile(
                chat_pb2.AttachFileRequest(
                    chat_id=chat.id, file_id="00000000-0000-0000-0000-000000000000"
                ),
                metadata=user.md,
            )
        )
        == grpc.StatusCode.NOT_FOUND
    )
    await mesh.system(limits_max_attachments_per_chat=2)
    try:
        third = await upload(
            mesh.storage_stub, make_pdf(), "c.pdf", storage_pb2.BUCKET_DOCUMENTS, user.md
        )
        assert (
            await code_of(
                mesh.stub.AttachFile(
                    chat_pb2.AttachFileRequest(chat_id=chat.id, file_id=third), metadata=user.md
                )
            )
            == grpc.StatusCode.RESOURCE_EXHAUSTED
        )
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await mesh.send(user, chat.id, "x", file_ids=[third])
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        await mesh.system(limits_max_attachments_per_chat=20)


def _png() -> bytes:
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (4, 4), "white").save(out, format="PNG")
    return out.getvalue()


async def test_delete_chat_cancels_running_turn(mesh: Mesh, gemini: GeminiServer) -> None:
    user = await mesh.new_user(KEY)
    chat = await mesh.stub.CreateChat(chat_pb2.CreateChatRequest(), metadata=user.md)
    gemini.script(Reply.tokens(["Начато"], hang=True))
    call = mesh.stub.SendMessage(
        chat_pb2.SendMessageRequest(chat_id=chat.id, text="Долго"), metadata=user.md
    )
    events = []
    async for event in call:
        events.append(event)
        if event.HasField("llm_token"):
            break
    await mesh.stub.DeleteChat(chat_pb2.DeleteChatRequest(id=chat.id), metadata=user.md)
    rest = [e async for e in call]
    assert [e.WhichOneof("event") for e in rest][-1] == "error"
    assert rest[-1].error.reason == "CANCELLED"
    assert not any(e.HasField("final") for e in rest)
    for _ in range(100):
        if gemini.disconnects:
            break
        await asyncio.sleep(0.05)
    assert gemini.disconnects == 1


async def test_turn_lock_and_delete_hold_across_replicas(mesh: Mesh, gemini: GeminiServer) -> None:
    from aivera.chat.v1 import chat_pb2_grpc
    from services.chat.config import ChatSettings
    from services.chat.server import make_spec
    from tests.helpers.services import channel, running

    settings = mesh.chat.settings
    assert isinstance(settings, ChatSettings)
    user = await mesh.new_user(KEY)
    chat = await mesh.stub.CreateChat(chat_pb2.CreateChatRequest(), metadata=user.md)
    async with running(make_spec(settings), settings) as replica, channel(replica) as ch:
        other = chat_pb2_grpc.ChatServiceStub(ch)
        gemini.script(Reply.tokens(["Идёт"], hang=True))
        call = mesh.stub.SendMessage(
            chat_pb2.SendMessageRequest(chat_id=chat.id, text="Долго"), metadata=user.md
        )
        async for event in call:
            if event.HasField("llm_token"):
                break
        # The other replica refuses a second turn on the chat...
        assert (
            await code_of(
                other.SendMessage(
                    chat_pb2.SendMessageRequest(chat_id=chat.id, text="Параллельно"),
                    metadata=user.md,
                )
            )
            == grpc.StatusCode.FAILED_PRECONDITION
        )
        # ...and a delete there stops the turn here at its next flush.
        await other.DeleteChat(chat_pb2.DeleteChatRequest(id=chat.id), metadata=user.md)
        rest = [e async for e in call]
        assert rest[-1].error.reason == "CANCELLED"
    for _ in range(100):
        if gemini.disconnects:
            break
        await asyncio.sleep(0.05)
    assert gemini.disconnects == 1 and len(gemini.requests) == 1


async def _pages(call: Any, request: Any, field: str, md: Any) -> list[Any]:
    """Every item of a List RPC, page by page."""
    items: list[Any] = []
    while True:
        reply = await call(request, metadata=md)
        items += list(getattr(reply, field))
        if not reply.next_page_token:
            return items
        request.page_token = reply.next_page_token


async def test_page_tokens_are_scoped_to_caller_list_and_filter(
    mesh: Mesh, gemini: GeminiServer
) -> None:
    owner = await mesh.new_user(KEY)
    other = await mesh.new_user(KEY)
    first = await mesh.stub.CreateChat(chat_pb2.CreateChatRequest(title="1"), metadata=owner.md)
    second = await mesh.stub.CreateChat(chat_pb2.CreateChatRequest(title="2"), metadata=owner.md)
    theirs = await mesh.stub.CreateChat(chat_pb2.CreateChatRequest(), metadata=other.md)
    for text in ("а", "б"):
        gemini.script(Reply.text("ок"))
        await mesh.send(owner, first.id, text)
    chats = await mesh.stub.ListChats(chat_pb2.ListChatsRequest(page_size=1), metadata=owner.md)
    messages = await mesh.stub.ListMessages(
        chat_pb2.ListMessagesRequest(chat_id=first.id, page_size=1), metadata=owner.md
    )
    tail = await mesh.stub.ListMessages(
        chat_pb2.ListMessagesRequest(
            chat_id=first.id, page_size=1, order=chat_pb2.MESSAGE_ORDER_TAIL
        ),
        metadata=owner.md,
    )
    assert chats.next_page_token and messages.next_page_token and tail.next_page_token
    refused = [
        # Another user's tokens, on their own lists.
        mesh.stub.ListChats(
            chat_pb2.ListChatsRequest(page_token=chats.next_page_token), metadata=other.md
        ),
        mesh.stub.ListMessages(
            chat_pb2.ListMessagesRequest(chat_id=theirs.id, page_token=messages.next_page_token),
            metadata=other.md,
        ),
        # Another chat of the same user.
        mesh.stub.ListMessages(
            chat_pb2.ListMessagesRequest(chat_id=second.id, page_token=messages.next_page_token),
            metadata=owner.md,
        ),
        # The same chat in the other order, another archived filter, another List RPC.
        mesh.stub.ListMessages(
            chat_pb2.ListMessagesRequest(chat_id=first.id, page_token=tail.next_page_token),
            metadata=owner.md,
        ),
        mesh.stub.ListChats(
            chat_pb2.ListChatsRequest(
                page_token=chats.next_page_token, archived_filter=chat_pb2.ARCHIVED_FILTER_ALL
            ),
            metadata=owner.md,
        ),
        mesh.stub.ListRoles(
            chat_pb2.ListRolesRequest(page_token=chats.next_page_token), metadata=owner.md
        ),
        # A made-up one.
        mesh.stub.ListChats(chat_pb2.ListChatsRequest(page_token="garbage!"), metadata=owner.md),
    ]
    for call in refused:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert reason(info.value) == "INVALID_PAGE_TOKEN"
        assert bad_field(info.value) == "page_token"
    # The tokens work where they were issued.
    again = await mesh.stub.ListMessages(
        chat_pb2.ListMessagesRequest(
            chat_id=first.id, page_size=1, page_token=messages.next_page_token
        ),
        metadata=owner.md,
    )
    assert [m.content for m in again.messages] == ["ок"]


async def test_paging_is_stable_under_inserts(mesh: Mesh, gemini: GeminiServer) -> None:
    user = await mesh.new_user(KEY)
    stub = mesh.stub
    made = [
        await stub.CreateChat(chat_pb2.CreateChatRequest(title=f"Ч{n}"), metadata=user.md)
        for n in range(3)
    ]
    page1 = await stub.ListChats(chat_pb2.ListChatsRequest(page_size=2), metadata=user.md)
    await stub.CreateChat(chat_pb2.CreateChatRequest(title="новый"), metadata=user.md)
    page2 = await stub.ListChats(
        chat_pb2.ListChatsRequest(page_size=2, page_token=page1.next_page_token),
        metadata=user.md,
    )
    # Newest first: the chat created between the pages is ahead of the cursor, so it
    # neither shifts nor repeats the rest.
    assert [c.id for c in [*page1.chats, *page2.chats]] == [c.id for c in reversed(made)]
    assert not page2.next_page_token
    chat = made[0]
    for n in range(3):
        gemini.script(Reply.text(f"ответ {n}"))
        await mesh.send(user, chat.id, f"вопрос {n}")
    expected = [x for n in range(3) for x in (f"вопрос {n}", f"ответ {n}")]
    # Oldest first: a turn stored between pages shows up at the end, once.
    first = await stub.ListMessages(
        chat_pb2.ListMessagesRequest(chat_id=chat.id, page_size=4), metadata=user.md
    )
    gemini.script(Reply.text("ответ 3"))
    await mesh.send(user, chat.id, "вопрос 3")
    rest = await _pages(
        stub.ListMessages,
        chat_pb2.ListMessagesRequest(
            chat_id=chat.id, page_size=4, page_token=first.next_page_token
        ),
        "messages",
        user.md,
    )
    assert [m.content for m in [*first.messages, *rest]] == [*expected, "вопрос 3", "ответ 3"]
    # The tail: newer turns stored between pages do not shift the older pages.
    newest = await stub.ListMessages(
        chat_pb2.ListMessagesRequest(
            chat_id=chat.id, page_size=3, order=chat_pb2.MESSAGE_ORDER_TAIL
        ),
        metadata=user.md,
    )
    assert [m.content for m in newest.messages] == ["ответ 2", "вопрос 3", "ответ 3"]
    gemini.script(Reply.text("ответ 4"))
    await mesh.send(user, chat.id, "вопрос 4")
    older = await _pages(
        stub.ListMessages,
        chat_pb2.ListMessagesRequest(
            chat_id=chat.id,
            page_size=3,
            order=chat_pb2.MESSAGE_ORDER_TAIL,
            page_token=newest.next_page_token,
        ),
        "messages",
        user.md,
    )
    # Each tail page is chronological; pages go back in time.
    assert [m.content for m in older] == ["вопрос 1", "ответ 1", "вопрос 2", "вопрос 0", "ответ 0"]


async def test_prompt_lists_page_by_keyset(mesh: Mesh) -> None:
    admin = await mesh.admin_user()
    stub = mesh.admin_stub
    roles = await _pages(
        stub.ListRolePrompts, chat_pb2.ListRolePromptsRequest(page_size=1), "role_prompts", admin.md
    )
    whole = await stub.ListRolePrompts(chat_pb2.ListRolePromptsRequest(), metadata=admin.md)
    assert [r.id for r in roles] == [r.id for r in whole.role_prompts] and len(roles) >= 3
    user_roles = await _pages(
        mesh.stub.ListRoles, chat_pb2.ListRolesRequest(page_size=2), "roles", admin.md
    )
    assert [r.id for r in user_roles] == [r.id for r in whole.role_prompts if r.is_active]
    await stub.CreateSystemPromptVersion(
        chat_pb2.CreateSystemPromptVersionRequest(
            name=chat_pb2.SYSTEM_PROMPT_NAME_LLM_SYSTEM, content="Черновик"
        ),
        metadata=admin.md,
    )
    every = chat_pb2.ListSystemPromptsRequest(include_all_versions=True)
    paged = await _pages(
        stub.ListSystemPrompts,
        chat_pb2.ListSystemPromptsRequest(include_all_versions=True, page_size=1),
        "system_prompts",
        admin.md,
    )
    listed = (await stub.ListSystemPrompts(every, metadata=admin.md)).system_prompts
    assert [(p.name, p.version) for p in paged] == [(p.name, p.version) for p in listed]
    assert len(paged) >= 5
