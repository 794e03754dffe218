"""complex: a flash stage (flash_extractor) collects blocks and images with the tools,
then the pro model answers from role + system prompts and that context (plan 003 §7.2).
The flash stage's image catalogue is the rendered pages the search hits carried."""

from __future__ import annotations

from aivera.chat.v1 import chat_pb2
from services.chat import prompts
from services.chat.clients import Documents
from services.chat.pipeline.base import TurnInput, cite, refs, search_context, tool_loop
from services.chat.providers.base import Provider
from services.chat.tools import ToolRunner
from services.chat.turns import Turn


async def run_complex(
    turn: Turn, inp: TurnInput, provider: Provider, documents: Documents, tools: ToolRunner
) -> None:
    blocks = await search_context(turn, inp, documents, tools)
    notes = await tool_loop(
        turn,
        provider,
        tools,
        model=inp.flash_model,
        system=prompts.flash_system_instruction(inp.prompts),
        # The flash stage sees the conversation too, so a follow-up makes sense to it.
        contents=[
            *prompts.history_contents(inp.history),
            prompts.flash_user_content(
                inp.text,
                blocks,
                tools.catalogue(blocks),
                inp.notes,
                refs=refs(turn),
                images=inp.images,
            ),
        ],
        phase=chat_pb2.PHASE_FLASH_CALL,
        max_iterations=inp.max_tool_iterations,
        stream_tokens=False,
    )
    # The relevant blocks: those found by search and those the flash stage asked for.
    relevant = list(blocks)
    known = {b.handle for b in relevant}
    for block_id in tools.requested:
        if block_id not in known:
            known.add(block_id)
            block = tools.blocks[block_id]
            relevant.append(block)
            cite(turn, block, tools.filenames.get(block.document_id, ""))
    contents = prompts.history_contents(inp.history)
    contents.append(
        prompts.pro_user_content(
            inp.text, relevant, notes, [*inp.images, *tools.collected], refs=refs(turn)
        )
    )
    await tool_loop(
        turn,
        provider,
        tools,
        model=inp.pro_model,
        system=prompts.answer_system_instruction(inp.prompts, inp.role, inp.persona),
        contents=contents,
        phase=chat_pb2.PHASE_PRO_CALL,
        max_iterations=0,
        stream_tokens=True,
        tool_specs=[],
    )
