"""The local model: SmolLM2 streaming real tokens, and a clone chat answering through a
LoRA adapter saved by the test (base model + adapter switched per request)."""

from __future__ import annotations

import asyncio
import tempfile
import uuid
from pathlib import Path

import grpc
import pytest

from aivera.chat.v1 import chat_pb2
from aivera.storage.v1 import storage_pb2
from aivera.training.v1 import clones_pb2, models_pb2
from services.common.localmodels import SMOLLM2, default_models_dir, resolve_model
from tests.chat.conftest import Mesh
from tests.chat.fakes import upload
from tests.helpers.errors import reason
from tests.helpers.gemini import GeminiServer

pytestmark = pytest.mark.smollm2


@pytest.fixture(scope="module", autouse=True)
async def short_prompts(mesh: Mesh) -> None:
    """Short active system prompts in this module's database: CPU prefill of the full
    Russian prompts costs seconds per turn on a 135M model (this also shows that a new
    active version applies from the next turn)."""
    admin = await mesh.admin_user()
    for name in ("LLM_SYSTEM", "JSON_ANNOTATION", "HTML_OCR"):
        await mesh.admin_stub.CreateSystemPromptVersion(
            chat_pb2.CreateSystemPromptVersionRequest(
                name=chat_pb2.SystemPromptName.Value(f"SYSTEM_PROMPT_NAME_{name}"),
                content="Answer briefly.",
                activate=True,
            ),
            metadata=admin.md,
        )


def tokens(events: list[chat_pb2.ChatEvent]) -> list[str]:
    return [e.llm_token.text for e in events if e.HasField("llm_token")]


async def test_user_without_key_gets_smollm2_streaming(mesh: Mesh, gemini: GeminiServer) -> None:
    user = await mesh.new_user()  # no Gemini key; local_model_enabled is on by default
    chat = await mesh.stub.CreateChat(chat_pb2.CreateChatRequest(), metadata=user.md)
    events = await mesh.send(user, chat.id, "What is the capital of France?")
    assert events[-1].HasField("final"), events[-1]
    pieces = tokens(events)
    assert len(pieces) > 3  # streamed piece by piece as generate produced them
    final = events[-1].final.message
    assert final.content == "".join(pieces) and final.content.strip()
    assert list(final.models_used) == [SMOLLM2]
    assert final.usage.output_tokens > 0 and final.usage.input_tokens > 10
    phases = {e.phase_started.phase for e in events if e.HasField("phase_started")}
    assert chat_pb2.PHASE_LOCAL_CALL in phases and chat_pb2.PHASE_FLASH_CALL not in phases
    assert gemini.requests == []


def make_adapter(folder: Path) -> None:
    """A small LoRA adapter on SmolLM2 with non-zero weights (so it changes answers)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(resolve_model(SMOLLM2, default_models_dir()))
    config = LoraConfig(
        r=8, lora_alpha=64, target_modules=["q_proj", "v_proj"], init_lora_weights=False
    )
    model = get_peft_model(base, config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    model.save_pretrained(str(folder))


async def test_clone_chat_answers_through_lora_adapter(mesh: Mesh, gemini: GeminiServer) -> None:
    user = await mesh.new_user("AIzaSyTEST0000000000000000000000000003")  # key unused: clone
    folder = Path(tempfile.mkdtemp(prefix="adapter-"))
    make_adapter(folder)
    files = []
    for path in sorted(await asyncio.to_thread(lambda: list(folder.glob("adapter_*")))):
        file_id = await upload(
            mesh.storage_stub, path.read_bytes(), path.name, storage_pb2.BUCKET_MODELS, user.md
        )
        files.append(models_pb2.ModelFile(name=path.name, file_id=file_id))
    model_id = str(uuid.uuid4())
    mesh.training.models[model_id] = models_pb2.ModelArtifact(id=model_id, files=files)
    persona = "You are Ivan, a bridge engineer."
    with_adapter, bare = str(uuid.uuid4()), str(uuid.uuid4())
    mesh.training.clones[with_adapter] = (
        user.id,
        clones_pb2.Clone(
            id=with_adapter,
            persona_prompt=persona,
            active_model_id=model_id,
            status=clones_pb2.CLONE_STATUS_READY,
        ),
    )
    mesh.training.clones[bare] = (
        user.id,
        clones_pb2.Clone(id=bare, persona_prompt=persona, status=clones_pb2.CLONE_STATUS_DRAFT),
    )
    question = "Who are you?"
    chat = await mesh.stub.CreateChat(
        chat_pb2.CreateChatRequest(clone_id=with_adapter), metadata=user.md
    )
    assert chat.clone_id == with_adapter
    events = await mesh.send(user, chat.id, question)
    final = events[-1].final.message
    assert list(final.models_used) == [f"{SMOLLM2}+lora:{model_id}"]
    assert final.content == "".join(tokens(events)) and final.content
    local = mesh.chat.spec.deps.local  # type: ignore[attr-defined]
    assert local.loaded_adapters == [model_id]
    base_model = local.model.get_base_model()
    # The bare clone answers through the same base model, adapter switched off.
    bare_chat = await mesh.stub.CreateChat(
        chat_pb2.CreateChatRequest(clone_id=bare), metadata=user.md
    )
    bare_events = await mesh.send(user, bare_chat.id, question)
    bare_final = bare_events[-1].final.message
    assert list(bare_final.models_used) == [SMOLLM2]
    assert bare_final.content != final.content  # the adapter changes the answer
    # Switching back reuses the cached adapter: same base model object, nothing reloaded.
    again = await mesh.send(user, chat.id, question)
    assert again[-1].final.message.content.strip()
    assert local.model.get_base_model() is base_model
    assert local.loaded_adapters == [model_id]
    assert gemini.requests == []
    # A clone still training without a model is FAILED_PRECONDITION before anything runs.
    training = str(uuid.uuid4())
    mesh.training.clones[training] = (
        user.id,
        clones_pb2.Clone(id=training, status=clones_pb2.CLONE_STATUS_TRAINING),
    )
    pending = await mesh.stub.CreateChat(
        chat_pb2.CreateChatRequest(clone_id=training), metadata=user.md
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await mesh.send(user, pending.id, question)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert reason(info.value) == "CLONE_NOT_READY"


async def test_local_model_says_it_cannot_see_the_images(mesh: Mesh, gemini: GeminiServer) -> None:
    import io

    from PIL import Image

    from services.chat.pipeline.local import IMAGES_NOTICE

    user = await mesh.new_user()  # no key: the local model answers
    chat = await mesh.stub.CreateChat(chat_pb2.CreateChatRequest(), metadata=user.md)
    out = io.BytesIO()
    Image.new("RGB", (20, 10), (0, 0, 255)).save(out, format="PNG")
    photo = await upload(
        mesh.storage_stub, out.getvalue(), "photo.png", storage_pb2.BUCKET_IMAGES, user.md
    )
    events = await mesh.send(user, chat.id, "What is on the photo?", image_file_ids=[photo])
    assert events[-1].HasField("final"), events[-1]
    final = events[-1].final.message
    assert final.content.startswith(IMAGES_NOTICE + "\n\n")
    assert len(final.content) > len(IMAGES_NOTICE) + 2  # the model still answered the text
    assert "".join(tokens(events)) == final.content
    warnings = [e.warning.code for e in events if e.HasField("warning")]
    assert warnings == ["IMAGES_NOT_SUPPORTED"]
    sent = events[0].accepted.user_message.images
    assert [(i.kind, i.file_id) for i in sent] == [(chat_pb2.IMAGE_KIND_USER, photo)]
    assert gemini.requests == []
