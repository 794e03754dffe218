"""Background work acts for a user on a grant, not on a bare user id: a training job created
while the user was signed in still reads its dataset and stores its adapter after the
user's access token has expired; once the user is disabled, the job's grant is void and
the worker cannot act for them any more (the job fails, nothing is read or written).

Real auth, storage and training services and a real worker, each with its own credential.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from pydantic import SecretStr

from aivera.storage.v1 import storage_pb2
from aivera.training.v1 import datasets_pb2, jobs_pb2
from client.config import Endpoints
from client.credentials import Credentials
from client.sdk import AsyncClient
from services.auth.server import make_spec as auth_spec
from services.common import db
from services.common.server import App
from services.storage.config import StorageSettings
from services.storage.server import make_spec as storage_spec
from services.training.config import TrainingSettings
from services.training.server import make_spec as training_spec
from services.training.worker import Worker
from tests.client.conftest import auth_settings
from tests.helpers.identity import secret, worker_channel
from tests.helpers.services import running
from tests.helpers.tiny import build_tiny_model

ACCESS_TTL = 3  # seconds: the job outlives the token it was created with
TERMINAL = {jobs_pb2.JOB_STATUS_SUCCEEDED, jobs_pb2.JOB_STATUS_FAILED}


@dataclass
class Mesh:
    auth: App
    storage: App
    training: App
    settings: TrainingSettings
    bootstrap: str

    def endpoints(self) -> Endpoints:
        return Endpoints.resolve(
            env={
                "AIVERA_AUTH_ADDR": f"127.0.0.1:{self.auth.grpc_port}",
                "AIVERA_STORAGE_ADDR": f"127.0.0.1:{self.storage.grpc_port}",
                "AIVERA_TRAINING_ADDR": f"127.0.0.1:{self.training.grpc_port}",
            }
        )


@pytest.fixture(scope="module")
async def mesh(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Mesh]:
    tiny = build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama")
    a = auth_settings(database_url, access_token_ttl_seconds=ACCESS_TTL)
    async with running(auth_spec(a), a) as auth_app:
        common: dict[str, Any] = {
            "aivera_env": "test",
            "database_url": database_url,
            "auth_addr": f"127.0.0.1:{auth_app.grpc_port}",
        }
        s = StorageSettings(
            **common,
            aivera_service_secret=SecretStr(secret("storage")),
            data_dir=tmp_path_factory.mktemp("storage"),
        )
        async with running(storage_spec(s), s) as storage_app:
            t = TrainingSettings(
                **common,
                aivera_service_secret=SecretStr(secret("training")),
                storage_addr=f"127.0.0.1:{storage_app.grpc_port}",
                allowed_base_models=[str(tiny)],
                training_executor="simulate",
                training_heartbeat_seconds=0.5,
                training_lease_seconds=4.0,
                training_poll_seconds=0.2,
                training_simulate_step_seconds=0.05,
                training_torch_threads=1,
                training_model_retention_seconds=0,
            )
            async with running(training_spec(t), t) as training_app:
                yield Mesh(
                    auth_app,
                    storage_app,
                    training_app,
                    t,
                    a.aivera_bootstrap_admin_token.get_secret_value(),
                )


@contextlib.asynccontextmanager
async def worker(settings: TrainingSettings) -> AsyncIterator[None]:
    pool = await db.create_pool(
        settings.dsn(), schema="training", service="w", min_size=1, max_size=2
    )
    chan = worker_channel(settings)
    w = Worker(settings, pool, chan)
    task = asyncio.create_task(w.run(None))
    try:
        yield
    finally:
        w.shutdown.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 10)
        await chan.close()
        await pool.close()


async def job_status(settings: TrainingSettings, job_id: str) -> tuple[int, str]:
    """The job's state read from the database (a disabled user can no longer ask)."""
    conn = await asyncpg.connect(settings.dsn())
    try:
        row = await conn.fetchrow(
            "SELECT status, error::text AS error FROM training.training_jobs WHERE id = $1",
            uuid.UUID(job_id),
        )
    finally:
        await conn.close()
    assert row is not None
    return int(row["status"]), str(row["error"] or "")


