"""The whole mesh, every service real: a dataset uploaded through storage trains (peft, on a
tiny Llama) into an adapter, observed live through WatchJob; the job's clone gets it as its
active model; the clone's knowledge is ingested by RAG; a chat with the clone answers
through the local base model + that adapter + that knowledge; deleting the clone makes its
knowledge unreachable at once."""

from __future__ import annotations

import asyncio
import contextlib
import json
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
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
    jobs_pb2,
    jobs_pb2_grpc,
)
from services.auth.server import make_spec as auth_spec
from services.chat.config import ChatSettings
from services.chat.server import make_spec as chat_spec
from services.common import db
from services.rag.config import RagSettings
from services.rag.server import make_spec as rag_spec
from services.storage.config import StorageSettings
from services.storage.server import make_spec as storage_spec
from services.training.config import TrainingSettings
from services.training.server import make_spec as training_spec
from services.training.worker import Worker
from tests.helpers.auth import make_settings as auth_settings
from tests.helpers.identity import secret, worker_channel
from tests.helpers.services import bearer, channel, running
from tests.helpers.tiny import build_tiny_model

KNOWLEDGE = (
    "# Паспорт вентиляции\n\n"
    "Приточная установка ПВ-1 обслуживает второй этаж; расход воздуха 4200 м³/ч.\n"
)
DATASET = [
    {
        "messages": [
            {"role": "user", "content": f"Что такое ПВ-{i}?"},
            {"role": "assistant", "content": f"ПВ-{i} это приточная установка номер {i}."},
        ]
    }
    for i in range(1, 7)
]


async def _upload(
    stub: storage_pb2_grpc.StorageServiceStub,
    md: tuple[tuple[str, str], ...],
    data: bytes,
    name: str,
    bucket: int,
) -> str:
    async def reqs() -> AsyncIterator[storage_pb2.UploadRequest]:
        yield storage_pb2.UploadRequest(
            header=storage_pb2.UploadHeader(bucket=bucket, filename=name, size_bytes=len(data))  # type: ignore[arg-type]
        )
        yield storage_pb2.UploadRequest(chunk=data)

    return str((await stub.Upload(reqs(), metadata=md)).id)


@pytest.fixture(scope="module")
async def mesh(database_url: str) -> AsyncIterator[dict[str, object]]:
    data = Path(tempfile.mkdtemp(prefix="aivera-e2e-"))
    tiny = await asyncio.to_thread(build_tiny_model, data / "tiny-llama")
    a = auth_settings(database_url)
    async with running(auth_spec(a), a) as auth_app:
        common: dict[str, Any] = {
            "aivera_env": "test",
            "database_url": database_url,
            "auth_addr": f"127.0.0.1:{auth_app.grpc_port}",
        }
        s = StorageSettings(
            **common, aivera_service_secret=SecretStr(secret("storage")), data_dir=data / "storage"
        )
        async with running(storage_spec(s), s) as storage_app:
            common["storage_addr"] = f"127.0.0.1:{storage_app.grpc_port}"
            r = RagSettings(
                aivera_service_secret=SecretStr(secret("rag")),
                **common,
                data_dir=data,
                qdrant_path=data / "qdrant",
            )
            async with running(rag_spec(r), r) as rag_app:
                common["rag_addr"] = f"127.0.0.1:{rag_app.grpc_port}"
                t = TrainingSettings(
                    aivera_service_secret=SecretStr(secret("training")),
                    **common,
                    allowed_base_models=[str(tiny)],
                    training_executor="peft",
                    training_heartbeat_seconds=0.5,
                    training_poll_seconds=0.2,
                    training_torch_threads=1,
                )
                async with running(training_spec(t), t) as training_app:
                    common["training_addr"] = f"127.0.0.1:{training_app.grpc_port}"
                    c = ChatSettings(
                        aivera_service_secret=SecretStr(secret("chat")),
                        **common,
                        local_model=str(tiny),
                        local_max_new_tokens=8,
                        chat_models_dir=data / "models",
                        chat_adapters_dir=data / "adapters",
                        turn_flush_interval_seconds=0.1,
                    )
                    async with running(chat_spec(c), c) as chat_app:
                        pool = await db.create_pool(
                            database_url, schema="training", service="w", min_size=1, max_size=2
                        )
                        chan = worker_channel(t)
                        worker = Worker(t, pool, chan)
                        task = asyncio.create_task(worker.run(None))
                        try:
                            yield {
                                "auth": auth_app,
                                "storage": storage_app,
                                "rag": rag_app,
                                "training": training_app,
                                "chat": chat_app,
                                "tiny": str(tiny),
                                "admin": a.aivera_bootstrap_admin_token.get_secret_value(),
                            }
                        finally:
                            worker.shutdown.set()
                            with contextlib.suppress(Exception):
                                await asyncio.wait_for(task, 15)
                            await chan.close()
                            await pool.close()


