"""Prompt composition in the fixed order of plan 003 §5.4. Pure functions.

simple — system instruction: [persona (clone chats)] + [role] + llm_system +
json_annotation + html_ocr, each part separated by a blank line; then the chat's earlier
messages; then the user content: the request + the document context + images.
complex — flash: system `flash_extractor`; user: document + image catalogue + request.
pro: system as simple; user: relevant blocks + images/zooms collected + request.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from aivera.chat.v1 import chat_pb2
from services.chat.clients import Block, PageInfo
from services.chat.providers.base import Content, Part, ToolSpec

ANSWER_SYSTEM_PROMPTS = ("llm_system", "json_annotation", "html_ocr")
SEPARATOR = "\n\n"
# How the model cites: each block carries `ref`, the 1-based number of the turn's search
# result it is (services.chat.citations maps the markers back).
CITE_INSTRUCTION = (
    "Ссылайся на блоки, на которые опираешься, маркерами [ref] из поля ref блока, "
    "например [1] или [2][3]."
)
# (document id, block id) → the block's ref (1-based search result number); block ids are
# unique within a document only.
Refs = dict[tuple[str, str], int]


def _join(parts: Iterable[str | None]) -> str:
    return SEPARATOR.join(p.strip() for p in parts if p and p.strip())


def answer_system_instruction(
    prompts: dict[str, str], role: str | None = None, persona: str | None = None
) -> str:
    """[persona] + [role] + llm_system + json_annotation + html_ocr."""
    return _join([persona, role, *(prompts.get(name) for name in ANSWER_SYSTEM_PROMPTS)])


def flash_system_instruction(prompts: dict[str, str]) -> str:
    return _join([prompts.get("flash_extractor")])


def _block_json(block: Block, refs: Refs) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if (block.document_id, block.id) in refs:
        out["ref"] = refs[(block.document_id, block.id)]
    out |= {
        "id": block.handle,
        "document_id": block.document_id,
        "page": block.page,
        "kind": block.kind,
        "text": block.text,
    }
    normalized = (block.box or {}).get("normalized")
    if normalized:
        out["box"] = {
            k: round(float(normalized.get(k, 0.0)), 4) for k in ("left", "top", "right", "bottom")
        }
    return out


def context_text(
    blocks: Sequence[Block], notes: Sequence[str] = (), refs: Refs | None = None
) -> str:
    """The document context: blocks as JSON lines (json_annotation), each with its `ref`
    for citations, and notes (e.g. a file that could not be read)."""
    refs = refs or {}
    lines: list[str] = []
    if blocks:
        lines.append("Контекст документов (JSON-блоки):")
        lines.extend(json.dumps(_block_json(b, refs), ensure_ascii=False) for b in blocks)
        if any((b.document_id, b.id) in refs for b in blocks):
            lines.append(CITE_INSTRUCTION)
    lines.extend(notes)
    return "\n".join(lines)


def catalogue_text(pages: Sequence[tuple[str, str, PageInfo]]) -> str:
    """The image catalogue of the flash stage: (document id, filename, page)."""
    if not pages:
        return ""
    lines = ["Каталог изображений страниц (для request_images и zoom):"]
    for doc_id, filename, page in pages:
        lines.append(
            json.dumps(
                {
                    "document_id": doc_id,
                    "file": filename,
                    "page": page.number,
                    "width": page.width,
                    "height": page.height,
                },
                ensure_ascii=False,
            )
        )
    return "\n".join(lines)


def request_text(text: str) -> str:
    return f"Вопрос пользователя:\n{text}"


def simple_user_content(
    text: str,
    blocks: Sequence[Block],
    notes: Sequence[str] = (),
    images: Sequence[Part] = (),
    refs: Refs | None = None,
) -> Content:
    """The request + document context + images."""
    parts = [Part(text=_join([request_text(text), context_text(blocks, notes, refs)]))]
    parts.extend(images)
    return Content("user", parts)


def flash_user_content(
    text: str,
    blocks: Sequence[Block],
    catalogue: Sequence[tuple[str, str, PageInfo]],
    notes: Sequence[str] = (),
    refs: Refs | None = None,
    images: Sequence[Part] = (),
) -> Content:
    """Document + image catalogue + request + the images the user sent."""
    parts = [
        Part(
            text=_join(
                [context_text(blocks, notes, refs), catalogue_text(catalogue), request_text(text)]
            )
        )
    ]
    parts.extend(images)
    return Content("user", parts)


def pro_user_content(
    text: str,
    blocks: Sequence[Block],
    flash_notes: str,
    images: Sequence[Part],
    refs: Refs | None = None,
) -> Content:
    """Relevant text blocks + images/zooms collected by flash + request."""
    extracted = (
        f"Извлечённые данные (этап Flash):\n{flash_notes.strip()}" if flash_notes.strip() else ""
    )
    parts = [Part(text=_join([context_text(blocks, refs=refs), extracted]))]
    parts.extend(images)
    parts.append(Part(text=request_text(text)))
    return Content("user", parts)


def history_contents(history: Sequence[tuple[int, str]]) -> list[Content]:
    """The chat's earlier messages ((MessageRole, text), oldest first) as model contents."""
    return [
        Content("user" if role == chat_pb2.MESSAGE_ROLE_USER else "model", [Part(text=content)])
        for role, content in history
        if content
    ]


TOOLS = [
    ToolSpec(
        name="request_images",
        description=(
            "Возвращает вырезки указанных блоков документа из изображений страниц "
            "(для чертежей, схем, таблиц)."
        ),
        parameters={
            "type": "object",
            "properties": {
                "block_ids": {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": "id блоков из контекста",
                }
            },
            "required": ["block_ids"],
        },
    ),
    ToolSpec(
        name="zoom",
        description=(
            "Возвращает увеличенную вырезку области страницы в высоком разрешении. box — "
            "нормированные координаты 0..1, scale — кратность увеличения (1–4)."
        ),
        parameters={
            "type": "object",
            "properties": {
                "page": {"type": "integer", "description": "номер страницы, с 1"},
                "box": {
                    "type": "object",
                    "properties": {
                        "left": {"type": "number"},
                        "top": {"type": "number"},
                        "right": {"type": "number"},
                        "bottom": {"type": "number"},
                    },
                    "required": ["left", "top", "right", "bottom"],
                },
                "scale": {"type": "number"},
                "document_id": {
                    "type": "string",
                    "description": "документ; по умолчанию — документ контекста с этой страницей",
                },
            },
            "required": ["page", "box"],
        },
    ),
]
