"""Executors: `peft` trains a real LoRA / QLoRA adapter; `simulate` makes synthetic
progress for interface work. Both run in a worker thread and resume from a checkpoint blob
(a tar: adapter, optimizer, scheduler, RNG and data position) to exactly the same steps.

Packing: examples are packed (best-fit decreasing) into rows of at most max_seq_length
tokens with position_ids that restart at 0 for each example and no attention mask, so
transformers builds a block-diagonal causal mask (`find_packed_sequence_indices`): no token
attends to another example and no padding is computed except the short tail of a
micro-batch's shorter rows (a separate segment with no loss). Targets are shifted inside
each example and only assistant tokens carry loss; the LM head runs only on those
positions. fp32 on CPU, bf16 on GPU when supported.
"""

from __future__ import annotations

import io
import json
import math
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

from aivera.training.v1 import jobs_pb2
from services.training import hyper
from services.training.data import IGNORE
from services.training.plan import Plan, step_microbatches
from services.training.session import NumericalInstability, Result, Session, StepPoint


# -- checkpoint blobs -------------------------------------------------------------------------
def make_tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mtime = int(time.time())
            tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def read_tar(blob: bytes) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r") as tar:
        for member in tar.getmembers():
            f = tar.extractfile(member)
            if f is not None:
                out[member.name] = f.read()
    return out


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up, then linear decay to 0 at `total`."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


# -- simulate -------------------------------------------------------------------------------
def run_simulate(s: Session) -> Result:
    plan, hp = s.plan, s.hp
    total = plan.total_steps
    start = 0
    if s.resume is not None:
        start = int(json.loads(read_tar(s.resume)["state.json"])["step"])
        s.log(f"resuming from step {start}")
    warm = hyper.warmup_steps(hp, total)
    loss = 0.0
    # Said in the job's log as well as in its executor: nothing is trained here.
    s.log(
        f"simulated run: {total - start} steps of synthetic progress, no model is trained; "
        "the adapter will be a placeholder"
    )
    for step in range(start, total):
        s.check_stop()
        t0 = time.perf_counter()
        time.sleep(s.simulate_step_seconds)
        loss = 0.3 + 2.2 * math.exp(-3.0 * (step + 1) / total)
        epoch = (step + 1) / plan.steps_per_epoch
        tokens = plan.tokens / plan.steps_per_epoch
        point = StepPoint(
            step=step + 1,
            epoch=epoch,
            loss=loss,
            learning_rate=hp.learning_rate * lr_factor(step, warm, total),
            grad_norm=1.0 / (1 + step),
            tokens_per_second=tokens / max(time.perf_counter() - t0, 1e-6),
        )
        s.on_step(point)
        if (step + 1) % hp.checkpoint_every_steps == 0 and step + 1 < total:
            s.on_checkpoint(
                point, make_tar({"state.json": json.dumps({"step": step + 1}).encode()})
            )
    s.log(f"simulation finished at step {total} (synthetic loss {loss:.3f})")
    return Result(files=placeholder_adapter(hp), steps=total, final_loss=loss)


def placeholder_adapter(hp: jobs_pb2.Hyperparameters) -> dict[str, bytes]:
    """The files a simulated job leaves: a placeholder tensor and a config that says it
    is simulated (never a usable adapter)."""
    import numpy as np
    from safetensors.numpy import save

    weights = save({"placeholder": np.zeros((1,), dtype=np.float32)})
    config = {
        "peft_type": "LORA",
        "simulated": True,
        "r": hp.lora_rank,
        "lora_alpha": hp.lora_alpha,
        "target_modules": list(hp.target_modules),
    }
    return {
        "adapter_model.safetensors": weights,
        "adapter_config.json": json.dumps(config).encode(),
    }


def adapter_config(hp: jobs_pb2.Hyperparameters, base_model_path: str) -> dict[str, object]:
    """A peft `adapter_config.json` for a LoRA adapter trained with `hp` (what
    `save_pretrained` writes, for weights taken from a checkpoint)."""
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_path,
        "r": hp.lora_rank,
        "lora_alpha": hp.lora_alpha,
        "lora_dropout": hp.lora_dropout,
        "target_modules": sorted(hp.target_modules),
        "bias": "none",
        "inference_mode": True,
    }


