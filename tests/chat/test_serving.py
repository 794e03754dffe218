"""Serving clones for real (issue 14): each clone on its own base model with its adapter
(tiny Llamas of two shapes stand for two base models), adapters verified against the
artifact's sha256, a corrupt adapter rolled back, a simulated adapter never served as
trained, and a base model on an OpenAI-compatible server (loopback vLLM-wire server)."""

from __future__ import annotations

import asyncio
import hashlib
import tempfile
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from aivera.chat.v1 import chat_pb2
from aivera.storage.v1 import storage_pb2
from aivera.training.v1 import clones_pb2, models_pb2
from tests.chat.conftest import Mesh, User, build_mesh
from tests.chat.fakes import upload
from tests.helpers.errors import reason
from tests.helpers.openai_server import OpenAIServer
from tests.helpers.tiny import build_tiny_model

REMOTE_BASE = "qwen2.5-7b-instruct"  # too large for the in-process server: vLLM serves it


@dataclass
class Bases:
    a: Path
    b: Path


def make_adapter(base: Path, folder: Path, seed: int) -> Path:
    """A LoRA adapter on `base` with non-zero weights (it changes answers)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base)
    config = LoraConfig(r=4, lora_alpha=32, target_modules=["q_proj", "v_proj"])
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    peft_model.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def bases() -> Bases:
    root = Path(tempfile.mkdtemp(prefix="tiny-bases-"))
    return Bases(
        build_tiny_model(root / "tiny-a", hidden=64), build_tiny_model(root / "tiny-b", hidden=32)
    )


@pytest.fixture(scope="module")
async def server() -> AsyncIterator[OpenAIServer]:
    async with OpenAIServer(base_model=REMOTE_BASE) as s:
        yield s


@pytest.fixture(scope="module")
async def smesh(database_url: str, bases: Bases, server: OpenAIServer) -> AsyncIterator[Mesh]:
    async with build_mesh(
        database_url,
        local_model=str(bases.a),
        inference_urls={REMOTE_BASE: server.url},
        inference_adapters_dir=Path(tempfile.mkdtemp(prefix="shared-adapters-")),
        inference_adapters_mount="/adapters",
    ) as built:
        yield built


async def store_adapter(
    mesh: Mesh,
    user: User,
    folder: Path,
    *,
    base: str,
    simulated: bool = False,
    corrupt_sha: bool = False,
    garbage: bool = False,
) -> str:
    """Uploads the adapter's files and registers its artifact with training."""
    files = []
    for path in sorted(await asyncio.to_thread(lambda: list(folder.glob("adapter_*")))):
        data = await asyncio.to_thread(path.read_bytes)
        if garbage and path.name.endswith(".safetensors"):
            data = data[: len(data) // 2]  # truncated: the header promises more
        sha = hashlib.sha256(data).hexdigest()
        if corrupt_sha and path.name.endswith(".safetensors"):
            sha = "0" * 64
        file_id = await upload(
            mesh.storage_stub, data, path.name, storage_pb2.BUCKET_MODELS, user.md
        )
        files.append(models_pb2.ModelFile(name=path.name, file_id=file_id, sha256=sha))
    model_id = str(uuid.uuid4())
    mesh.training.models[model_id] = models_pb2.ModelArtifact(
        id=model_id, base_model=base, files=files, simulated=simulated
    )
    return model_id


async def clone_chat(mesh: Mesh, user: User, base: str, model_id: str = "") -> str:
    clone_id = str(uuid.uuid4())
    mesh.training.clones[clone_id] = (
        user.id,
        clones_pb2.Clone(
            id=clone_id,
            persona_prompt="You are a tester.",
            base_model=base,
            active_model_id=model_id,
            status=clones_pb2.CLONE_STATUS_READY if model_id else clones_pb2.CLONE_STATUS_DRAFT,
        ),
    )
    chat = await mesh.stub.CreateChat(
        chat_pb2.CreateChatRequest(clone_id=clone_id), metadata=user.md
    )
    return str(chat.id)


def local(mesh: Mesh) -> object:
    return mesh.chat.spec.deps.local  # type: ignore[attr-defined]


async def test_two_clones_on_two_base_models(smesh: Mesh, bases: Bases) -> None:
    import torch

    user = await smesh.new_user()
    tmp = Path(tempfile.mkdtemp(prefix="adapters-"))
    on_a = await store_adapter(smesh, user, make_adapter(bases.a, tmp / "a", 1), base=str(bases.a))
    on_b = await store_adapter(smesh, user, make_adapter(bases.b, tmp / "b", 2), base=str(bases.b))
    # The clone names base A, but the adapter's artifact (trained on B) decides.
    chat_a = await clone_chat(smesh, user, str(bases.a), on_a)
    chat_b = await clone_chat(smesh, user, str(bases.a), on_b)
    final_a = (await smesh.send(user, chat_a, "hello"))[-1]
    final_b = (await smesh.send(user, chat_b, "hello"))[-1]
    assert final_a.HasField("final") and final_b.HasField("final"), (final_a, final_b)
    assert list(final_a.final.message.models_used) == [f"tiny-a+lora:{on_a}"]
    assert list(final_b.final.message.models_used) == [f"tiny-b+lora:{on_b}"]
    models = local(smesh)
    assert models.adapters_of(str(bases.a)) == [on_a]  # type: ignore[attr-defined]
    assert models.adapters_of(str(bases.b)) == [on_b]  # type: ignore[attr-defined]
    loaded = models.bases  # type: ignore[attr-defined]
    assert {b.name for b in loaded.values()} == {"tiny-a", "tiny-b"}
    # fp32 on CPU (bf16 is for CUDA).
    for b in loaded.values():
        assert next(b.model.parameters()).dtype == torch.float32
    # The bare base (a clone without a model) answers through base A, adapter off.
    bare = await clone_chat(smesh, user, str(bases.a))
    final = (await smesh.send(user, bare, "hello"))[-1]
    assert list(final.final.message.models_used) == ["tiny-a"]


async def test_unknown_or_unservable_base_model(smesh: Mesh, bases: Bases) -> None:
    user = await smesh.new_user()
    for base in ("/nonexistent/model", "llama-3.1-8b-instruct"):
        chat = await clone_chat(smesh, user, base)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await smesh.send(user, chat, "hello")
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION, base
        assert reason(info.value) == "BASE_MODEL_UNAVAILABLE"
        assert await smesh.messages(user, chat) == []  # nothing stored


async def test_adapter_checksum_mismatch_and_garbage_are_refused(smesh: Mesh, bases: Bases) -> None:
    user = await smesh.new_user()
    folder = make_adapter(bases.a, Path(tempfile.mkdtemp()) / "a", 3)
    for kw in ({"corrupt_sha": True}, {"garbage": True}):
        model_id = await store_adapter(smesh, user, folder, base=str(bases.a), **kw)
        chat = await clone_chat(smesh, user, str(bases.a), model_id)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await smesh.send(user, chat, "hello")
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION, kw
        assert reason(info.value) == "ADAPTER_INVALID"
        adapters_dir = smesh.chat.spec.deps.adapters_dir  # type: ignore[attr-defined]
        assert not any(p.name.endswith(model_id) for p in adapters_dir.iterdir())


async def test_adapter_that_does_not_fit_leaves_no_trace(smesh: Mesh, bases: Bases) -> None:
    user = await smesh.new_user()
    models = local(smesh)
    # Base A loaded with a good adapter first.
    good = await store_adapter(
        smesh, user, make_adapter(bases.a, Path(tempfile.mkdtemp()) / "g", 4), base=str(bases.a)
    )
    good_chat = await clone_chat(smesh, user, str(bases.a), good)
    before = (await smesh.send(user, good_chat, "hello"))[-1].final.message.content
    base_a = models.bases[""]  # type: ignore[attr-defined]
    keys = set(base_a.model.state_dict())
    adapters = list(base_a.adapters)
    # An adapter of base B's shapes whose artifact claims base A: its load fails.
    wrong = await store_adapter(
        smesh, user, make_adapter(bases.b, Path(tempfile.mkdtemp()) / "w", 5), base=str(bases.a)
    )
    wrong_chat = await clone_chat(smesh, user, str(bases.a), wrong)
    events = await smesh.send(user, wrong_chat, "hello")
    assert events[-1].HasField("error"), events[-1]
    assert events[-1].error.reason == "ADAPTER_INVALID"
    assert set(base_a.model.state_dict()) == keys
    assert list(base_a.adapters) == adapters and wrong not in base_a.model.peft_config
    # The good adapter answers exactly as before.
    after = (await smesh.send(user, good_chat, "hello"))[-1].final.message.content
    assert after == before


async def test_simulated_adapter_answers_with_the_base_model(smesh: Mesh, bases: Bases) -> None:
    user = await smesh.new_user()
    folder = make_adapter(bases.a, Path(tempfile.mkdtemp()) / "s", 6)
    model_id = await store_adapter(smesh, user, folder, base=str(bases.a), simulated=True)
    chat = await clone_chat(smesh, user, str(bases.a), model_id)
    events = await smesh.send(user, chat, "hello")
    assert events[-1].HasField("final"), events[-1]
    assert list(events[-1].final.message.models_used) == ["tiny-a"]
    warnings = [e.warning for e in events if e.HasField("warning")]
    assert [w.code for w in warnings] == ["SIMULATED_ADAPTER"] and model_id in warnings[0].message
    assert model_id not in local(smesh).adapters_of(str(bases.a))  # type: ignore[attr-defined]


async def test_openai_wire_server_streams_and_loads_the_adapter(
    smesh: Mesh, bases: Bases, server: OpenAIServer
) -> None:
    user = await smesh.new_user()
    folder = make_adapter(bases.a, Path(tempfile.mkdtemp()) / "r", 7)
    model_id = await store_adapter(smesh, user, folder, base=REMOTE_BASE)
    chat = await clone_chat(smesh, user, REMOTE_BASE, model_id)
    server.fail_after = None
    events = await smesh.send(user, chat, "hello")
    final = events[-1].final.message
    assert final.content == "Hello from the server."
    assert [e.llm_token.text for e in events if e.HasField("llm_token")] == server.words
    assert list(final.models_used) == [f"{REMOTE_BASE}+lora:{model_id}"]
    assert final.usage.output_tokens == len(server.words)
    # The server did not have the adapter: chat put it, verified, on the volume it shares
    # with the server and had the server load it from there.
    assert server.loads == [{"lora_name": model_id, "lora_path": f"/adapters/{model_id}"}]
    shared = smesh.chat.settings.inference_adapters_dir  # type: ignore[attr-defined]
    assert (shared / model_id / "adapter_model.safetensors").exists()
    assert server.requests[-1]["model"] == model_id and server.requests[-1]["stream"] is True
    # The second turn finds it loaded.
    await smesh.send(user, chat, "again")
    assert len(server.loads) == 1


async def test_openai_wire_failure_mid_stream_keeps_the_user_message(
    smesh: Mesh, server: OpenAIServer
) -> None:
    user = await smesh.new_user()
    chat = await clone_chat(smesh, user, REMOTE_BASE)
    server.fail_after = 2
    try:
        events = await smesh.send(user, chat, "hello")
    finally:
        server.fail_after = None
    assert events[-1].HasField("error"), events[-1]
    assert events[-1].error.reason == "PROVIDER_UNAVAILABLE" and events[-1].error.retryable
    messages = await smesh.wait_settled(user, chat)
    assert [m.role for m in messages] == [
        chat_pb2.MESSAGE_ROLE_USER,
        chat_pb2.MESSAGE_ROLE_ASSISTANT,
    ]
    assert messages[0].content == "hello"
    assert messages[1].status == chat_pb2.MESSAGE_STATUS_INCOMPLETE
    assert messages[1].content == "Hello from"  # what streamed before the break is kept


async def test_openai_wire_adapter_load_from_signed_urls(server: OpenAIServer) -> None:
    """Without a shared volume the load request carries the files' signed URLs."""
    from services.chat.clients import Artifact
    from services.chat.providers.base import Content, LlmRequest, Part
    from services.chat.providers.openai import OpenAIProvider

    class SignedUrls:  # the storage client's signed_url, as GrpcFiles answers it
        async def signed_url(self, file_id: str, ttl: int) -> tuple[str, None]:
            return f"https://storage.example/{file_id}?ttl={ttl}", None

    model_id = str(uuid.uuid4())
    artifact = Artifact(
        model_id,
        REMOTE_BASE,
        (("adapter_config.json", "f1", ""), ("adapter_model.safetensors", "f2", "")),
    )
    files: Any = SignedUrls()
    provider = OpenAIProvider(
        server.url, base=REMOTE_BASE, artifact=artifact, files=files, url_ttl=60
    )
    try:
        request = LlmRequest(REMOTE_BASE, "", [Content("user", [Part(text="hi")])])
        text = "".join([c.text async for c in provider.stream(request)])
    finally:
        await provider.aclose()
    assert text == "Hello from the server."
    load = server.loads[-1]
    assert load["lora_name"] == model_id
    assert load["lora_path"] == "https://storage.example/f1?ttl=60"
    assert load["lora_files"]["adapter_model.safetensors"] == "https://storage.example/f2?ttl=60"


async def test_a_turn_that_waits_is_told_its_position(smesh: Mesh, bases: Bases) -> None:
    from services.chat.batching import Job

    user = await smesh.new_user()
    chat = await clone_chat(smesh, user, str(bases.a))
    models: Any = local(smesh)
    base = await models.base("")
    # A batch still generating for someone else: this turn waits behind it.
    other = Job(None, [], 1, asyncio.get_running_loop())
    base.scheduler.running = [other]
    try:
        events = await smesh.send(user, chat, "hello")
    finally:
        base.scheduler.running = []
    assert events[-1].HasField("final"), events[-1]
    queued = [e.phase_progress for e in events if e.HasField("phase_progress")]
    assert [(q.phase, q.progress.done, q.progress.unit) for q in queued] == [
        (chat_pb2.PHASE_LOCAL_CALL, 1, "queue_position")
    ]
    assert queued[0].message == "В очереди, позиция 1"
