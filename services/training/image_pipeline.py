"""The base image pipeline of LOCAL image LoRAs (diffusers), their weights, and generation.

The pipeline is a local diffusers folder in Stable Diffusion 1.x/2.x layout (UNet2D with
cross-attention, AutoencoderKL, CLIP text encoder): `image_base_model` in settings. The
built-in `tiny-random-sd` is that layout at toy size with random weights, built from configs
on first use under the models dir (no download, ever; a file lock makes concurrent
processes build it once, and it appears by rename). It exists so CPU machines and tests run
the real code paths: its images are noise.

LoRA weights are one safetensors file in diffusers' format (`unet.<module>.lora.down.weight`
/ `.lora.up.weight`, alpha = rank), so `StableDiffusionPipeline.load_lora_weights` reads
them too; its metadata names the base pipeline. Weights are checked against the pipeline's
modules and shapes before they are loaded: ones that do not fit are `WeightsMismatch`.

SIMULATE generation draws deterministic placeholder PNGs from the seed with Pillow only.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import importlib
import io
import json
import logging
import random
import re
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw
from PIL.PngImagePlugin import PngInfo

from services.training.config import TrainingSettings

log = logging.getLogger("aivera.training.images")

TINY = "tiny-random-sd"
# The attention projections the LoRA adapts (every attention of the UNet).
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
WEIGHTS_FORMAT = "aivera-image-lora/1"
_KEY = re.compile(r"unet\.(?P<module>.+)\.lora\.(?P<part>down|up)\.weight")
_DEFAULTS = TrainingSettings.model_construct()


class PipelineNotFound(FileNotFoundError):
    """`image_base_model` is neither the built-in name nor a diffusers folder."""


class WeightsMismatch(ValueError):
    """LoRA weights that are not a LoRA of this base pipeline (or are no weights at all)."""


# -- the base pipeline -------------------------------------------------------------------
def _models_dir(settings: TrainingSettings) -> Path:
    from services.common.localmodels import default_models_dir

    return settings.base_models_dir or default_models_dir()


def resolve(settings: TrainingSettings) -> Path:
    """The folder of the configured base pipeline (the built-in one is built once)."""
    name = settings.image_base_model
    models_dir = _models_dir(settings)
    if name == TINY:
        return ensure_tiny(models_dir)
    path = Path(name)
    if not path.is_absolute():
        path = models_dir / path
    if not (path / "model_index.json").exists():
        raise PipelineNotFound(
            f"image pipeline {name!r} is not {TINY!r} or a local diffusers folder"
        )
    return path


def ensure_tiny(models_dir: Path) -> Path:
    target = models_dir / TINY
    if (target / "model_index.json").exists():
        return target
    models_dir.mkdir(parents=True, exist_ok=True)
    with open(models_dir / f".{TINY}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / "model_index.json").exists():
            return target
        log.info("building the tiny random image pipeline in %s (once)", target)
        tmp = Path(tempfile.mkdtemp(prefix=f".{TINY}-", dir=models_dir))
        try:
            build_tiny(tmp)
            tmp.rename(target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _clip_byte_vocab() -> dict[str, int]:
    """A character-level CLIP vocabulary: every byte's symbol, alone and word-final, and
    the two specials (no merges: each word is its characters)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    symbols = [chr(b) for b in printable]
    symbols += [chr(256 + n) for n in range(256 - len(printable))]
    vocab: dict[str, int] = {}
    for s in symbols + [s + "</w>" for s in symbols]:
        vocab[s] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return vocab


def build_tiny(folder: Path) -> None:
    """Save a Stable-Diffusion-shaped pipeline with random weights to `folder`: 64 px
    images (8×8 latents), a 2-block UNet with cross-attention, a 4-block VAE, a 2-layer
    CLIP text encoder with a character-level tokenizer, a DDIM scheduler."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    d = diffusers()

    tok_dir = folder / "_tokenizer_src"
    tok_dir.mkdir(parents=True)
    (tok_dir / "vocab.json").write_text(json.dumps(_clip_byte_vocab()))
    (tok_dir / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(
        str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"), model_max_length=77
    )
    torch.manual_seed(0)
    unet = d.UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    vae = d.AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 16, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            projection_dim=32,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    scheduler = d.DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipe = d.StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)
    shutil.rmtree(tok_dir)


def resolution(path: Path) -> int:
    """The pipeline's native image side in pixels (latent side × the VAE's factor)."""
    unet = json.loads((path / "unet" / "config.json").read_text())
    vae = json.loads((path / "vae" / "config.json").read_text())
    side: int = int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)
    return side


def diffusers() -> Any:
    """The diffusers package, imported on first use (it is slow to import) and untyped."""
    return importlib.import_module("diffusers")


def device() -> Any:
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_pipeline(path: Path) -> Any:
    """A fresh pipeline from `path` on this machine's device, progress bars off."""
    from transformers.utils import logging as hf_logging

    # Progress bars would go to stderr of a service that logs JSON.
    diffusers().utils.logging.disable_progress_bar()
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    try:
        pipe = diffusers().StableDiffusionPipeline.from_pretrained(
            str(path), safety_checker=None, requires_safety_checker=False
        )
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise PipelineNotFound(f"the image pipeline in {path} cannot be loaded: {exc}") from None
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device())


