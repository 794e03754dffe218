"""`AsyncClient`: the mesh's RPCs as typed coroutines, with the session handled.

Every call carries `authorization: Bearer <access>` and an `x-request-id`. A call answered
UNAUTHENTICATED refreshes the session once and is repeated once; a server stream is
repeated only if it failed before its first message (nothing was shown yet), an upload
only when its request stream can be produced again. gRPC errors come out as the classes
of `client.errors`.

    async with AsyncClient() as c:
        chat = await c.create_chat("Отчёт")
        async for event in c.send_message(chat.id, "Что в разделе 3?"):
            ...
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import grpc
from google.protobuf import field_mask_pb2

from aivera.auth.v1 import auth_pb2, auth_pb2_grpc
from aivera.chat.v1 import chat_pb2, chat_pb2_grpc, projects_pb2, projects_pb2_grpc
from aivera.rag.v1 import rag_pb2, rag_pb2_grpc
from aivera.storage.v1 import storage_pb2, storage_pb2_grpc
from aivera.training.v1 import (
    billing_pb2,
    billing_pb2_grpc,
    catalogue_pb2,
    catalogue_pb2_grpc,
    clones_pb2,
    clones_pb2_grpc,
    datasets_pb2,
    datasets_pb2_grpc,
    image_loras_pb2,
    image_loras_pb2_grpc,
    jobs_pb2,
    jobs_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
    notifications_pb2,
    notifications_pb2_grpc,
    webhooks_pb2,
    webhooks_pb2_grpc,
)
from client.config import Endpoints, credentials_path, split_address
from client.credentials import Credentials, CredentialStore
from client.errors import AiveraError, AuthRequired, NotFound, Unavailable, UsageError, from_rpc
from client.messages import lang, t
from client.session import Session

T = TypeVar("T")
CHUNK = 1024 * 1024  # the storage service's largest upload chunk
MAX_MESSAGE = 64 * 1024 * 1024
Progress = Callable[[int], None]  # bytes done so far

BUCKETS = {
    "documents": storage_pb2.BUCKET_DOCUMENTS,
    "images": storage_pb2.BUCKET_IMAGES,
    "datasets": storage_pb2.BUCKET_DATASETS,
    "models": storage_pb2.BUCKET_MODELS,
    "training-images": storage_pb2.BUCKET_TRAINING_IMAGES,
}
PROVIDERS = {"gemini": auth_pb2.PROVIDER_GEMINI, "replicate": auth_pb2.PROVIDER_REPLICATE}

# Image LoRAs: the names the CLI and scripts use for the contract's enums.
LORA_KINDS = {
    "style": image_loras_pb2.IMAGE_LORA_KIND_STYLE,
    "character": image_loras_pb2.IMAGE_LORA_KIND_CHARACTER,
    "product": image_loras_pb2.IMAGE_LORA_KIND_PRODUCT,
}
LORA_EXECUTORS = {
    "replicate": image_loras_pb2.IMAGE_LORA_EXECUTOR_REPLICATE,
    "local": image_loras_pb2.IMAGE_LORA_EXECUTOR_LOCAL,
    "simulate": image_loras_pb2.IMAGE_LORA_EXECUTOR_SIMULATE,
}
ASPECT_RATIOS = {
    "1:1": image_loras_pb2.ASPECT_RATIO_1_1,
    "16:9": image_loras_pb2.ASPECT_RATIO_16_9,
    "9:16": image_loras_pb2.ASPECT_RATIO_9_16,
    "4:3": image_loras_pb2.ASPECT_RATIO_4_3,
    "3:4": image_loras_pb2.ASPECT_RATIO_3_4,
    "3:2": image_loras_pb2.ASPECT_RATIO_3_2,
    "2:3": image_loras_pb2.ASPECT_RATIO_2_3,
}
# Where a training ends; a watcher stops there.
LORA_SETTLED = frozenset(
    {
        image_loras_pb2.IMAGE_LORA_STATUS_DRAFT,
        image_loras_pb2.IMAGE_LORA_STATUS_READY,
        image_loras_pb2.IMAGE_LORA_STATUS_FAILED,
        image_loras_pb2.IMAGE_LORA_STATUS_CANCELLED,
    }
)
# The server's limit on a reference image (it stays the authority; checked here too so a
# too-large file is not uploaded first).
MAX_REFERENCE_BYTES = 10 * 1024 * 1024


class AsyncClient:
    """One user's connection to the mesh.

    `store` is where the session lives (default: the user's credentials file); pass
    `store=None` with `credentials=` to keep it in memory only. `endpoints` default to
    `Endpoints.resolve(<server saved in the credentials>)`.
    """

    def __init__(
        self,
        endpoints: Endpoints | None = None,
        *,
        store: CredentialStore | bool | None = True,
        credentials: Credentials | None = None,
        timeout: float | None = 30.0,
        refresh_skew: float = 30.0,
    ) -> None:
        if store is True:
            store = CredentialStore(credentials_path())
        self.store: CredentialStore | None = store or None
        creds = credentials or (self.store.load() if self.store else Credentials())
        self.endpoints = endpoints or Endpoints.resolve(creds.server)
        self.timeout = timeout
        self._channels: dict[str, grpc.aio.Channel] = {}
        self.session = Session(creds, self.store, self._refresh_rpc, skew=refresh_skew)

    # ---- plumbing -----------------------------------------------------------------

    @property
    def credentials(self) -> Credentials:
        return self.session.creds

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        channels, self._channels = self._channels, {}
        for ch in channels.values():
            await ch.close(grace=None)

    def channel(self, service: str, *, admin: bool = False) -> grpc.aio.Channel:
        address = self.endpoints.of(service, admin=admin)
        ch = self._channels.get(address)
        if ch is None:
            target, tls = split_address(address)
            options = [
                ("grpc.max_receive_message_length", MAX_MESSAGE),
                ("grpc.max_send_message_length", MAX_MESSAGE),
                ("grpc.keepalive_time_ms", 30_000),
            ]
            if tls:
                ch = grpc.aio.secure_channel(target, grpc.ssl_channel_credentials(), options)
            else:
                ch = grpc.aio.insecure_channel(target, options)
            self._channels[address] = ch
        return ch

    @property
    def _auth(self) -> auth_pb2_grpc.AuthServiceStub:
        return auth_pb2_grpc.AuthServiceStub(self.channel("auth"))

    @property
    def _auth_admin(self) -> auth_pb2_grpc.AuthAdminServiceStub:
        return auth_pb2_grpc.AuthAdminServiceStub(self.channel("auth", admin=True))

    @property
    def _chat(self) -> chat_pb2_grpc.ChatServiceStub:
        return chat_pb2_grpc.ChatServiceStub(self.channel("chat"))

    @property
    def _projects(self) -> projects_pb2_grpc.ProjectServiceStub:
        return projects_pb2_grpc.ProjectServiceStub(self.channel("chat"))

    @property
    def _prompts(self) -> chat_pb2_grpc.PromptAdminServiceStub:
        return chat_pb2_grpc.PromptAdminServiceStub(self.channel("chat", admin=True))

    @property
    def _storage(self) -> storage_pb2_grpc.StorageServiceStub:
        return storage_pb2_grpc.StorageServiceStub(self.channel("storage"))

    @property
    def _rag(self) -> rag_pb2_grpc.RagServiceStub:
        return rag_pb2_grpc.RagServiceStub(self.channel("rag"))

    @property
    def _datasets(self) -> datasets_pb2_grpc.DatasetServiceStub:
        return datasets_pb2_grpc.DatasetServiceStub(self.channel("training"))

    @property
    def _jobs(self) -> jobs_pb2_grpc.TrainingServiceStub:
        return jobs_pb2_grpc.TrainingServiceStub(self.channel("training"))

    @property
    def _models(self) -> models_pb2_grpc.ModelServiceStub:
        return models_pb2_grpc.ModelServiceStub(self.channel("training"))

    @property
    def _clones(self) -> clones_pb2_grpc.CloneServiceStub:
        return clones_pb2_grpc.CloneServiceStub(self.channel("training"))

    @property
    def _catalogue(self) -> catalogue_pb2_grpc.CatalogueServiceStub:
        return catalogue_pb2_grpc.CatalogueServiceStub(self.channel("training"))

    @property
    def _billing(self) -> billing_pb2_grpc.BillingServiceStub:
        return billing_pb2_grpc.BillingServiceStub(self.channel("training"))

    @property
    def _notes(self) -> notifications_pb2_grpc.NotificationServiceStub:
        return notifications_pb2_grpc.NotificationServiceStub(self.channel("training"))

    @property
    def _webhooks(self) -> webhooks_pb2_grpc.WebhookServiceStub:
        return webhooks_pb2_grpc.WebhookServiceStub(self.channel("training"))

    @property
    def _image_loras(self) -> image_loras_pb2_grpc.ImageLoraServiceStub:
        return image_loras_pb2_grpc.ImageLoraServiceStub(self.channel("training"))

    async def _refresh_rpc(
        self, request: auth_pb2.RefreshTokenRequest
    ) -> auth_pb2.RefreshTokenResponse:
        resp: auth_pb2.RefreshTokenResponse = await self._auth.RefreshToken(
            request, metadata=_request_id(), timeout=self.timeout
        )
        return resp

    async def _md(self) -> tuple[str, tuple[tuple[str, str], ...]]:
        token = await self.session.access_token()
        return token, (("authorization", f"Bearer {token}"), *_request_id())

    async def _unary(self, method: Any, request: Any, *, timeout: float | None = None) -> Any:
        """A unary call with the session; refreshed and repeated once on UNAUTHENTICATED."""
        for attempt in (0, 1):
            token, md = await self._md()
            try:
                return await method(request, metadata=md, timeout=timeout or self.timeout)
            except grpc.aio.AioRpcError as e:
                if e.code() is grpc.StatusCode.UNAUTHENTICATED and attempt == 0:
                    await self.session.refresh(stale=token)
                    continue
                raise from_rpc(e) from None
        raise AssertionError("unreachable")

    async def _stream(self, method: Any, request: Any) -> AsyncIterator[Any]:
        """A server stream with the session; repeated once on UNAUTHENTICATED only when it
        failed before its first message. Closing the iterator cancels the call."""
        for attempt in (0, 1):
            token, md = await self._md()
            call = method(request, metadata=md)
            started = False
            try:
                async for item in call:
                    started = True
                    yield item
                return
            except grpc.aio.AioRpcError as e:
                if e.code() is grpc.StatusCode.UNAUTHENTICATED and not started and attempt == 0:
                    await self.session.refresh(stale=token)
                    continue
                raise from_rpc(e) from None
            finally:
                call.cancel()

    async def _client_stream(
        self, method: Any, requests: Callable[[], AsyncIterator[Any]], *, timeout: float | None
    ) -> Any:
        """A client stream; `requests` makes the request stream afresh for the repeat."""
        for attempt in (0, 1):
            token, md = await self._md()
            try:
                return await method(requests(), metadata=md, timeout=timeout)
            except grpc.aio.AioRpcError as e:
                if e.code() is grpc.StatusCode.UNAUTHENTICATED and attempt == 0:
                    await self.session.refresh(stale=token)
                    continue
                raise from_rpc(e) from None
        raise AssertionError("unreachable")

    async def _pages(
        self, method: Any, request: Any, field: str, limit: int | None = None
    ) -> list[Any]:
        """Every item of a paged List call (up to `limit`)."""
        items: list[Any] = []
        while True:
            resp = await self._unary(method, request)
            items.extend(getattr(resp, field))
            if not resp.next_page_token or (limit is not None and len(items) >= limit):
                return items[:limit] if limit is not None else items
            request.page_token = resp.next_page_token

    # ---- session ------------------------------------------------------------------

    async def login(self, static_token: str) -> auth_pb2.ExchangeStaticTokenResponse:
        """Exchange a static token for a session and save it (never the static token)."""
        try:
            resp: auth_pb2.ExchangeStaticTokenResponse = await self._auth.ExchangeStaticToken(
                auth_pb2.ExchangeStaticTokenRequest(static_token=static_token.strip()),
                metadata=_request_id(),
                timeout=self.timeout,
            )
        except grpc.aio.AioRpcError as e:
            if e.code() is grpc.StatusCode.UNAUTHENTICATED:
                raise AuthRequired(t("auth.bad_token"), e.code()) from None
            raise from_rpc(e) from None
        self.session.creds.server = self.endpoints.server
        self.session.set_tokens(
            resp.access_token,
            resp.expires_in,
            resp.refresh_token,
            float(resp.refresh_expire_time.seconds),
            resp.user,
        )
        self.session.save()
        return resp

    async def logout(self, *, all_sessions: bool = False) -> None:
        """End the session on the server (best effort) and forget it locally."""
        creds = self.session.creds
        try:
            if creds.signed_in:
                await self._unary(
                    self._auth.Logout,
                    auth_pb2.LogoutRequest(
                        refresh_token="" if all_sessions else creds.refresh_token,
                        all_sessions=all_sessions,
                    ),
                )
        except AuthRequired:
            pass  # the session had already ended on the server: forget it locally anyway
        finally:
            creds.end_session()
            self.session.save()

    def set_active_chat(self, chat_id: str) -> None:
        self.session.creds.active_chat_id = chat_id
        self.session.save()

    # ---- auth ---------------------------------------------------------------------

    async def me(self) -> auth_pb2.User:
        user: auth_pb2.User = await self._unary(
            self._auth.GetCurrentUser, auth_pb2.GetCurrentUserRequest()
        )
        return user

    async def set_provider_key(
        self, api_key: str, provider: str = "gemini"
    ) -> auth_pb2.ProviderKeyStatus:
        """Stores the caller's key of `provider` (see PROVIDERS: gemini, replicate)."""
        status: auth_pb2.ProviderKeyStatus = await self._unary(
            self._auth.SetProviderKey,
            auth_pb2.SetProviderKeyRequest(provider=_provider(provider), api_key=api_key),
        )
        return status

    async def provider_key_status(self, provider: str = "gemini") -> auth_pb2.ProviderKeyStatus:
        status: auth_pb2.ProviderKeyStatus = await self._unary(
            self._auth.GetProviderKeyStatus,
            auth_pb2.GetProviderKeyStatusRequest(provider=_provider(provider)),
        )
        return status

    async def delete_provider_key(self, provider: str = "gemini") -> None:
        await self._unary(
            self._auth.DeleteProviderKey,
            auth_pb2.DeleteProviderKeyRequest(provider=_provider(provider)),
        )

    # ---- auth admin -----------------------------------------------------------------

    async def create_user(
        self, username: str, *, admin: bool = False
    ) -> auth_pb2.CreateUserResponse:
        resp: auth_pb2.CreateUserResponse = await self._unary(
            self._auth_admin.CreateUser,
            auth_pb2.CreateUserRequest(
                username=username, role=auth_pb2.ROLE_ADMIN if admin else auth_pb2.ROLE_USER
            ),
        )
        return resp

    async def list_users(self, limit: int | None = None) -> list[auth_pb2.User]:
        return await self._pages(
            self._auth_admin.ListUsers, auth_pb2.ListUsersRequest(page_size=200), "users", limit
        )

    async def set_user_status(self, user_id: str, *, active: bool) -> auth_pb2.User:
        user: auth_pb2.User = await self._unary(
            self._auth_admin.UpdateUser,
            auth_pb2.UpdateUserRequest(
                user=auth_pb2.User(
                    id=user_id,
                    status=auth_pb2.USER_STATUS_ACTIVE if active else auth_pb2.USER_STATUS_DISABLED,
                ),
                update_mask=field_mask_pb2.FieldMask(paths=["status"]),
            ),
        )
        return user

    async def rotate_static_token(self, user_id: str) -> auth_pb2.RotateStaticTokenResponse:
        resp: auth_pb2.RotateStaticTokenResponse = await self._unary(
            self._auth_admin.RotateStaticToken, auth_pb2.RotateStaticTokenRequest(user_id=user_id)
        )
        return resp

    async def revoke_sessions(self, user_id: str) -> int:
        resp: auth_pb2.RevokeSessionsResponse = await self._unary(
            self._auth_admin.RevokeSessions, auth_pb2.RevokeSessionsRequest(user_id=user_id)
        )
        return resp.revoked_sessions

    # ---- chat -----------------------------------------------------------------------

    async def create_chat(
        self,
        title: str = "",
        *,
        clone_id: str = "",
        knowledge_base_ids: Sequence[str] = (),
        folder_id: str = "",
    ) -> chat_pb2.Chat:
        """A chat; in a project folder (`folder_id`) its turns also search the folder's
        documents."""
        chat: chat_pb2.Chat = await self._unary(
            self._chat.CreateChat,
            chat_pb2.CreateChatRequest(
                title=title,
                clone_id=clone_id,
                knowledge_base_ids=list(knowledge_base_ids),
                folder_id=folder_id,
            ),
        )
        return chat

    async def get_chat(self, chat_id: str) -> chat_pb2.Chat:
        chat: chat_pb2.Chat = await self._unary(
            self._chat.GetChat, chat_pb2.GetChatRequest(id=chat_id)
        )
        return chat

    async def list_chats(
        self,
        limit: int | None = 200,
        *,
        archived: chat_pb2.ArchivedFilter.ValueType = chat_pb2.ARCHIVED_FILTER_UNSPECIFIED,
    ) -> list[chat_pb2.Chat]:
        """The caller's chats, most recent first; not archived ones unless `archived`."""
        return await self._pages(
            self._chat.ListChats,
            chat_pb2.ListChatsRequest(page_size=200, archived_filter=archived),
            "chats",
            limit,
        )

    async def update_chat(
        self,
        chat_id: str,
        *,
        title: str | None = None,
        archived: bool | None = None,
        folder_id: str | None = None,
    ) -> chat_pb2.Chat:
        """Renames, (un)archives and/or moves a chat (`folder_id` "" = out of folders)."""
        chat = chat_pb2.Chat(id=chat_id)
        paths = []
        if folder_id is not None:
            chat.folder_id = folder_id
            paths.append("folder_id")
        if title is not None:
            chat.title = title
            paths.append("title")
        if archived is not None:
            chat.archived = archived
            paths.append("archived")
        updated: chat_pb2.Chat = await self._unary(
            self._chat.UpdateChat,
            chat_pb2.UpdateChatRequest(
                chat=chat, update_mask=field_mask_pb2.FieldMask(paths=paths)
            ),
        )
        return updated

    async def delete_chat(self, chat_id: str) -> None:
        """Deletes a chat (a turn running in it stops)."""
        await self._unary(self._chat.DeleteChat, chat_pb2.DeleteChatRequest(id=chat_id))

    # ---- projects -------------------------------------------------------------------

    async def create_folder(self, name: str, *, parent_id: str = "") -> projects_pb2.Folder:
        """A project folder (top-level without `parent_id`)."""
        f: projects_pb2.Folder = await self._unary(
            self._projects.CreateFolder,
            projects_pb2.CreateFolderRequest(name=name, parent_id=parent_id),
        )
        return f

    async def project_tree(self, folder_id: str = "") -> list[projects_pb2.FolderNode]:
        tree: projects_pb2.ProjectTree = await self._unary(
            self._projects.GetProjectTree,
            projects_pb2.GetProjectTreeRequest(folder_id=folder_id),
        )
        return list(tree.roots)

    async def update_folder(
        self, folder_id: str, *, name: str | None = None, parent_id: str | None = None
    ) -> projects_pb2.Folder:
        """Renames and/or moves a folder (`parent_id` "" = to the top)."""
        folder = projects_pb2.Folder(id=folder_id)
        paths = []
        if name is not None:
            folder.name = name
            paths.append("name")
        if parent_id is not None:
            folder.parent_id = parent_id
            paths.append("parent_id")
        f: projects_pb2.Folder = await self._unary(
            self._projects.UpdateFolder,
            projects_pb2.UpdateFolderRequest(
                folder=folder, update_mask=field_mask_pb2.FieldMask(paths=paths)
            ),
        )
        return f

    async def delete_folder(self, folder_id: str) -> None:
        """Deletes a folder with its subfolders; their chats move to the top."""
        await self._unary(
            self._projects.DeleteFolder, projects_pb2.DeleteFolderRequest(id=folder_id)
        )

    async def add_folder_document(
        self, folder_id: str, document_id: str
    ) -> projects_pb2.FolderDocument:
        d: projects_pb2.FolderDocument = await self._unary(
            self._projects.AddFolderDocument,
            projects_pb2.AddFolderDocumentRequest(folder_id=folder_id, document_id=document_id),
        )
        return d

    async def remove_folder_document(self, folder_id: str, document_id: str) -> None:
        await self._unary(
            self._projects.RemoveFolderDocument,
            projects_pb2.RemoveFolderDocumentRequest(folder_id=folder_id, document_id=document_id),
        )

    async def document_answers(
        self, document_id: str, limit: int | None = 50
    ) -> list[chat_pb2.Message]:
        """Your answers that used the document, newest first."""
        return await self._pages(
            self._projects.ListDocumentAnswers,
            projects_pb2.ListDocumentAnswersRequest(document_id=document_id, page_size=200),
            "answers",
            limit,
        )

    async def list_messages(
        self, chat_id: str, *, tail: int | None = None, include_superseded: bool = False
    ) -> list[chat_pb2.Message]:
        """The chat's messages (with citations); `include_superseded` adds earlier
        answers and edited messages (Message.superseded)."""
        if tail:
            resp: chat_pb2.ListMessagesResponse = await self._unary(
                self._chat.ListMessages,
                chat_pb2.ListMessagesRequest(
                    chat_id=chat_id,
                    page_size=min(tail, 200),
                    order=chat_pb2.MESSAGE_ORDER_TAIL,
                    include_superseded=include_superseded,
                ),
            )
            return list(resp.messages)
        return await self._pages(
            self._chat.ListMessages,
            chat_pb2.ListMessagesRequest(
                chat_id=chat_id, page_size=200, include_superseded=include_superseded
            ),
            "messages",
        )

    async def search_messages(
        self, query: str, *, chat_id: str = "", limit: int | None = 50
    ) -> list[chat_pb2.MessageSearchHit]:
        """Full-text search over your messages (Russian and English word forms), best
        first; `chat_id` limits it to one chat."""
        return await self._pages(
            self._chat.SearchMessages,
            chat_pb2.SearchMessagesRequest(
                query=query, chat_id=chat_id, page_size=min(limit or 200, 200)
            ),
            "hits",
            limit,
        )

    async def regenerate_message(
        self,
        chat_id: str,
        message_id: str,
        *,
        model_profile: chat_pb2.ModelProfile.ValueType = chat_pb2.MODEL_PROFILE_UNSPECIFIED,
        retries: int = 10,
        backoff: float = 0.5,
        on_reconnect: Callable[[int, int], Awaitable[None] | None] | None = None,
    ) -> AsyncIterator[chat_pb2.ChatEvent]:
        """A new answer to the user message of the chat's latest answer `message_id`
        (the old one stays as a superseded alternative); events as `send_message`."""
        first = self._stream(
            self._chat.RegenerateMessage,
            chat_pb2.RegenerateMessageRequest(
                chat_id=chat_id, message_id=message_id, model_profile=model_profile
            ),
        )
        async for event in self._follow_turn(
            first, chat_id, "", 0, retries=retries, backoff=backoff, on_reconnect=on_reconnect
        ):
            yield event

    async def edit_message(
        self,
        chat_id: str,
        message_id: str,
        text: str,
        *,
        model_profile: chat_pb2.ModelProfile.ValueType = chat_pb2.MODEL_PROFILE_UNSPECIFIED,
        retries: int = 10,
        backoff: float = 0.5,
        on_reconnect: Callable[[int, int], Awaitable[None] | None] | None = None,
    ) -> AsyncIterator[chat_pb2.ChatEvent]:
        """Replaces the chat's latest user message `message_id` with `text` and answers
        it (the old message and answer stay as superseded); events as `send_message`."""
        first = self._stream(
            self._chat.EditMessage,
            chat_pb2.EditMessageRequest(
                chat_id=chat_id, message_id=message_id, text=text, model_profile=model_profile
            ),
        )
        async for event in self._follow_turn(
            first, chat_id, "", 0, retries=retries, backoff=backoff, on_reconnect=on_reconnect
        ):
            yield event

    async def send_message(
        self,
        chat_id: str,
        text: str,
        *,
        file_ids: Sequence[str] = (),
        model_profile: chat_pb2.ModelProfile.ValueType = chat_pb2.MODEL_PROFILE_UNSPECIFIED,
        retries: int = 10,
        backoff: float = 0.5,
        on_reconnect: Callable[[int, int], Awaitable[None] | None] | None = None,
        image_file_ids: Sequence[str] = (),
    ) -> AsyncIterator[chat_pb2.ChatEvent]:
        """The turn's events, `accepted` first and `final` or `error` last. The turn runs
        on the server whoever watches it: after a dropped connection (once `accepted`
        arrived) this reattaches by itself with WatchTurn after the last seq seen, so no
        event is missed or repeated (`on_reconnect(attempt, last_seq)` is told). Closing
        the iterator early only stops watching; `cancel_turn` stops the turn.
        `image_file_ids`: uploaded images (JPEG/PNG/WebP) the model sees with the text."""
        first = self._stream(
            self._chat.SendMessage,
            chat_pb2.SendMessageRequest(
                chat_id=chat_id,
                text=text,
                file_ids=list(file_ids),
                model_profile=model_profile,
                image_file_ids=list(image_file_ids),
            ),
        )
        async for event in self._follow_turn(
            first, chat_id, "", 0, retries=retries, backoff=backoff, on_reconnect=on_reconnect
        ):
            yield event

    def watch_turn(
        self, chat_id: str, turn_id: str, after_seq: int = 0
    ) -> AsyncIterator[chat_pb2.ChatEvent]:
        """One WatchTurn stream: the turn's events after `after_seq`, then live ones. See
        `watch_turn_resilient` for one that reattaches after a dropped connection."""
        return self._stream(
            self._chat.WatchTurn,
            chat_pb2.WatchTurnRequest(chat_id=chat_id, turn_id=turn_id, after_seq=after_seq),
        )

    async def watch_turn_resilient(
        self,
        chat_id: str,
        turn_id: str,
        *,
        after_seq: int = 0,
        retries: int = 10,
        backoff: float = 0.5,
        on_reconnect: Callable[[int, int], Awaitable[None] | None] | None = None,
    ) -> AsyncIterator[chat_pb2.ChatEvent]:
        """The turn's events after `after_seq` up to its terminal event, reattaching
        after a drop from the last seq seen. Gives up after `retries` failures in a row."""
        async for event in self._follow_turn(
            None,
            chat_id,
            turn_id,
            after_seq,
            retries=retries,
            backoff=backoff,
            on_reconnect=on_reconnect,
        ):
            yield event

    async def cancel_turn(self, chat_id: str, turn_id: str) -> None:
        """Stops a running turn; its partial answer is stored (a finished one: no-op)."""
        await self._unary(
            self._chat.CancelTurn, chat_pb2.CancelTurnRequest(chat_id=chat_id, turn_id=turn_id)
        )

    async def _follow_turn(
        self,
        stream: AsyncIterator[chat_pb2.ChatEvent] | None,
        chat_id: str,
        turn_id: str,
        last: int,
        *,
        retries: int,
        backoff: float,
        on_reconnect: Callable[[int, int], Awaitable[None] | None] | None,
    ) -> AsyncIterator[chat_pb2.ChatEvent]:
        """Events of one turn until its terminal event, each seq once, reattaching with
        WatchTurn after a drop (UNAVAILABLE, a server that went away, an end without a
        terminal event). A drop before `accepted` of SendMessage is raised: the turn may
        not exist, and sending again could run it twice."""
        failures = 0
        while True:
            if stream is None:
                stream = self.watch_turn(chat_id, turn_id, last)
            try:
                async for event in stream:
                    failures = 0
                    turn_id = turn_id or event.message_id
                    if event.seq <= last:
                        continue  # seen before the drop
                    last = event.seq
                    yield event
                    if event.WhichOneof("event") in ("final", "error"):
                        return
            except (Unavailable, AiveraError) as e:
                dropped = isinstance(e, Unavailable) or e.code in (
                    grpc.StatusCode.CANCELLED,
                    grpc.StatusCode.UNKNOWN,
                )
                if not turn_id or not dropped:
                    raise
            finally:
                close = getattr(stream, "aclose", None)
                if close is not None:
                    await close()
            stream = None
            if not turn_id:
                raise Unavailable(t("chat.watch_gave_up"))
            failures += 1
            if failures > retries:
                raise Unavailable(t("chat.watch_gave_up"))
            if on_reconnect is not None:
                maybe = on_reconnect(failures, last)
                if maybe is not None:
                    await maybe
            await asyncio.sleep(min(backoff * 2 ** (failures - 1), 10.0))

    async def attach_file(self, chat_id: str, file_id: str) -> chat_pb2.Attachment:
        att: chat_pb2.Attachment = await self._unary(
            self._chat.AttachFile, chat_pb2.AttachFileRequest(chat_id=chat_id, file_id=file_id)
        )
        return att

    async def detach_file(self, chat_id: str, file_id: str) -> None:
        """Detaches a file: its document leaves the chat's knowledge base."""
        await self._unary(
            self._chat.DetachFile, chat_pb2.DetachFileRequest(chat_id=chat_id, file_id=file_id)
        )

    async def get_settings(self) -> chat_pb2.UserSettings:
        s: chat_pb2.UserSettings = await self._unary(
            self._chat.GetSettings, chat_pb2.GetSettingsRequest()
        )
        return s

    async def update_settings(
        self,
        *,
        model_profile: chat_pb2.ModelProfile.ValueType | None = None,
        role_prompt_id: str | None = None,
    ) -> chat_pb2.UserSettings:
        settings = chat_pb2.UserSettings()
        paths = []
        if model_profile is not None:
            settings.model_profile = model_profile
            paths.append("model_profile")
        if role_prompt_id is not None:
            settings.selected_role_prompt_id = role_prompt_id
            paths.append("selected_role_prompt_id")
        s: chat_pb2.UserSettings = await self._unary(
            self._chat.UpdateSettings,
            chat_pb2.UpdateSettingsRequest(
                settings=settings, update_mask=field_mask_pb2.FieldMask(paths=paths)
            ),
        )
        return s

    async def list_roles(self) -> list[chat_pb2.RolePrompt]:
        return await self._pages(
            self._chat.ListRoles, chat_pb2.ListRolesRequest(page_size=200), "roles"
        )

    # ---- prompt admin ---------------------------------------------------------------

    async def list_system_prompts(
        self, *, all_versions: bool = False
    ) -> list[chat_pb2.SystemPrompt]:
        return await self._pages(
            self._prompts.ListSystemPrompts,
            chat_pb2.ListSystemPromptsRequest(include_all_versions=all_versions, page_size=200),
            "system_prompts",
        )

    async def list_role_prompts(self) -> list[chat_pb2.RolePrompt]:
        return await self._pages(
            self._prompts.ListRolePrompts,
            chat_pb2.ListRolePromptsRequest(page_size=200),
            "role_prompts",
        )

    async def activate_system_prompt(self, prompt_id: str) -> chat_pb2.SystemPrompt:
        p: chat_pb2.SystemPrompt = await self._unary(
            self._prompts.ActivateSystemPrompt, chat_pb2.ActivateSystemPromptRequest(id=prompt_id)
        )
        return p

    async def create_system_prompt_version(
        self,
        name: chat_pb2.SystemPromptName.ValueType,
        content: str,
        *,
        description: str = "",
        activate: bool = False,
    ) -> chat_pb2.SystemPrompt:
        """A new version of a system prompt (active at once with `activate`)."""
        p: chat_pb2.SystemPrompt = await self._unary(
            self._prompts.CreateSystemPromptVersion,
            chat_pb2.CreateSystemPromptVersionRequest(
                name=name, content=content, description=description, activate=activate
            ),
        )
        return p

    async def create_role_prompt(
        self, name: str, content: str, *, description: str = ""
    ) -> chat_pb2.RolePrompt:
        r: chat_pb2.RolePrompt = await self._unary(
            self._prompts.CreateRolePrompt,
            chat_pb2.CreateRolePromptRequest(name=name, content=content, description=description),
        )
        return r

    async def update_role_prompt(
        self,
        role_id: str,
        *,
        name: str | None = None,
        content: str | None = None,
        description: str | None = None,
        is_active: bool | None = None,
    ) -> chat_pb2.RolePrompt:
        """Changes the given fields; new content is a new version."""
        role = chat_pb2.RolePrompt(id=role_id)
        paths = []
        for path, value in (
            ("name", name),
            ("content", content),
            ("description", description),
            ("is_active", is_active),
        ):
            if value is not None:
                setattr(role, path, value)
                paths.append(path)
        r: chat_pb2.RolePrompt = await self._unary(
            self._prompts.UpdateRolePrompt,
            chat_pb2.UpdateRolePromptRequest(
                role_prompt=role, update_mask=field_mask_pb2.FieldMask(paths=paths)
            ),
        )
        return r

    async def get_system_settings(self) -> chat_pb2.SystemSettings:
        s: chat_pb2.SystemSettings = await self._unary(
            self._prompts.GetSystemSettings, chat_pb2.GetSystemSettingsRequest()
        )
        return s

    async def update_system_settings(
        self, settings: chat_pb2.SystemSettings, paths: Sequence[str]
    ) -> chat_pb2.SystemSettings:
        """Changes the fields of `settings` named in `paths` (e.g. `flash_model`,
        `limits.max_tool_iterations`)."""
        s: chat_pb2.SystemSettings = await self._unary(
            self._prompts.UpdateSystemSettings,
            chat_pb2.UpdateSystemSettingsRequest(
                settings=settings, update_mask=field_mask_pb2.FieldMask(paths=list(paths))
            ),
        )
        return s

    # ---- storage --------------------------------------------------------------------

    async def upload(
        self,
        path: Path,
        *,
        bucket: str = "documents",
        filename: str | None = None,
        labels: dict[str, str] | None = None,
        progress: Progress | None = None,
    ) -> storage_pb2.File:
        """Upload a file in 1 MiB chunks (size and SHA-256 declared in the header);
        `progress` is called with the bytes sent so far."""
        if bucket not in BUCKETS:
            raise ValueError(f"unknown bucket {bucket!r}")
        size, sha = _file_digest(path)
        header = storage_pb2.UploadHeader(
            bucket=BUCKETS[bucket],
            filename=filename or path.name,
            size_bytes=size,
            sha256=sha,
            labels=labels or {},
        )

        async def requests() -> AsyncIterator[storage_pb2.UploadRequest]:
            yield storage_pb2.UploadRequest(header=header)
            done = 0
            with path.open("rb") as f:
                while chunk := f.read(CHUNK):
                    yield storage_pb2.UploadRequest(chunk=chunk)
                    done += len(chunk)
                    if progress:
                        progress(done)

        f: storage_pb2.File = await self._client_stream(
            self._storage.Upload, requests, timeout=None
        )
        return f

    async def get_file(self, file_id: str) -> storage_pb2.File:
        f: storage_pb2.File = await self._unary(
            self._storage.GetFile, storage_pb2.GetFileRequest(id=file_id)
        )
        return f

    async def list_files(
        self, bucket: str | None = None, limit: int | None = 200
    ) -> list[storage_pb2.File]:
        req = storage_pb2.ListFilesRequest(page_size=200)
        if bucket:
            req.bucket = BUCKETS[bucket]
        return await self._pages(self._storage.ListFiles, req, "files", limit)

    async def download(
        self, file_id: str, dest: Path, *, progress: Progress | None = None
    ) -> storage_pb2.File:
        """Download a file to `dest` (a directory: the file's own name inside it)."""
        meta: storage_pb2.File | None = None
        into_dir = await asyncio.to_thread(os.path.isdir, dest)
        out = None
        done = 0
        try:
            async for msg in self._stream(
                self._storage.Download, storage_pb2.DownloadRequest(id=file_id)
            ):
                kind = msg.WhichOneof("payload")
                if kind == "file":
                    meta = msg.file
                    target = dest / meta.filename if into_dir else dest
                    out = target.open("wb")
                elif kind == "chunk" and out is not None:
                    out.write(msg.chunk)
                    done += len(msg.chunk)
                    if progress:
                        progress(done)
        finally:
            if out is not None:
                out.close()
        if meta is None:
            raise NotFound(t("error.not_found") + f": {file_id}")
        return meta

    async def download_url(self, file_id: str, ttl_seconds: int = 3600) -> str:
        resp: storage_pb2.CreateDownloadUrlResponse = await self._unary(
            self._storage.CreateDownloadUrl,
            storage_pb2.CreateDownloadUrlRequest(id=file_id, ttl_seconds=ttl_seconds),
        )
        return resp.url

    # ---- rag ------------------------------------------------------------------------

    async def create_knowledge_base(
        self, name: str, description: str = ""
    ) -> rag_pb2.KnowledgeBase:
        kb: rag_pb2.KnowledgeBase = await self._unary(
            self._rag.CreateKnowledgeBase,
            rag_pb2.CreateKnowledgeBaseRequest(name=name, description=description),
        )
        return kb

    async def list_knowledge_bases(self) -> list[rag_pb2.KnowledgeBase]:
        return await self._pages(
            self._rag.ListKnowledgeBases,
            rag_pb2.ListKnowledgeBasesRequest(page_size=200),
            "knowledge_bases",
        )

    def ingest(self, knowledge_base_id: str, file_id: str) -> AsyncIterator[rag_pb2.IngestEvent]:
        return self._stream(
            self._rag.IngestDocument,
            rag_pb2.IngestDocumentRequest(knowledge_base_id=knowledge_base_id, file_id=file_id),
        )

    async def search(
        self, knowledge_base_ids: Sequence[str], query: str, *, top_k: int = 5
    ) -> list[rag_pb2.SearchHit]:
        resp: rag_pb2.SearchResponse = await self._unary(
            self._rag.Search,
            rag_pb2.SearchRequest(
                knowledge_base_ids=list(knowledge_base_ids), query=query, top_k=top_k
            ),
        )
        return list(resp.hits)

    # ---- training -------------------------------------------------------------------

    async def create_dataset(
        self,
        name: str,
        file_id: str,
        *,
        base_model: str = "",
        max_seq_length: int = 0,
        description: str = "",
    ) -> datasets_pb2.Dataset:
        ds: datasets_pb2.Dataset = await self._unary(
            self._datasets.CreateDataset,
            datasets_pb2.CreateDatasetRequest(
                name=name,
                file_id=file_id,
                base_model=base_model,
                max_seq_length=max_seq_length,
                description=description,
            ),
        )
        return ds

    async def update_dataset(
        self, dataset_id: str, *, name: str | None = None, description: str | None = None
    ) -> datasets_pb2.Dataset:
        """Rename or describe a dataset (only the arguments given change)."""
        request = datasets_pb2.UpdateDatasetRequest(
            dataset=datasets_pb2.Dataset(
                id=dataset_id, name=name or "", description=description or ""
            )
        )
        request.update_mask.paths.extend(
            p for p, v in (("name", name), ("description", description)) if v is not None
        )
        ds: datasets_pb2.Dataset = await self._unary(self._datasets.UpdateDataset, request)
        return ds

    async def get_dataset(self, dataset_id: str) -> datasets_pb2.Dataset:
        ds: datasets_pb2.Dataset = await self._unary(
            self._datasets.GetDataset, datasets_pb2.GetDatasetRequest(id=dataset_id)
        )
        return ds

    async def list_datasets(self) -> list[datasets_pb2.Dataset]:
        return await self._pages(
            self._datasets.ListDatasets, datasets_pb2.ListDatasetsRequest(page_size=200), "datasets"
        )

    async def create_job(self, request: jobs_pb2.CreateJobRequest) -> jobs_pb2.TrainingJob:
        job: jobs_pb2.TrainingJob = await self._unary(self._jobs.CreateJob, request)
        return job

    async def estimate_job(self, request: jobs_pb2.CreateJobRequest) -> jobs_pb2.JobEstimate:
        """What `create_job(request)` would run and cost; nothing is created."""
        est: jobs_pb2.JobEstimate = await self._unary(
            self._jobs.EstimateJob, jobs_pb2.EstimateJobRequest(job=request)
        )
        return est

    async def list_base_models(self) -> list[catalogue_pb2.BaseModel]:
        return await self._pages(
            self._catalogue.ListBaseModels,
            catalogue_pb2.ListBaseModelsRequest(page_size=200),
            "base_models",
        )

    async def list_hardware_classes(self) -> list[catalogue_pb2.HardwareClass]:
        return await self._pages(
            self._catalogue.ListHardwareClasses,
            catalogue_pb2.ListHardwareClassesRequest(page_size=200),
            "hardware_classes",
        )

    async def get_quota(self) -> billing_pb2.Quota:
        q: billing_pb2.Quota = await self._unary(
            self._billing.GetQuota, billing_pb2.GetQuotaRequest()
        )
        return q

    async def list_cost_summaries(
        self, limit: int | None = 24
    ) -> list[billing_pb2.MonthlyCostSummary]:
        return await self._pages(
            self._billing.ListCostSummaries,
            billing_pb2.ListCostSummariesRequest(page_size=200),
            "cost_summaries",
            limit,
        )

    async def update_quota(self, request: billing_pb2.UpdateQuotaRequest) -> billing_pb2.Quota:
        """Admin: set a user's quota (the fields named in `request.update_mask`)."""
        q: billing_pb2.Quota = await self._unary(self._billing.UpdateQuota, request)
        return q

    async def list_notifications(
        self, *, unread_only: bool = False, limit: int | None = 50
    ) -> list[notifications_pb2.Notification]:
        return await self._pages(
            self._notes.ListNotifications,
            notifications_pb2.ListNotificationsRequest(page_size=200, unread_only=unread_only),
            "notifications",
            limit,
        )

    async def mark_read(self, ids: list[str] | None = None) -> int:
        """Mark the given notifications read, or all of them when `ids` is None."""
        req = notifications_pb2.MarkReadRequest(ids=ids or [], all=ids is None)
        resp: notifications_pb2.MarkReadResponse = await self._unary(self._notes.MarkRead, req)
        return resp.marked_count

    def watch_notifications(
        self, *, include_unread: bool = True
    ) -> AsyncIterator[notifications_pb2.NotificationEvent]:
        return self._stream(
            self._notes.WatchNotifications,
            notifications_pb2.WatchNotificationsRequest(include_unread=include_unread),
        )

    async def create_webhook(
        self, url: str, *, event_kinds: list[int] | None = None, description: str = ""
    ) -> webhooks_pb2.CreateWebhookResponse:
        resp: webhooks_pb2.CreateWebhookResponse = await self._unary(
            self._webhooks.CreateWebhook,
            webhooks_pb2.CreateWebhookRequest(
                url=url,
                event_kinds=event_kinds or [],  # type: ignore[arg-type]
                description=description,
            ),
        )
        return resp

    async def list_webhooks(self) -> list[webhooks_pb2.Webhook]:
        return await self._pages(
            self._webhooks.ListWebhooks, webhooks_pb2.ListWebhooksRequest(page_size=200), "webhooks"
        )

    async def delete_webhook(self, webhook_id: str) -> None:
        await self._unary(
            self._webhooks.DeleteWebhook, webhooks_pb2.DeleteWebhookRequest(id=webhook_id)
        )

    async def rotate_webhook_secret(
        self, webhook_id: str
    ) -> webhooks_pb2.RotateWebhookSecretResponse:
        resp: webhooks_pb2.RotateWebhookSecretResponse = await self._unary(
            self._webhooks.RotateWebhookSecret,
            webhooks_pb2.RotateWebhookSecretRequest(id=webhook_id),
        )
        return resp

    async def list_webhook_deliveries(
        self, webhook_id: str, limit: int | None = 50
    ) -> list[webhooks_pb2.WebhookDelivery]:
        return await self._pages(
            self._webhooks.ListWebhookDeliveries,
            webhooks_pb2.ListWebhookDeliveriesRequest(webhook_id=webhook_id, page_size=200),
            "deliveries",
            limit,
        )

    async def get_job(self, job_id: str) -> jobs_pb2.TrainingJob:
        job: jobs_pb2.TrainingJob = await self._unary(
            self._jobs.GetJob, jobs_pb2.GetJobRequest(id=job_id)
        )
        return job

    async def list_jobs(self, limit: int | None = 200) -> list[jobs_pb2.TrainingJob]:
        return await self._pages(
            self._jobs.ListJobs, jobs_pb2.ListJobsRequest(page_size=200), "jobs", limit
        )

    async def cancel_job(self, job_id: str) -> jobs_pb2.TrainingJob:
        job: jobs_pb2.TrainingJob = await self._unary(
            self._jobs.CancelJob, jobs_pb2.CancelJobRequest(id=job_id)
        )
        return job

    async def retry_job(
        self, job_id: str, hyperparameters: jobs_pb2.Hyperparameters | None = None
    ) -> jobs_pb2.TrainingJob:
        """A new attempt; with `hyperparameters`, the fields set in it change (the attempt
        then starts over from step 0)."""
        request = jobs_pb2.RetryJobRequest(id=job_id)
        if hyperparameters is not None:
            request.hyperparameters.CopyFrom(hyperparameters)
            request.update_mask.paths.extend(
                f"hyperparameters.{f.name}" for f, _ in hyperparameters.ListFields()
            )
        job: jobs_pb2.TrainingJob = await self._unary(self._jobs.RetryJob, request)
        return job

    def watch_job(self, job_id: str, after_sequence: int = 0) -> AsyncIterator[jobs_pb2.JobEvent]:
        """One WatchJob stream (events after `after_sequence`, then live ones). See
        `watch_job_resilient` for one that reattaches after a dropped connection."""
        return self._stream(
            self._jobs.WatchJob, jobs_pb2.WatchJobRequest(id=job_id, after_sequence=after_sequence)
        )

    async def watch_job_resilient(
        self,
        job_id: str,
        *,
        after_sequence: int = 0,
        retries: int = 10,
        backoff: float = 0.5,
        on_reconnect: Callable[[int, int], Awaitable[None] | None] | None = None,
    ) -> AsyncIterator[jobs_pb2.JobEvent]:
        """Job events until the terminal `final` one, reattaching with `after_sequence`
        (so nothing is lost or repeated) when the stream drops (UNAVAILABLE, or an end
        without `final`). Gives up after `retries` failed attempts in a row."""
        last = after_sequence
        failures = 0
        while True:
            try:
                async for event in self.watch_job(job_id, last):
                    failures = 0
                    if event.sequence:
                        last = max(last, event.sequence)
                    yield event
                    if event.WhichOneof("event") == "final":
                        return
            except Unavailable:
                pass  # a dropped stream: reattach below from the last sequence seen
            failures += 1
            if failures > retries:
                raise Unavailable(t("train.watch_gave_up"))
            if on_reconnect is not None:
                maybe = on_reconnect(failures, last)
                if maybe is not None:
                    await maybe
            await asyncio.sleep(min(backoff * 2 ** (failures - 1), 10.0))

    async def list_metrics(self, job_id: str) -> list[jobs_pb2.MetricPoint]:
        return await self._pages(
            self._jobs.ListMetrics,
            jobs_pb2.ListMetricsRequest(job_id=job_id, page_size=1000),
            "metric_points",
        )

    async def list_models(self) -> list[models_pb2.ModelArtifact]:
        return await self._pages(
            self._models.ListModels, models_pb2.ListModelsRequest(page_size=200), "models"
        )

    async def get_model(self, model_id: str) -> models_pb2.ModelArtifact:
        m: models_pb2.ModelArtifact = await self._unary(
            self._models.GetModel, models_pb2.GetModelRequest(id=model_id)
        )
        return m

    async def rename_model(self, model_id: str, name: str) -> models_pb2.ModelArtifact:
        request = models_pb2.UpdateModelRequest(
            model=models_pb2.ModelArtifact(id=model_id, name=name)
        )
        request.update_mask.paths.append("name")
        m: models_pb2.ModelArtifact = await self._unary(self._models.UpdateModel, request)
        return m

    async def delete_model(self, model_id: str) -> None:
        await self._unary(self._models.DeleteModel, models_pb2.DeleteModelRequest(id=model_id))

    async def promote_checkpoint(
        self, job_id: str, checkpoint_id: str, name: str = ""
    ) -> models_pb2.ModelArtifact:
        m: models_pb2.ModelArtifact = await self._unary(
            self._models.PromoteCheckpoint,
            models_pb2.PromoteCheckpointRequest(
                job_id=job_id, checkpoint_id=checkpoint_id, name=name
            ),
        )
        return m

    async def list_checkpoints(self, job_id: str) -> list[jobs_pb2.Checkpoint]:
        return await self._pages(
            self._jobs.ListCheckpoints,
            jobs_pb2.ListCheckpointsRequest(job_id=job_id, page_size=200),
            "checkpoints",
        )

    async def create_clone(
        self, name: str, *, persona: str = "", base_model: str = ""
    ) -> clones_pb2.Clone:
        c: clones_pb2.Clone = await self._unary(
            self._clones.CreateClone,
            clones_pb2.CreateCloneRequest(name=name, persona_prompt=persona, base_model=base_model),
        )
        return c

    async def list_clones(self) -> list[clones_pb2.Clone]:
        return await self._pages(
            self._clones.ListClones, clones_pb2.ListClonesRequest(page_size=200), "clones"
        )

    async def get_clone(self, clone_id: str) -> clones_pb2.Clone:
        c: clones_pb2.Clone = await self._unary(
            self._clones.GetClone, clones_pb2.GetCloneRequest(id=clone_id)
        )
        return c

    # ---- image LoRAs ----------------------------------------------------------------

    async def create_image_lora(
        self, name: str, kind: str, trigger_word: str
    ) -> image_loras_pb2.ImageLora:
        """An image LoRA in DRAFT; `kind`: style, character or product (LORA_KINDS)."""
        if kind not in LORA_KINDS:
            raise UsageError(t("error.bad_choice", value=kind, choices=" | ".join(LORA_KINDS)))
        lora: image_loras_pb2.ImageLora = await self._unary(
            self._image_loras.CreateImageLora,
            image_loras_pb2.CreateImageLoraRequest(
                name=name, kind=LORA_KINDS[kind], trigger_word=trigger_word
            ),
        )
        return lora

    async def get_image_lora(self, lora_id: str) -> image_loras_pb2.ImageLora:
        lora: image_loras_pb2.ImageLora = await self._unary(
            self._image_loras.GetImageLora, image_loras_pb2.GetImageLoraRequest(id=lora_id)
        )
        return lora

    async def list_image_loras(self, limit: int | None = None) -> list[image_loras_pb2.ImageLora]:
        return await self._pages(
            self._image_loras.ListImageLoras,
            image_loras_pb2.ListImageLorasRequest(page_size=200),
            "image_loras",
            limit,
        )

    async def update_image_lora(
        self, lora_id: str, *, name: str | None = None, trigger_word: str | None = None
    ) -> image_loras_pb2.ImageLora:
        """Renames it and/or changes its trigger word (only the arguments given change)."""
        lora = image_loras_pb2.ImageLora(
            id=lora_id, name=name or "", trigger_word=trigger_word or ""
        )
        paths = [p for p, v in (("name", name), ("trigger_word", trigger_word)) if v is not None]
        updated: image_loras_pb2.ImageLora = await self._unary(
            self._image_loras.UpdateImageLora,
            image_loras_pb2.UpdateImageLoraRequest(
                image_lora=lora, update_mask=field_mask_pb2.FieldMask(paths=paths)
            ),
        )
        return updated

    async def delete_image_lora(self, lora_id: str) -> None:
        await self._unary(
            self._image_loras.DeleteImageLora, image_loras_pb2.DeleteImageLoraRequest(id=lora_id)
        )

    async def add_reference_image(
        self, lora_id: str, file_id: str, caption: str = ""
    ) -> image_loras_pb2.ImageLora:
        """Adds a stored image (bucket `training-images` or `images`) as a reference."""
        lora: image_loras_pb2.ImageLora = await self._unary(
            self._image_loras.AddReferenceImage,
            image_loras_pb2.AddReferenceImageRequest(
                image_lora=lora_id, file_id=file_id, caption=caption
            ),
        )
        return lora

    async def upload_reference_image(
        self,
        lora_id: str,
        path: Path,
        *,
        caption: str = "",
        progress: Progress | None = None,
    ) -> image_loras_pb2.ImageLora:
        """Uploads a local image to the `training-images` bucket and adds it as a
        reference. A file over the server's 10 MiB limit is refused before uploading."""
        size = await asyncio.to_thread(os.path.getsize, path)
        if size > MAX_REFERENCE_BYTES:
            raise UsageError(t("lora.too_large", name=path.name, mib=f"{size / 2**20:.1f}"))
        f = await self.upload(
            path, bucket="training-images", labels={"purpose": "image-lora"}, progress=progress
        )
        return await self.add_reference_image(lora_id, f.id, caption)

    async def remove_reference_image(
        self, lora_id: str, reference_image_id: str
    ) -> image_loras_pb2.ImageLora:
        lora: image_loras_pb2.ImageLora = await self._unary(
            self._image_loras.RemoveReferenceImage,
            image_loras_pb2.RemoveReferenceImageRequest(
                image_lora=lora_id, reference_image=reference_image_id
            ),
        )
        return lora

    async def start_image_lora(
        self, lora_id: str, *, executor: str | None = None, steps: int = 0
    ) -> image_loras_pb2.ImageLora:
        """Queues training (a retry on FAILED/CANCELLED: the same images again);
        `executor`: replicate, local or simulate (None: the server's default); `steps` 0:
        the executor's default."""
        if executor is not None and executor not in LORA_EXECUTORS:
            raise UsageError(
                t("error.bad_choice", value=executor, choices=" | ".join(LORA_EXECUTORS))
            )
        lora: image_loras_pb2.ImageLora = await self._unary(
            self._image_loras.StartTraining,
            image_loras_pb2.StartTrainingRequest(
                image_lora=lora_id,
                executor=LORA_EXECUTORS[executor]
                if executor
                else image_loras_pb2.IMAGE_LORA_EXECUTOR_UNSPECIFIED,
                steps=steps,
            ),
        )
        return lora

    async def cancel_image_lora(self, lora_id: str) -> image_loras_pb2.ImageLora:
        lora: image_loras_pb2.ImageLora = await self._unary(
            self._image_loras.CancelTraining,
            image_loras_pb2.CancelTrainingRequest(image_lora=lora_id),
        )
        return lora

    async def watch_image_lora(
        self, lora_id: str, *, poll: float = 0.5, retries: int = 10
    ) -> AsyncIterator[image_loras_pb2.ImageLora]:
        """The image LoRA each time its status or progress changes, until training ends
        (READY, FAILED, CANCELLED). Polls GetImageLora: it covers every executor alike
        (a Replicate training has no job to watch). The service unavailable is waited out
        with a doubling pause, up to `retries` times in a row."""
        seen: tuple[int, float] | None = None
        failures = 0
        while True:
            try:
                lora = await self.get_image_lora(lora_id)
            except Unavailable:
                failures += 1
                if failures > retries:
                    raise
                await asyncio.sleep(min(poll * 2**failures, 10.0))
                continue
            failures = 0
            if (lora.status, lora.progress) != seen:
                seen = (lora.status, lora.progress)
                yield lora
            if lora.status in LORA_SETTLED:
                return
            await asyncio.sleep(poll)

    def generate_images(
        self,
        lora_id: str,
        prompt: str,
        *,
        lora_scale: float | None = None,
        num_outputs: int = 0,
        aspect_ratio: str = "",
        seed: int | None = None,
    ) -> AsyncIterator[image_loras_pb2.GenerateImagesEvent]:
        """Generates with a READY image LoRA: `queued` (the prompt as it runs, the
        trigger word prepended when missing), `progress`, each `image` as it lands, then
        `done`. `aspect_ratio`: one of ASPECT_RATIOS ("" = 1:1)."""
        if aspect_ratio and aspect_ratio not in ASPECT_RATIOS:
            raise UsageError(
                t("error.bad_choice", value=aspect_ratio, choices=" | ".join(ASPECT_RATIOS))
            )
        request = image_loras_pb2.GenerateImagesRequest(
            image_lora=lora_id,
            prompt=prompt,
            num_outputs=num_outputs,
            aspect_ratio=ASPECT_RATIOS.get(aspect_ratio, image_loras_pb2.ASPECT_RATIO_UNSPECIFIED),
        )
        if lora_scale is not None:
            request.lora_scale = lora_scale
        if seed is not None:
            request.seed = seed
        return self._stream(self._image_loras.GenerateImages, request)

    async def get_generation(self, generation_id: str) -> image_loras_pb2.Generation:
        g: image_loras_pb2.Generation = await self._unary(
            self._image_loras.GetGeneration, image_loras_pb2.GetGenerationRequest(id=generation_id)
        )
        return g

    async def list_generations(
        self, lora_id: str = "", limit: int | None = 50
    ) -> list[image_loras_pb2.Generation]:
        """The caller's generations, newest first (of one image LoRA with `lora_id`)."""
        return await self._pages(
            self._image_loras.ListGenerations,
            image_loras_pb2.ListGenerationsRequest(image_lora=lora_id, page_size=200),
            "generations",
            limit,
        )


def _provider(name: str) -> auth_pb2.Provider.ValueType:
    if name not in PROVIDERS:
        raise UsageError(t("error.bad_choice", value=name, choices=" | ".join(PROVIDERS)))
    return PROVIDERS[name]


def _request_id() -> tuple[tuple[str, str], tuple[str, str]]:
    """Metadata of every call: a request id, and the language errors should be told in."""
    return (("x-request-id", uuid.uuid4().hex), ("accept-language", lang()))


def _file_digest(path: Path) -> tuple[int, str]:
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()
