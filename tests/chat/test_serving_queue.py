"""Admission and batching of the in-process models (issue 14) on a tiny Llama: concurrent
turns on one base run as one batch, a turn that waits is told its position, and past
the queue limit a turn is refused at once with MODEL_BUSY and a retry hint."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import pytest
from google.rpc import code_pb2

from services.chat.batching import Busy
from services.chat.providers.base import Chunk, Content, LlmRequest, Part, ProviderError
from services.chat.providers.local import LocalModels
from services.common.errors import FailedPrecondition, Reason, ResourceExhausted
from tests.helpers.tiny import build_tiny_model


@pytest.fixture(scope="module")
def tiny() -> Path:
    return build_tiny_model(Path(tempfile.mkdtemp(prefix="tiny-q-")) / "tiny-q")


def request(text: str) -> LlmRequest:
    return LlmRequest(
        model="tiny", system_instruction="", contents=[Content("user", [Part(text=text)])]
    )


async def collect(stream: object) -> list[Chunk]:
    return [c async for c in stream]  # type: ignore[attr-defined]


async def test_concurrent_turns_run_as_one_batch(tiny: Path) -> None:
    models = LocalModels(tiny, name="tiny", max_new_tokens=5, batch_size=4, queue_limit=4)
    await models.ensure_loaded()
    alone = await collect(models.provider().stream(request("hello world")))
    texts = ["hello world", "what is the answer?", "Paris", "Rome is"]
    results = await asyncio.gather(*(collect(models.provider().stream(request(t))) for t in texts))
    scheduler = models.bases[""].scheduler
    assert scheduler.batches == 2 and scheduler.largest_batch == 4  # one for `alone`
    for chunks in results:
        usage = chunks[-1].usage
        assert usage is not None and usage.output_tokens > 0 and usage.input_tokens > 0
    # Left padding keeps a row's answer what it would be alone (greedy decoding).
    assert "".join(c.text for c in results[0]) == "".join(c.text for c in alone)


async def test_queue_position_then_refusal_with_retry_hint(tiny: Path) -> None:
    models = LocalModels(tiny, name="tiny", max_new_tokens=3, batch_size=1, queue_limit=1)
    await models.ensure_loaded()
    providers = [models.provider() for _ in range(3)]
    positions: list[list[int]] = [[] for _ in providers]
    for provider, seen in zip(providers, positions, strict=True):
        provider.on_queued = seen.append
    # Started in one tick: the first runs, the second waits (position 1), the third
    # would wait past the limit and is refused at once.
    results = await asyncio.gather(
        *(collect(p.stream(request("hello"))) for p in providers), return_exceptions=True
    )
    assert not isinstance(results[0], BaseException) and not isinstance(results[1], BaseException)
    assert positions[:2] == [[], [1]]
    refused = results[2]
    assert isinstance(refused, ProviderError) and isinstance(refused, Busy)
    assert refused.code == code_pb2.RESOURCE_EXHAUSTED and refused.reason_name == "MODEL_BUSY"
    assert refused.retryable and refused.retry_after >= 1
    assert f"{refused.retry_after} с" in refused.message
    # The check made before a turn is stored says the same as a gRPC status.
    base = models.bases[""]
    base.scheduler.waiting.extend([object(), object()])  # type: ignore[list-item]
    try:
        with pytest.raises(ResourceExhausted) as info:
            await models.check_base("")
        assert info.value.metadata["retry_after_seconds"].isdigit()
    finally:
        base.scheduler.waiting.clear()


async def test_base_models_within_the_budget_least_recently_used_out(tiny: Path) -> None:
    other = build_tiny_model(Path(tempfile.mkdtemp(prefix="tiny-r-")) / "tiny-r", hidden=32)
    models = LocalModels(
        tiny, name="tiny", max_new_tokens=2, resolve=Path, max_bases=1, device="cpu"
    )
    await collect(models.provider().stream(request("hi")))
    await collect(models.provider(base=str(other)).stream(request("hi")))
    assert [b.name for b in models.bases.values()] == ["tiny-r"]  # the default went out
    await collect(models.provider().stream(request("hi")))
    assert [b.name for b in models.bases.values()] == ["tiny"]
    # A budget smaller than a model: BASE_MODEL_UNAVAILABLE, nothing loaded.
    small = LocalModels(tiny, name="tiny", memory_budget_bytes=1000)
    with pytest.raises(FailedPrecondition) as info:
        await small.ensure_loaded()
    assert info.value.reason == Reason.BASE_MODEL_UNAVAILABLE and small.bases == {}
