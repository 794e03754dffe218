"""The in-process models: base models through transformers (SmolLM2-135M-Instruct by
default, or a clone's own base model: a catalogue name or a local HF folder) and clones'
LoRA adapters through peft, with real token streaming.

Base models are loaded lazily and kept least-recently-used: at most `max_bases` of them
within `memory_budget_bytes` of weights (an idle one is unloaded to make room; a busy one
never is). bf16 on CUDA, fp32 on CPU. Per base, adapters are loaded once, by model id,
and switched per batch (`set_adapter`), never reloading the base; the least recently
used are unloaded past `cache_size`. Before an adapter is loaded its files are checked
against the artifact's sha256; a load that fails (corrupt weights, shapes of another base)
is rolled back, so the model is exactly as before it.

Concurrent turns on one base go through its `Scheduler` (services.chat.batching): one
generation loop runs a batch of turns with the same adapter (left-padded), streaming
each row's tokens to its turn as generate produces them; a turn whose client went away
stops its row at the next token.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.rpc import code_pb2

from services.chat.adapters import WEIGHTS, Adapter, AdapterInvalid, verify
from services.chat.batching import Busy, Job, Scheduler
from services.chat.providers.base import Chunk, LlmRequest, ProviderError, Usage
from services.common import catalogue
from services.common.errors import FailedPrecondition, Reason, ResourceExhausted

log = logging.getLogger("aivera.chat.local")


def unavailable(base: str, why: str) -> FailedPrecondition:
    return FailedPrecondition(
        f"base model {base!r} is not available: {why}",
        reason=Reason.BASE_MODEL_UNAVAILABLE,
        metadata={"base_model": base},
    )


def display_name(base: str) -> str:
    """How models_used names a base model: its catalogue key or its folder's name."""
    spec = catalogue.lookup(base)
    return spec.key if spec is not None else Path(base).name


@dataclass(eq=False)
class Base:
    """One loaded base model with its adapters and its scheduler."""

    key: str
    name: str
    model: Any  # the transformers model, or the PeftModel wrapping it
    tokenizer: Any
    device: str
    bytes: int
    scheduler: Scheduler
    adapters: OrderedDict[str, Adapter] = field(default_factory=OrderedDict)
    lock: threading.Lock = field(default_factory=threading.Lock)  # model state
    evicted: bool = False
    switches: list[float] = field(default_factory=list)  # seconds per adapter switch
    lora_layers: list[Any] = field(default_factory=list)  # peft's tuner layers, cached
    active: str | None = None  # the active adapter


