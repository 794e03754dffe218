"""The built-in SmolLM2 converts once from the packaged GGUF into a plain HF folder that
transformers (and so peft/Trainer) loads as an ordinary fp32 model, and it answers."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import pytest

from services.common.localmodels import SMOLLM2, ModelNotFound, default_models_dir, resolve_model


def test_unknown_model_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound):
        resolve_model("no-such-model", tmp_path)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "config.json").write_text("{}")
    assert resolve_model("mine", tmp_path) == tmp_path / "mine"
    assert resolve_model(str(tmp_path / "mine"), tmp_path) == tmp_path / "mine"


@pytest.mark.smollm2
def test_smollm2_converts_to_a_plain_model_that_answers() -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, BatchEncoding

    folder = resolve_model(SMOLLM2, default_models_dir())
    assert resolve_model(SMOLLM2, default_models_dir()) == folder  # cached
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert getattr(model, "hf_quantizer", None) is None
    assert next(model.parameters()).dtype == torch.float32
    tok = AutoTokenizer.from_pretrained(folder)
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    # transformers' annotation leaves out the tensor that return_tensors="pt" gives (or,
    # in newer releases, a BatchEncoding holding it).
    ids = cast(
        "torch.Tensor | BatchEncoding",
        tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt"),
    )
    if not isinstance(ids, torch.Tensor):
        ids = ids["input_ids"]
    # generate()'s `self` is typed with a Protocol written for the `ty` checker, which
    # mypy finds PreTrainedModel does not satisfy.
    out = model.generate(ids, max_new_tokens=12, do_sample=False)  # type: ignore[misc]
    assert "Paris" in tok.decode(out[0][ids.shape[1] :])
