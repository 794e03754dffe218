"""The whole mesh for the robustness suite, every service real (auth, storage on the local
backend, RAG, training without a worker, chat against the loopback Gemini server), and
three users: A (the victim: one of each resource, carrying marker text), B (the caller
whose requests are generated; one of each resource too) and C (the only user admin calls
may name, so generated admin calls never disable A or B)."""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from PIL import Image
from pydantic import SecretStr

from aivera.auth.v1 import auth_pb2, auth_pb2_grpc
from aivera.chat.v1 import chat_pb2, chat_pb2_grpc
from aivera.rag.v1 import rag_pb2, rag_pb2_grpc
from aivera.storage.v1 import storage_pb2, storage_pb2_grpc
from aivera.training.v1 import (
    clones_pb2,
    clones_pb2_grpc,
    datasets_pb2,
    datasets_pb2_grpc,
    image_loras_pb2,
    image_loras_pb2_grpc,
    jobs_pb2,
    jobs_pb2_grpc,
)
from services.auth.server import make_spec as auth_spec
from services.chat.config import ChatSettings
from services.chat.server import make_spec as chat_spec
from services.common.server import App
from services.rag.config import RagSettings
from services.rag.server import make_spec as rag_spec
from services.storage.config import StorageSettings
from services.storage.server import make_spec as storage_spec
from services.training.config import TrainingSettings
from services.training.server import make_spec as training_spec
from tests.helpers.auth import make_settings as auth_settings
from tests.helpers.gemini import GeminiServer
from tests.helpers.identity import secret
from tests.helpers.services import bearer, running
from tests.helpers.tiny import build_tiny_model

Metadata = tuple[tuple[str, str], ...]


@dataclass
class User:
    """A signed-in user and the resources seeded for them."""

    id: str
    md: Metadata
    # Resource ids by kind ("chat", "knowledge_base", "document", "file", ...).
    ids: dict[str, str] = field(default_factory=dict)
    # Page tokens of this user's lists (a page token is a credential of sorts).
    page_tokens: list[str] = field(default_factory=list)
    # Text only this user's resources hold: seen by anyone else, it leaked.
    markers: list[str] = field(default_factory=list)
    # Ids of this user's that the other user is never given (to name in requests): seen
    # in the other user's answers, they leaked.
    hidden: set[str] = field(default_factory=set)


@dataclass
class Mesh:
    apps: dict[str, App]  # by service folder: auth, storage, rag, chat, training
    channels: dict[str, grpc.aio.Channel]
    admin_md: Metadata
    a: User
    b: User
    c: User
    base_model: str


DATASET = "".join(
    json.dumps(
        {
            "messages": [
                {"role": "user", "content": f"Вопрос {i}?"},
                {"role": "assistant", "content": f"Ответ {i}."},
            ]
        },
        ensure_ascii=False,
    )
    + "\n"
    for i in range(4)
).encode()


async def _upload(ch: grpc.aio.Channel, md: Metadata, data: bytes, name: str, bucket: int) -> str:
    stub = storage_pb2_grpc.StorageServiceStub(ch)

    async def reqs() -> AsyncIterator[storage_pb2.UploadRequest]:
        yield storage_pb2.UploadRequest(
            header=storage_pb2.UploadHeader(bucket=bucket, filename=name, size_bytes=len(data))  # type: ignore[arg-type]
        )
        yield storage_pb2.UploadRequest(chunk=data)

    return str((await stub.Upload(reqs(), metadata=md)).id)


async def _user(mesh_ch: dict[str, grpc.aio.Channel], admin_md: Metadata, label: str) -> User:
    auth = auth_pb2_grpc.AuthServiceStub(mesh_ch["auth"])
    admin = auth_pb2_grpc.AuthAdminServiceStub(mesh_ch["auth"])
    created = await admin.CreateUser(
        auth_pb2.CreateUserRequest(username=f"{label}-{uuid.uuid4().hex[:8]}"), metadata=admin_md
    )
    session = await auth.ExchangeStaticToken(
        auth_pb2.ExchangeStaticTokenRequest(static_token=created.static_token)
    )
    return User(id=created.user.id, md=bearer(session.access_token))


