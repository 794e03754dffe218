"""RPC handlers of aivera.chat.v1: validate, call the store or the domain (`Turns`,
`Attachments`), shape the answer. List RPCs page with signed keyset tokens
(services.common.pages) scoped to the RPC, the caller and the request's filters."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

from google.protobuf import empty_pb2

from aivera.chat.v1 import chat_pb2
from services.chat import convert
from services.chat.attachments import Attachments
from services.chat.clients import Clones, Documents
from services.chat.pipeline.runner import Turns
from services.chat.store import ChatRow, Store
from services.common import pages
from services.common.context import require_user_id
from services.common.errors import FailedPrecondition, InvalidArgument, not_found
from services.common.protoutil import mask_paths, parse_uuid

DEFAULT_TITLE = "Новый чат"
MAX_TITLE = 200
MAX_ROLE_NAME = 100
MAX_PROMPT = 100_000
MAX_SEARCH_QUERY = 500


def _title(value: str, *, allow_empty: bool) -> str:
    title = value.strip()
    if not title:
        if allow_empty:
            return DEFAULT_TITLE
        raise InvalidArgument("title must not be empty", field="chat.title")
    if len(title) > MAX_TITLE:
        raise InvalidArgument(f"title is longer than {MAX_TITLE} characters", field="title")
    return title


class ChatServiceServicer:
    def __init__(
        self,
        store: Store,
        turns: Turns,
        attachments: Attachments,
        documents: Documents,
        clones: Clones,
    ) -> None:
        self.store = store
        self.turns = turns
        self.attachments = attachments
        self.documents = documents
        self.clones = clones

    async def _chat(self, user_id: str, raw_id: str, field: str = "id") -> ChatRow:
        chat_id = parse_uuid(raw_id, field=field)
        row = await self.store.get_chat(user_id, chat_id)
        if row is None:
            raise not_found("chat", raw_id)
        return row

    async def CreateChat(self, request: chat_pb2.CreateChatRequest, context: Any) -> chat_pb2.Chat:
        user_id = require_user_id()
        title = _title(request.title, allow_empty=True)
        clone_id = str(parse_uuid(request.clone_id, field="clone_id")) if request.clone_id else ""
        kb_ids = list(
            dict.fromkeys(
                str(parse_uuid(k, field="knowledge_base_ids")) for k in request.knowledge_base_ids
            )
        )
        if clone_id:
            await self.clones.clone(clone_id)  # NOT_FOUND when not the caller's
        for kb_id in kb_ids:
            await self.documents.check_kb(kb_id)
        folder_id = await self._folder(user_id, request.folder_id, "folder_id")
        row = await self.store.create_chat(user_id, title, clone_id, kb_ids, folder_id)
        return convert.chat(row)

    async def _folder(self, user_id: str, raw_id: str, field: str) -> uuid.UUID | None:
        """The caller's folder of `raw_id`; None for an empty id; NOT_FOUND for another
        user's."""
        if not raw_id:
            return None
        folder = await self.store.get_folder(user_id, parse_uuid(raw_id, field=field))
        if folder is None:
            raise not_found("folder", raw_id)
        return folder.id

    async def GetChat(self, request: chat_pb2.GetChatRequest, context: Any) -> chat_pb2.Chat:
        row = await self._chat(require_user_id(), request.id)
        return convert.chat(row, await self.store.list_attachments(row.id))

    async def ListChats(
        self, request: chat_pb2.ListChatsRequest, context: Any
    ) -> chat_pb2.ListChatsResponse:
        user_id = require_user_id()
        archived = {
            chat_pb2.ARCHIVED_FILTER_ARCHIVED: True,
            chat_pb2.ARCHIVED_FILTER_ALL: None,
        }.get(request.archived_filter, False)
        page = pages.request(request.page_size, request.page_token, filter=f"archived={archived}")
        rows = await self.store.list_chats(user_id, archived, page)
        chats, token = pages.take(rows, page, key=lambda r: (r.activity, r.id))
        return chat_pb2.ListChatsResponse(
            chats=[convert.chat(r) for r in chats], next_page_token=token
        )

    async def UpdateChat(self, request: chat_pb2.UpdateChatRequest, context: Any) -> chat_pb2.Chat:
        user_id = require_user_id()
        paths = mask_paths(request.update_mask, ("title", "archived", "folder_id"))
        chat_id = parse_uuid(request.chat.id, field="chat.id")
        title = _title(request.chat.title, allow_empty=False) if "title" in paths else None
        archived = request.chat.archived if "archived" in paths else None
        folder: tuple[bool, uuid.UUID | None] = (False, None)
        if "folder_id" in paths:
            folder = (True, await self._folder(user_id, request.chat.folder_id, "chat.folder_id"))
        row = await self.store.update_chat(user_id, chat_id, title, archived, folder)
        if row is None:
            raise not_found("chat", request.chat.id)
        return convert.chat(row, await self.store.list_attachments(row.id))

    async def DeleteChat(
        self, request: chat_pb2.DeleteChatRequest, context: Any
    ) -> empty_pb2.Empty:
        user_id = require_user_id()
        chat_id = parse_uuid(request.id, field="id")
        if not await self.store.delete_chat(user_id, chat_id):
            raise not_found("chat", request.id)
        self.turns.stop(chat_id)
        return empty_pb2.Empty()

    async def ListMessages(
        self, request: chat_pb2.ListMessagesRequest, context: Any
    ) -> chat_pb2.ListMessagesResponse:
        chat = await self._chat(require_user_id(), request.chat_id, "chat_id")
        # The tail pages from the newest message back in time (keyset seq <), each page
        # shown in chronological order; oldest-first pages forward (seq >).
        tail = request.order == chat_pb2.MESSAGE_ORDER_TAIL
        page = pages.request(
            request.page_size,
            request.page_token,
            filter=(
                f"chat={chat.id};order={'tail' if tail else 'oldest'};"
                f"superseded={request.include_superseded}"
            ),
        )
        rows = await self.store.list_messages(
            chat.id, page, newest_first=tail, include_superseded=request.include_superseded
        )
        messages, token = pages.take(rows, page, key=lambda r: (r.seq,))
        if tail:
            messages.reverse()
        return chat_pb2.ListMessagesResponse(
            messages=[convert.message(r) for r in messages], next_page_token=token
        )

    async def SendMessage(
        self, request: chat_pb2.SendMessageRequest, context: Any
    ) -> AsyncIterator[chat_pb2.ChatEvent]:
        prepared = await self.turns.prepare(require_user_id(), request)
        stream = self.turns.run(prepared)
        try:
            async for event in stream:
                yield event
        finally:
            await stream.aclose()

    async def SearchMessages(
        self, request: chat_pb2.SearchMessagesRequest, context: Any
    ) -> chat_pb2.SearchMessagesResponse:
        user_id = require_user_id()
        query = request.query.strip()
        if not query:
            raise InvalidArgument("query must not be empty", field="query")
        if len(query) > MAX_SEARCH_QUERY:
            raise InvalidArgument(
                f"query is longer than {MAX_SEARCH_QUERY} characters", field="query"
            )
        chat_id = None
        if request.chat_id:
            chat_id = (await self._chat(user_id, request.chat_id, "chat_id")).id
        page = pages.request(
            request.page_size, request.page_token, filter=f"q={query};chat={chat_id or ''}"
        )
        rows = await self.store.search_messages(user_id, query, chat_id, page)
        hits, token = pages.take(rows, page, key=lambda r: (r.rank, r.message.seq))
        return chat_pb2.SearchMessagesResponse(
            hits=[
                chat_pb2.MessageSearchHit(
                    message=convert.message(h.message),
                    chat_title=h.chat_title,
                    snippet=h.snippet,
                    rank=h.rank,
                )
                for h in hits
            ],
            next_page_token=token,
        )

    async def RegenerateMessage(
        self, request: chat_pb2.RegenerateMessageRequest, context: Any
    ) -> AsyncIterator[chat_pb2.ChatEvent]:
        prepared = await self.turns.prepare_regenerate(require_user_id(), request)
        stream = self.turns.run(prepared)
        try:
            async for event in stream:
                yield event
        finally:
            await stream.aclose()

    async def EditMessage(
        self, request: chat_pb2.EditMessageRequest, context: Any
    ) -> AsyncIterator[chat_pb2.ChatEvent]:
        prepared = await self.turns.prepare_edit(require_user_id(), request)
        stream = self.turns.run(prepared)
        try:
            async for event in stream:
                yield event
        finally:
            await stream.aclose()

    async def WatchTurn(
        self, request: chat_pb2.WatchTurnRequest, context: Any
    ) -> AsyncIterator[chat_pb2.ChatEvent]:
        user_id = require_user_id()
        chat_id = parse_uuid(request.chat_id, field="chat_id")
        turn_id = parse_uuid(request.turn_id, field="turn_id")
        if request.after_seq < 0:
            raise InvalidArgument("after_seq must not be negative", field="after_seq")
        stream = self.turns.watch(user_id, chat_id, turn_id, request.after_seq)
        try:
            async for event in stream:
                yield event
        finally:
            await stream.aclose()

    async def CancelTurn(
        self, request: chat_pb2.CancelTurnRequest, context: Any
    ) -> empty_pb2.Empty:
        user_id = require_user_id()
        chat_id = parse_uuid(request.chat_id, field="chat_id")
        turn_id = parse_uuid(request.turn_id, field="turn_id")
        await self.turns.cancel(user_id, chat_id, turn_id)
        return empty_pb2.Empty()

    async def AttachFile(
        self, request: chat_pb2.AttachFileRequest, context: Any
    ) -> chat_pb2.Attachment:
        user_id = require_user_id()
        chat = await self._chat(user_id, request.chat_id, "chat_id")
        file_id = str(parse_uuid(request.file_id, field="file_id"))
        system = await self.store.system_settings()
        row, _ = await self.attachments.attach(
            user_id, chat, file_id, system.max_attachments_per_chat
        )
        return convert.attachment(row)

    async def DetachFile(
        self, request: chat_pb2.DetachFileRequest, context: Any
    ) -> empty_pb2.Empty:
        user_id = require_user_id()
        chat = await self._chat(user_id, request.chat_id, "chat_id")
        file_id = parse_uuid(request.file_id, field="file_id")
        row, _ = await self.store.find_attachment(chat.id, file_id)
        if row is None:
            raise not_found("attachment", request.file_id)
        if row.status == chat_pb2.ATTACHMENT_STATUS_INGESTING:
            raise FailedPrecondition(
                "the file is still being ingested; detach it once it is ready or failed"
            )
        # The document first: if RAG is down nothing changes and the call can be repeated.
        if row.document_id is not None:
            await self.documents.delete_document(str(row.document_id))
        await self.store.delete_attachment(row.id)
        return empty_pb2.Empty()

    async def _settings(self, user_id: str) -> chat_pb2.UserSettings:
        row = await self.store.user_settings(user_id)
        system = await self.store.system_settings()
        out = chat_pb2.UserSettings(
            model_profile=chat_pb2.ModelProfile.ValueType(system.default_model_profile)
        )
        if row is not None:
            if row.model_profile:
                out.model_profile = chat_pb2.ModelProfile.ValueType(row.model_profile)
            out.selected_role_prompt_id = str(row.role_id) if row.role_id else ""
            out.update_time.FromDatetime(row.update_time)
        return out

    async def GetSettings(
        self, request: chat_pb2.GetSettingsRequest, context: Any
    ) -> chat_pb2.UserSettings:
        return await self._settings(require_user_id())

    async def UpdateSettings(
        self, request: chat_pb2.UpdateSettingsRequest, context: Any
    ) -> chat_pb2.UserSettings:
        user_id = require_user_id()
        paths = mask_paths(request.update_mask, ("model_profile", "selected_role_prompt_id"))
        profile = None
        if "model_profile" in paths:
            profile = request.settings.model_profile
            if profile not in (chat_pb2.MODEL_PROFILE_SIMPLE, chat_pb2.MODEL_PROFILE_COMPLEX):
                raise InvalidArgument(
                    "model_profile must be MODEL_PROFILE_SIMPLE or MODEL_PROFILE_COMPLEX",
                    field="settings.model_profile",
                )
        role: tuple[bool, uuid.UUID | None] = (False, None)
        if "selected_role_prompt_id" in paths:
            raw = request.settings.selected_role_prompt_id
            if raw:
                role_id = parse_uuid(raw, field="settings.selected_role_prompt_id")
                found = await self.store.get_role(role_id)
                if found is None or not found.is_active:
                    raise not_found("role prompt", raw)
                role = (True, role_id)
            else:
                role = (True, None)
        await self.store.update_user_settings(user_id, profile, role)
        return await self._settings(user_id)

    async def ListRoles(
        self, request: chat_pb2.ListRolesRequest, context: Any
    ) -> chat_pb2.ListRolesResponse:
        require_user_id()
        page = pages.request(request.page_size, request.page_token)
        rows = await self.store.list_roles(True, page)
        roles, token = pages.take(rows, page, key=lambda r: (r.name, r.id))
        return chat_pb2.ListRolesResponse(
            roles=[convert.role_prompt(r) for r in roles], next_page_token=token
        )