class LocalModels:
    """The process's in-process base models and their cached adapters."""

    def __init__(
        self,
        model: Path | Callable[[], Path],
        *,
        name: str,
        max_new_tokens: int = 256,
        cache_size: int = 4,
        resolve: Callable[[str], Path] | None = None,
        max_bases: int = 2,
        memory_budget_bytes: int = 0,
        device: str = "auto",
        batch_size: int = 8,
        queue_limit: int = 16,
        default_id: str = "",
    ) -> None:
        # The default model: a local HF folder, or how to find it (e.g. converting the
        # built-in model into the models folder on first use).
        self._default = model
        self.name = name
        # What clones call the default model besides `name` (LOCAL_MODEL as configured).
        self.default_id = default_id
        # Another base model's folder by name (built-in name or local folder); raises
        # LookupError for a model it does not have.
        self._resolve = resolve
        self.max_new_tokens = max_new_tokens
        self.cache_size = max(1, cache_size)
        self.max_bases = max(1, max_bases)
        self.memory_budget_bytes = max(0, memory_budget_bytes)
        self.device_setting = device
        self.batch_size = batch_size
        self.queue_limit = queue_limit
        self.bases: OrderedDict[str, Base] = OrderedDict()
        self._load_lock = asyncio.Lock()

    # -- base models ---------------------------------------------------------------------
    def key(self, base: str) -> str:
        """The pool's key of a base model ("" and the default's name are the default)."""
        return "" if base in ("", self.name, self.default_id) else base

    def _path(self, key: str) -> Path:
        if not key:
            return self._default if isinstance(self._default, Path) else self._default()
        spec = catalogue.lookup(key)
        if spec is not None and not catalogue.served_locally(spec.arch, True):
            raise unavailable(key, "too large for the in-process server (no INFERENCE_URLS entry)")
        if self._resolve is None:
            raise unavailable(key, "this chat service serves only its default model")
        try:
            return self._resolve(key)
        except LookupError:
            raise unavailable(key, "not present on this chat service") from None

    async def check_base(self, base: str) -> str:
        """The base model's key, if this service can serve it; FAILED_PRECONDITION with
        BASE_MODEL_UNAVAILABLE otherwise, and MODEL_BUSY when its queue is full."""
        key = self.key(base)
        if key and key not in self.bases:
            await asyncio.to_thread(self._path, key)
        loaded = self.bases.get(key)
        if loaded is not None:
            try:
                loaded.scheduler.check()
            except Busy as exc:
                raise ResourceExhausted(
                    exc.message,
                    reason=Reason.MODEL_BUSY,
                    metadata={"retry_after_seconds": str(exc.retry_after)},
                ) from None
        return key

    def _device(self) -> str:
        import torch

        if self.device_setting != "auto":
            return self.device_setting
        return "cuda" if torch.cuda.is_available() else "cpu"

    async def base(self, base: str = "") -> Base:
        """The loaded base model, loading it (and unloading idle ones past the limits)."""
        key = self.key(base)
        found = self.bases.get(key)
        if found is not None:
            self.bases.move_to_end(key)
            return found
        async with self._load_lock:
            found = self.bases.get(key)
            if found is not None:
                return found
            path = await asyncio.to_thread(self._path, key)
            device = self._device()
            need = await asyncio.to_thread(_weights_bytes, path, device)
            if self.memory_budget_bytes and need > self.memory_budget_bytes:
                raise unavailable(key or self.name, "larger than the memory budget")
            await self._make_room(need)
            loaded = await asyncio.to_thread(self._load, key, path, device)
            self.bases[key] = loaded
            return loaded

    async def _make_room(self, need: int) -> None:
        def over() -> bool:
            used = sum(b.bytes for b in self.bases.values())
            full = len(self.bases) >= self.max_bases
            return full or bool(self.memory_budget_bytes and used + need > self.memory_budget_bytes)

        while self.bases and over():
            victim = next((k for k, b in self.bases.items() if not b.scheduler.busy), None)
            if victim is None:
                busy = next(iter(self.bases.values())).scheduler
                raise Busy(busy.retry_after(), len(busy.waiting))
            await self.unload(victim)

    async def unload(self, key: str) -> None:
        old = self.bases.pop(key)
        old.evicted = True
        await asyncio.to_thread(_drop, old)
        log.info("unloaded base model %s", old.name)

    def _load(self, key: str, path: Path, device: str) -> Base:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        name = self.name if not key else display_name(key)
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        log.info("loading base model %s from %s (%s, %s)", name, path, device, dtype)
        tokenizer = AutoTokenizer.from_pretrained(path)
        tokenizer.padding_side = "left"  # batched generation continues every row's end
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        model: Any = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        model = model.to(device)
        model.eval()
        size = sum(p.numel() * p.element_size() for p in model.parameters())
        scheduler = Scheduler(
            lambda jobs: self._run_batch(loaded, jobs),
            batch_size=self.batch_size,
            queue_limit=self.queue_limit,
            name=name,
        )
        loaded = Base(key, name, model, tokenizer, device, size, scheduler)
        return loaded

    # -- what tests and the default model read -------------------------------------------
    async def ensure_loaded(self) -> None:
        await self.base("")

    @property
    def model(self) -> Any:
        found = self.bases.get("")
        return None if found is None else found.model

    @property
    def tokenizer(self) -> Any:
        found = self.bases.get("")
        return None if found is None else found.tokenizer

    @property
    def loaded_adapters(self) -> list[str]:
        return self.adapters_of("")

    def adapters_of(self, base: str) -> list[str]:
        found = self.bases.get(self.key(base))
        return [] if found is None else list(found.adapters)

    def provider(
        self, adapter: Adapter | tuple[str, Path] | None = None, *, base: str = ""
    ) -> LocalProvider:
        if isinstance(adapter, tuple):
            adapter = Adapter(adapter[0], adapter[1])
        return LocalProvider(self, adapter, base=self.key(base))

    # -- adapters (in the generation thread, under the base's lock) ----------------------
    def use_adapter(self, base: Base, adapter: Adapter | None) -> None:
        """Makes `adapter` the active one, loading it if needed; None: the bare base."""
        if adapter is None:
            return
        import time

        start = time.perf_counter()
        if adapter.name not in base.adapters:
            verify(adapter)
            _load_adapter(base, adapter)
            base.adapters[adapter.name] = adapter
            while len(base.adapters) > self.cache_size:
                old, _ = base.adapters.popitem(last=False)
                base.model.delete_adapter(old)
            base.model.set_adapter(adapter.name)
            base.active = adapter.name
            base.lora_layers = _tuner_layers(base.model)
            return
        base.adapters.move_to_end(adapter.name)
        if base.active != adapter.name:
            # The tuner layers alone (cached) rather than peft's set_adapter, which walks
            # every module of the model and flips requires_grad of every adapter's
            # weights on each call (meaningless for inference): ms → tens of µs.
            for layer in base.lora_layers:
                layer._active_adapter = [adapter.name]
            base.model.base_model.active_adapter = adapter.name
            base.active = adapter.name
        base.switches.append(time.perf_counter() - start)
        del base.switches[:-1000]

    def _run_batch(self, base: Base, jobs: list[Job]) -> None:
        """One generation for jobs sharing an adapter; each gets its text, usage, end."""
        import torch

        adapter: Adapter | None = jobs[0].payload
        with base.lock:
            try:
                if base.model is None:
                    raise RuntimeError("base model unloaded")
                self.use_adapter(base, adapter)
            except Exception as exc:
                for job in jobs:
                    job.send(exc)
                return
            try:
                tokenizer = base.tokenizer
                texts = [
                    tokenizer.apply_chat_template(
                        j.messages, add_generation_prompt=True, tokenize=False
                    )
                    for j in jobs
                ]
                enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
                enc = enc.to(base.device)
                streamer = _BatchStreamer(tokenizer, jobs)
                from transformers import StoppingCriteriaList

                with torch.inference_mode():
                    if adapter is None and hasattr(base.model, "disable_adapter"):
                        with base.model.disable_adapter():
                            _generate(base, enc, jobs, streamer, StoppingCriteriaList)
                    else:
                        _generate(base, enc, jobs, streamer, StoppingCriteriaList)
                inputs = enc["attention_mask"].sum(dim=1).tolist()
                for i, job in enumerate(jobs):
                    out = streamer.produced[i]
                    job.send(Usage(int(inputs[i]), out, int(inputs[i]) + out))
                    job.send(None)
            except Exception as exc:
                for job in jobs:
                    job.send(exc)


