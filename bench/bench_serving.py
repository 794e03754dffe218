"""Serving clones in process (issue 14): batching, adapter switches, admission.

Through the chat service's own `LocalModels` (scheduler, batched generate, peft):

- 8 concurrent turns vs the same 8 one at a time: total tokens/s ratio (goal >= 3x);
- switching between 10 adapters on one base after their first load: p99 of the switch
  (`set_adapter` and bookkeeping), goal < 20 ms;
- 50 concurrent turns with batch 8 and queue 16: each finishes or is refused with
  MODEL_BUSY; the refusals' latency (goal: within 2 s) and that none times out.

BENCH_SERVING_MODEL=smollm2 (default) or tiny (a random 2-layer Llama, for 2-core
machines where SmolLM2 is too slow); BENCH_SERVING_TOKENS new tokens per turn.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path

from services.chat.adapters import Adapter
from services.chat.batching import Busy
from services.chat.providers.base import Content, LlmRequest, Part
from services.chat.providers.local import LocalModels

MODEL = os.environ.get("BENCH_SERVING_MODEL", "smollm2")
TOKENS = int(os.environ.get("BENCH_SERVING_TOKENS", "16"))
QUESTIONS = [
    "Tell me about Paris.",
    "What is the capital of Italy?",
    "Name three rivers.",
    "Why is the sky blue?",
    "How do bridges stand?",
    "What is 42?",
    "Describe a cat.",
    "What is rain?",
]


def _model_path() -> Path:
    if MODEL == "tiny":
        from tests.helpers.tiny import build_tiny_model

        return build_tiny_model(Path(tempfile.mkdtemp(prefix="bench-tiny-")) / "tiny")
    from services.common.localmodels import SMOLLM2, default_models_dir, resolve_model

    return resolve_model(SMOLLM2, default_models_dir())


def _request(text: str, tokens: int = TOKENS) -> LlmRequest:
    return LlmRequest(
        model=MODEL,
        system_instruction="",
        contents=[Content("user", [Part(text=text)])],
        max_output_tokens=tokens,
    )


async def _turn(models: LocalModels, text: str, adapter: Adapter | None = None) -> int:
    produced = 0
    async for chunk in models.provider(adapter).stream(_request(text)):
        if chunk.usage is not None:
            produced = chunk.usage.output_tokens
    return produced


def _adapters(base: Path, count: int) -> list[Adapter]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    root = Path(tempfile.mkdtemp(prefix="bench-adapters-"))
    names = [f"a{n}" for n in range(count)]
    torch.manual_seed(0)
    config = LoraConfig(r=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), config, names[0])
    for name in names[1:]:
        model.add_adapter(name, config)
    # peft writes an adapter not named "default" into <folder>/<name>.
    model.save_pretrained(str(root), selected_adapters=names)
    return [Adapter(name, root / name) for name in names]


async def _run() -> None:
    path = _model_path()
    print(f"   model: {MODEL} ({path.name}), {TOKENS} new tokens a turn")
    models = LocalModels(
        path, name=path.name, max_new_tokens=TOKENS, batch_size=8, queue_limit=16, cache_size=10
    )
    await models.ensure_loaded()
    await _turn(models, "warm up")

    start = time.perf_counter()
    sequential = 0
    for q in QUESTIONS:
        sequential += await _turn(models, q)
    seq_rate = sequential / (time.perf_counter() - start)
    start = time.perf_counter()
    together = sum(await asyncio.gather(*(_turn(models, q) for q in QUESTIONS)))
    conc_rate = together / (time.perf_counter() - start)
    print(f"   one at a time: {seq_rate:.1f} tokens/s; 8 concurrent: {conc_rate:.1f} tokens/s")
    print(f"   ratio 8 concurrent / one at a time: {conc_rate / seq_rate:.2f}x (goal >= 3x)")

    adapters = await asyncio.to_thread(_adapters, path, 10)
    for adapter in adapters:  # first loads
        await _turn(models, "hi", adapter)
    base = models.bases[""]
    base.switches.clear()
    for n in range(100):
        await _turn(models, "hi", adapters[n % len(adapters)])
    switches = sorted(base.switches)
    p99 = switches[int(len(switches) * 0.99) - 1] * 1000
    print(
        f"   adapter switch over 10 adapters: median {statistics.median(switches) * 1000:.2f} ms,"
        f" p99 {p99:.2f} ms (goal < 20 ms)"
    )

    refused: list[float] = []
    finished: list[float] = []
    start = time.perf_counter()

    async def one(n: int) -> None:
        try:
            await _turn(models, QUESTIONS[n % len(QUESTIONS)])
            finished.append(time.perf_counter() - start)
        except Busy:
            refused.append(time.perf_counter() - start)

    await asyncio.wait_for(asyncio.gather(*(one(n) for n in range(50))), timeout=600)
    print(
        f"   50 concurrent: {len(finished)} finished (last after {max(finished):.2f} s), "
        f"{len(refused)} refused MODEL_BUSY (slowest refusal {max(refused, default=0):.3f} s), "
        f"{50 - len(finished) - len(refused)} lost (goal: 0 lost, refusals within 2 s)"
    )


def main() -> None:
    asyncio.run(_run())


if __name__ == "__main__":
    main()
