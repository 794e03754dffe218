"""A job's training plan: the dataset rendered with the base model's template, truncated,
split for eval and packed into sequences. The server computes it to know the total steps;
the worker computes the same plan (deterministic for the same inputs) to train."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from services.training import data


class PlanError(ValueError):
    """The dataset cannot be trained with these settings."""


@dataclass
class Plan:
    segments: list[data.Segment]  # training examples
    eval_segments: list[data.Segment]
    bins: list[list[int]]  # packed sequences: indexes into `segments`
    steps_per_epoch: int
    total_steps: int
    tokens: int  # training tokens of one epoch


def hp_total_steps(hp: Any, steps_per_epoch: int) -> int:
    if hp.WhichOneof("duration") == "max_steps":
        return int(hp.max_steps)
    return int(hp.epochs) * steps_per_epoch


def make_plan(raw: bytes, tokenizer: Any, hp: Any) -> Plan:
    parsed = data.parse_jsonl(raw)
    if not parsed.examples:
        raise PlanError("the dataset has no valid examples")
    max_len = int(hp.max_seq_length)
    segments = []
    for example in parsed.examples:
        seg = data.segment(data.render(tokenizer, example.messages), max_len)
        if seg.trained:
            segments.append(seg)
    if not segments:
        raise PlanError(f"no example has trainable (assistant) tokens within {max_len} tokens")
    train_idx, eval_idx = data.split_eval(len(segments), float(hp.eval_split), int(hp.seed))
    train = [segments[i] for i in train_idx]
    evals = [segments[i] for i in eval_idx]
    bins = data.pack([len(s.input_ids) for s in train], max_len)
    spe = data.steps_per_epoch(len(bins), int(hp.batch_size), int(hp.gradient_accumulation_steps))
    return Plan(
        segments=train,
        eval_segments=evals,
        bins=bins,
        steps_per_epoch=spe,
        total_steps=hp_total_steps(hp, spe),
        tokens=sum(len(s.input_ids) for s in train),
    )


def step_microbatches(plan: Plan, hp: Any, step: int) -> tuple[int, list[list[int]]]:
    """The epoch of 0-based optimizer step `step` and its micro-batches (bin indexes).
    The data position is a pure function of the step, so a resumed job sees exactly the
    batches it would have seen."""
    spe = plan.steps_per_epoch
    epoch, k = divmod(step, spe)
    order = data.epoch_order(len(plan.bins), int(hp.seed), epoch)
    bs, ga = int(hp.batch_size), int(hp.gradient_accumulation_steps)
    micro = [order[i : i + bs] for i in range(0, len(order), bs)]
    return epoch, micro[k * ga : (k + 1) * ga]
