"""`aivera lora watch` outlives a training service that goes away: a scripted
ImageLoraService on a real gRPC server (loopback) answers GetImageLora with a training that
advances on each call; the server is stopped and started again on the same port mid-watch,
and the watch must carry on to READY (exit 0) instead of failing on the first UNAVAILABLE."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import grpc

from aivera.training.v1 import image_loras_pb2 as L
from aivera.training.v1 import image_loras_pb2_grpc
from services.common.devpg import free_port
from tests.client.conftest import Cli
from tests.client.test_train_watch import serve_on, signed_in

LORA = "2b1c3a9e-0000-4000-8000-000000000001"
STEPS = [
    (L.IMAGE_LORA_STATUS_QUEUED, 0.0),
    (L.IMAGE_LORA_STATUS_TRAINING, 0.25),
    (L.IMAGE_LORA_STATUS_TRAINING, 0.5),
    (L.IMAGE_LORA_STATUS_TRAINING, 0.75),
    (L.IMAGE_LORA_STATUS_READY, 1.0),
]


class FakeLoras(image_loras_pb2_grpc.ImageLoraServiceServicer):
    """Each GetImageLora moves the training one step on; the test stops the server once
    the second step has been seen."""

    def __init__(self) -> None:
        self.calls = 0
        self.halfway = asyncio.Event()

    async def GetImageLora(self, request: L.GetImageLoraRequest, context: Any) -> L.ImageLora:
        status, progress = STEPS[min(self.calls, len(STEPS) - 1)]
        self.calls += 1
        if self.calls == 2:
            self.halfway.set()
        return L.ImageLora(
            id=LORA,
            name="aqua",
            trigger_word="aqua",
            status=status,
            progress=progress,
            executor=L.IMAGE_LORA_EXECUTOR_SIMULATE,
            simulated=True,
        )


async def serve(servicer: FakeLoras, port: int) -> grpc.aio.Server:
    return await serve_on(
        port, image_loras_pb2_grpc.add_ImageLoraServiceServicer_to_server, servicer
    )


async def test_watch_carries_on_after_the_service_went_away(tmp_path: Path) -> None:
    port = free_port()
    fake = FakeLoras()
    server = await serve(fake, port)
    cli = Cli(tmp_path / "cfg", {"AIVERA_TRAINING_ADDR": f"127.0.0.1:{port}", "AIVERA_LANG": ""})
    signed_in(cli.config_dir)
    watch = asyncio.create_task(cli("lora", "watch", LORA, "--json"))
    await asyncio.wait_for(fake.halfway.wait(), 20)
    await server.stop(grace=None)  # the service goes away mid-training
    await asyncio.sleep(1.0)  # the client polls a closed port meanwhile
    server = await serve(fake, port)
    try:
        r = await asyncio.wait_for(watch, 30)
    finally:
        await server.stop(grace=None)
    assert r.exit_code == 0, r.output
    seen = [json.loads(line) for line in r.stdout.splitlines()]
    # Each change once, in order, to READY; the simulated LoRA says so.
    assert [(x["status"], x.get("progress", 0)) for x in seen] == [
        (L.ImageLoraStatus.Name(s), p) for s, p in STEPS
    ]
    assert all(x["simulated"] for x in seen)
