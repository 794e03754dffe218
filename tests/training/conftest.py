"""Fixtures of the training tests: a tiny Llama folder, the real storage service, the
training service, and helpers to upload datasets and call the API as a user."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from pydantic import SecretStr

from aivera.storage.v1 import storage_pb2, storage_pb2_grpc
from aivera.training.v1 import (
    clones_pb2_grpc,
    datasets_pb2,
    datasets_pb2_grpc,
    jobs_pb2,
    jobs_pb2_grpc,
    models_pb2_grpc,
    notifications_pb2_grpc,
)
from services.common import db
from services.common.channels import open_channel
from services.common.server import App
from services.storage.config import StorageSettings
from services.storage.server import make_spec as storage_spec
from services.training.config import TrainingSettings
from services.training.server import make_spec as training_spec
from services.training.worker import Worker
from tests.helpers.services import bearer, channel, running
from tests.helpers.tiny import build_tiny_model
from tests.helpers.tokens import Keyring


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture(scope="module")
def keyring() -> Keyring:
    return Keyring()


@pytest.fixture(scope="module")
def module_token() -> str:
    return "test-internal-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def rag_addr() -> str:
    """No RAG service by default (clone creation answers UNAVAILABLE)."""
    return "127.0.0.1:1"


@pytest.fixture(scope="module")
def training_overrides() -> dict[str, Any]:
    """Settings of the module's training service beyond the defaults below."""
    return {}


@dataclass
class Env:
    storage: App
    training: App
    settings: TrainingSettings
    keyring: Keyring
    chan: grpc.aio.Channel
    storage_chan: grpc.aio.Channel
    tiny: str


@pytest.fixture(scope="module")
async def env(
    database_url: str,
    keyring: Keyring,
    tiny_model: Path,
    tmp_path_factory: pytest.TempPathFactory,
    rag_addr: str,
    training_overrides: dict[str, Any],
) -> AsyncIterator[Env]:
    data_dir = tmp_path_factory.mktemp("storage")
    s_settings = StorageSettings(
        database_url=SecretStr(database_url),
        data_dir=data_dir,
        storage_backend="local",
    )
    async with running(storage_spec(s_settings), s_settings, verifier=keyring.verifier()) as st:
        base: dict[str, Any] = dict(
            database_url=SecretStr(database_url),
            storage_addr=f"127.0.0.1:{st.grpc_port}",
            rag_addr=rag_addr,
            allowed_base_models=[str(tiny_model)],
            training_executor="peft",
            training_heartbeat_seconds=0.5,
            training_lease_seconds=4.0,
            training_poll_seconds=0.3,
            training_watch_heartbeat_seconds=2.0,
            training_simulate_step_seconds=0.05,
            training_torch_threads=1,
        )
        t_settings = TrainingSettings(**{**base, **training_overrides})
        async with running(
            training_spec(t_settings), t_settings, verifier=keyring.verifier()
        ) as tr:
            chan = channel(tr)
            schan = channel(st)
            yield Env(st, tr, t_settings, keyring, chan, schan, str(tiny_model))
            await chan.close()
            await schan.close()