async def seed(mesh: Mesh, user: User) -> None:
    """One of each resource for `user`, its text carrying a marker only it has."""
    ch, md = mesh.channels, user.md
    user.ids["user"] = user.id
    marker = "zq" + uuid.uuid4().hex[:10]
    user.markers.append(marker)
    await auth_pb2_grpc.AuthServiceStub(ch["auth"]).SetProviderKey(
        auth_pb2.SetProviderKeyRequest(
            provider=auth_pb2.PROVIDER_GEMINI, api_key=f"AIza{marker}" + "k" * 24
        ),
        metadata=md,
    )
    doc = f"# {marker} паспорт\n\nПриточная установка {marker} обслуживает этаж.\n".encode()
    user.ids["file"] = await _upload(ch["storage"], md, doc, f"{marker}.md", 1)
    rag = rag_pb2_grpc.RagServiceStub(ch["rag"])
    kb = await rag.CreateKnowledgeBase(
        rag_pb2.CreateKnowledgeBaseRequest(name=f"kb {marker}", description=marker), metadata=md
    )
    user.ids["knowledge_base"] = kb.id
    async for event in rag.IngestDocument(
        rag_pb2.IngestDocumentRequest(knowledge_base_id=kb.id, file_id=user.ids["file"]),
        metadata=md,
        timeout=60,
    ):
        user.ids["document"] = event.document_id or user.ids.get("document", "")
    chats = chat_pb2_grpc.ChatServiceStub(ch["chat"])
    chat = await chats.CreateChat(
        chat_pb2.CreateChatRequest(title=f"chat {marker}", knowledge_base_ids=[kb.id]),
        metadata=md,
    )
    user.ids["chat"] = chat.id
    async for event in chats.SendMessage(
        chat_pb2.SendMessageRequest(chat_id=chat.id, text=f"что такое {marker}?"),
        metadata=md,
        timeout=60,
    ):
        if event.message_id:
            user.ids["turn"] = event.message_id
    listed = await chats.ListMessages(chat_pb2.ListMessagesRequest(chat_id=chat.id), metadata=md)
    for i, message in enumerate(listed.messages):
        user.ids[f"message{i}"] = message.id
    user.hidden.add(user.ids["user"])
    user.hidden.update(m.id for m in listed.messages[1:])
    dataset_file = await _upload(ch["storage"], md, DATASET, f"{marker}.jsonl", 3)
    user.ids["dataset_file"] = dataset_file
    user.hidden.add(dataset_file)
    datasets = datasets_pb2_grpc.DatasetServiceStub(ch["training"])
    ds = await datasets.CreateDataset(
        datasets_pb2.CreateDatasetRequest(
            name=f"ds {marker}", file_id=dataset_file, base_model=mesh.base_model
        ),
        metadata=md,
    )
    user.ids["dataset"] = ds.id
    clones = clones_pb2_grpc.CloneServiceStub(ch["training"])
    clone = await clones.CreateClone(
        clones_pb2.CreateCloneRequest(
            name=f"clone {marker}", persona_prompt=marker, base_model=mesh.base_model
        ),
        metadata=md,
    )
    user.ids["clone"] = clone.id
    user.ids["clone_knowledge_base"] = clone.knowledge_base_id
    for _ in range(300):  # the dataset validates in the background
        ds = await datasets.GetDataset(datasets_pb2.GetDatasetRequest(id=ds.id), metadata=md)
        if ds.status != datasets_pb2.DATASET_STATUS_VALIDATING:
            break
        await asyncio.sleep(0.1)
    assert ds.status == datasets_pb2.DATASET_STATUS_READY, ds
    job = await jobs_pb2_grpc.TrainingServiceStub(ch["training"]).CreateJob(
        jobs_pb2.CreateJobRequest(name=f"job {marker}", dataset_id=ds.id, clone_id=clone.id),
        metadata=md,
    )
    user.ids["job"] = job.id
    await _seed_image_lora(ch, md, user, marker)
    # Page tokens of the user's own lists (page_size 1 with two messages: one follows).
    page = await chats.ListMessages(
        chat_pb2.ListMessagesRequest(chat_id=chat.id, page_size=1), metadata=md
    )
    if page.next_page_token:
        user.page_tokens.append(page.next_page_token)


def _png(seed: int) -> bytes:
    """A 512×512 PNG (the smallest side an image LoRA takes), distinct per seed."""
    img = Image.new("RGB", (512, 512), (seed % 256, (seed * 7) % 256, (seed * 13) % 256))
    img.putpixel((seed % 512, 0), (255, 255, 255))
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()