# -- peft -----------------------------------------------------------------------------------
def collate(
    plan: Plan, bins: list[int], pad_id: int, segments: Any = None
) -> tuple[Any, Any, Any, int]:
    """input_ids, position_ids, labels (B, T) and the real (non-pad) token count."""
    import torch

    segs = segments if segments is not None else plan.segments
    rows: list[tuple[list[int], list[int], list[int]]] = []
    real = 0
    for b in bins:
        ids: list[int] = []
        pos: list[int] = []
        lab: list[int] = []
        for i in plan.bins[b] if segments is None else [b]:
            seg = segs[i]
            ids += seg.input_ids
            pos += range(len(seg.input_ids))
            lab += seg.labels
        real += len(ids)
        rows.append((ids, pos, lab))
    width = max(len(r[0]) for r in rows)
    for ids, pos, lab in rows:
        pad = width - len(ids)
        ids += [pad_id] * pad
        pos += range(pad)
        lab += [IGNORE] * pad
    return (
        torch.tensor([r[0] for r in rows]),
        torch.tensor([r[1] for r in rows]),
        torch.tensor([r[2] for r in rows]),
        real,
    )


def pick_device() -> tuple[Any, Any]:
    import torch

    if torch.cuda.is_available():
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.device("cuda"), dtype
    return torch.device("cpu"), torch.float32


def load_model(path: Path, method: int, hp: jobs_pb2.Hyperparameters) -> Any:
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    device, dtype = pick_device()
    kwargs: dict[str, Any] = {"dtype": dtype}
    if method == jobs_pb2.TRAINING_METHOD_QLORA:
        kwargs["quantization_config"] = BitsAndBytesConfig(  # type: ignore[no-untyped-call]
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=dtype,
            bnb_4bit_use_double_quant=True,
        )
        kwargs["device_map"] = {"": device.index or 0} if device.type == "cuda" else {"": "cpu"}
    model: Any = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    if method == jobs_pb2.TRAINING_METHOD_QLORA:
        model = prepare_model_for_kbit_training(  # type: ignore[no-untyped-call]
            model,
            use_gradient_checkpointing=hp.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    else:
        model.to(device)
        if hp.gradient_checkpointing:
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
            model.enable_input_require_grads()
    model.config.use_cache = False
    config = LoraConfig(
        r=hp.lora_rank,
        lora_alpha=hp.lora_alpha,
        lora_dropout=hp.lora_dropout,
        target_modules=list(hp.target_modules),
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, config)
    model.train()
    return model


class PeftTrainer:
    """The training loop, also used directly by the benchmark."""

    def __init__(self, model: Any, plan: Plan, hp: jobs_pb2.Hyperparameters, pad_id: int) -> None:
        import torch

        self.model = model
        self.plan = plan
        self.hp = hp
        self.pad_id = pad_id
        base = model.get_base_model()
        self.backbone = base.get_decoder()
        self.head = base.get_output_embeddings()
        self.device = next(p for p in model.parameters()).device
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=hp.learning_rate, weight_decay=0.0)
        total = plan.total_steps
        warm = hyper.warmup_steps(hp, total)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda step: lr_factor(step, warm, total)
        )
        self.step = 0

    def _loss_sum(self, ids: Any, pos: Any, labels: Any) -> tuple[Any, int]:
        import torch.nn.functional as F

        ids, pos, labels = ids.to(self.device), pos.to(self.device), labels.to(self.device)
        hidden = self.backbone(input_ids=ids, position_ids=pos, use_cache=False).last_hidden_state
        mask = labels != IGNORE
        logits = self.head(hidden[mask]).float()
        return F.cross_entropy(logits, labels[mask], reduction="sum"), int(mask.sum())

    def train_step(self) -> StepPoint:
        import torch

        t0 = time.perf_counter()
        epoch, micro = step_microbatches(self.plan, self.hp, self.step)
        batches = [collate(self.plan, mb, self.pad_id) for mb in micro]
        n_trained = sum(int((b[2] != IGNORE).sum()) for b in batches)
        tokens = sum(b[3] for b in batches)
        total_loss = 0.0
        for ids, pos, labels, _ in batches:
            loss_sum, _n = self._loss_sum(ids, pos, labels)
            (loss_sum / max(n_trained, 1)).backward()
            total_loss += float(loss_sum.detach())
        loss = total_loss / max(n_trained, 1)
        if not math.isfinite(loss):
            raise NumericalInstability(f"the loss became {loss} at step {self.step + 1}")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, 1.0))
        lr = float(self.sched.get_last_lr()[0])
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        self.step += 1
        k = (self.step - 1) % self.plan.steps_per_epoch + 1
        return StepPoint(
            step=self.step,
            epoch=epoch + k / self.plan.steps_per_epoch,
            loss=loss,
            learning_rate=lr,
            grad_norm=grad_norm if math.isfinite(grad_norm) else 0.0,
            tokens_per_second=tokens / max(time.perf_counter() - t0, 1e-9),
        )

    def evaluate(self) -> float | None:
        import torch

        segs = self.plan.eval_segments
        if not segs:
            return None
        self.model.eval()
        total, count = 0.0, 0
        with torch.no_grad():
            bs = max(1, int(self.hp.batch_size))
            for i in range(0, len(segs), bs):
                ids, pos, labels, _ = collate(
                    self.plan, list(range(i, min(i + bs, len(segs)))), self.pad_id, segments=segs
                )
                loss_sum, n = self._loss_sum(ids, pos, labels)
                total += float(loss_sum)
                count += n
        self.model.train()
        return total / max(count, 1)

    # state
    def state_blob(self) -> bytes:
        import torch
        from peft import get_peft_model_state_dict
        from safetensors.torch import save

        adapter = {
            k: v.detach().cpu().contiguous()
            for k, v in get_peft_model_state_dict(self.model).items()
        }
        opt = io.BytesIO()
        torch.save(self.opt.state_dict(), opt)
        sched = io.BytesIO()
        torch.save({"scheduler": self.sched.state_dict(), "rng": torch.get_rng_state()}, sched)
        epoch, _ = divmod(self.step, self.plan.steps_per_epoch)
        position = {
            "step": self.step,
            "epoch": epoch,
            "step_in_epoch": self.step - epoch * self.plan.steps_per_epoch,
            "seed": int(self.hp.seed),
        }
        return make_tar(
            {
                "adapter_model.safetensors": save(adapter),
                "optimizer.pt": opt.getvalue(),
                "scheduler.pt": sched.getvalue(),
                "state.json": json.dumps(position).encode(),
            }
        )

    def load_blob(self, blob: bytes) -> None:
        import torch
        from peft import set_peft_model_state_dict
        from safetensors.torch import load

        files = read_tar(blob)
        set_peft_model_state_dict(self.model, load(files["adapter_model.safetensors"]))
        self.opt.load_state_dict(torch.load(io.BytesIO(files["optimizer.pt"]), weights_only=True))
        extra = torch.load(io.BytesIO(files["scheduler.pt"]), weights_only=True)
        self.sched.load_state_dict(extra["scheduler"])
        torch.set_rng_state(extra["rng"])
        self.step = int(json.loads(files["state.json"])["step"])

    def adapter_files(self) -> dict[str, bytes]:
        with tempfile.TemporaryDirectory() as tmp:
            self.model.save_pretrained(tmp)
            return {
                p.name: p.read_bytes()
                for p in Path(tmp).iterdir()
                if p.name in ("adapter_model.safetensors", "adapter_config.json")
            }


