"""What every pipeline shares: the turn's inputs (`TurnInput`), the one document search
of a turn (its hits carry blocks and page images, so no per-hit document lookups), and
the model tool loop."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from aivera.chat.v1 import chat_pb2
from services.chat import prompts
from services.chat.clients import Block, Documents, Hit
from services.chat.providers.base import Content, LlmRequest, Part, Provider, ToolSpec
from services.chat.providers.observed import model_call
from services.chat.store import SearchRow
from services.chat.tools import ToolRunner
from services.chat.turns import Turn
from services.common.errors import ServiceError


@dataclass
class TurnInput:
    """Everything a pipeline needs, fixed when the turn starts (a running turn keeps the
    prompts and settings it started with)."""

    text: str
    profile: chat_pb2.ModelProfile.ValueType
    prompts: dict[str, str]  # active system prompts by name
    role: str | None  # role prompt content
    persona: str | None  # clone persona
    history: list[tuple[int, str]]
    kb_ids: list[str]
    flash_model: str
    pro_model: str
    max_tool_iterations: int
    top_k: int
    notes: list[str] = field(default_factory=list)  # e.g. attachments that failed
    # What the document search looks for: the request, or for a follow-up the request
    # rewritten from the history (services.chat.followup); empty: `text`.
    query: str = ""
    # Images the user sent with the message, as model parts (services.chat.user_images).
    images: list[Part] = field(default_factory=list)
    # (knowledge base id, document id) of the documents of the chat's project folder:
    # searched besides `kb_ids`.
    project_documents: list[tuple[str, str]] = field(default_factory=list)

    @property
    def searchable(self) -> bool:
        return bool(self.kb_ids or self.project_documents)


async def search_context(
    turn: Turn, inp: TurnInput, documents: Documents, tools: ToolRunner
) -> list[Block]:
    """One Search over the chat's knowledge bases: the blocks the hits carry (with their
    boxes and pages) become the turn's context and its stored search results."""
    if not inp.searchable:
        return []
    async with turn.phase(chat_pb2.PHASE_DOCUMENT_SEARCH, "Поиск по документам"):
        try:
            hits = await _search(documents, inp)
        except ServiceError as exc:
            turn.warning("FILE_UNREADABLE", f"Поиск по документам недоступен: {exc.message}")
            return []
        turn.progress(chat_pb2.PHASE_DOCUMENT_SEARCH, len(hits), len(hits), "hits")
        tools.add_hits(hits)
        blocks = blocks_of(hits)
        for block in blocks:
            tools.add_block(block)
    for block in blocks:
        cite(turn, block, tools.filenames.get(block.document_id, ""), score=block.score)
    return blocks


def cite(turn: Turn, block: Block, filename: str = "", *, score: float = 0.0) -> int:
    """The block's ref (1-based position in the turn's search results, what the model
    cites as `[n]`), adding it to the results when new (blocks the model asked for come
    with score 0)."""
    for n, row in enumerate(turn.search_results, start=1):
        if row.block_id == block.id and row.document_id == block.document_id:
            return n
    turn.search_results.append(
        SearchRow(
            block_id=block.id,
            document_id=block.document_id,
            page=block.page,
            text=block.text,
            box=block.box,
            score=score,
            filename=filename,
        )
    )
    return len(turn.search_results)


def refs(turn: Turn) -> dict[tuple[str, str], int]:
    """(document id, block id) → ref of the turn's search results."""
    out: dict[tuple[str, str], int] = {}
    for n, row in enumerate(turn.search_results, start=1):
        out.setdefault((row.document_id, row.block_id), n)
    return out


