"""The chat service under test, in a small real mesh: the real auth service (users, JWTs,
provider keys), the real storage service (local backend), a RAG double over gRPC (see
fakes.py), the loopback Gemini server, and the chat service itself, each on loopback."""

from __future__ import annotations

import asyncio
import tempfile
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2
from pydantic import SecretStr

from aivera.auth.v1 import auth_pb2, auth_pb2_grpc
from aivera.chat.v1 import chat_pb2, chat_pb2_grpc
from aivera.rag.v1 import rag_pb2
from aivera.storage.v1 import storage_pb2_grpc
from aivera.training.v1 import clones_pb2, models_pb2
from services.auth.server import make_spec as auth_spec
from services.chat.config import ChatSettings
from services.chat.server import make_spec as chat_spec
from services.common.config import CommonSettings
from services.common.server import App, ServiceSpec
from services.storage.config import StorageSettings
from services.storage.server import make_spec as storage_spec
from tests.chat.fakes import FakeRag, FakeTraining
from tests.helpers.auth import make_settings as auth_settings
from tests.helpers.gemini import GeminiServer
from tests.helpers.identity import secret
from tests.helpers.services import bearer, channel, running


@dataclass
class User:
    id: str
    token: str

    @property
    def md(self) -> tuple[tuple[str, str], ...]:
        return bearer(self.token)


