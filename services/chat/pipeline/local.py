"""local: the local model (SmolLM2, or a clone's base model + LoRA adapter) answers in
the simple order without tools: system [persona] + [role] + system prompts, the chat's
history, then the request with the document context."""

from __future__ import annotations

from aivera.chat.v1 import chat_pb2
from services.chat import prompts
from services.chat.clients import Documents
from services.chat.pipeline.base import TurnInput, refs, search_context, tool_loop
from services.chat.providers.base import Provider
from services.chat.tools import ToolRunner
from services.chat.turns import Turn

IMAGES_NOTICE = (
    "Локальная модель не видит изображения: отвечаю только по тексту сообщения и "
    "документам. Чтобы модель учла изображения, задайте ключ Gemini."
)


async def run_local(
    turn: Turn, inp: TurnInput, provider: Provider, documents: Documents, tools: ToolRunner
) -> None:
    blocks = await search_context(turn, inp, documents, tools)
    system = prompts.answer_system_instruction(inp.prompts, inp.role, inp.persona)
    contents = prompts.history_contents(inp.history)
    contents.append(prompts.simple_user_content(inp.text, blocks, inp.notes, refs=refs(turn)))
    model = getattr(provider, "model_name", provider.name)
    for code, message in getattr(provider, "notices", ()):
        # E.g. a simulated adapter: the base model answers, and the user is told.
        turn.warning(code, message)
    if hasattr(provider, "on_queued"):

        def queued(position: int) -> None:
            turn.progress(
                chat_pb2.PHASE_LOCAL_CALL,
                position,
                0,
                "queue_position",
                f"В очереди, позиция {position}",
            )

        provider.on_queued = queued
    if inp.images:
        # A text model: the answer says first that it did not see the images.
        turn.warning("IMAGES_NOT_SUPPORTED", IMAGES_NOTICE)
        turn.token(IMAGES_NOTICE + "\n\n", model)
    await tool_loop(
        turn,
        provider,
        tools,
        model=model,
        system=system,
        contents=contents,
        phase=chat_pb2.PHASE_LOCAL_CALL,
        max_iterations=0,
        stream_tokens=True,
        tool_specs=[],
    )
