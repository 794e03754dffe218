"""The local model (SmolLM2-135M-Instruct by default, or any local HF folder) through
transformers, with real token streaming, and clones' LoRA adapters through peft.

The base model is loaded once per process, lazily (first local turn). Adapters are loaded
onto it by name and switched per request (`set_adapter`), never reloading the base; the
least recently used are unloaded past `cache_size`. One generation runs at a time (the
model and its active adapter are shared state); tokens reach the event loop through a
streamer callback as generate produces them, and a client that goes away stops generate
at the next token.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from google.rpc import code_pb2

from services.chat.providers.base import Chunk, LlmRequest, ProviderError, Usage
from services.common.errors import Reason

log = logging.getLogger("aivera.chat.local")


class LocalModels:
    """The process's local base model and its cached adapters."""

    def __init__(
        self,
        model: Path | Callable[[], Path],
        *,
        name: str,
        max_new_tokens: int = 256,
        cache_size: int = 4,
    ) -> None:
        # A local HF folder, or how to find it (e.g. converting the built-in model into
        # the models folder on first use).
        self._model = model
        self.name = name
        self.max_new_tokens = max_new_tokens
        self.cache_size = max(1, cache_size)
        self.model: Any = None  # the base model, or the PeftModel wrapping it
        self.tokenizer: Any = None
        self._adapters: OrderedDict[str, Path] = OrderedDict()
        self._load_lock = asyncio.Lock()
        self._generate_lock = asyncio.Lock()

    async def ensure_loaded(self) -> None:
        if self.model is not None:
            return
        async with self._load_lock:
            if self.model is None:
                await asyncio.to_thread(self._load)

    def _load(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = self._model if isinstance(self._model, Path) else self._model()
        log.info("loading local model %s from %s", self.name, path)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        model.eval()  # type: ignore[no-untyped-call]
        self.model = model

    def _use_adapter(self, adapter: tuple[str, Path] | None) -> None:
        """Makes `adapter` (name, folder) the active one, loading it if needed; None runs
        the bare base model. Called under the generate lock."""
        from peft import PeftModel

        if adapter is None:
            return
        name, path = adapter
        if name not in self._adapters:
            if isinstance(self.model, PeftModel):
                self.model.load_adapter(str(path), adapter_name=name)
            else:
                self.model = PeftModel.from_pretrained(self.model, str(path), adapter_name=name)
            self.model.eval()
            self._adapters[name] = path
            while len(self._adapters) > self.cache_size:
                old, _ = self._adapters.popitem(last=False)
                self.model.delete_adapter(old)
        self._adapters.move_to_end(name)
        self.model.set_adapter(name)

    @property
    def loaded_adapters(self) -> list[str]:
        return list(self._adapters)

    def provider(self, adapter: tuple[str, Path] | None = None) -> LocalProvider:
        return LocalProvider(self, adapter)


class _Stop:
    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool)


class LocalProvider:
    name = "local"

    def __init__(self, models: LocalModels, adapter: tuple[str, Path] | None) -> None:
        self.models = models
        self.adapter = adapter

    @property
    def model_name(self) -> str:
        if self.adapter is None:
            return self.models.name
        return f"{self.models.name}+lora:{self.adapter[0]}"

    def messages(self, request: LlmRequest) -> list[dict[str, str]]:
        out: list[dict[str, str]] = []
        if request.system_instruction:
            out.append({"role": "system", "content": request.system_instruction})
        for content in request.contents:
            text = "\n\n".join(p.text for p in content.parts if p.text)
            if text:
                out.append(
                    {"role": "user" if content.role == "user" else "assistant", "content": text}
                )
        return out

    async def stream(self, request: LlmRequest) -> AsyncIterator[Chunk]:
        await self.models.ensure_loaded()
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[str | BaseException | None] = asyncio.Queue()
        stop = threading.Event()
        models = self.models
        max_new = request.max_output_tokens or models.max_new_tokens

        async with models._generate_lock:
            from transformers import TextStreamer

            tokenizer = models.tokenizer

            class _Streamer(TextStreamer):
                def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
                    if text:
                        loop.call_soon_threadsafe(queue.put_nowait, text)

            counts: dict[str, int] = {}

            def generate() -> None:
                import torch

                try:
                    models._use_adapter(self.adapter)
                    ids = tokenizer.apply_chat_template(
                        self.messages(request),
                        add_generation_prompt=True,
                        return_tensors="pt",
                        return_dict=True,
                    )
                    counts["input"] = int(ids["input_ids"].shape[1])
                    with torch.inference_mode():
                        if self.adapter is None and hasattr(models.model, "disable_adapter"):
                            with models.model.disable_adapter():
                                out = self._generate(ids, max_new, stop, _Streamer, tokenizer)
                        else:
                            out = self._generate(ids, max_new, stop, _Streamer, tokenizer)
                    counts["output"] = int(out.shape[1]) - counts["input"]
                    loop.call_soon_threadsafe(queue.put_nowait, None)
                except BaseException as exc:  # handed to the event loop
                    loop.call_soon_threadsafe(queue.put_nowait, exc)

            thread = threading.Thread(target=generate, name="local-generate", daemon=True)
            thread.start()
            try:
                while True:
                    item = await queue.get()
                    if item is None:
                        break
                    if isinstance(item, BaseException):
                        raise ProviderError(
                            Reason.INTERNAL,
                            code_pb2.INTERNAL,
                            f"Локальная модель не ответила: {type(item).__name__}",
                            retryable=False,
                        ) from item
                    yield Chunk(text=item)
                usage = Usage(counts.get("input", 0), counts.get("output", 0))
                usage.total_tokens = usage.input_tokens + usage.output_tokens
                yield Chunk(usage=usage)
            finally:
                stop.set()
                await asyncio.to_thread(thread.join)

    def _generate(
        self, ids: Any, max_new: int, stop: threading.Event, streamer_cls: Any, tokenizer: Any
    ) -> Any:
        from transformers import StoppingCriteriaList

        return self.models.model.generate(
            **ids,
            max_new_tokens=max_new,
            do_sample=False,
            streamer=streamer_cls(tokenizer, skip_prompt=True, skip_special_tokens=True),
            stopping_criteria=StoppingCriteriaList([_Stop(stop)]),
            pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
        )
