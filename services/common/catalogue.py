"""The base-model catalogue, shared by training (what a job may adapt, what it needs),
chat (what the local embedded server can serve) and the clients (through
`CatalogueService.ListBaseModels`). Pure data and arithmetic: no I/O, no torch.

A model is known by its id (a built-in name, or a local folder whose last path part
matches a catalogue key case-insensitively); a folder the catalogue does not know is
described from its config (`Arch.from_config`).

Estimates are first-order and documented here so a reader can check them:

- memory: frozen weights (bf16 for LoRA; NF4 with double quantization, about 0.53 bytes a
  parameter, for QLoRA, embeddings and head kept in bf16) + the LoRA adapter in fp32 with
  its gradient and Adam moments (16 bytes a parameter) + activations (Korthikanti et al.
  2022 without the attention-score term, as flash/SDPA attention keeps none:
  (18·h + 4·i) bytes per token and layer in 16-bit; with gradient checkpointing only each
  layer's input, 2·h, plus one layer in full) + fp32 logits and their gradient for every
  token + 1 GiB of runtime (CUDA context, allocator), then 10 % margin.
- time: a frozen base costs 4·N FLOPs a token (forward, and the backward through the
  activations only), 6·N with gradient checkpointing (the forward again); QLoRA pays
  about 1.4× for dequantizing. Divided by the hardware class's effective FLOP/s.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

GiB = 1024**3
LORA, QLORA = "lora", "qlora"
METHODS = (LORA, QLORA)
# Larger models are not served by transformers on a CPU in the chat process.
MAX_LOCAL_SERVING_PARAMETERS = 2_000_000_000
# Sequence lengths the catalogue lists memory for (up to the model's context length).
MEMORY_SEQ_LENGTHS = (512, 2048, 4096, 8192, 32768)
DEFAULT_LORA_RANK = 16
RUNTIME_OVERHEAD_BYTES = 1 * GiB
MARGIN = 1.10
QLORA_BYTES_PER_PARAMETER = 0.53
QLORA_SLOWDOWN = 1.4


@dataclass(frozen=True, slots=True)
class Arch:
    """What the estimates need of a decoder-only transformer."""

    parameters: int
    hidden_size: int
    num_layers: int
    intermediate_size: int
    vocab_size: int
    context_length: int
    tied_embeddings: bool = True

    @classmethod
    def from_config(cls, config: Mapping[str, Any], parameters: int) -> Arch:
        """From a Hugging Face `config.json` (dict) and the counted parameters."""
        hidden = int(config.get("hidden_size") or config.get("n_embd") or 0)
        return cls(
            parameters=parameters,
            hidden_size=hidden,
            num_layers=int(config.get("num_hidden_layers") or config.get("n_layer") or 0),
            intermediate_size=int(config.get("intermediate_size") or 4 * hidden),
            vocab_size=int(config.get("vocab_size") or 0),
            context_length=int(config.get("max_position_embeddings") or 2048),
            tied_embeddings=bool(config.get("tie_word_embeddings", True)),
        )


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """A catalogue entry."""

    key: str
    display_name: str
    family: str
    license: str
    chat_template: str
    arch: Arch
    methods: tuple[str, ...] = METHODS


def _spec(
    key: str, name: str, family: str, lic: str, template: str, *arch: int, tied: bool = True
) -> ModelSpec:
    p, h, n, i, v, ctx = arch
    return ModelSpec(key, name, family, lic, template, Arch(p, h, n, i, v, ctx, tied))


# Figures from each model's published config.json.
CATALOGUE: dict[str, ModelSpec] = {
    s.key: s
    for s in (
        _spec(
            "smollm2-135m-instruct",
            "SmolLM2 135M Instruct",
            "smollm2",
            "Apache-2.0",
            "chatml",
            134_515_008,
            576,
            30,
            1536,
            49152,
            8192,
        ),
        _spec(
            "smollm2-360m-instruct",
            "SmolLM2 360M Instruct",
            "smollm2",
            "Apache-2.0",
            "chatml",
            361_821_120,
            960,
            32,
            2560,
            49152,
            8192,
        ),
        _spec(
            "qwen2.5-0.5b-instruct",
            "Qwen2.5 0.5B Instruct",
            "qwen2.5",
            "Apache-2.0",
            "chatml",
            494_032_768,
            896,
            24,
            4864,
            151936,
            32768,
        ),
        _spec(
            "qwen2.5-7b-instruct",
            "Qwen2.5 7B Instruct",
            "qwen2.5",
            "Apache-2.0",
            "chatml",
            7_615_616_512,
            3584,
            28,
            18944,
            152064,
            32768,
            tied=False,
        ),
        _spec(
            "llama-3.2-1b-instruct",
            "Llama 3.2 1B Instruct",
            "llama-3.2",
            "Llama 3.2 Community License",
            "llama3",
            1_235_814_400,
            2048,
            16,
            8192,
            128256,
            131072,
        ),
        _spec(
            "llama-3.1-8b-instruct",
            "Llama 3.1 8B Instruct",
            "llama-3.1",
            "Llama 3.1 Community License",
            "llama3",
            8_030_261_248,
            4096,
            32,
            14336,
            128256,
            131072,
            tied=False,
        ),
        _spec(
            "mistral-7b-instruct-v0.3",
            "Mistral 7B Instruct v0.3",
            "mistral",
            "Apache-2.0",
            "mistral",
            7_248_023_552,
            4096,
            32,
            14336,
            32768,
            32768,
            tied=False,
        ),
    )
}


def lookup(model_id: str) -> ModelSpec | None:
    """The entry of a built-in name or of a folder named like one (`/models/Qwen2.5-7B-
    Instruct`); None for a model the catalogue does not know."""
    key = model_id.rstrip("/").rsplit("/", 1)[-1].lower()
    return CATALOGUE.get(key)


def template_name(template: str | None) -> str:
    """A chat template's family, recognised by its markers ("" when there is none)."""
    if not template:
        return ""
    if "<|im_start|>" in template:
        return "chatml"
    if "<|start_header_id|>" in template:
        return "llama3"
    if "[INST]" in template:
        return "mistral"
    return "custom"