def _generate(base: Base, enc: Any, jobs: list[Job], streamer: Any, criteria: Any) -> Any:
    tokenizer = base.tokenizer
    return base.model.generate(
        **enc,
        max_new_tokens=max(j.max_new_tokens for j in jobs),
        do_sample=False,
        streamer=streamer,
        stopping_criteria=criteria([_Stops(jobs, streamer)]),
        pad_token_id=tokenizer.pad_token_id,
    )


def _drop(base: Base) -> None:
    """Frees a base model once its last generation (if any) is over."""
    with base.lock:
        base.model = None
        base.lora_layers = []
    gc.collect()
    if base.device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()


def _tuner_layers(model: Any) -> list[Any]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in model.modules() if isinstance(m, BaseTunerLayer)]


def _weights_bytes(path: Path, device: str) -> int:
    """The base's weights in memory, estimated before loading: the catalogue's parameter
    count when it knows the model, else the weight files' size (stored in fp32 or bf16),
    halved on CUDA where they load as bf16 from fp32 files."""
    per_parameter = 2 if device.startswith("cuda") else 4
    spec = catalogue.lookup(str(path))
    if spec is not None:
        return spec.arch.parameters * per_parameter
    files = [*path.glob("*.safetensors"), *path.glob("*.bin")]
    size = sum(f.stat().st_size for f in files)
    return size // 2 if per_parameter == 2 else size


def _load_adapter(base: Base, adapter: Adapter) -> None:
    """Loads the adapter's weights under its name, or leaves the model as it was."""
    from peft import LoraConfig, PeftConfig, PeftModel, set_peft_model_state_dict
    from safetensors.torch import load_file

    try:
        config = PeftConfig.from_pretrained(str(adapter.path))
        weights = load_file(str(adapter.path / WEIGHTS), device=base.device)
    except Exception as exc:
        raise AdapterInvalid(f"the adapter does not load: {type(exc).__name__}") from None
    if not isinstance(config, LoraConfig):
        raise AdapterInvalid("only LoRA adapters are served")
    config.inference_mode = True
    wrapped = isinstance(base.model, PeftModel)
    model = base.model if wrapped else None
    try:
        if model is None:
            model = PeftModel(base.model, config, adapter_name=adapter.name)
        else:
            model.add_adapter(adapter.name, config)
        result: Any = set_peft_model_state_dict(model, weights, adapter_name=adapter.name)
        missing = [k for k in result.missing_keys if "lora_" in k and adapter.name in k]
        if result.unexpected_keys or missing:
            raise AdapterInvalid("the adapter's tensors do not match the base model")
        model.to(base.device)
    except Exception as exc:
        # Roll back: the adapter's layers out, the model exactly as before.
        if model is not None and adapter.name in getattr(model, "peft_config", {}):
            if wrapped:
                model.delete_adapter(adapter.name)
            else:
                model.unload()
        if isinstance(exc, AdapterInvalid):
            raise
        raise AdapterInvalid(
            f"the adapter does not fit the base model: {type(exc).__name__}"
        ) from None
    model.eval()
    base.model = model


