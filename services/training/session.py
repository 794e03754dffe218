"""What an executor (running in a worker thread) sees of its job: the plan, settings, a
resume state, and callbacks into the worker's event loop for metrics, checkpoints, logs
and the stop flag."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aivera.training.v1 import jobs_pb2
from services.training.plan import Plan


class Stopped(Exception):
    """The job was cancelled, its lease was lost or the worker is shutting down."""


class NumericalInstability(Exception):
    """The loss or the gradients became NaN/inf (job error NUMERICAL_INSTABILITY)."""


@dataclass
class StepPoint:
    step: int  # 1-based optimizer step
    epoch: float
    loss: float
    learning_rate: float
    grad_norm: float
    tokens_per_second: float
    eval_loss: float | None = None


@dataclass
class Result:
    files: dict[str, bytes]  # adapter_model.safetensors, adapter_config.json
    steps: int
    final_loss: float
    final_eval_loss: float | None = None


@dataclass
class Session:
    plan: Plan
    hp: jobs_pb2.Hyperparameters
    method: int
    model_path: Path
    pad_token_id: int
    resume: bytes | None  # checkpoint blob (tar) to resume from
    on_step: Callable[[StepPoint], None]
    on_checkpoint: Callable[[StepPoint, bytes], None]
    log: Callable[[str], None]
    stop: threading.Event = field(default_factory=threading.Event)
    torch_threads: int = 0
    simulate_step_seconds: float = 0.2
    # Adapter weights (safetensors) a job continues from when it has no checkpoint yet.
    init_adapter: bytes | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def check_stop(self) -> None:
        if self.stop.is_set():
            raise Stopped()