async def holds_grant(settings: TrainingSettings, job_id: str) -> bool:
    """Whether training still keeps a grant for the job (read from the database)."""
    conn = await asyncpg.connect(settings.dsn())
    try:
        n = await conn.fetchval(
            "SELECT count(*) FROM training.work_grants WHERE resource_id = $1", uuid.UUID(job_id)
        )
    finally:
        await conn.close()
    return bool(n)


async def until(
    settings: TrainingSettings, job_id: str, done: set[jobs_pb2.JobStatus.ValueType]
) -> tuple[int, str]:
    deadline = time.monotonic() + 60
    while True:
        status, message = await job_status(settings, job_id)
        if status in done or time.monotonic() > deadline:
            return status, message
        await asyncio.sleep(0.2)


async def queued_job(user: AsyncClient, tmp_path: Path, name: str) -> str:
    data = tmp_path / f"{name}.jsonl"
    data.write_text(
        "".join(
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": f"Q{i}?"},
                        {"role": "assistant", "content": f"A{i}."},
                    ]
                }
            )
            + "\n"
            for i in range(4)
        )
    )
    file = await user.upload(data, bucket="datasets")
    ds = await user.create_dataset(name, file.id)
    for _ in range(100):  # validation reads the file on the dataset's grant
        ds = await user.get_dataset(ds.id)
        if ds.status != datasets_pb2.DATASET_STATUS_VALIDATING:
            break
        await asyncio.sleep(0.1)
    assert ds.status == datasets_pb2.DATASET_STATUS_READY, ds
    job = await user.create_job(
        jobs_pb2.CreateJobRequest(
            dataset_id=ds.id,
            executor=jobs_pb2.EXECUTOR_SIMULATE,
            hyperparameters=jobs_pb2.Hyperparameters(max_steps=3),
        )
    )
    return job.id


async def queued(settings: TrainingSettings, job_id: str) -> None:
    """Validation (the dataset read on the job's grant) is done: the job waits for a worker."""
    status, message = await until(settings, job_id, {jobs_pb2.JOB_STATUS_QUEUED, *TERMINAL})
    assert status == jobs_pb2.JOB_STATUS_QUEUED, message


async def test_a_job_finishes_on_its_grant_and_stops_when_the_user_is_disabled(
    mesh: Mesh, tmp_path: Path
) -> None:
    async with AsyncClient(mesh.endpoints(), store=False, credentials=Credentials()) as admin:
        await admin.login(mesh.bootstrap)
        created = await admin.create_user("g-" + uuid.uuid4().hex[:10])
        async with AsyncClient(mesh.endpoints(), store=False, credentials=Credentials()) as user:
            await user.login(created.static_token)
            first = await queued_job(user, tmp_path, "first")
            await queued(mesh.settings, first)
            assert await holds_grant(mesh.settings, first)
            # Every access token the user had has expired before the work starts.
            await asyncio.sleep(ACCESS_TTL + 1)
            async with worker(mesh.settings):
                status, message = await until(mesh.settings, first, TERMINAL)
            assert status == jobs_pb2.JOB_STATUS_SUCCEEDED, message
            # Its work done, the job's grant is dropped with the final status.
            assert not await holds_grant(mesh.settings, first)
            # The adapter it stored is the user's, readable with the user's own token.
            models = await user.list_models()
            assert [m.job_id for m in models] == [first]
            # Deleted, its files are purged later by training's own right (the internal
            # PurgeFile, callers: training), not for the user, whose token is long gone.
            await user.delete_model(models[0].id)
            assert await mesh.training.spec.training.models.purge_once() == 1  # type: ignore[attr-defined]
            for f in models[0].files:
                assert (await user.get_file(f.file_id)).status == storage_pb2.FILE_STATUS_DELETED
            # A second job waits in the queue; then the user is disabled.
            second = await queued_job(user, tmp_path, "second")
            await queued(mesh.settings, second)
            await admin.set_user_status(created.user.id, active=False)
            async with worker(mesh.settings):
                status, message = await until(mesh.settings, second, TERMINAL)
            assert status == jobs_pb2.JOB_STATUS_FAILED, message
            assert "session" in message, message
            assert not await holds_grant(mesh.settings, second)
