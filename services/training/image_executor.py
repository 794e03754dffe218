"""The worker's side of an image LoRA job (image_jobs.py queues them): read the LoRA's
reference images on the job's grant, check and decode them within a pixel budget, train a
LoRA on the base image pipeline's UNet attention (diffusers + peft) with the trigger word
in every caption, and store the weights as a file of the owner (`models` bucket).

The job runs as a text job does (worker.py): claimed with a lease, a metric event per
step, a checkpoint every `checkpoint_every_steps` (resumed from by the next claim to the
same steps: the data order and noise of step k are drawn from (seed, k), so an
interrupted run and an uninterrupted one train identically), logs as events, stopped at a
step boundary when cancelled, requeued on shutdown. The LoRA moves with it: VALIDATING
while its images are read and checked, TRAINING with `progress`, READY with `weights_*`
(or FAILED / CANCELLED, mirrored by the store from the job).

SIMULATE checks the images the same way, then makes synthetic steps and leaves placeholder
weights (image_pipeline.placeholder_weights): no torch.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image, ImageOps, UnidentifiedImageError

from aivera.storage.v1 import storage_pb2
from aivera.training.v1 import jobs_pb2
from services.common.errors import FailedPrecondition, NotFound, ServiceError
from services.training import image_pipeline, lifecycle
from services.training.convert import hp_from_json
from services.training.executors import lr_factor, make_tar, read_tar
from services.training.image_lora_store import ImageLoraStore
from services.training.session import NumericalInstability, StepPoint, Stopped

if TYPE_CHECKING:
    from services.training.worker import Claim, Worker

J = jobs_pb2
log = logging.getLogger("aivera.training.images")
# Side of the images a simulated job decodes to (it loads no pipeline).
SIMULATE_SIDE = 64


class ImageJobError(Exception):
    """The job cannot go on; the worker fails it with `code` and `message`."""

    def __init__(self, code: jobs_pb2.JobErrorCode.ValueType, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class ImageInvalid(ValueError):
    """A reference image that cannot be decoded, or is over the pixel budget."""


# -- images --------------------------------------------------------------------------------
def prepare_image(blob: bytes, side: int, max_pixels: int) -> Image.Image:
    """An RGB `side`×`side` image: EXIF orientation applied, the short side scaled to
    `side`, the centre cropped. The size is read from the header before anything is
    decoded; over `max_pixels` is refused."""
    try:
        opened = Image.open(io.BytesIO(blob))
        w, h = opened.size
        if w * h > max_pixels:
            raise ImageInvalid(f"is {w}×{h} pixels, over the budget of {max_pixels}")
        opened.draft("RGB", (side, side))  # JPEG: decode at a reduced scale when it can
        img = ImageOps.exif_transpose(opened).convert("RGB")
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError) as exc:
        raise ImageInvalid(f"cannot be decoded: {exc}") from None
    return ImageOps.fit(img, (side, side), Image.Resampling.BICUBIC)


def with_trigger(trigger: str, caption: str) -> str:
    """The caption trained on: it names the trigger word (prepended when it does not)."""
    caption = caption.strip()
    if not caption:
        return f"a photo of {trigger}"
    words = {w.strip(",.;:!?()\"'").lower() for w in caption.split()}
    return caption if trigger.lower() in words else f"{trigger}, {caption}"


# -- the training session (a worker thread) -------------------------------------------------
@dataclass
class ImageResult:
    weights: bytes  # the LoRA file (image_pipeline's format)
    steps: int
    final_loss: float


@dataclass
class ImageSession:
    """What the executor sees of its job."""

    pipeline: Path | None  # None when simulated
    base_name: str
    images: list[Image.Image]
    captions: list[str]
    hp: jobs_pb2.Hyperparameters
    total_steps: int
    resume: bytes | None
    on_step: Callable[[StepPoint], None]
    on_checkpoint: Callable[[StepPoint, bytes], None]
    log: Callable[[str], None]
    stop: threading.Event = field(default_factory=threading.Event)
    torch_threads: int = 0
    simulate_step_seconds: float = 0.2

    def check_stop(self) -> None:
        if self.stop.is_set():
            raise Stopped()


def run_simulate(s: ImageSession) -> ImageResult:
    total, every = s.total_steps, max(1, int(s.hp.checkpoint_every_steps))
    start = 0
    if s.resume is not None:
        start = int(json.loads(read_tar(s.resume)["state.json"])["step"])
        s.log(f"resuming from step {start}")
    n, bs = max(1, len(s.images)), max(1, int(s.hp.batch_size))
    loss = 0.0
    for step in range(start, total):
        s.check_stop()
        t0 = time.perf_counter()
        time.sleep(s.simulate_step_seconds)
        loss = 0.05 + 0.25 * math.exp(-3.0 * (step + 1) / total)
        point = StepPoint(
            step=step + 1,
            epoch=(step + 1) * bs / n,
            loss=loss,
            learning_rate=s.hp.learning_rate * lr_factor(step, 0, total),
            grad_norm=1.0 / (1 + step),
            tokens_per_second=bs / max(time.perf_counter() - t0, 1e-6),
        )
        s.on_step(point)
        if point.step % every == 0 and point.step < total:
            s.on_checkpoint(
                point, make_tar({"state.json": json.dumps({"step": step + 1}).encode()})
            )
    weights = image_pipeline.placeholder_weights(s.base_name)
    return ImageResult(weights=weights, steps=total, final_loss=loss)


class LoraTrainer:
    """LoRA on the UNet's attention of a Stable-Diffusion-layout pipeline: the VAE latents
    and the caption embeddings are computed once (both frozen); each step noises a batch
    of latents at random timesteps and regresses the scheduler's target."""

    def __init__(self, s: ImageSession) -> None:
        import torch
        from peft import LoraConfig

        assert s.pipeline is not None
        self.s = s
        self.hp = s.hp
        pipe = image_pipeline.load_pipeline(s.pipeline)
        self.device = image_pipeline.device()
        self.unet, vae, te, tok = pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer
        for m in (self.unet, vae, te):
            m.requires_grad_(False)
        self.noise = image_pipeline.diffusers().DDPMScheduler.from_config(pipe.scheduler.config)
        self.prediction = self.noise.config.get("prediction_type", "epsilon")
        with torch.no_grad():
            pixels = torch.stack([_to_tensor(img) for img in s.images]).to(self.device)
            dists = [vae.encode(pixels[i : i + 1]).latent_dist for i in range(len(s.images))]
            self.mean = torch.cat([d.mean for d in dists]).float()
            self.std = torch.cat([d.std for d in dists]).float()
            ids = tok(
                s.captions,
                padding="max_length",
                max_length=tok.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids.to(self.device)
            self.text = te(ids)[0].float()
        self.scaling = float(vae.config.scaling_factor)
        rank = int(self.hp.lora_rank)
        torch.manual_seed(int(self.hp.seed))  # the LoRA's initial weights
        self.unet.add_adapter(
            LoraConfig(
                r=rank,
                lora_alpha=int(self.hp.lora_alpha) or rank,
                init_lora_weights="gaussian",
                target_modules=list(self.hp.target_modules),
            )
        )
        self.unet.train()
        self.params = [p for p in self.unet.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=self.hp.learning_rate, weight_decay=1e-2)
        total = s.total_steps
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda step: lr_factor(step, 0, total)
        )
        self.step = 0
        self._perms: dict[int, list[int]] = {}

    def _batch(self, step: int) -> list[int]:
        """The images of `step`: epochs are seeded permutations, so step k always trains
        the same images."""
        import torch

        n, bs = len(self.s.images), max(1, int(self.hp.batch_size))
        out = []
        for pos in range(step * bs, step * bs + bs):
            epoch, j = divmod(pos, n)
            if epoch not in self._perms:
                g = torch.Generator().manual_seed(int(self.hp.seed) * 7919 + epoch)
                self._perms = {epoch: torch.randperm(n, generator=g).tolist()}
            out.append(self._perms[epoch][j])
        return out

    def train_step(self) -> StepPoint:
        import torch
        import torch.nn.functional as F

        t0 = time.perf_counter()
        idx = self._batch(self.step)
        g = torch.Generator().manual_seed(int(self.hp.seed) * 1_000_003 + self.step)
        mean, std = self.mean[idx], self.std[idx]
        eps = torch.randn(mean.shape, generator=g).to(self.device)
        latents = (mean + std * eps) * self.scaling
        noise = torch.randn(latents.shape, generator=g).to(self.device)
        steps = self.noise.config.num_train_timesteps
        t = torch.randint(0, steps, (len(idx),), generator=g).to(self.device)
        noisy = self.noise.add_noise(latents, noise, t)
        target = (
            noise if self.prediction == "epsilon" else self.noise.get_velocity(latents, noise, t)
        )
        if self.device.type == "cuda":
            with torch.autocast("cuda", dtype=torch.bfloat16):
                pred = self.unet(noisy, t, self.text[idx]).sample
        else:
            pred = self.unet(noisy, t, self.text[idx]).sample
        loss = F.mse_loss(pred.float(), target.float())
        value = float(loss.detach())
        if not math.isfinite(value):
            raise NumericalInstability(f"the loss became {value} at step {self.step + 1}")
        loss.backward()  # type: ignore[no-untyped-call]
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, 1.0))
        lr = float(self.sched.get_last_lr()[0])
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        self.step += 1
        return StepPoint(
            step=self.step,
            epoch=self.step * len(idx) / len(self.s.images),
            loss=value,
            learning_rate=lr,
            grad_norm=grad_norm if math.isfinite(grad_norm) else 0.0,
            tokens_per_second=len(idx) / max(time.perf_counter() - t0, 1e-9),  # images/s
        )

    def adapter_state(self) -> dict[str, Any]:
        from peft.utils import get_peft_model_state_dict

        return {k: v.detach().cpu() for k, v in get_peft_model_state_dict(self.unet).items()}

    def state_blob(self) -> bytes:
        import torch
        from safetensors.torch import save

        opt, sched = io.BytesIO(), io.BytesIO()
        torch.save(self.opt.state_dict(), opt)
        torch.save({"scheduler": self.sched.state_dict()}, sched)
        adapter = {k: v.contiguous() for k, v in self.adapter_state().items()}
        return make_tar(
            {
                "adapter_model.safetensors": save(adapter),
                "optimizer.pt": opt.getvalue(),
                "scheduler.pt": sched.getvalue(),
                "state.json": json.dumps({"step": self.step, "seed": int(self.hp.seed)}).encode(),
            }
        )

    def load_blob(self, blob: bytes) -> None:
        import torch
        from peft.utils import set_peft_model_state_dict
        from safetensors.torch import load

        files = read_tar(blob)
        result = set_peft_model_state_dict(self.unet, load(files["adapter_model.safetensors"]))
        if getattr(result, "unexpected_keys", None):
            raise ValueError("the checkpoint does not match this pipeline's LoRA")
        self.opt.load_state_dict(torch.load(io.BytesIO(files["optimizer.pt"]), weights_only=True))
        extra = torch.load(io.BytesIO(files["scheduler.pt"]), weights_only=True)
        self.sched.load_state_dict(extra["scheduler"])
        self.step = int(json.loads(files["state.json"])["step"])

    def weights(self) -> bytes:
        return image_pipeline.weights_file(
            self.adapter_state(),
            base=self.s.base_name,
            rank=int(self.hp.lora_rank),
            simulated=False,
        )


