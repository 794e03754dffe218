"""What a job would run and cost, from its plan (the dataset's real tokens, packed exactly
as the worker will pack them), the base model's architecture and a hardware class. Pure
arithmetic over services.common.catalogue's formulas; no I/O."""

from __future__ import annotations

from dataclasses import dataclass

from aivera.training.v1 import jobs_pb2
from services.common import catalogue as shared
from services.training import data
from services.training.catalogue import HardwareClass
from services.training.plan import Plan


@dataclass(frozen=True, slots=True)
class Estimate:
    hardware_class: str
    train_examples: int
    eval_examples: int
    tokens_per_epoch: int
    trained_tokens_per_epoch: int
    steps_per_epoch: int
    total_steps: int
    total_tokens: int
    expected_seconds: int
    cost_micros: int
    memory_required: int
    memory_available: int
    gpu: bool  # billed GPU time (a GPU class, not simulated)
    seconds: float  # unrounded, what the quota check adds up

    @property
    def fits(self) -> bool:
        return self.memory_required <= self.memory_available

    @property
    def gpu_hours(self) -> float:
        return self.seconds / 3600.0 if self.gpu else 0.0


def method_name(method: int) -> str:
    return shared.QLORA if method == jobs_pb2.TRAINING_METHOD_QLORA else shared.LORA


def total_tokens(plan: Plan, hp: jobs_pb2.Hyperparameters) -> int:
    """Tokens the job's steps process: whole epochs, then the first steps of the next in
    that epoch's order (the order the worker trains in)."""
    bin_tokens = [sum(len(plan.segments[i].input_ids) for i in b) for b in plan.bins]
    spe = plan.steps_per_epoch
    full, rest = divmod(plan.total_steps, spe)
    tokens = full * sum(bin_tokens)
    if rest:
        per_step = int(hp.batch_size) * int(hp.gradient_accumulation_steps)
        order = data.epoch_order(len(plan.bins), int(hp.seed), full)
        tokens += sum(bin_tokens[i] for i in order[: rest * per_step])
    return tokens


def estimate(
    plan: Plan,
    hp: jobs_pb2.Hyperparameters,
    *,
    arch: shared.Arch,
    method: int,
    hardware: HardwareClass,
    simulated: bool,
    simulate_step_seconds: float,
) -> Estimate:
    tokens = total_tokens(plan, hp)
    name = method_name(method)
    devices = max(hardware.spec.gpu_count, 1)
    if simulated:
        seconds = plan.total_steps * simulate_step_seconds
        cost = 0
    else:
        flops = shared.training_flops(
            arch, tokens, method=name, gradient_checkpointing=hp.gradient_checkpointing
        )
        seconds = shared.training_seconds(flops, hardware.spec.effective_tflops, devices)
        cost = round(seconds * devices * hardware.spec.hourly_rate_micros / 3600)
    memory = shared.training_memory_bytes(
        arch,
        name,
        int(hp.max_seq_length),
        batch_size=int(hp.batch_size),
        lora_rank=int(hp.lora_rank),
        gradient_checkpointing=hp.gradient_checkpointing,
    )
    return Estimate(
        hardware_class=hardware.name,
        train_examples=len(plan.segments),
        eval_examples=len(plan.eval_segments),
        tokens_per_epoch=plan.tokens,
        trained_tokens_per_epoch=sum(s.trained for s in plan.segments),
        steps_per_epoch=plan.steps_per_epoch,
        total_steps=plan.total_steps,
        total_tokens=tokens,
        expected_seconds=max(1, round(seconds)),
        cost_micros=cost,
        memory_required=memory,
        memory_available=hardware.memory_bytes,
        gpu=hardware.is_gpu and not simulated,
        seconds=seconds,
    )