async def test_trained_adapter_and_knowledge_reach_a_clone_chat(
    mesh: dict[str, object],
) -> None:
    chans = {name: channel(mesh[name]) for name in ("auth", "storage", "rag", "training", "chat")}  # type: ignore[arg-type]
    try:
        auth = auth_pb2_grpc.AuthServiceStub(chans["auth"])
        admin = auth_pb2_grpc.AuthAdminServiceStub(chans["auth"])
        admin_md = bearer(
            (
                await auth.ExchangeStaticToken(
                    auth_pb2.ExchangeStaticTokenRequest(static_token=str(mesh["admin"]))
                )
            ).access_token
        )
        created = await admin.CreateUser(
            auth_pb2.CreateUserRequest(username="e2e-" + uuid.uuid4().hex[:8]), metadata=admin_md
        )
        session = await auth.ExchangeStaticToken(
            auth_pb2.ExchangeStaticTokenRequest(static_token=created.static_token)
        )
        md = bearer(session.access_token)
        storage = storage_pb2_grpc.StorageServiceStub(chans["storage"])
        datasets = datasets_pb2_grpc.DatasetServiceStub(chans["training"])
        jobs = jobs_pb2_grpc.TrainingServiceStub(chans["training"])
        clones = clones_pb2_grpc.CloneServiceStub(chans["training"])
        rag = rag_pb2_grpc.RagServiceStub(chans["rag"])
        chats = chat_pb2_grpc.ChatServiceStub(chans["chat"])

        # A dataset through storage, validated in the background.
        raw = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in DATASET).encode()
        file_id = await _upload(storage, md, raw, "pv.jsonl", storage_pb2.BUCKET_DATASETS)
        ds = await datasets.CreateDataset(
            datasets_pb2.CreateDatasetRequest(
                name="pv", file_id=file_id, base_model=str(mesh["tiny"])
            ),
            metadata=md,
        )
        for _ in range(300):
            ds = await datasets.GetDataset(datasets_pb2.GetDatasetRequest(id=ds.id), metadata=md)
            if ds.status != datasets_pb2.DATASET_STATUS_VALIDATING:
                break
            await asyncio.sleep(0.1)
        assert ds.status == datasets_pb2.DATASET_STATUS_READY, ds

        # A clone with knowledge ingested by RAG into its own knowledge base.
        clone = await clones.CreateClone(
            clones_pb2.CreateCloneRequest(
                name="Инженер",
                persona_prompt="Ты инженер по вентиляции.",
                base_model=str(mesh["tiny"]),
            ),
            metadata=md,
        )
        assert clone.knowledge_base_id
        doc_file = await _upload(
            storage, md, KNOWLEDGE.encode(), "паспорт.md", storage_pb2.BUCKET_DOCUMENTS
        )
        added = await clones.AddKnowledge(
            clones_pb2.AddKnowledgeRequest(id=clone.id, file_id=doc_file), metadata=md
        )
        assert added.document_id

        # Training, watched live until the final event.
        job = await jobs.CreateJob(
            jobs_pb2.CreateJobRequest(
                dataset_id=ds.id,
                clone_id=clone.id,
                name="pv",
                hyperparameters=jobs_pb2.Hyperparameters(max_steps=4, checkpoint_every_steps=2),
            ),
            metadata=md,
        )
        kinds: list[str] = []
        final = None
        async for event in jobs.WatchJob(
            jobs_pb2.WatchJobRequest(id=job.id), metadata=md, timeout=240
        ):
            kinds.append(event.WhichOneof("event") or "")
            if event.HasField("final"):
                final = event.final
        assert final is not None and final.status == jobs_pb2.JOB_STATUS_SUCCEEDED, final
        assert final.progress.steps.done == 4 and final.model_id
        assert "metric" in kinds and "checkpoint" in kinds and "status_changed" in kinds

        clone = await clones.GetClone(clones_pb2.GetCloneRequest(id=clone.id), metadata=md)
        assert clone.active_model_id == final.model_id
        assert clone.status == clones_pb2.CLONE_STATUS_READY

        # The document is searchable in the clone's knowledge base (once ingested).
        hits: list[rag_pb2.SearchHit] = []
        for _ in range(100):
            found = await rag.Search(
                rag_pb2.SearchRequest(knowledge_base_ids=[clone.knowledge_base_id], query="ПВ-1"),
                metadata=md,
            )
            hits = list(found.hits)
            if hits:
                break
            await asyncio.sleep(0.1)
        assert hits and "ПВ-1" in hits[0].text

        # A chat with the clone: local base model + the trained adapter + its knowledge.
        chat = await chats.CreateChat(
            chat_pb2.CreateChatRequest(title="клон", clone_id=clone.id), metadata=md
        )
        events = [
            e
            async for e in chats.SendMessage(
                chat_pb2.SendMessageRequest(chat_id=chat.id, text="Что такое ПВ-1?"),
                metadata=md,
                timeout=120,
            )
        ]
        assert events[-1].HasField("final"), events[-1]
        message = events[-1].final.message
        assert any("lora" in m for m in message.models_used), message.models_used
        assert any("ПВ-1" in r.text for r in message.search_results)
        phases = {e.phase_started.phase for e in events if e.HasField("phase_started")}
        assert chat_pb2.PHASE_LOCAL_CALL in phases

        # Deleting the clone makes its knowledge unreachable at once.
        await clones.DeleteClone(clones_pb2.DeleteCloneRequest(id=clone.id), metadata=md)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await rag.Search(
                rag_pb2.SearchRequest(knowledge_base_ids=[clone.knowledge_base_id], query="ПВ-1"),
                metadata=md,
            )
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        for ch in chans.values():
            await ch.close()