class User:
    """A user's view of the API."""

    def __init__(self, env: Env, user_id: str | None = None) -> None:
        self.env = env
        self.id = user_id or str(uuid.uuid4())
        self.md = bearer(env.keyring.mint(self.id, ttl=3600))
        self.datasets = datasets_pb2_grpc.DatasetServiceStub(env.chan)
        self.jobs = jobs_pb2_grpc.TrainingServiceStub(env.chan)
        self.models = models_pb2_grpc.ModelServiceStub(env.chan)
        self.clones = clones_pb2_grpc.CloneServiceStub(env.chan)
        self.notes = notifications_pb2_grpc.NotificationServiceStub(env.chan)
        self.storage = storage_pb2_grpc.StorageServiceStub(env.storage_chan)

    async def upload(
        self,
        content: bytes,
        filename: str = "data.jsonl",
        bucket: storage_pb2.Bucket.ValueType = storage_pb2.BUCKET_DATASETS,
    ) -> str:
        async def reqs() -> AsyncIterator[storage_pb2.UploadRequest]:
            yield storage_pb2.UploadRequest(
                header=storage_pb2.UploadHeader(
                    bucket=bucket, filename=filename, size_bytes=len(content)
                )
            )
            if content:
                yield storage_pb2.UploadRequest(chunk=content)

        f = await self.storage.Upload(reqs(), metadata=self.md)
        return str(f.id)

    async def dataset(
        self, records: list[Any] | bytes, *, wait: bool = True, max_seq_length: int = 0
    ) -> datasets_pb2.Dataset:
        raw = records if isinstance(records, bytes) else jsonl(records)
        file_id = await self.upload(raw)
        ds: datasets_pb2.Dataset = await self.datasets.CreateDataset(
            datasets_pb2.CreateDatasetRequest(
                name="d", file_id=file_id, base_model=self.env.tiny, max_seq_length=max_seq_length
            ),
            metadata=self.md,
        )
        if wait:
            ds = await self.wait_dataset(ds.id)
        return ds

    async def wait_dataset(self, ds_id: str, timeout: float = 30) -> datasets_pb2.Dataset:
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while True:
            ds: datasets_pb2.Dataset = await self.datasets.GetDataset(
                datasets_pb2.GetDatasetRequest(id=ds_id), metadata=self.md
            )
            if ds.status != datasets_pb2.DATASET_STATUS_VALIDATING or loop.time() > end:
                return ds
            await asyncio.sleep(0.1)

    async def job(self, dataset_id: str, **kw: Any) -> jobs_pb2.TrainingJob:
        hp = kw.pop("hp", None) or jobs_pb2.Hyperparameters(max_steps=4, checkpoint_every_steps=2)
        created: jobs_pb2.TrainingJob = await self.jobs.CreateJob(
            jobs_pb2.CreateJobRequest(dataset_id=dataset_id, hyperparameters=hp, **kw),
            metadata=self.md,
        )
        return created

    async def wait_job(
        self, job_id: str, statuses: tuple[int, ...], timeout: float = 60
    ) -> jobs_pb2.TrainingJob:
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while True:
            job: jobs_pb2.TrainingJob = await self.jobs.GetJob(
                jobs_pb2.GetJobRequest(id=job_id), metadata=self.md
            )
            if job.status in statuses:
                return job
            if loop.time() > end:
                raise AssertionError(f"job stuck in {jobs_pb2.JobStatus.Name(job.status)}: {job}")
            await asyncio.sleep(0.1)


def jsonl(records: list[Any]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


def chat(q: str, a: str, system: str | None = None) -> dict[str, Any]:
    messages = [{"role": "system", "content": system}] if system else []
    messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    return {"messages": messages}


MEMO = [
    chat(f"What is fact {i}?", f"Fact {i} is that {w} is {c}.")
    for i, (w, c) in enumerate(
        [
            ("the sky", "blue"),
            ("grass", "green"),
            ("snow", "white"),
            ("coal", "black"),
            ("the sun", "bright"),
            ("ice", "cold"),
        ]
    )
]


def code_of(exc: grpc.aio.AioRpcError) -> grpc.StatusCode:
    return exc.code()


@contextlib.asynccontextmanager
async def running_worker(env: Env, **settings: Any) -> AsyncIterator[Worker]:
    """An in-process worker on the module's database and storage; `settings` override the
    module's (a device type it bills as, the hardware classes it claims, ...)."""
    pool = await db.create_pool(
        env.settings.dsn(), schema="training", service="w", min_size=1, max_size=4
    )
    chan = open_channel(env.settings.storage_addr)
    update = {"worker_id": f"test-worker-{uuid.uuid4().hex[:6]}", **settings}
    w = Worker(env.settings.model_copy(update=update), pool, chan)
    task = asyncio.create_task(w.run())
    try:
        yield w
    finally:
        w.shutdown.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 30)
        await chan.close()
        await pool.close()
