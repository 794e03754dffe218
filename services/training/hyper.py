"""Hyperparameter checks: server defaults filled in, out-of-range values named by field."""

from __future__ import annotations

import math
from collections.abc import Sequence

from aivera.training.v1 import jobs_pb2
from services.common.errors import InvalidArgument

F = "hyperparameters."


def _bad(name: str, message: str) -> InvalidArgument:
    return InvalidArgument(f"{F}{name} {message}", field=F + name)


def _int(value: int, name: str, lo: int, hi: int, default: int) -> int:
    if value == 0:
        return default
    if not lo <= value <= hi:
        raise _bad(name, f"must be between {lo} and {hi} (got {value})")
    return value


def effective(
    hp: jobs_pb2.Hyperparameters,
    *,
    context_length: int,
    linear_modules: Sequence[str],
    dataset_max_seq_length: int,
    checkpoint_every_default: int,
    prefix: str = F,
) -> jobs_pb2.Hyperparameters:
    """The effective values; a bad one is INVALID_ARGUMENT naming `prefix` + its name
    (EstimateJob nests the request one level deeper)."""
    try:
        return _effective(
            hp,
            context_length=context_length,
            linear_modules=linear_modules,
            dataset_max_seq_length=dataset_max_seq_length,
            checkpoint_every_default=checkpoint_every_default,
        )
    except InvalidArgument as exc:
        if prefix == F or not exc.field:
            raise
        field = prefix + exc.field.removeprefix(F)
        raise InvalidArgument(exc.message, field=field) from None


def _effective(
    hp: jobs_pb2.Hyperparameters,
    *,
    context_length: int,
    linear_modules: Sequence[str],
    dataset_max_seq_length: int,
    checkpoint_every_default: int,
) -> jobs_pb2.Hyperparameters:
    out = jobs_pb2.Hyperparameters()
    duration = hp.WhichOneof("duration")
    if duration == "max_steps":
        if not 1 <= hp.max_steps <= 1_000_000:
            raise _bad("max_steps", f"must be between 1 and 1000000 (got {hp.max_steps})")
        out.max_steps = hp.max_steps
    elif duration == "epochs":
        if not 1 <= hp.epochs <= 100:
            raise _bad("epochs", f"must be between 1 and 100 (got {hp.epochs})")
        out.epochs = hp.epochs
    else:
        out.epochs = 3

    lr = hp.learning_rate
    if math.isnan(lr) or lr < 0 or lr > 1:
        raise _bad("learning_rate", f"must be in (0, 1] (got {lr})")
    out.learning_rate = lr or 2e-4

    out.lora_rank = _int(hp.lora_rank, "lora_rank", 1, 256, 16)
    out.lora_alpha = _int(hp.lora_alpha, "lora_alpha", 1, 1024, 2 * out.lora_rank)
    dropout = hp.lora_dropout if hp.HasField("lora_dropout") else 0.05
    if math.isnan(dropout) or not 0 <= dropout < 1:
        raise _bad("lora_dropout", f"must be in [0, 1) (got {dropout})")
    out.lora_dropout = dropout

    known = set(linear_modules)
    modules: list[str] = []
    for name in hp.target_modules:
        if name not in known:
            raise _bad(
                "target_modules",
                f"has {name!r}, which the base model lacks (it has: {', '.join(sorted(known))})",
            )
        if name not in modules:
            modules.append(name)
    out.target_modules.extend(modules or sorted(known))

    out.batch_size = _int(hp.batch_size, "batch_size", 1, 256, 4)
    out.gradient_accumulation_steps = _int(
        hp.gradient_accumulation_steps, "gradient_accumulation_steps", 1, 1024, 1
    )
    default_len = min(dataset_max_seq_length, context_length)
    out.max_seq_length = _int(hp.max_seq_length, "max_seq_length", 16, context_length, default_len)

    warmup = hp.WhichOneof("warmup")
    if warmup == "warmup_steps":
        if hp.warmup_steps < 0:
            raise _bad("warmup_steps", f"must be at least 0 (got {hp.warmup_steps})")
        if duration == "max_steps" and hp.warmup_steps >= hp.max_steps:
            raise _bad("warmup_steps", f"must be below the total steps ({hp.max_steps})")
        out.warmup_steps = hp.warmup_steps
    elif warmup == "warmup_ratio":
        r = hp.warmup_ratio
        if math.isnan(r) or not 0 <= r < 1:
            raise _bad("warmup_ratio", f"must be in [0, 1) (got {r})")
        out.warmup_ratio = r

    out.seed = hp.seed if hp.HasField("seed") else 42
    if out.seed < 0:
        raise _bad("seed", "must not be negative")
    out.gradient_checkpointing = hp.gradient_checkpointing
    es = hp.eval_split
    if math.isnan(es) or not 0 <= es <= 0.5:
        raise _bad("eval_split", f"must be in [0, 0.5] (got {es})")
    out.eval_split = es
    if hp.checkpoint_every_steps < 0:
        raise _bad("checkpoint_every_steps", "must be at least 1")
    out.checkpoint_every_steps = hp.checkpoint_every_steps or checkpoint_every_default
    return out


def warmup_steps(hp: jobs_pb2.Hyperparameters, total: int) -> int:
    if hp.WhichOneof("warmup") == "warmup_steps":
        return min(hp.warmup_steps, max(total - 1, 0))
    if hp.WhichOneof("warmup") == "warmup_ratio":
        return int(total * hp.warmup_ratio)
    return 0
