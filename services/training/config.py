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

from pydantic import BaseModel, Field, SecretStr

from services.common.config import CommonSettings
from services.common.ports import SERVICES

MiB = 1024 * 1024


def _default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


ExecutorName = Literal["peft", "simulate"]


def _all_executors() -> list[ExecutorName]:
    return ["peft", "simulate"]


# Who trains an image LoRA (ImageLoraExecutor in the contract).
ImageLoraExecutorName = Literal["replicate", "local", "simulate"]


def _all_image_lora_executors() -> list[ImageLoraExecutorName]:
    return ["replicate", "local", "simulate"]


class HardwareClassSpec(BaseModel):
    """A hardware class a job can ask for: the worker pool that runs it (node selector),
    what one device holds and sustains, and its price."""

    device_type: str
    gpu_count: int = 1
    # Memory of one device (GPU memory; for a CPU class, the memory a worker may use).
    memory_gib: float
    hourly_rate_micros: int
    # Sustained training throughput of one device (peak bf16 × a typical utilisation),
    # what time estimates divide by.
    effective_tflops: float
    node_selector: dict[str, str] = Field(default_factory=dict)


def _hardware_classes() -> dict[str, HardwareClassSpec]:
    def gpu(device: str, gib: float, rate: int, tflops: float, product: str) -> HardwareClassSpec:
        return HardwareClassSpec(
            device_type=device,
            memory_gib=gib,
            hourly_rate_micros=rate,
            effective_tflops=tflops,
            node_selector={"nvidia.com/gpu.product": product},
        )

    return {
        # ~200 tokens/s of SmolLM2-135M LoRA on 2 cores (DESIGN.md): 4·N·200 ≈ 0.1 TFLOP/s.
        "cpu": HardwareClassSpec(
            device_type="cpu",
            gpu_count=0,
            memory_gib=16,
            hourly_rate_micros=100_000,
            effective_tflops=0.1,
            node_selector={"aivera.io/pool": "cpu"},
        ),
        "nvidia-l4": gpu("nvidia-l4", 22.5, 800_000, 40, "NVIDIA-L4"),
        "nvidia-a100": gpu("nvidia-a100", 79.6, 3_000_000, 125, "NVIDIA-A100-SXM4-80GB"),
        "nvidia-h100": gpu("nvidia-h100", 79.6, 4_500_000, 350, "NVIDIA-H100-80GB-HBM3"),
        "nvidia-h200": gpu("nvidia-h200", 140, 5_500_000, 400, "NVIDIA-H200"),
    }


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
    # Hardware classes jobs may ask for (name → spec) and the one a job gets when it names
    # none. A worker claims only jobs of `training_worker_hardware_classes` (empty: any).
    training_hardware_classes: dict[str, HardwareClassSpec] = Field(
        default_factory=_hardware_classes
    )
    training_default_hardware_class: str = "cpu"
    training_worker_hardware_classes: list[str] = Field(default_factory=list)
    # Per-user monthly limits (UTC calendar months) unless an admin set the user's own:
    # device hours on GPU classes (0: unlimited) and spending (0: no budget).
    training_gpu_hours_per_month: float = 0.0
    training_monthly_budget_micros: int = 0
    # The simulate executor in prod only when this allows it (never billed, so it must
    # not pass for real training there).
    training_allow_simulate_in_prod: bool = False
    # A deleted model's files are deleted from storage this long after (checked every
    # `training_purge_interval_seconds`).
    training_model_retention_seconds: float = 30 * 86400.0
    training_purge_interval_seconds: float = 3600.0
    # Outbound webhooks (services.training.webhooks). The key seals their signing secrets
    # at rest (base64url of 32 bytes; required in prod). Private, loopback and link-local
    # URLs (and plain http) only when allowed: unset means allowed outside prod.
    training_webhook_key: SecretStr = SecretStr("")
    training_webhook_allow_private: bool | None = None
    # Seconds before each retry (the last repeats) until `give_up` after the event.
    training_webhook_retry_seconds: list[float] = Field(
        default_factory=lambda: [5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0]
    )
    training_webhook_give_up_seconds: float = 24 * 3600.0
    training_webhook_timeout_seconds: float = 10.0
    training_webhook_poll_seconds: float = 1.0
    training_max_webhooks: int = 10
    # Torch threads of a worker (0 = torch's default).
    training_torch_threads: int = 0
    # Simulate executor: seconds per synthetic step.
    training_simulate_step_seconds: float = 0.2
    # WatchJob / WatchNotifications heartbeat after this many idle seconds.
    training_watch_heartbeat_seconds: float = 15.0

    # -- image LoRAs and generations (G) --
    # Executor of a StartTraining that names none; `image_lora_executors_enabled` lists
    # those a request may ask for (the default one is always enabled).
    image_lora_executor: ImageLoraExecutorName = "replicate"
    image_lora_executors_enabled: list[ImageLoraExecutorName] = Field(
        default_factory=_all_image_lora_executors
    )
    # Optimizer steps when StartTraining says 0: Replicate's trainer default, and a small
    # local run (a CPU worker trains the tiny pipeline in seconds).
    image_lora_replicate_steps: int = 1000
    image_lora_local_steps: int = 20
    # A deleted image LoRA's reference images, weights and generated images are deleted
    # from storage this long after.
    image_lora_retention_seconds: float = 30 * 86400.0
    # The sweep (purges past retention, cancels the provider has not confirmed,
    # generations whose process went away) runs this often.
    image_lora_sweep_seconds: float = 60.0
    # Generations a user may have running at once (RESOURCE_EXHAUSTED past it).
    generation_max_active_per_user: int = 2
    # Replicate predictions: first poll delay, growing ×1.5 up to the max; a prediction
    # still unfinished after `generation_timeout_seconds` fails.
    generation_poll_seconds: float = 1.0
    generation_poll_max_seconds: float = 10.0
    generation_timeout_seconds: float = 600.0
    # LOCAL and SIMULATE generations: pixels of the longer side (the other from the
    # aspect ratio, a multiple of 16). LOCAL ones run on the training workers (one at a
    # time on an idle worker: generation_worker.py), read there from the worker's settings.
    # 0: the base pipeline's native side for LOCAL (512 for SD 1.x, 64 for the built-in
    # toy one, which would take minutes a picture on CPU at 1024), 1024 for SIMULATE.
    generation_local_long_side: int = Field(default=0, ge=0, le=4096)
    # A LOCAL generation no worker claimed for this long fails (the sweep), and one whose
    # workers were lost more often than `generation_max_worker_losses` fails too.
    generation_queue_timeout_seconds: float = 900.0
    generation_max_worker_losses: int = 2
    # Largest generated image downloaded from a provider.
    generation_max_image_bytes: int = 20 * MiB
    # Lifetime of the signed URLs of generated images.
    generation_url_ttl_seconds: int = 3600

    # -- image LoRAs on Replicate (R: replicate.py, image_trainer.py, image_webhooks.py) --
    replicate_api_url: str = "https://api.replicate.com"
    # The system's Replicate token, used for users who set no key of their own (empty:
    # only users' keys).
    replicate_api_token: SecretStr = SecretStr("")
    replicate_timeout_seconds: float = 30.0
    # The trainer model and its version (empty: the model's latest version).
    replicate_trainer_model: str = "ostris/flux-dev-lora-trainer"
    replicate_trainer_version: str = ""
    # Owner of the destination models trainings create versions of, with the system
    # token (empty: the token's account). With a user's key, the user's account.
    replicate_destination_owner: str = ""
    # The account's webhook signing secret (`whsec_…`, GET /v1/webhooks/default/secret).
    replicate_webhook_secret: SecretStr = SecretStr("")
    # Base URL at which Replicate reaches this service's HTTP port (webhooks at
    # /webhooks/replicate); empty, or no webhook secret: no webhooks, polling only.
    training_public_url: str = ""
    # A TRAINING remote LoRA not heard of for this long is polled (lost webhooks).
    image_lora_poll_seconds: float = 60.0
    # Provider down: a QUEUED LoRA is tried again after this, doubling up to the max.
    image_lora_retry_seconds: float = 5.0
    image_lora_retry_max_seconds: float = 300.0
    # A VALIDATING LoRA whose trainer went away goes back to QUEUED after this long.
    image_lora_claim_timeout_seconds: float = 900.0
    # Largest trained weights file taken from the provider (storage's `models` limit).
    image_lora_max_weights_bytes: int = 5 * 1024 * MiB

    # -- image LoRAs on the mesh's workers: LOCAL and SIMULATE (L) --
    # The base image pipeline LOCAL trains and generates with: the built-in
    # `tiny-random-sd` (Stable Diffusion's layout at toy size with random weights, built
    # from configs on first use under the models dir: for CPU and tests, it draws noise)
    # or a local diffusers folder of a Stable Diffusion 1.x/2.x pipeline (UNet + CLIP).
    image_base_model: str = "tiny-random-sd"
    # LoRA on the UNet's attention (to_q, to_k, to_v, to_out.0): rank (alpha = rank),
    # peak learning rate, images per step, checkpoint interval in steps.
    image_lora_rank: int = 16
    image_lora_learning_rate: float = 1e-4
    image_lora_batch_size: int = 1
    image_lora_checkpoint_every_steps: int = 50
    # Hardware class of image LoRA jobs; empty: the default class.
    image_lora_hardware_class: str = ""
    # A reference image is decoded only when its header says at most this many pixels.
    image_lora_max_pixels: int = 4096 * 4096
    # LOCAL generation: denoising steps and classifier-free guidance scale.
    image_inference_steps: int = Field(default=30, ge=1, le=999)  # the scheduler has 1000
    image_guidance_scale: float = 7.5

    def default_hardware_class(self) -> str:
        if self.training_default_hardware_class in self.training_hardware_classes:
            return self.training_default_hardware_class
        return next(iter(self.training_hardware_classes), "")

    def default_base_model(self) -> str:
        return self.allowed_base_models[0] if self.allowed_base_models else ""
