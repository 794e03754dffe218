"""Settings of the training service and its workers (environment variables; see the README
table).

Executor default: `peft` (real LoRA training; on CPU it runs SmolLM2-135M at a few hundred
tokens/s, enough to watch `make run` train for real). `TRAINING_EXECUTOR=simulate` switches
to synthetic progress for interface work; a job always shows which executor ran it and
asking for one the server does not enable is INVALID_ARGUMENT, so the choice is never
silent.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Literal

from pydantic import Field

from services.common.config import CommonSettings
from services.common.ports import SERVICES

MiB = 1024 * 1024


def _default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


ExecutorName = Literal["peft", "simulate"]


def _all_executors() -> list[ExecutorName]:
    return ["peft", "simulate"]


class TrainingSettings(CommonSettings):
    training_port: int = SERVICES["training"].grpc
    training_http_port: int = SERVICES["training"].http

    # Executor used when a job does not name one; `training_executors_enabled` lists those
    # a job may ask for (the default one is always enabled).
    training_executor: ExecutorName = "peft"
    training_executors_enabled: list[ExecutorName] = Field(default_factory=_all_executors)
    # Base models jobs, datasets and clones may use: the built-in name
    # `smollm2-135m-instruct` or local HF folders. The first is the default.
    allowed_base_models: list[str] = Field(default_factory=lambda: ["smollm2-135m-instruct"])
    # Where the built-in base model is converted to and cached; default
    # services.common.localmodels.default_models_dir() (MODELS_DIR, DATA_DIR/models, .data/models).
    base_models_dir: Path | None = None

    # Datasets.
    dataset_max_bytes: int = 500 * MiB
    dataset_max_errors: int = 100

    # Queue and workers.
    worker_id: str = Field(default_factory=_default_worker_id)
    # A running job's lease; a worker renews it every heartbeat. A job whose lease
    # expired goes back to QUEUED and is resumed from its last checkpoint.
    training_lease_seconds: float = 30.0
    training_heartbeat_seconds: float = 3.0
    # Idle workers look for queued jobs this often (and on NOTIFY).
    training_poll_seconds: float = 2.0
    # A job whose workers were lost more often than this fails with WORKER_LOST.
    training_max_worker_losses: int = 5
    # A job that runs longer than this (all attempts) fails with TIMEOUT.
    training_max_job_seconds: float = 24 * 3600.0
    # Default checkpoint interval in optimizer steps.
    training_checkpoint_every_steps: int = 50
    # Unfinished jobs a user may have at once.
    training_max_active_jobs: int = 10
    # Device type this worker bills as (cpu, nvidia-a100, nvidia-h100, ...); empty means
    # detected (cpu, or nvidia-<name> of the first CUDA device).
    training_device_type: str = ""
    # Hourly rates per device type, in millionths of `training_currency`.
    training_hourly_rates_micros: dict[str, int] = Field(
        default_factory=lambda: {
            "cpu": 100_000,
            "nvidia-a10": 1_000_000,
            "nvidia-l4": 800_000,
            "nvidia-a100": 3_000_000,
            "nvidia-h100": 4_500_000,
            "nvidia-h200": 5_500_000,
        }
    )
    training_default_hourly_rate_micros: int = 2_000_000
    training_currency: str = "USD"
    # Torch threads of a worker (0 = torch's default).
    training_torch_threads: int = 0
    # Simulate executor: seconds per synthetic step.
    training_simulate_step_seconds: float = 0.2
    # WatchJob / WatchNotifications heartbeat after this many idle seconds.
    training_watch_heartbeat_seconds: float = 15.0

    def default_base_model(self) -> str:
        return self.allowed_base_models[0] if self.allowed_base_models else ""
