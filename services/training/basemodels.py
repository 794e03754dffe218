"""Base models: resolving an allowed base model id to a local HF folder, and what the
server needs to know of it (tokenizer, context length, adaptable module names, the
architecture the estimates use). Loading is cached per folder; only the tokenizer and the
config are read here, never the weights. What a model *is* (family, licence, memory per
method) comes from the shared catalogue, services.common.catalogue."""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.common import catalogue
from services.training.config import TrainingSettings

_lock = threading.Lock()


def resolve(name: str, settings: TrainingSettings) -> Path:
    """The local folder of a base model id (the built-in SmolLM2 is converted once)."""
    from services.common.localmodels import default_models_dir, resolve_model

    models_dir = settings.base_models_dir or default_models_dir()
    with _lock:
        try:
            return Path(resolve_model(name, models_dir))
        except LookupError as exc:
            raise FileNotFoundError(str(exc)) from None


@functools.lru_cache(maxsize=8)
def _tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def tokenizer(name: str, settings: TrainingSettings) -> Any:
    tok = _tokenizer(str(resolve(name, settings)))
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


@dataclass(frozen=True)
class ModelFacts:
    context_length: int
    linear_modules: tuple[str, ...]  # adaptable leaf names of attention and MLP blocks
    arch: catalogue.Arch | None = None
    model_type: str = ""


@functools.lru_cache(maxsize=8)
def _facts(path: str) -> ModelFacts:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(path)
    context = int(getattr(config, "max_position_embeddings", 0) or 2048)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)  # type: ignore[no-untyped-call]
    names: set[str] = set()
    for full, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            leaf = full.rsplit(".", 1)[-1]
            if leaf not in ("lm_head", "score", "classifier"):
                names.add(leaf)
    parameters = sum(p.numel() for p in model.parameters())
    arch = catalogue.Arch.from_config(config.to_dict(), parameters)
    return ModelFacts(context, tuple(sorted(names)), arch, str(config.model_type))


def facts(name: str, settings: TrainingSettings) -> ModelFacts:
    return _facts(str(resolve(name, settings)))


def chat_template(name: str, settings: TrainingSettings) -> str:
    """The family of the tokenizer's chat template ("" without one)."""
    return catalogue.template_name(getattr(tokenizer(name, settings), "chat_template", None))
