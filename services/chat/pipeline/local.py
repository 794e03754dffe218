"""local: the local model (SmolLM2, or a clone's base model + LoRA adapter) answers in
the simple order without tools: system [persona] + [role] + system prompts, the chat's
history, then the request with the document context."""

from __future__ import annotations

from aivera.chat.v1 import chat_pb2
from services.chat import prompts
from services.chat.clients import Documents
from services.chat.pipeline.base import TurnInput, search_context, tool_loop
from services.chat.providers.base import Provider
from services.chat.providers.local import LocalProvider
from services.chat.tools import ToolRunner
from services.chat.turns import Turn


async def run_local(
    turn: Turn, inp: TurnInput, provider: Provider, documents: Documents, tools: ToolRunner
) -> None:
    blocks = await search_context(turn, inp, documents, tools)
    system = prompts.answer_system_instruction(inp.prompts, inp.role, inp.persona)
    contents = prompts.history_contents(inp.history)
    contents.append(prompts.simple_user_content(inp.text, blocks, inp.notes))
    model = provider.model_name if isinstance(provider, LocalProvider) else provider.name
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
