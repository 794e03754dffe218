"""A small real mesh for the client's chat and file flows: the real auth, storage (local
backend), RAG and chat services and the loopback Gemini server, each on loopback ports."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from client import AsyncClient, Credentials, Endpoints
from services.auth.server import make_spec as auth_spec
from services.chat.config import ChatSettings
from services.chat.server import make_spec as chat_spec
from services.common import db
from services.common.server import App
from services.rag.config import RagSettings
from services.rag.server import make_spec as real_rag_spec
from services.storage.config import StorageSettings
from services.storage.server import make_spec as storage_spec
from services.training.config import TrainingSettings
from services.training.server import make_spec as training_spec
from services.training.worker import Worker
from tests.client.conftest import Cli, auth_settings
from tests.helpers.gemini import GeminiServer
from tests.helpers.identity import secret, worker_channel
from tests.helpers.services import running


@dataclass
class Mesh:
    auth: App
    storage: App
    rag_app: App
    chat: App
    gemini: GeminiServer
    bootstrap_token: str

    def env(self) -> dict[str, str]:
        """The CLI's per-service address overrides for this mesh."""
        return {
            "AIVERA_AUTH_ADDR": f"127.0.0.1:{self.auth.grpc_port}",
            "AIVERA_STORAGE_ADDR": f"127.0.0.1:{self.storage.grpc_port}",
            "AIVERA_RAG_ADDR": f"127.0.0.1:{self.rag_app.grpc_port}",
            "AIVERA_CHAT_ADDR": f"127.0.0.1:{self.chat.grpc_port}",
        }


@asynccontextmanager
async def start_mesh(
    database_url: str, *, storage_public_url: str | None = None, **auth_overrides: Any
) -> AsyncIterator[Mesh]:
    """`storage_public_url`: the base of signed file URLs (a gateway's origin, for the
    browser console's tests); default the storage service's own HTTP port."""
    data = Path(tempfile.mkdtemp(prefix="aivera-client-"))
    a_settings = auth_settings(database_url, **auth_overrides)
    async with running(auth_spec(a_settings), a_settings) as auth_app:
        common: dict[str, Any] = {
            "aivera_env": "test",
            "database_url": database_url,
            "auth_addr": f"127.0.0.1:{auth_app.grpc_port}",
        }
        s_settings = StorageSettings(
            **common,
            aivera_service_secret=SecretStr(secret("storage")),
            data_dir=data,
            storage_public_url=storage_public_url,
        )
        async with running(storage_spec(s_settings), s_settings) as storage_app:
            r_settings = RagSettings(
                aivera_service_secret=SecretStr(secret("rag")),
                **common,
                storage_addr=f"127.0.0.1:{storage_app.grpc_port}",
                data_dir=data,
                qdrant_path=data / "qdrant",
            )
            async with (
                running(real_rag_spec(r_settings), r_settings) as rag_app,
                GeminiServer() as gemini,
            ):
                c_settings = ChatSettings(
                    aivera_service_secret=SecretStr(secret("chat")),
                    **common,
                    storage_addr=f"127.0.0.1:{storage_app.grpc_port}",
                    rag_addr=f"127.0.0.1:{rag_app.grpc_port}",
                    gemini_base_url=gemini.base_url,
                    provider_retry_attempts=2,
                    provider_retry_initial_delay_seconds=0.01,
                    turn_flush_interval_seconds=0.1,
                    chat_models_dir=data / "models",
                    attachment_wait_seconds=5,
                    chat_spool_dir=data / "chat-spool",
                )
                async with running(chat_spec(c_settings), c_settings) as chat_app:
                    yield Mesh(
                        auth=auth_app,
                        storage=storage_app,
                        rag_app=rag_app,
                        chat=chat_app,
                        gemini=gemini,
                        bootstrap_token=a_settings.aivera_bootstrap_admin_token.get_secret_value(),
                    )


@dataclass
class TrainMesh:
    """The real auth, storage and training services (with RAG when asked) and an
    in-process training worker; `bootstrap` is the admin's static token."""

    auth: App
    storage: App
    training: App
    bootstrap: str

    def env(self) -> dict[str, str]:
        return {
            "AIVERA_AUTH_ADDR": f"127.0.0.1:{self.auth.grpc_port}",
            "AIVERA_STORAGE_ADDR": f"127.0.0.1:{self.storage.grpc_port}",
            "AIVERA_TRAINING_ADDR": f"127.0.0.1:{self.training.grpc_port}",
            "AIVERA_LANG": "",
        }


@asynccontextmanager
async def start_train_mesh(
    database_url: str, data: Path, *, rag: bool = True, **training: Any
) -> AsyncIterator[TrainMesh]:
    """The training mesh on loopback with the `simulate` executor and fast timings;
    `training` overrides TrainingSettings. Files live under `data`."""
    for sub in ("storage", "rag"):
        (data / sub).mkdir(parents=True, exist_ok=True)
    a = auth_settings(database_url, access_token_ttl_seconds=3600)
    async with running(auth_spec(a), a) as auth_app, contextlib.AsyncExitStack() as stack:
        common: dict[str, Any] = {
            "aivera_env": "test",
            "database_url": database_url,
            "auth_addr": f"127.0.0.1:{auth_app.grpc_port}",
        }
        s = StorageSettings(
            **common, aivera_service_secret=SecretStr(secret("storage")), data_dir=data / "storage"
        )
        storage_app = await stack.enter_async_context(running(storage_spec(s), s))
        extra: dict[str, Any] = {}
        if rag:
            r = RagSettings(
                aivera_service_secret=SecretStr(secret("rag")),
                **common,
                storage_addr=f"127.0.0.1:{storage_app.grpc_port}",
                data_dir=data / "rag",
                qdrant_path=data / "rag" / "qdrant",
            )
            rag_app = await stack.enter_async_context(running(real_rag_spec(r), r))
            extra["rag_addr"] = f"127.0.0.1:{rag_app.grpc_port}"
        t = TrainingSettings(
            **{
                "aivera_service_secret": SecretStr(secret("training")),
                **common,
                "storage_addr": f"127.0.0.1:{storage_app.grpc_port}",
                **extra,
                "training_executor": "simulate",
                "training_heartbeat_seconds": 0.5,
                "training_lease_seconds": 4.0,
                "training_poll_seconds": 0.2,
                "training_watch_heartbeat_seconds": 1.0,
                "training_simulate_step_seconds": 0.05,
                "training_torch_threads": 1,
                **training,
            }
        )
        training_app = await stack.enter_async_context(running(training_spec(t), t))
        pool = await db.create_pool(
            database_url, schema="training", service="w", min_size=1, max_size=2
        )
        chan = worker_channel(t)
        worker = Worker(t, pool, chan)
        task = asyncio.create_task(worker.run(None))
        try:
            yield TrainMesh(
                auth_app,
                storage_app,
                training_app,
                a.aivera_bootstrap_admin_token.get_secret_value(),
            )
        finally:
            worker.shutdown.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 10)
            await chan.close()
            await pool.close()


async def signed_in_cli(m: TrainMesh, config_dir: Path) -> Cli:
    """A new user, signed in with the CLI (`aivera login`) in `config_dir`."""
    endpoints = Endpoints.resolve(env=m.env())
    async with AsyncClient(endpoints, store=False, credentials=Credentials()) as admin:
        await admin.login(m.bootstrap)
        created = await admin.create_user("t-" + uuid.uuid4().hex[:10])
    cli = Cli(config_dir, m.env())
    r = await cli("login", input=created.static_token + "\n")
    assert r.exit_code == 0, r.output
    return cli
