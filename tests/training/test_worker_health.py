"""The training worker serves what its Deployment probes: every httpGet probe in
deploy/k8s/base/training-worker.yaml, on the manifest's port, answered by the real worker
process (`python -m services.training worker`) against the test Postgres; plus `/metrics`
and the 503s of a worker that is not (yet, or any longer) reaching the queue."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any
from unittest.mock import MagicMock

import aiohttp
import yaml

from services.common import ports
from services.training.config import TrainingSettings
from services.training.worker import Worker, _Probe
from services.training.worker_http import start_worker_http

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "deploy" / "k8s" / "base" / "training-worker.yaml"


def http_probes() -> list[tuple[str, str, int]]:
    """(probe kind, path, container port) of every httpGet probe of the worker."""
    doc = yaml.safe_load(MANIFEST.read_text())
    out = []
    for c in doc["spec"]["template"]["spec"]["containers"]:
        named = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            get = c.get(kind, {}).get("httpGet")
            if get is not None:
                port = get["port"]
                out.append((kind, get["path"], named[port] if isinstance(port, str) else port))
    return out


def test_manifest_probes_the_worker_http_port() -> None:
    probes = http_probes()
    assert {k for k, _, _ in probes} == {"startupProbe", "readinessProbe", "livenessProbe"}
    assert {p for _, _, p in probes} == {ports.TRAINING_WORKER_HTTP}
    assert {path for _, path, _ in probes} <= {"/healthz"}  # the worker's routes
    doc = yaml.safe_load(MANIFEST.read_text())
    notes = doc["spec"]["template"]["metadata"]["annotations"]
    assert int(notes["prometheus.io/port"]) == ports.TRAINING_WORKER_HTTP


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def get(url: str) -> tuple[int, str]:
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(timeout=timeout) as s, s.get(url) as r:
        return r.status, await r.text()


async def test_real_worker_process_serves_its_probes(database_url: str, tmp_path: Path) -> None:
    port = free_port()
    log = (tmp_path / "worker.log").open("wb")
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "HTTP_HOST": "127.0.0.1",
        "TRAINING_WORKER_HTTP_PORT": str(port),
        "STORAGE_ADDR": "127.0.0.1:1",
        "TRAINING_POLL_SECONDS": "0.5",
        "AIVERA_ENV": "test",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.training",
        "worker",
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=log,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        status = 0
        while time.monotonic() < deadline:
            if proc.returncode is not None:
                err = (tmp_path / "worker.log").read_text()[-2000:]
                raise AssertionError(f"the worker exited: {err}")
            try:
                status, _ = await get(base + "/healthz")
            except aiohttp.ClientError:
                status = 0
            if status == 200:
                break
            await asyncio.sleep(0.2)
        assert status == 200, "the worker never became ready"
        for kind, path, manifest_port in http_probes():
            assert manifest_port == ports.TRAINING_WORKER_HTTP  # the default the worker binds
            code, body = await get(base + path)
            assert code == 200, (kind, path, body)
            assert '"polling"' in body
        code, body = await get(base + "/metrics")
        assert code == 200
        assert "aivera_training_worker_last_ok_timestamp_seconds" in body
        assert "aivera_training_worker_busy" in body
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        log.close()


async def test_not_ready_before_the_worker_exists_or_when_the_queue_is_stale() -> None:
    probe = _Probe()
    runner, port = await start_worker_http(probe, "127.0.0.1", 0)
    try:
        code, body = await get(f"http://127.0.0.1:{port}/healthz")
        assert code == 503 and '"starting"' in body
        settings = TrainingSettings(training_poll_seconds=1, training_lease_seconds=2)
        worker: Any = Worker(settings, pool=None, storage_channel=MagicMock())
        probe.worker = worker
        assert (await get(f"http://127.0.0.1:{port}/healthz"))[0] == 503  # never polled
        worker._reached_queue()
        assert (await get(f"http://127.0.0.1:{port}/healthz"))[0] == 200
        worker.last_ok -= 10  # Postgres unreachable for longer than the window
        assert (await get(f"http://127.0.0.1:{port}/healthz"))[0] == 503
        worker._reached_queue()
        worker.shutdown.set()
        code, body = await get(f"http://127.0.0.1:{port}/healthz")
        assert code == 503 and '"stopping"' in body
    finally:
        await runner.cleanup()


async def test_a_second_worker_on_one_machine_serves_on_a_free_port() -> None:
    probe = _Probe()
    first, port = await start_worker_http(probe, "127.0.0.1", 0)
    try:
        second, other = await start_worker_http(probe, "127.0.0.1", port)
        try:
            assert other not in (0, port)
            assert (await get(f"http://127.0.0.1:{other}/healthz"))[0] == 503
        finally:
            await second.cleanup()
    finally:
        await first.cleanup()