class _BatchStreamer:
    """transformers' streamer protocol for a batch: each row's new text to its job."""

    def __init__(self, tokenizer: Any, jobs: list[Job]) -> None:
        self.tokenizer = tokenizer
        self.jobs = jobs
        self.ids: list[list[int]] = [[] for _ in jobs]
        self.sent = [0 for _ in jobs]  # characters of each row's text already sent
        self.produced = [0 for _ in jobs]
        self.done = [False for _ in jobs]
        self.prompt_seen = False
        eos = tokenizer.eos_token_id
        self.eos = set(eos if isinstance(eos, list) else [eos])

    def put(self, value: Any) -> None:
        if not self.prompt_seen:  # the first call is the prompt
            self.prompt_seen = True
            return
        tokens = value.reshape(-1).tolist()
        for i, token in enumerate(tokens):
            job = self.jobs[i]
            if self.done[i] or job.stop.is_set():
                continue
            self.produced[i] += 1
            if token in self.eos:
                self.done[i] = True
                continue
            self.ids[i].append(int(token))
            text = self.tokenizer.decode(self.ids[i], skip_special_tokens=True)
            # A character still being spelled in bytes waits for its next token.
            if len(text) > self.sent[i] and not text.endswith("\ufffd"):
                job.send(text[self.sent[i] :])
                self.sent[i] = len(text)
            if self.produced[i] >= job.max_new_tokens:
                self.done[i] = True

    def end(self) -> None:
        for i, job in enumerate(self.jobs):
            text = self.tokenizer.decode(self.ids[i], skip_special_tokens=True)
            if len(text) > self.sent[i]:
                job.send(text[self.sent[i] :])
                self.sent[i] = len(text)


class _Stops:
    """Per row: stop once its turn is gone or its row is done."""

    def __init__(self, jobs: list[Job], streamer: _BatchStreamer) -> None:
        self.jobs = jobs
        self.streamer = streamer

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        flags = [j.stop.is_set() or d for j, d in zip(self.jobs, self.streamer.done, strict=True)]
        return torch.tensor(flags, dtype=torch.bool, device=input_ids.device)


class LocalProvider:
    name = "local"

    def __init__(self, models: LocalModels, adapter: Adapter | None, *, base: str = "") -> None:
        self.models = models
        self.adapter = adapter
        self.base = base
        # (code, message) warnings the turn shows before the answer (a simulated adapter).
        self.notices: list[tuple[str, str]] = []
        # Told the turn's queue position when it has to wait.
        self.on_queued: Callable[[int], None] | None = None

    @property
    def base_name(self) -> str:
        return self.models.name if not self.base else display_name(self.base)

    @property
    def model_name(self) -> str:
        if self.adapter is None:
            return self.base_name
        return f"{self.base_name}+lora:{self.adapter.name}"

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
        while True:
            base = await self.models.base(self.base)
            if not base.evicted:
                break
        job = Job(
            adapter=None if self.adapter is None else self.adapter.name,
            messages=self.messages(request),
            max_new_tokens=request.max_output_tokens or self.models.max_new_tokens,
            loop=asyncio.get_running_loop(),
            payload=self.adapter,
        )
        position = base.scheduler.submit(job)  # Busy: the turn fails RESOURCE_EXHAUSTED
        if position and self.on_queued is not None:
            self.on_queued(position)
        try:
            while True:
                item = await job.out.get()
                if item is None:
                    return
                if isinstance(item, Usage):
                    yield Chunk(usage=item)
                elif isinstance(item, BaseException):
                    raise _provider_error(item) from item
                else:
                    yield Chunk(text=item)
        finally:
            job.stop.set()
            base.scheduler.cancel(job)


def _provider_error(exc: BaseException) -> ProviderError:
    if isinstance(exc, ProviderError):
        return exc
    if isinstance(exc, AdapterInvalid):
        return ProviderError(
            Reason.ADAPTER_INVALID, code_pb2.FAILED_PRECONDITION, exc.message, retryable=False
        )
    return ProviderError(
        Reason.INTERNAL,
        code_pb2.INTERNAL,
        f"Локальная модель не ответила: {type(exc).__name__}",
        retryable=False,
    )