class PromptAdminServiceServicer:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def ListSystemPrompts(
        self, request: chat_pb2.ListSystemPromptsRequest, context: Any
    ) -> chat_pb2.ListSystemPromptsResponse:
        name = convert.SYSTEM_PROMPT_NAMES.get(request.name) if request.name else None
        page = pages.request(
            request.page_size,
            request.page_token,
            filter=f"name={name or ''};all={request.include_all_versions}",
        )
        rows = await self.store.list_system_prompts(name, request.include_all_versions, page)
        prompts, token = pages.take(rows, page, key=lambda r: (r.name, r.version))
        return chat_pb2.ListSystemPromptsResponse(
            system_prompts=[convert.system_prompt(r) for r in prompts], next_page_token=token
        )

    async def CreateSystemPromptVersion(
        self, request: chat_pb2.CreateSystemPromptVersionRequest, context: Any
    ) -> chat_pb2.SystemPrompt:
        name = convert.SYSTEM_PROMPT_NAMES.get(request.name)
        if name is None:
            raise InvalidArgument("name must be one of the four system prompts", field="name")
        if not request.content.strip():
            raise InvalidArgument("content must not be empty", field="content")
        if len(request.content) > MAX_PROMPT:
            raise InvalidArgument(
                f"content is longer than {MAX_PROMPT} characters", field="content"
            )
        row = await self.store.create_system_prompt(
            name, request.content, request.description, request.activate
        )
        return convert.system_prompt(row)

    async def ActivateSystemPrompt(
        self, request: chat_pb2.ActivateSystemPromptRequest, context: Any
    ) -> chat_pb2.SystemPrompt:
        row = await self.store.activate_system_prompt(parse_uuid(request.id, field="id"))
        if row is None:
            raise not_found("system prompt", request.id)
        return convert.system_prompt(row)

    async def ListRolePrompts(
        self, request: chat_pb2.ListRolePromptsRequest, context: Any
    ) -> chat_pb2.ListRolePromptsResponse:
        page = pages.request(request.page_size, request.page_token)
        rows = await self.store.list_roles(False, page)
        roles, token = pages.take(rows, page, key=lambda r: (r.name, r.id))
        return chat_pb2.ListRolePromptsResponse(
            role_prompts=[convert.role_prompt(r) for r in roles], next_page_token=token
        )

    @staticmethod
    def _check_role(name: str | None, content: str | None) -> None:
        if name is not None:
            if not name.strip():
                raise InvalidArgument("name must not be empty", field="name")
            if len(name) > MAX_ROLE_NAME:
                raise InvalidArgument(
                    f"name is longer than {MAX_ROLE_NAME} characters", field="name"
                )
        if content is not None:
            if not content.strip():
                raise InvalidArgument("content must not be empty", field="content")
            if len(content) > MAX_PROMPT:
                raise InvalidArgument(
                    f"content is longer than {MAX_PROMPT} characters", field="content"
                )

    async def CreateRolePrompt(
        self, request: chat_pb2.CreateRolePromptRequest, context: Any
    ) -> chat_pb2.RolePrompt:
        self._check_role(request.name, request.content)
        row = await self.store.create_role(
            request.name.strip(), request.content, request.description
        )
        return convert.role_prompt(row)

    async def UpdateRolePrompt(
        self, request: chat_pb2.UpdateRolePromptRequest, context: Any
    ) -> chat_pb2.RolePrompt:
        paths = mask_paths(request.update_mask, ("name", "description", "content", "is_active"))
        role = request.role_prompt
        role_id = parse_uuid(role.id, field="role_prompt.id")
        values: dict[str, Any] = {}
        if "name" in paths:
            values["name"] = role.name.strip()
        if "description" in paths:
            values["description"] = role.description
        if "content" in paths:
            values["content"] = role.content
        if "is_active" in paths:
            values["is_active"] = role.is_active
        self._check_role(values.get("name"), values.get("content"))
        row = await self.store.update_role(role_id, values)
        if row is None:
            raise not_found("role prompt", role.id)
        return convert.role_prompt(row)

    async def GetSystemSettings(
        self, request: chat_pb2.GetSystemSettingsRequest, context: Any
    ) -> chat_pb2.SystemSettings:
        return convert.system_settings(await self.store.system_settings())

    async def UpdateSystemSettings(
        self, request: chat_pb2.UpdateSystemSettingsRequest, context: Any
    ) -> chat_pb2.SystemSettings:
        limit_fields = (
            "max_message_chars",
            "max_attachments_per_chat",
            "max_tool_iterations",
            "max_zooms_per_turn",
        )
        allowed = (
            "allowed_models",
            "flash_model",
            "pro_model",
            "local_model_enabled",
            "default_model_profile",
            "limits",
            *(f"limits.{f}" for f in limit_fields),
        )
        paths = mask_paths(request.update_mask, allowed)
        new = request.settings
        current = await self.store.system_settings()
        values: dict[str, Any] = {}
        if "allowed_models" in paths:
            models = [m.strip() for m in new.allowed_models if m.strip()]
            if not models:
                raise InvalidArgument(
                    "allowed_models must not be empty", field="settings.allowed_models"
                )
            values["allowed_models"] = list(dict.fromkeys(models))
        for name in ("flash_model", "pro_model"):
            if name in paths:
                values[name] = getattr(new, name).strip()
        if "local_model_enabled" in paths:
            values["local_model_enabled"] = new.local_model_enabled
        if "default_model_profile" in paths:
            if new.default_model_profile not in (
                chat_pb2.MODEL_PROFILE_SIMPLE,
                chat_pb2.MODEL_PROFILE_COMPLEX,
            ):
                raise InvalidArgument(
                    "default_model_profile must be SIMPLE or COMPLEX",
                    field="settings.default_model_profile",
                )
            values["default_model_profile"] = new.default_model_profile
        for name in limit_fields:
            if "limits" in paths or f"limits.{name}" in paths:
                value = getattr(new.limits, name)
                if value <= 0:
                    raise InvalidArgument(
                        f"limits.{name} must be positive", field=f"settings.limits.{name}"
                    )
                values[name] = value
        allowed_models = values.get("allowed_models", list(current.allowed_models))
        for name in ("flash_model", "pro_model"):
            model = values.get(name, getattr(current, name))
            if model not in allowed_models:
                raise InvalidArgument(
                    f"{name} {model!r} is not in allowed_models", field=f"settings.{name}"
                )
        row = await self.store.update_system_settings(values)
        return convert.system_settings(row)
