"""simple: the flash model with the request_images/zoom tool loop (plan 003 §7.1)."""

from __future__ import annotations

from aivera.chat.v1 import chat_pb2
from services.chat import prompts
from services.chat.clients import Documents
from services.chat.pipeline.base import TurnInput, refs, search_context, tool_loop
from services.chat.providers.base import Provider
from services.chat.tools import ToolRunner
from services.chat.turns import Turn


async def run_simple(
    turn: Turn, inp: TurnInput, provider: Provider, documents: Documents, tools: ToolRunner
) -> None:
    blocks = await search_context(turn, inp, documents, tools)
    system = prompts.answer_system_instruction(inp.prompts, inp.role, inp.persona)
    contents = prompts.history_contents(inp.history)
    contents.append(
        prompts.simple_user_content(inp.text, blocks, inp.notes, inp.images, refs=refs(turn))
    )
    await tool_loop(
        turn,
        provider,
        tools,
        model=inp.flash_model,
        system=system,
        contents=contents,
        phase=chat_pb2.PHASE_FLASH_CALL,
        max_iterations=inp.max_tool_iterations,
        stream_tokens=True,
    )