async def _search(documents: Documents, inp: TurnInput) -> list[Hit]:
    """The chat's knowledge bases whole and its project's documents: one Search each
    (usually only one of them), merged by score."""
    query = inp.query or inp.text
    scopes: list[tuple[list[str], list[str] | None]] = []
    if inp.kb_ids:
        scopes.append((inp.kb_ids, None))
    if inp.project_documents:
        kb_ids = list(dict.fromkeys(kb for kb, _ in inp.project_documents))
        scopes.append((kb_ids, [doc for _, doc in inp.project_documents]))
    hits: list[Hit] = []
    for kb_ids, document_ids in scopes:
        hits.extend(await documents.search(kb_ids, query, inp.top_k, document_ids))
    if len(scopes) > 1:
        hits.sort(key=lambda h: -h.score)
    return hits[: inp.top_k]


def blocks_of(hits: list[Hit]) -> list[Block]:
    """The hits' blocks in rank order, each once; a hit without blocks (a format without
    layout) stands for itself as one block with the chunk's text and box."""
    out: list[Block] = []
    seen: set[tuple[str, str]] = set()  # block ids are unique within a document only
    for hit in hits:
        blocks = list(hit.blocks)
        if not blocks:
            block_id = hit.block_ids[0] if hit.block_ids else f"{hit.document_id}:{hit.page}"
            blocks = [
                Block(block_id, hit.document_id, hit.page, "text", hit.text, hit.box, hit.score)
            ]
        for block in blocks:
            if (block.document_id, block.id) not in seen:
                seen.add((block.document_id, block.id))
                out.append(block)
    # The same id in two documents: the model gets them apart as «<document>:<id>».
    documents: dict[str, set[str]] = {}
    for block in out:
        documents.setdefault(block.id, set()).add(block.document_id)
    return [
        dataclasses.replace(b, key=f"{b.document_id[:8]}:{b.id}") if len(documents[b.id]) > 1 else b
        for b in out
    ]


async def tool_loop(
    turn: Turn,
    provider: Provider,
    tools: ToolRunner,
    *,
    model: str,
    system: str,
    contents: list[Content],
    phase: chat_pb2.Phase.ValueType,
    max_iterations: int,
    stream_tokens: bool,
    tool_specs: list[ToolSpec] | None = None,
) -> str:
    """Calls the model until it answers without tool calls, running its request_images /
    zoom calls in between; after `max_iterations` calls with tools the last call has none,
    so the model must answer. Returns the text of the model's calls."""
    specs = prompts.TOOLS if tool_specs is None else tool_specs
    texts: list[str] = []
    iteration = 0
    while True:
        iteration += 1
        with_tools = bool(specs) and iteration <= max_iterations
        if specs and iteration == max_iterations + 1:
            turn.warning(
                "TOOL_ITERATION_LIMIT",
                f"Достигнут лимит итераций инструментов ({max_iterations}); модель отвечает "
                "по собранным данным.",
            )
        request = LlmRequest(
            model=model,
            system_instruction=system,
            contents=contents,
            tools=specs if with_tools else [],
        )
        calls = []
        call_text: list[str] = []
        turn.model_used(model)
        async with turn.phase(
            phase, f"Вызов модели {model}" + (f" (итерация {iteration})" if specs else "")
        ):
            usage = None
            with model_call(provider.name, model) as observed:
                async for chunk in provider.stream(request):
                    if chunk.text:
                        call_text.append(chunk.text)
                        if stream_tokens:
                            turn.token(chunk.text, model)
                    calls.extend(chunk.calls)
                    if chunk.usage is not None:
                        usage = chunk.usage
                observed.usage = usage
            if usage is not None:
                turn.usage.add(usage)
        texts.append("".join(call_text))
        if not calls or not with_tools:
            return "".join(texts)
        model_parts = [Part(text="".join(call_text))] if call_text else []
        model_parts.extend(Part(call=c) for c in calls)
        contents.append(Content("model", model_parts))
        results = await tools.run(calls, model=model, iteration=iteration)
        reply: list[Part] = [
            Part(response=(call, result.response))
            for call, result in zip(calls, results, strict=True)
        ]
        for result in results:
            reply.extend(result.images)
        contents.append(Content("user", reply))