async def _seed_image_lora(
    ch: dict[str, grpc.aio.Channel], md: Metadata, user: User, marker: str
) -> None:
    """An image LoRA (DRAFT) with the four reference images training needs."""
    loras = image_loras_pb2_grpc.ImageLoraServiceStub(ch["training"])
    lora = await loras.CreateImageLora(
        image_loras_pb2.CreateImageLoraRequest(
            name=f"lora {marker}",
            kind=image_loras_pb2.IMAGE_LORA_KIND_STYLE,
            trigger_word=f"tok{uuid.uuid4().hex[:8]}",
        ),
        metadata=md,
    )
    for i in range(4):
        file_id = await _upload(ch["storage"], md, _png(i + len(marker)), f"{marker}-{i}.png", 5)
        user.hidden.add(file_id)
        lora = await loras.AddReferenceImage(
            image_loras_pb2.AddReferenceImageRequest(image_lora=lora.id, file_id=file_id),
            metadata=md,
        )
    user.ids["image_lora"] = lora.id
    user.ids["reference_image"] = lora.reference_images[0].id


@asynccontextmanager
async def full_mesh(database_url: str) -> AsyncIterator[Mesh]:
    data = Path(tempfile.mkdtemp(prefix="aivera-robust-"))
    tiny = str(await asyncio.to_thread(build_tiny_model, data / "tiny-llama"))
    async with AsyncExitStack() as stack:
        stack.callback(shutil.rmtree, data, ignore_errors=True)  # last, once all stopped
        a = auth_settings(database_url)
        auth_app = await stack.enter_async_context(running(auth_spec(a), a))
        common: dict[str, Any] = {
            "aivera_env": "test",
            "database_url": database_url,
            "auth_addr": f"127.0.0.1:{auth_app.grpc_port}",
            "log_level": "WARNING",
        }
        s = StorageSettings(
            **common, aivera_service_secret=SecretStr(secret("storage")), data_dir=data / "storage"
        )
        storage_app = await stack.enter_async_context(running(storage_spec(s), s))
        common["storage_addr"] = f"127.0.0.1:{storage_app.grpc_port}"
        r = RagSettings(
            **common,
            aivera_service_secret=SecretStr(secret("rag")),
            data_dir=data,
            qdrant_path=data / "qdrant",
        )
        rag_app = await stack.enter_async_context(running(rag_spec(r), r))
        common["rag_addr"] = f"127.0.0.1:{rag_app.grpc_port}"
        t = TrainingSettings(
            **common,
            aivera_service_secret=SecretStr(secret("training")),
            allowed_base_models=[tiny],
            training_executor="simulate",
        )
        training_app = await stack.enter_async_context(running(training_spec(t), t))
        common["training_addr"] = f"127.0.0.1:{training_app.grpc_port}"
        gemini = await stack.enter_async_context(GeminiServer())
        c = ChatSettings(
            **common,
            aivera_service_secret=SecretStr(secret("chat")),
            gemini_base_url=gemini.base_url,
            provider_retry_attempts=1,
            provider_retry_initial_delay_seconds=0.01,
            turn_flush_interval_seconds=0.1,
            local_model=tiny,
            local_max_new_tokens=4,
            chat_models_dir=data / "models",
            chat_adapters_dir=data / "adapters",
            chat_spool_dir=data / "chat-spool",
            attachment_wait_seconds=5,
        )
        chat_app = await stack.enter_async_context(running(chat_spec(c), c))
        apps = {
            "auth": auth_app,
            "storage": storage_app,
            "rag": rag_app,
            "training": training_app,
            "chat": chat_app,
        }
        channels = {
            name: await stack.enter_async_context(
                grpc.aio.insecure_channel(
                    f"127.0.0.1:{app.grpc_port}",
                    options=[("grpc.max_send_message_length", 64 * 1024 * 1024)],
                )
            )
            for name, app in apps.items()
        }
        stub = auth_pb2_grpc.AuthServiceStub(channels["auth"])
        admin_token = a.aivera_bootstrap_admin_token.get_secret_value()
        admin_md = bearer(
            (
                await stub.ExchangeStaticToken(
                    auth_pb2.ExchangeStaticTokenRequest(static_token=admin_token)
                )
            ).access_token
        )
        a_user, b_user, c_user = [await _user(channels, admin_md, x) for x in ("a", "b", "c")]
        mesh = Mesh(apps, channels, admin_md, a_user, b_user, c_user, base_model=tiny)
        await seed(mesh, mesh.a)
        await seed(mesh, mesh.b)
        yield mesh