def _to_tensor(img: Image.Image) -> Any:
    """A (3, H, W) float tensor in [-1, 1]."""
    import numpy as np
    import torch

    arr = np.asarray(img, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def run_peft(s: ImageSession) -> ImageResult:
    import torch

    if s.torch_threads:
        torch.set_num_threads(s.torch_threads)
    try:
        trainer = LoraTrainer(s)
    except (OSError, ValueError, ImportError) as exc:
        raise image_pipeline.PipelineNotFound(str(exc)) from exc
    if s.resume is not None:
        trainer.load_blob(s.resume)
        s.log(f"resumed from checkpoint at step {trainer.step}")
    total, every = s.total_steps, max(1, int(s.hp.checkpoint_every_steps))
    point: StepPoint | None = None
    while trainer.step < total:
        s.check_stop()
        point = trainer.train_step()
        s.on_step(point)
        if point.step % every == 0 and point.step < total:
            s.check_stop()
            s.on_checkpoint(point, trainer.state_blob())
    return ImageResult(
        weights=trainer.weights(), steps=total, final_loss=point.loss if point else 0.0
    )


# -- the job (the worker's event loop) ------------------------------------------------------
async def run(worker: Worker, claim: Claim, stop: threading.Event) -> bool:
    """Train the claimed image LoRA job; True when it finished (LoRA READY), False when it
    stopped early (cancelled, lease lost, timed out or shutting down). ImageJobError when
    it cannot go on; the worker fails it."""
    job = claim.job
    assert job.image_lora_id is not None
    settings = worker.settings
    simulate = job.executor == J.EXECUTOR_SIMULATE
    loras = ImageLoraStore(worker.store)
    lora = await loras.get(job.user_id, job.image_lora_id)
    if lora is None:
        raise ImageJobError(J.JOB_ERROR_CODE_DATASET_INVALID, "the image LoRA was deleted")
    refs = (await loras.images([lora.id]))[lora.id]
    if not refs:
        raise ImageJobError(J.JOB_ERROR_CODE_DATASET_INVALID, "the image LoRA has no images")
    await worker._log(claim, f"reading {len(refs)} reference images")
    blobs: list[bytes] = []
    for ref in refs:
        try:
            blobs.append(await worker.storage.download(ref.file_id))
        except (NotFound, FailedPrecondition):
            raise ImageJobError(
                J.JOB_ERROR_CODE_DATASET_INVALID,
                f"the file of reference image {ref.id} was deleted from storage",
            ) from None
        except ServiceError as exc:
            raise ImageJobError(J.JOB_ERROR_CODE_STORAGE_ERROR, exc.message) from None
    path: Path | None = None
    side = SIMULATE_SIDE
    if not simulate:
        try:
            path = await asyncio.to_thread(image_pipeline.resolve, settings)
            side = await asyncio.to_thread(image_pipeline.resolution, path)
        except (OSError, ValueError, KeyError) as exc:
            raise ImageJobError(J.JOB_ERROR_CODE_MODEL_LOAD_FAILED, str(exc)) from None
    images: list[Image.Image] = []
    for ref, blob in zip(refs, blobs, strict=True):
        try:
            images.append(
                await asyncio.to_thread(prepare_image, blob, side, settings.image_lora_max_pixels)
            )
        except ImageInvalid as exc:
            raise ImageJobError(
                J.JOB_ERROR_CODE_DATASET_INVALID, f"reference image {ref.id} {exc}"
            ) from None
    captions = [with_trigger(lora.trigger_word, ref.caption) for ref in refs]
    hp = hp_from_json(job.hyperparameters)
    total = job.total_steps or int(hp.max_steps)
    last = await worker.store.latest_checkpoint(job.id)
    resume = None
    if last is not None:
        try:
            resume = await worker.storage.download(last.file_id)
        except ServiceError as exc:
            raise ImageJobError(J.JOB_ERROR_CODE_STORAGE_ERROR, exc.message) from None
        await worker._log(claim, f"resuming from checkpoint at step {last.step}")
    start = last.step if last is not None else 0
    await _progress(worker, claim, start / max(1, total))
    await worker._log(claim, f"training {total} steps on {len(images)} images at {side}×{side} px")
    loop = asyncio.get_running_loop()

    def call(coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, loop).result()

    def on_step(point: StepPoint) -> None:
        claim.step_reached = point.step
        if not call(worker._record_step(claim, point, total)):
            stop.set()
            return
        call(_progress(worker, claim, point.step / max(1, total)))

    def on_checkpoint(point: StepPoint, blob: bytes) -> None:
        if not call(worker._save_checkpoint(claim, point, blob)):
            stop.set()

    session = ImageSession(
        pipeline=path,
        base_name=job.base_model,
        images=images,
        captions=captions,
        hp=hp,
        total_steps=total,
        resume=resume,
        on_step=on_step,
        on_checkpoint=on_checkpoint,
        log=lambda text: call(worker._log(claim, text)),
        stop=stop,
        torch_threads=settings.training_torch_threads,
        simulate_step_seconds=settings.training_simulate_step_seconds,
    )
    claim.base_step = start
    claim.started = time.monotonic()
    try:
        result = await asyncio.to_thread(run_simulate if simulate else run_peft, session)
    except Stopped:
        return False
    except image_pipeline.PipelineNotFound as exc:
        raise ImageJobError(J.JOB_ERROR_CODE_MODEL_LOAD_FAILED, str(exc)) from None
    await _finish(worker, claim, lora.trigger_word, result)
    return True


async def _progress(worker: Worker, claim: Claim, fraction: float) -> None:
    """The LoRA TRAINING, `fraction` of the way (while the job is still this claim's)."""
    job = claim.job
    assert job.image_lora_id is not None
    async with worker.store.transaction() as tx:
        if await worker._locked_if_ours(tx, claim):
            await tx.image_lora_training(job.image_lora_id, job.id, min(1.0, fraction))


async def _finish(worker: Worker, claim: Claim, trigger: str, result: ImageResult) -> None:
    """Store the weights as the owner's file and end the job SUCCEEDED (the LoRA READY)."""
    job = claim.job
    assert job.image_lora_id is not None
    try:
        file = await worker.storage.upload(
            storage_pb2.BUCKET_MODELS,
            f"{trigger}-lora.safetensors",
            result.weights,
            labels={
                "purpose": "image-lora",
                "image_lora_id": str(job.image_lora_id),
                "job_id": str(job.id),
            },
        )
    except ServiceError as exc:
        raise ImageJobError(J.JOB_ERROR_CODE_STORAGE_ERROR, exc.message) from None
    async with worker.store.transaction() as tx:
        locked = await worker._locked_if_ours(tx, claim)
        if locked is not None:
            await tx.image_lora_weights(
                job.image_lora_id,
                job.id,
                file_id=file.id,
                size=len(result.weights),
                sha256=hashlib.sha256(result.weights).hexdigest(),
            )
            await tx.bill(claim.cost_id, claim.token)  # the final cost comes with the final status
            change = lifecycle.succeed(
                locked, model_id=None, steps=result.steps, final_loss=result.final_loss
            )
            await tx.apply(job.id, change)
    if locked is None:  # cancelled or taken over meanwhile: the weights are nobody's
        try:
            await worker.storage.delete_file(file.id)
        except ServiceError as exc:
            log.warning("could not delete the unused weights %s: %s", file.id, exc)


__all__ = ["ImageJobError", "prepare_image", "run", "run_peft", "run_simulate", "with_trigger"]