@dataclass
class Mesh:
    auth: App
    storage: App
    rag_app: App
    chat: App
    rag: FakeRag
    training: FakeTraining
    gemini: GeminiServer
    chat_channel: grpc.aio.Channel
    auth_channel: grpc.aio.Channel
    storage_channel: grpc.aio.Channel
    bootstrap_token: str
    admin: User | None = None
    users: list[User] = field(default_factory=list)

    @property
    def stub(self) -> chat_pb2_grpc.ChatServiceStub:
        return chat_pb2_grpc.ChatServiceStub(self.chat_channel)

    @property
    def admin_stub(self) -> chat_pb2_grpc.PromptAdminServiceStub:
        return chat_pb2_grpc.PromptAdminServiceStub(self.chat_channel)

    @property
    def storage_stub(self) -> storage_pb2_grpc.StorageServiceStub:
        return storage_pb2_grpc.StorageServiceStub(self.storage_channel)

    async def _exchange(self, static: str) -> User:
        stub = auth_pb2_grpc.AuthServiceStub(self.auth_channel)
        reply = await stub.ExchangeStaticToken(
            auth_pb2.ExchangeStaticTokenRequest(static_token=static)
        )
        return User(reply.user.id, reply.access_token)

    async def admin_user(self) -> User:
        if self.admin is None:
            self.admin = await self._exchange(self.bootstrap_token)
        return self.admin

    async def new_user(self, gemini_key: str | None = None) -> User:
        admin = await self.admin_user()
        created = await auth_pb2_grpc.AuthAdminServiceStub(self.auth_channel).CreateUser(
            auth_pb2.CreateUserRequest(username="u-" + uuid.uuid4().hex[:10]),
            metadata=admin.md,
        )
        user = await self._exchange(created.static_token)
        if gemini_key is not None:
            await self.set_key(user, gemini_key)
        return user

    async def set_key(self, user: User, key: str) -> None:
        await auth_pb2_grpc.AuthServiceStub(self.auth_channel).SetProviderKey(
            auth_pb2.SetProviderKeyRequest(provider=auth_pb2.PROVIDER_GEMINI, api_key=key),
            metadata=user.md,
        )

    async def system(self, **values: Any) -> chat_pb2.SystemSettings:
        """Changes system settings as the admin (paths = the keyword names)."""
        admin = await self.admin_user()
        settings = chat_pb2.SystemSettings()
        paths = []
        for name, value in values.items():
            if name.startswith("limits_"):
                setattr(settings.limits, name[len("limits_") :], value)
                paths.append("limits." + name[len("limits_") :])
            elif isinstance(value, list):
                getattr(settings, name).extend(value)
                paths.append(name)
            else:
                setattr(settings, name, value)
                paths.append(name)
        updated: chat_pb2.SystemSettings = await self.admin_stub.UpdateSystemSettings(
            chat_pb2.UpdateSystemSettingsRequest(
                settings=settings, update_mask=field_mask_pb2.FieldMask(paths=paths)
            ),
            metadata=admin.md,
        )
        return updated

    async def chat_with_document(self, user: User, title: str = "Документ") -> chat_pb2.Chat:
        kb_id = self.rag.add_kb(user.id)
        await self.rag.add_document(user.id, kb_id, self.storage_stub, user.md)
        chat: chat_pb2.Chat = await self.stub.CreateChat(
            chat_pb2.CreateChatRequest(title=title, knowledge_base_ids=[kb_id]), metadata=user.md
        )
        return chat

    async def send(
        self, user: User, chat_id: str, text: str, **kw: Any
    ) -> list[chat_pb2.ChatEvent]:
        call = self.stub.SendMessage(
            chat_pb2.SendMessageRequest(chat_id=chat_id, text=text, **kw), metadata=user.md
        )
        return [event async for event in call]

    async def messages(self, user: User, chat_id: str) -> list[chat_pb2.Message]:
        reply = await self.stub.ListMessages(
            chat_pb2.ListMessagesRequest(chat_id=chat_id, page_size=200), metadata=user.md
        )
        return list(reply.messages)

    async def wait_settled(self, user: User, chat_id: str, timeout: float = 10) -> list[Any]:
        """The chat's messages once no answer is IN_PROGRESS."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            msgs = await self.messages(user, chat_id)
            if all(m.status != chat_pb2.MESSAGE_STATUS_IN_PROGRESS for m in msgs):
                return msgs
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError("turn did not settle")
            await asyncio.sleep(0.05)


def double_spec(name: str, services: list[tuple[Any, object]]) -> ServiceSpec:
    """A service of test doubles, served through the common runtime (auth, errors)."""

    async def build(app: App) -> list[tuple[Any, object]]:
        return services

    return ServiceSpec(name=name, port=0, http_port=0, build=build)


@pytest.fixture(scope="module")
async def mesh(database_url: str) -> AsyncIterator[Mesh]:
    async with build_mesh(database_url) as built:
        yield built


def _rag_spec(fake: FakeRag, settings: CommonSettings, real: bool, data: Path) -> Any:
    """The real RAG service, or the double."""
    if not real:
        spec = double_spec("rag", [(rag_pb2.DESCRIPTOR.services_by_name["RagService"], fake)])
        return running(spec, settings)
    from services.rag.config import RagSettings
    from services.rag.server import make_spec as rag_make_spec

    rag_settings = RagSettings(
        **{**settings.model_dump(), "aivera_service_secret": secret("rag")},
        data_dir=data / "rag",
        qdrant_path=data / "qdrant",
    )
    return running(rag_make_spec(rag_settings), rag_settings)


@asynccontextmanager
async def build_mesh(
    database_url: str, *, real_rag: bool = False, **chat_settings: Any
) -> AsyncIterator[Mesh]:
    """The mesh; `chat_settings` override the chat service's test settings."""
    data = Path(tempfile.mkdtemp(prefix="aivera-chat-"))
    a_settings = auth_settings(database_url)
    async with running(auth_spec(a_settings), a_settings) as auth_app:
        common: dict[str, Any] = {
            "aivera_env": "test",
            "database_url": database_url,
            "auth_addr": f"127.0.0.1:{auth_app.grpc_port}",
        }
        s_settings = StorageSettings(
            **common, aivera_service_secret=SecretStr(secret("storage")), data_dir=data
        )
        async with running(storage_spec(s_settings), s_settings) as storage_app:
            fake = FakeRag()
            training = FakeTraining()
            d_settings = CommonSettings(**common, storage_addr=f"127.0.0.1:{storage_app.grpc_port}")
            train = double_spec(
                "training",
                [
                    (clones_pb2.DESCRIPTOR.services_by_name["CloneService"], training),
                    (models_pb2.DESCRIPTOR.services_by_name["ModelService"], training),
                ],
            )
            async with (
                _rag_spec(fake, d_settings, real_rag, data) as rag_app,
                running(train, d_settings) as train_app,
                GeminiServer() as gemini,
            ):
                c_settings = ChatSettings(
                    **common,
                    storage_addr=f"127.0.0.1:{storage_app.grpc_port}",
                    rag_addr=f"127.0.0.1:{rag_app.grpc_port}",
                    training_addr=f"127.0.0.1:{train_app.grpc_port}",
                    gemini_base_url=gemini.base_url,
                    provider_retry_attempts=3,
                    provider_retry_initial_delay_seconds=0.01,
                    turn_flush_interval_seconds=0.1,
                    local_max_new_tokens=10,
                    chat_adapters_dir=data / "adapters",
                    attachment_wait_seconds=5,
                    chat_spool_dir=data / "spool",
                    turn_watch_poll_seconds=0.05,
                    aivera_service_secret=SecretStr(secret("chat")),
                    **chat_settings,
                )
                async with (
                    running(chat_spec(c_settings), c_settings) as chat_app,
                    channel(chat_app) as ch,
                    channel(auth_app) as auth_ch,
                    channel(storage_app) as storage_ch,
                ):
                    yield Mesh(
                        auth=auth_app,
                        storage=storage_app,
                        rag_app=rag_app,
                        chat=chat_app,
                        rag=fake,
                        training=training,
                        gemini=gemini,
                        chat_channel=ch,
                        auth_channel=auth_ch,
                        storage_channel=storage_ch,
                        bootstrap_token=a_settings.aivera_bootstrap_admin_token.get_secret_value(),
                    )


@pytest.fixture
def gemini(mesh: Mesh) -> GeminiServer:
    mesh.gemini.reset()
    mesh.gemini.valid_keys = None
    return mesh.gemini


async def code_of(call: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        result = await call if not hasattr(call, "__aiter__") else [e async for e in call]
        del result
    return info.value.code()
