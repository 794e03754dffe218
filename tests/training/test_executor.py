"""The peft executor on a tiny random Llama: packing is leak-free, loss is on assistant
tokens only, LoRA and QLoRA (bitsandbytes 4-bit on CPU) learn a memorisation set, and a
resumed run reproduces the uninterrupted one."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, cast

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from aivera.training.v1 import jobs_pb2
from services.training import data
from services.training.executors import collate, run_peft
from services.training.plan import make_plan
from services.training.session import Session, StepPoint
from tests.training.conftest import MEMO, chat, jsonl


def hp(**kw: Any) -> jobs_pb2.Hyperparameters:
    base: dict[str, Any] = dict(
        max_steps=12,
        learning_rate=1e-2,
        lora_rank=8,
        lora_alpha=16,
        lora_dropout=0.0,
        target_modules=[
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ],
        batch_size=2,
        gradient_accumulation_steps=1,
        max_seq_length=128,
        seed=7,
        checkpoint_every_steps=4,
    )
    base.update(kw)
    return jobs_pb2.Hyperparameters(**base)


def session(
    tiny: Path,
    h: jobs_pb2.Hyperparameters,
    method: int,
    resume: bytes | None = None,
    stop_after: int = 0,
) -> tuple[Session, list[StepPoint], list[tuple[int, bytes]]]:
    tok = AutoTokenizer.from_pretrained(tiny)
    plan = make_plan(jsonl(MEMO), tok, h)
    points: list[StepPoint] = []
    ckpts: list[tuple[int, bytes]] = []
    stop = threading.Event()

    def on_step(p: StepPoint) -> None:
        points.append(p)
        if stop_after and p.step >= stop_after:
            stop.set()

    s = Session(
        plan=plan,
        hp=h,
        method=method,
        model_path=tiny,
        pad_token_id=tok.pad_token_id,
        resume=resume,
        on_step=on_step,
        on_checkpoint=lambda p, b: ckpts.append((p.step, b)),
        log=lambda _t: None,
        stop=stop,
        torch_threads=2,
    )
    return s, points, ckpts


def test_assistant_only_targets_and_packing(tiny_model: Path) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_model)
    r = data.render(tok, chat("Question?", "Answer.")["messages"])
    seg = data.segment(r, 256)
    # Decoding one sequence gives a str (the stub allows a batch's list too).
    trained = [cast(str, tok.decode([t])) for t in seg.labels if t != data.IGNORE]
    assert "".join(trained) == "Answer.<|im_end|>"
    bins = data.pack([50, 30, 20, 70, 10], 100)
    assert sorted(i for b in bins for i in b) == [0, 1, 2, 3, 4]
    assert all(sum([50, 30, 20, 70, 10][i] for i in b) <= 100 for b in bins)
    assert len(bins) == 2  # no padding waste beyond the capacity bound


def test_packed_rows_do_not_attend_across_examples(tiny_model: Path) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_model)
    # transformers leaves its eval() override unannotated.
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()  # type: ignore[no-untyped-call]
    plan = make_plan(jsonl(MEMO[:3]), tok, hp(max_seq_length=512))
    assert len(plan.bins) == 1 and len(plan.bins[0]) == 3  # all three packed in one row
    ids, pos, _labels, real = collate(plan, [0], tok.pad_token_id)
    assert real == ids.shape[1]  # no padding
    with torch.no_grad():
        packed = model(input_ids=ids, position_ids=pos, use_cache=False).logits[0]
        offset = 0
        for i in plan.bins[0]:
            seg = plan.segments[i].input_ids
            alone = model(input_ids=torch.tensor([seg])).logits[0]
            torch.testing.assert_close(
                packed[offset : offset + len(seg)], alone, atol=1e-4, rtol=1e-4
            )
            offset += len(seg)


@pytest.mark.parametrize("method", [jobs_pb2.TRAINING_METHOD_LORA, jobs_pb2.TRAINING_METHOD_QLORA])
def test_loss_falls_on_memorisation_set(tiny_model: Path, method: int) -> None:
    s, points, ckpts = session(tiny_model, hp(), method)
    result = run_peft(s)
    assert [p.step for p in points] == list(range(1, 13))
    first, last = points[0].loss, points[-1].loss
    assert last < first - 0.4, [round(p.loss, 3) for p in points]
    assert set(result.files) == {"adapter_model.safetensors", "adapter_config.json"}
    assert [c[0] for c in ckpts] == [4, 8]
    assert all(p.tokens_per_second > 0 and p.grad_norm > 0 for p in points)


def test_resume_from_checkpoint_matches_uninterrupted(tiny_model: Path) -> None:
    h = hp(max_steps=8)
    s, full, ckpts = session(tiny_model, h, jobs_pb2.TRAINING_METHOD_LORA)
    run_peft(s)
    step4 = dict(ckpts)[4]
    s2, resumed, _ = session(tiny_model, h, jobs_pb2.TRAINING_METHOD_LORA, resume=step4)
    run_peft(s2)
    assert [p.step for p in resumed] == [5, 6, 7, 8]
    for a, b in zip(full[4:], resumed, strict=True):
        assert a.loss == pytest.approx(b.loss, rel=1e-4)
