"""`aivera train watch`: live progress and reattaching after a dropped connection.

The server here is a scripted TrainingService on a real gRPC server (loopback), stopped and
started again on the same port mid-watch, so the connection really drops; the client must
come back with WatchJob(after_sequence = the last event it saw) and show every event once.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import empty_pb2

from aivera.common.v1 import common_pb2
from aivera.training.v1 import jobs_pb2, jobs_pb2_grpc
from client import AsyncClient, Credentials, Endpoints
from client.cli.render import JobView, sparkline
from client.credentials import CredentialStore
from services.common.devpg import free_port
from tests.client.conftest import Cli

JOB = "job-1"
STEPS = 6


def events() -> list[jobs_pb2.JobEvent]:
    out = [
        jobs_pb2.JobEvent(
            sequence=1,
            status_changed=jobs_pb2.StatusChanged(status=jobs_pb2.JOB_STATUS_RUNNING),
        )
    ]
    for step in range(1, STEPS + 1):
        out.append(
            jobs_pb2.JobEvent(
                sequence=len(out) + 1,
                metric=jobs_pb2.MetricPoint(step=step, loss=2.0 / step, tokens_per_second=200.0),
            )
        )
    out.append(
        jobs_pb2.JobEvent(
            sequence=len(out) + 1,
            final=jobs_pb2.TrainingJob(
                id=JOB,
                status=jobs_pb2.JOB_STATUS_SUCCEEDED,
                model_id="model-1",
                progress=jobs_pb2.JobProgress(
                    steps=common_pb2.Progress(done=STEPS, total=STEPS), loss=2.0 / STEPS
                ),
                cost=jobs_pb2.CostSummary(
                    items=[jobs_pb2.CostItem(device_type="cpu", device_seconds=3725)],
                    amount_micros=1_250_000,
                    currency_code="USD",
                ),
            ),
        )
    )
    return out


class FakeTraining(jobs_pb2_grpc.TrainingServiceServicer):
    """Serves the scripted events; the first stream stops after `cut` events and waits
    (the test then kills the server under it)."""

    def __init__(self, cut: int | None) -> None:
        self.events = events()
        self.cut = cut
        self.requests: list[int] = []
        self.cut_reached = asyncio.Event()

    async def GetJob(self, request: jobs_pb2.GetJobRequest, context: Any) -> jobs_pb2.TrainingJob:
        return jobs_pb2.TrainingJob(
            id=JOB,
            status=jobs_pb2.JOB_STATUS_QUEUED,
            progress=jobs_pb2.JobProgress(steps=common_pb2.Progress(done=0, total=STEPS)),
        )

    async def WatchJob(
        self, request: jobs_pb2.WatchJobRequest, context: Any
    ) -> AsyncIterator[jobs_pb2.JobEvent]:
        self.requests.append(request.after_sequence)
        sent = 0
        for ev in self.events:
            if ev.sequence <= request.after_sequence:
                continue
            if self.cut is not None and sent == self.cut:
                self.cut_reached.set()
                yield jobs_pb2.JobEvent(heartbeat=empty_pb2.Empty())
                await asyncio.sleep(60)
            yield ev
            sent += 1


async def serve_on(
    port: int, add: Callable[[Any, grpc.aio.Server], None], servicer: Any
) -> grpc.aio.Server:
    """A gRPC server on 127.0.0.1:`port` with one scripted servicer (`add` registers it)."""
    server = grpc.aio.server()
    add(servicer, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    return server


async def serve(servicer: FakeTraining, port: int) -> grpc.aio.Server:
    return await serve_on(port, jobs_pb2_grpc.add_TrainingServiceServicer_to_server, servicer)


def signed_in(cfg: Path) -> None:
    """A session the fake server accepts (it checks no token)."""
    CredentialStore(cfg / "credentials.json").save(
        Credentials(
            access_token="fake-access",
            access_expires_at=time.time() + 3600,
            refresh_token="fake-refresh",
            user_id="u1",
        )
    )


async def test_watch_reattaches_after_a_dropped_connection(tmp_path: Path) -> None:
    port = free_port()
    fake = FakeTraining(cut=3)
    server = await serve(fake, port)
    cli = Cli(tmp_path / "cfg", {"AIVERA_TRAINING_ADDR": f"127.0.0.1:{port}", "AIVERA_LANG": ""})
    signed_in(cli.config_dir)
    watch = asyncio.create_task(cli("train", "watch", JOB, "--json"))
    await asyncio.wait_for(fake.cut_reached.wait(), 20)
    await server.stop(grace=None)  # the connection drops mid-stream
    await asyncio.sleep(0.8)  # the client retries against a closed port meanwhile
    fake.cut = None
    server = await serve(fake, port)
    try:
        r = await asyncio.wait_for(watch, 30)
    finally:
        await server.stop(grace=None)
    assert r.exit_code == 0, r.output
    seqs = [json.loads(line).get("sequence") for line in r.stdout.splitlines()]
    got = [int(s) for s in seqs if s]  # heartbeats carry no sequence
    assert got == list(range(1, len(fake.events) + 1))  # every event once, in order
    assert fake.requests[0] == 0 and fake.requests[-1] == 3


async def test_watch_shows_progress_and_sparkline(tmp_path: Path) -> None:
    port = free_port()
    server = await serve(FakeTraining(cut=None), port)
    cli = Cli(tmp_path / "cfg", {"AIVERA_TRAINING_ADDR": f"127.0.0.1:{port}", "AIVERA_LANG": ""})
    signed_in(cli.config_dir)
    try:
        r = await cli("train", "watch", JOB)
    finally:
        await server.stop(grace=None)
    assert r.exit_code == 0, r.output
    assert "succeeded" in r.stdout and f"шаг {STEPS}/{STEPS}" in r.stdout
    assert "loss " + sparkline([2.0 / s for s in range(1, STEPS + 1)]) in r.stdout
    assert "Модель: model-1" in r.stdout
    assert "Стоимость: 1.25 USD (cpu 1:02:05)" in r.stdout  # the final job's cost
    assert "tok/s" in r.stderr  # a progress line per metric


async def test_sdk_resilient_watch_gives_up_when_the_server_stays_down(tmp_path: Path) -> None:
    creds = Credentials(access_token="a", access_expires_at=time.time() + 3600, refresh_token="r")
    endpoints = Endpoints.resolve(env={"AIVERA_TRAINING_ADDR": f"127.0.0.1:{free_port()}"})
    async with AsyncClient(endpoints, store=False, credentials=creds, timeout=2) as c:
        reconnects: list[int] = []
        from client.errors import Unavailable

        try:
            async for _ in c.watch_job_resilient(
                JOB, retries=2, backoff=0.01, on_reconnect=lambda n, _s: reconnects.append(n)
            ):
                pass
        except Unavailable:
            pass
        else:
            raise AssertionError("expected Unavailable")
        assert reconnects == [1, 2]


def test_sparkline_and_job_view() -> None:
    assert sparkline([]) == ""
    assert sparkline([1, 1, 1]) == "▅▅▅"
    assert sparkline([0, 1]) == "▁█"
    assert len(sparkline(list(range(100)), width=10)) == 10
    view = JobView("j", live=False, echo=False)
    for ev in events():
        view.apply(ev)
    assert view.final is not None and view.status == "succeeded"
    assert view.step == STEPS and view.last_sequence == len(events())