def run_peft(s: Session) -> Result:
    import torch

    if s.torch_threads:
        torch.set_num_threads(s.torch_threads)
    torch.manual_seed(int(s.hp.seed))
    try:
        model = load_model(s.model_path, s.method, s.hp)
    except (OSError, ValueError, ImportError, RuntimeError) as exc:
        raise ModelLoadError(str(exc)) from exc
    trainer = PeftTrainer(model, s.plan, s.hp, s.pad_token_id)
    if s.resume is not None:
        trainer.load_blob(s.resume)
        s.log(f"resumed from checkpoint at step {trainer.step}")
    elif s.init_adapter is not None:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load

        result = set_peft_model_state_dict(model, load(s.init_adapter))
        if getattr(result, "unexpected_keys", None):
            raise ModelLoadError("the model to continue from does not match this adapter")
        s.log("continuing from the adapter of the starting model")
    total = s.plan.total_steps
    point: StepPoint | None = None
    while trainer.step < total:
        s.check_stop()
        point = trainer.train_step()
        every = int(s.hp.checkpoint_every_steps)
        if point.step % every == 0 and point.step < total:
            point.eval_loss = trainer.evaluate()
            s.on_step(point)
            s.check_stop()
            s.on_checkpoint(point, trainer.state_blob())
        else:
            if point.step == total:
                point.eval_loss = trainer.evaluate()
            s.on_step(point)
    return Result(
        files=trainer.adapter_files(),
        steps=total,
        final_loss=point.loss if point else 0.0,
        final_eval_loss=point.eval_loss if point else None,
    )


class ModelLoadError(Exception):
    """The base model or its tokenizer could not be loaded (job error MODEL_LOAD_FAILED)."""


EXECUTORS = {jobs_pb2.EXECUTOR_PEFT: run_peft, jobs_pb2.EXECUTOR_SIMULATE: run_simulate}
