"""What a LOCAL image generation or a training job cost reaches the CLI: a scripted
ImageLoraService on a real gRPC server (loopback) answers GenerateImages and
ListGenerations with a billed generation (device time on a worker) and an unbilled one
(simulated); `aivera lora generate` prints the cost after the images, `aivera lora
generations` has a cost column, and nothing is printed where nothing was billed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc

from aivera.training.v1 import image_loras_pb2 as L
from aivera.training.v1 import image_loras_pb2_grpc
from aivera.training.v1 import jobs_pb2 as J
from client.cli.render import JobView, cost_text
from services.common.devpg import free_port
from tests.client.conftest import Cli
from tests.client.test_train_watch import serve_on, signed_in

LORA = "2b1c3a9e-0000-4000-8000-000000000002"
BILLED = J.CostSummary(
    items=[
        J.CostItem(
            device_type="cpu",
            device_seconds=75,
            hourly_rate_micros=20_160_000,
            amount_micros=420_000,
        )
    ],
    amount_micros=420_000,
    currency_code="USD",
)


def generation(id: str, *, cost: J.CostSummary | None = None) -> L.Generation:
    return L.Generation(
        id=id,
        image_lora=LORA,
        prompt="aqua a boat",
        num_outputs=1,
        seed=7,
        lora_scale=1.0,
        status=L.GENERATION_STATUS_SUCCEEDED,
        cost=cost,
    )


class FakeLoras(image_loras_pb2_grpc.ImageLoraServiceServicer):
    def __init__(self, cost: J.CostSummary | None) -> None:
        self.cost = cost

    async def GenerateImages(
        self, request: L.GenerateImagesRequest, context: Any
    ) -> AsyncIterator[L.GenerateImagesEvent]:
        queued = generation("gen-1")
        queued.status = L.GENERATION_STATUS_QUEUED
        yield L.GenerateImagesEvent(queued=queued)
        yield L.GenerateImagesEvent(done=generation("gen-1", cost=self.cost))

    async def ListGenerations(
        self, request: L.ListGenerationsRequest, context: Any
    ) -> L.ListGenerationsResponse:
        return L.ListGenerationsResponse(
            generations=[generation("gen-billed", cost=BILLED), generation("gen-simulated")]
        )


async def run_cli(tmp_path: Path, cost: J.CostSummary | None, *args: str) -> Any:
    port = free_port()
    server: grpc.aio.Server = await serve_on(
        port, image_loras_pb2_grpc.add_ImageLoraServiceServicer_to_server, FakeLoras(cost)
    )
    cli = Cli(tmp_path / "cfg", {"AIVERA_TRAINING_ADDR": f"127.0.0.1:{port}", "AIVERA_LANG": "en"})
    signed_in(cli.config_dir)
    try:
        return await cli(*args)
    finally:
        await server.stop(grace=None)


async def test_generate_prints_what_a_local_generation_cost(tmp_path: Path) -> None:
    r = await run_cli(tmp_path, BILLED, "lora", "generate", LORA, "a boat", "--out", str(tmp_path))
    assert r.exit_code == 0, r.output
    assert "Generation: succeeded" in r.stdout
    assert "Cost: 0.42 USD (cpu 1:15)" in r.stdout


async def test_generate_prints_no_cost_when_nothing_was_billed(tmp_path: Path) -> None:
    r = await run_cli(tmp_path, None, "lora", "generate", LORA, "a boat", "--out", str(tmp_path))
    assert r.exit_code == 0, r.output
    assert "Generation: succeeded" in r.stdout and "cost" not in r.stdout.lower()


async def test_generations_have_a_cost_column(tmp_path: Path) -> None:
    r = await run_cli(tmp_path, None, "lora", "generations", LORA)
    assert r.exit_code == 0, r.output
    assert "Cost" in r.stdout
    billed = next(line for line in r.stdout.splitlines() if "gen-billed" in line)
    simulated = next(line for line in r.stdout.splitlines() if "gen-simulated" in line)
    assert "0.42 USD" in billed and "USD" not in simulated


def test_cost_text_and_job_summary() -> None:
    assert cost_text(J.CostSummary()) == ""
    assert cost_text(J.CostSummary(currency_code="USD")) == ""  # no device time: no cost
    assert cost_text(BILLED) == "0.42 USD (cpu 1:15)"
    view = JobView("j", live=False, echo=False)
    view.seed(J.TrainingJob(id="j", status=J.JOB_STATUS_RUNNING, cost=BILLED))
    assert "0.42 USD (cpu 1:15)" in view.summary()
    view.seed(J.TrainingJob(id="j", status=J.JOB_STATUS_RUNNING))
    assert "USD" not in view.summary()
    view.apply(J.JobEvent(sequence=3, cost=BILLED))  # WatchJob's live cost so far
    assert "0.42 USD (cpu 1:15)" in view.summary() and view.last_sequence == 3