@dataclass
class _Shared:
    """A generation pipeline, the lock each generation holds, and the LoRA loaded into it
    (the sha256 of its weights; "" none): the next generation with the same LoRA (a
    worker's usual case) skips reading, checking and loading them again."""

    pipe: Any
    lock: threading.Lock = field(default_factory=threading.Lock)
    lora: str = ""


@functools.lru_cache(maxsize=2)
def _shared(path: str) -> _Shared:
    """The generation pipeline of `path`, loaded once per process."""
    return _Shared(load_pipeline(Path(path)))


def release() -> None:
    """Drop the cached generation pipelines (a worker about to train frees the device's
    memory for the job's own model); the next generation loads them again."""
    if _shared.cache_info().currsize == 0:
        return
    _shared.cache_clear()
    import gc

    gc.collect()
    with contextlib.suppress(ImportError):
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()


# -- LoRA weights ------------------------------------------------------------------------
def weights_file(state: dict[str, Any], *, base: str, rank: int, simulated: bool) -> bytes:
    """A LoRA file from peft's state dict of the UNet's adapter (diffusers' format)."""
    from safetensors.torch import save

    converted = diffusers().utils.convert_state_dict_to_diffusers(state)
    tensors = {f"unet.{k}": v.detach().to("cpu").contiguous() for k, v in converted.items()}
    meta = {
        "format": "pt",
        "aivera_format": WEIGHTS_FORMAT,
        "aivera_base": base,
        "aivera_rank": str(rank),
        "aivera_simulated": "true" if simulated else "false",
    }
    return save(tensors, metadata=meta)


def placeholder_weights(base: str) -> bytes:
    """What a simulated training leaves: a file that says so and holds no LoRA."""
    import numpy as np
    from safetensors.numpy import save

    meta = {"format": "pt", "aivera_format": WEIGHTS_FORMAT, "aivera_base": base}
    meta["aivera_simulated"] = "true"
    return save({"placeholder": np.zeros((1,), dtype=np.float32)}, metadata=meta)