def served_locally(arch: Arch, present: bool) -> bool:
    """Whether the chat process's embedded transformers server can serve it."""
    return present and arch.parameters <= MAX_LOCAL_SERVING_PARAMETERS


def lora_parameters(arch: Arch, rank: int) -> int:
    """Adapter parameters with every attention and MLP projection adapted."""
    h, i = arch.hidden_size, arch.intermediate_size
    per_layer = rank * (4 * (h + h) + 3 * (h + i))  # q, k, v, o; gate, up, down
    return per_layer * arch.num_layers


def training_memory_bytes(
    arch: Arch,
    method: str,
    max_seq_length: int,
    *,
    batch_size: int = 1,
    lora_rank: int = DEFAULT_LORA_RANK,
    gradient_checkpointing: bool = False,
) -> int:
    """Device memory one training step needs (see the module docstring)."""
    h, i, layers = arch.hidden_size, arch.intermediate_size, arch.num_layers
    embedding = arch.vocab_size * h * (1 if arch.tied_embeddings else 2)
    if method == QLORA:
        body = max(arch.parameters - embedding, 0)
        weights = body * QLORA_BYTES_PER_PARAMETER + embedding * 2
    else:
        weights = arch.parameters * 2
    adapter = lora_parameters(arch, lora_rank) * 16
    tokens = batch_size * max_seq_length
    per_layer = 18 * h + 4 * i
    if gradient_checkpointing:
        activations = tokens * (layers * 2 * h + per_layer)
    else:
        activations = tokens * layers * per_layer
    logits = tokens * arch.vocab_size * 4 * 2
    total = weights + adapter + activations + logits + RUNTIME_OVERHEAD_BYTES
    return math.ceil(total * MARGIN)


def memory_requirements(arch: Arch, methods: tuple[str, ...]) -> list[tuple[str, int, int]]:
    """(method, seq length, bytes) for the catalogue's sequence lengths that fit the
    context, the context length itself when it is shorter than the first of them."""
    lengths = [n for n in MEMORY_SEQ_LENGTHS if n <= arch.context_length]
    if not lengths:
        lengths = [arch.context_length]
    return [(m, n, training_memory_bytes(arch, m, n)) for m in methods for n in lengths]


def training_flops(
    arch: Arch, tokens: int, *, method: str, gradient_checkpointing: bool = False
) -> float:
    """FLOPs to train on `tokens` tokens with a frozen base (see the module docstring)."""
    per_token = (6 if gradient_checkpointing else 4) * arch.parameters
    flops = float(per_token) * tokens
    return flops * QLORA_SLOWDOWN if method == QLORA else flops


def training_seconds(flops: float, effective_tflops: float, devices: int = 1) -> float:
    """Seconds on `devices` devices of `effective_tflops` each (sustained, not peak)."""
    rate = max(effective_tflops, 1e-6) * 1e12 * max(devices, 1)
    return flops / rate
