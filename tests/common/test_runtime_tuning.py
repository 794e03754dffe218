"""What a started service sets up for latency under load (issue 23): its pool's connections
run without Postgres JIT (a short query whose cost estimate crossed jit_above_cost spent
25-45 ms compiling for 0.3 ms of work), and its start-up heap is out of the cyclic
collector's reach (full collections walked it: 100-180 ms event-loop pauses)."""

from __future__ import annotations

import gc

from pydantic import SecretStr

from services.common.config import CommonSettings
from services.common.server import App, Servicers, ServiceSpec
from tests.helpers.services import running
from tests.helpers.tokens import Keyring


async def _no_servicers(app: App) -> Servicers:
    return []


async def test_a_started_service_has_jit_off_and_its_startup_heap_frozen(
    database_url: str,
) -> None:
    spec = ServiceSpec(name="tuning-test", port=0, http_port=0, build=_no_servicers, schema="t")
    settings = CommonSettings(database_url=SecretStr(database_url))
    async with running(spec, settings, verifier=Keyring().verifier()) as app:
        async with app.pool.acquire() as conn:
            assert await conn.fetchval("SHOW jit") == "off"
        # Frozen at start-up: the objects every full collection used to walk.
        assert gc.get_freeze_count() > 10_000
