"""The console's training studio and administration end to end: Debian's headless
Chromium (playwright-core, `web/e2e/studio.e2e.mjs`) against the real auth, storage and
training services with an in-process training worker (the `simulate` executor), behind the
real local gateway, whose admin listener routes the admin services to the page (CORS for
the console's origin, the admin origin in the CSP's connect-src, `console.json` naming it).

A user uploads a dataset with a broken line and sees the line's error, uploads a good one,
estimates and starts a short simulated job and watches the loss chart gain points live,
reopens it (the replay), downloads the model, sees the bell's count; the user has no
administration. The admin creates a user, and that user signs in with the token shown
once. Screenshots go to web/test-results/."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from aivera.auth.v1 import auth_pb2, auth_pb2_grpc
from gateway.config import GatewaySettings
from gateway.proxy import Gateway
from gateway.routes import UPSTREAMS
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
from tests.helpers.services import bearer, channel, running
from tests.helpers.tiny import build_tiny_model
from tests.web.conftest import DIST, WEB, chromium_path, needs_browser
from tests.web.test_console_e2e import free_port

pytestmark = needs_browser


@dataclass
class Studio:
    base_url: str
    bootstrap: str
    auth: App


@asynccontextmanager
async def studio_mesh(
    database_url: str, tmp_path_factory: pytest.TempPathFactory, **training: Any
) -> AsyncIterator[Studio]:
    """The console behind the local gateway (its admin listener included) with the real
    auth, storage and training services and an in-process worker; `training` overrides
    TrainingSettings."""
    port, admin_port = free_port(), free_port()
    origin, admin_origin = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin_port}"
    # The built console, plus the file that tells it where the admin listener is.
    site = tmp_path_factory.mktemp("site") / "dist"
    shutil.copytree(DIST, site)
    (site / "console.json").write_text(json.dumps({"adminUrl": admin_origin}))
    tiny = build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama")
    a = auth_settings(database_url, access_token_ttl_seconds=3600)
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
            storage_public_url=origin,
        )
        async with running(storage_spec(s), s) as storage_app:
            t = TrainingSettings(
                **{
                    **common,
                    "aivera_service_secret": secret("training"),
                    "storage_addr": f"127.0.0.1:{storage_app.grpc_port}",
                    "allowed_base_models": [str(tiny)],
                    "training_executor": "simulate",
                    "training_heartbeat_seconds": 0.5,
                    "training_lease_seconds": 4.0,
                    "training_poll_seconds": 0.2,
                    "training_watch_heartbeat_seconds": 1.0,
                    # Slow enough for the page to see the chart grow step by step.
                    "training_simulate_step_seconds": 0.15,
                    "training_torch_threads": 1,
                    **training,
                }
            )
            async with running(training_spec(t), t) as training_app:
                pool = await db.create_pool(
                    database_url, schema="training", service="w", min_size=1, max_size=2
                )
                chan = worker_channel(t)
                worker = Worker(t, pool, chan)
                task = asyncio.create_task(worker.run(None))
                ports = {
                    "auth": auth_app.grpc_port,
                    "storage": storage_app.grpc_port,
                    "training": training_app.grpc_port,
                }
                gw = Gateway(
                    GatewaySettings(
                        port=port,
                        admin_port=admin_port,
                        upstreams={n: f"127.0.0.1:{ports.get(n, 1)}" for n in UPSTREAMS},
                        web_root=site,
                        storage_http=f"127.0.0.1:{storage_app.http_port}",
                        cors_origins=(origin,),
                        csp_connect_src=(admin_origin,),
                    )
                )
                await gw.start()
                try:
                    yield Studio(
                        origin, a.aivera_bootstrap_admin_token.get_secret_value(), auth_app
                    )
                finally:
                    await gw.stop()
                    worker.shutdown.set()
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(task, 10)
                    await chan.close()
                    await pool.close()


@pytest.fixture(scope="module")
async def studio(
    database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Studio]:
    async with studio_mesh(database_url, tmp_path_factory) as mesh:
        yield mesh


def jsonl(records: list[object]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def chat(q: str, a: str) -> dict[str, object]:
    return {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}


async def drive(env: dict[str, str], script: str = "studio.e2e.mjs") -> dict[str, Any]:
    """Runs a browser script of web/e2e and returns the findings it printed."""
    proc = await asyncio.create_subprocess_exec(
        "node",
        str(WEB / "e2e" / script),
        cwd=WEB,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 150)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    lines = out.decode().strip().splitlines()
    assert lines, err.decode()[-3000:]
    found: dict[str, Any] = json.loads(lines[-1])
    assert "error" not in found, (
        f"{found['error']}\nsteps: {found['steps']}\n{err.decode()[-2000:]}"
    )
    return found


async def new_user(studio: Studio, prefix: str) -> str:
    """A new user created by the admin; their static token."""
    async with channel(studio.auth) as ch:
        admin = await auth_pb2_grpc.AuthServiceStub(ch).ExchangeStaticToken(
            auth_pb2.ExchangeStaticTokenRequest(static_token=studio.bootstrap)
        )
        user: auth_pb2.CreateUserResponse = await auth_pb2_grpc.AuthAdminServiceStub(ch).CreateUser(
            auth_pb2.CreateUserRequest(username=prefix + uuid.uuid4().hex[:8]),
            metadata=bearer(admin.access_token),
        )
    return user.static_token


async def test_studio_and_administration(studio: Studio, tmp_path: Path) -> None:
    user_token = await new_user(studio, "studio-")
    bad = tmp_path / "broken.jsonl"
    bad.write_text(jsonl([chat("q1", "a1")]) + '{"messages": [}\n' + jsonl([chat("q3", "a3")]))
    good = tmp_path / "support.jsonl"
    good.write_text(jsonl([chat(f"Question {i}?", f"Answer number {i}.") for i in range(24)]))
    new_name = "created-" + uuid.uuid4().hex[:8]
    results = WEB / "test-results"
    found = await drive(
        {
            "BASE_URL": studio.base_url + "/",
            "USER_TOKEN": user_token,
            "ADMIN_TOKEN": studio.bootstrap,
            "BAD_PATH": str(bad),
            "GOOD_PATH": str(good),
            "NEW_USER": new_name,
            "CHROMIUM": chromium_path() or "",
            "OUT": str(results),
        }
    )
    assert found["steps"] == [
        "no-admin",
        "dataset-errors",
        "dataset-ready",
        "estimated",
        "trained-live",
        "replayed",
        "model-downloadable",
        "notified",
        "admin-created-user",
        "new-user-signed-in",
    ]
    # The broken line is reported by its number, the good lines are not.
    assert found["errorLines"] == ["2"]
    assert found["stats"]["examples"] == "24"
    # The estimate priced the run the form asked for.
    assert found["estimatedSteps"] == "30"
    # Live: the page saw the curve at several sizes while the job ran, growing only.
    sizes = found["chartSizes"]
    assert len(sizes) >= 3 and sizes == sorted(sizes) and sizes[0] < 30, sizes
    assert found["finalPoints"] == 30 and found["finalStatus"] == "SUCCEEDED"
    # Reopened: the replay from the first event drew the whole curve again.
    assert found["replayedPoints"] == 30
    # The monitor's "cost so far" moved off "—" while the job ran (WatchJob's live cost
    # events) and holds the final job's cost at the end.
    assert found.get("costWhileRunning"), found
    assert found["finalCost"] and found["finalCost"] != "—"
    assert found["downloadLinks"] >= 1 and all(
        u.startswith(studio.base_url + "/files/") for u in found["downloadUrls"]
    )
    assert int(found["unread"]) >= 1
    # The user has no administration: no link, and the page refuses the route.
    assert found["userAdminLinks"] == 0 and found["userAdminRefused"] is True
    # The token shown once signs the new user in.
    assert found["shownToken"].startswith("avs_")
    assert found["newUserWhoami"].endswith(new_name) and found["newUserAdminLinks"] == 0
    assert found["cspViolations"] == []
    assert found["consoleErrors"] == []
    assert found["requestsWithToken"] == []
    for name in ("s01-dataset-errors", "s03-training", "s04-job-done", "s06-admin-users"):
        assert (results / f"{name}.png").stat().st_size > 0