def read_weights(blob: bytes) -> tuple[dict[str, Any], dict[str, str]]:
    """Tensors and metadata of a LoRA file; WeightsMismatch when it is not one."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        tensors = load(blob)
        header_len = int.from_bytes(blob[:8], "little")
        meta = json.loads(blob[8 : 8 + header_len]).get("__metadata__") or {}
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise WeightsMismatch(f"the LoRA weights are not a safetensors file: {exc}") from None
    return tensors, {str(k): str(v) for k, v in meta.items()}


def check_weights(unet: Any, tensors: dict[str, Any], meta: dict[str, str], base: str) -> None:
    """Refuse weights that are not a LoRA of this UNet's attention: every tensor a
    down/up pair of an existing linear module with matching shapes."""
    import torch

    if meta.get("aivera_simulated") == "true":
        raise WeightsMismatch("these are placeholder weights of a simulated LoRA")
    trained_on = meta.get("aivera_base", "")
    pairs: dict[str, dict[str, Any]] = {}
    for key, tensor in tensors.items():
        m = _KEY.fullmatch(key)
        if m is None:
            raise WeightsMismatch(f"the LoRA weights have a tensor {key!r} of no UNet LoRA")
        pairs.setdefault(m["module"], {})[m["part"]] = tensor
    if not pairs:
        raise WeightsMismatch("the LoRA weights hold no tensors")
    modules = dict(unet.named_modules())
    for name, pair in pairs.items():
        module = modules.get(name)
        down, up = pair.get("down"), pair.get("up")
        where = f"module {name!r}"
        if not isinstance(module, torch.nn.Linear):
            raise WeightsMismatch(
                f"the LoRA weights adapt {where}, which the base image pipeline {base!r} "
                f"does not have (trained on {trained_on or 'an unknown pipeline'!r})"
            )
        if down is None or up is None or down.dim() != 2 or up.dim() != 2:
            raise WeightsMismatch(f"the LoRA weights of {where} are not a down/up pair")
        rank = down.shape[0]
        if down.shape[1] != module.in_features or tuple(up.shape) != (module.out_features, rank):
            raise WeightsMismatch(
                f"the LoRA weights of {where} have shapes {tuple(down.shape)}/{tuple(up.shape)}"
                f", which do not fit the base image pipeline {base!r} ({module.in_features} → "
                f"{module.out_features}; trained on {trained_on or 'an unknown pipeline'!r})"
            )


# -- generation --------------------------------------------------------------------------
def generate(
    *,
    weights: bytes | None,
    simulate: bool,
    prompt: str,
    lora_scale: float,
    num_outputs: int,
    width: int,
    height: int,
    seed: int,
    on_progress: Callable[[float], None],
    on_image: Callable[[int, bytes], None],
    settings: TrainingSettings | None = None,
) -> None:
    """Draw `num_outputs` images of `width`×`height` (multiples of 8) for `prompt`; each
    image's PNG goes to `on_image(index, png)` as it is ready, progress 0–1 to
    `on_progress`. Image i depends only on `seed + i`. Blocking: run it in a thread.

    SIMULATE draws placeholder PNGs (no model). LOCAL runs the base pipeline of `settings`
    with the LoRA `weights` at `lora_scale` (None: the base pipeline alone);
    WeightsMismatch when they do not fit it, PipelineNotFound when it cannot be loaded."""
    if width <= 0 or height <= 0 or width % 8 or height % 8:
        raise ValueError(f"image size {width}×{height} must be positive multiples of 8")
    if simulate:
        for i in range(num_outputs):
            on_image(i, placeholder_png(prompt, width, height, seed + i))
            on_progress((i + 1) / num_outputs)
        return
    _generate_local(
        settings or _DEFAULTS,
        weights=weights,
        prompt=prompt,
        lora_scale=lora_scale,
        num_outputs=num_outputs,
        width=width,
        height=height,
        seed=seed,
        on_progress=on_progress,
        on_image=on_image,
    )


def _generate_local(
    settings: TrainingSettings,
    *,
    weights: bytes | None,
    prompt: str,
    lora_scale: float,
    num_outputs: int,
    width: int,
    height: int,
    seed: int,
    on_progress: Callable[[float], None],
    on_image: Callable[[int, bytes], None],
) -> None:
    import torch

    path = resolve(settings)
    shared = _shared(str(path))
    pipe = shared.pipe
    steps = max(1, settings.image_inference_steps)
    with shared.lock:
        if settings.training_torch_threads:
            torch.set_num_threads(settings.training_torch_threads)
        key = hashlib.sha256(weights).hexdigest() if weights is not None else ""
        if key != shared.lora:
            try:
                if shared.lora:  # back to the base pipeline (its modules are checked)
                    pipe.unload_lora_weights()
                    shared.lora = ""
                if weights is not None:
                    tensors, meta = read_weights(weights)
                    check_weights(pipe.unet, tensors, meta, settings.image_base_model)
                    pipe.load_lora_weights(tensors, adapter_name="generation")
                    shared.lora = key
            except BaseException:  # refused or half loaded: the base pipeline alone
                with contextlib.suppress(Exception):
                    pipe.unload_lora_weights()
                shared.lora = ""
                raise
        scale = {"scale": float(lora_scale)} if weights is not None else None

        def step_end(_pipe: Any, step: int, _t: Any, kwargs: dict[str, Any]) -> Any:
            on_progress((step + 1) / steps)
            return kwargs

        dev = device()
        generators = [torch.Generator(device=dev).manual_seed(seed + i) for i in range(num_outputs)]
        out = pipe(
            prompt,
            height=height,
            width=width,
            num_inference_steps=steps,
            guidance_scale=settings.image_guidance_scale,
            num_images_per_prompt=num_outputs,
            generator=generators,
            cross_attention_kwargs=scale,
            callback_on_step_end=step_end,
            output_type="pil",
        )
    for i, image in enumerate(out.images):
        on_image(i, png(image))


def png(image: Image.Image, info: PngInfo | None = None) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG", pnginfo=info)
    return buf.getvalue()


def placeholder_png(prompt: str, width: int, height: int, seed: int) -> bytes:
    """A simulated image: colours and shapes drawn from the seed, labelled SIMULATED (the
    PNG's text chunk says so too). The same arguments give the same bytes."""
    rng = random.Random(seed)
    top = tuple(rng.randrange(256) for _ in range(3))
    bottom = tuple(rng.randrange(256) for _ in range(3))
    image = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(image)
    for y in range(height):
        f = y / max(1, height - 1)
        draw.line(
            [(0, y), (width, y)],
            fill=tuple(round(a + (b - a) * f) for a, b in zip(top, bottom, strict=True)),
        )
    for _ in range(rng.randint(2, 5)):
        x0, y0 = rng.randrange(width), rng.randrange(height)
        x1 = min(width, x0 + rng.randint(width // 8 + 1, width // 2 + 2))
        y1 = min(height, y0 + rng.randint(height // 8 + 1, height // 2 + 2))
        fill = tuple(rng.randrange(256) for _ in range(3))
        if rng.random() < 0.5:
            draw.ellipse([x0, y0, x1, y1], fill=fill)
        else:
            draw.rectangle([x0, y0, x1, y1], fill=fill)
    draw.text((4, 4), "SIMULATED", fill=(255, 255, 255))
    info = PngInfo()
    info.add_text("aivera:simulated", "true")
    info.add_text("aivera:prompt", prompt[:200])
    return png(image, info)


__all__ = [
    "LORA_TARGETS",
    "TINY",
    "PipelineNotFound",
    "WeightsMismatch",
    "generate",
    "placeholder_png",
    "placeholder_weights",
    "resolution",
    "resolve",
    "weights_file",
]
