"""Store rows → protos (typed rows in, generated messages out; enum columns become the
contract's enum values)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from google.protobuf import json_format

from aivera.chat.v1 import chat_pb2
from services.chat import citations
from services.chat.store import (
    AttachmentRow,
    ChatRow,
    MessageRow,
    RoleRow,
    SearchRow,
    SystemPromptRow,
    SystemSettingsRow,
)
from services.chat.tools import image_proto
from services.common.protoutil import timestamp

SYSTEM_PROMPT_NAMES = {
    chat_pb2.SYSTEM_PROMPT_NAME_LLM_SYSTEM: "llm_system",
    chat_pb2.SYSTEM_PROMPT_NAME_JSON_ANNOTATION: "json_annotation",
    chat_pb2.SYSTEM_PROMPT_NAME_HTML_OCR: "html_ocr",
    chat_pb2.SYSTEM_PROMPT_NAME_FLASH_EXTRACTOR: "flash_extractor",
}
SYSTEM_PROMPT_ENUMS = {v: k for k, v in SYSTEM_PROMPT_NAMES.items()}


def _str(value: Any) -> str:
    return "" if value is None else str(value)


def chat(row: ChatRow, attachments: Sequence[AttachmentRow] = ()) -> chat_pb2.Chat:
    return chat_pb2.Chat(
        id=str(row.id),
        title=row.title,
        clone_id=_str(row.clone_id),
        knowledge_base_ids=[str(k) for k in row.knowledge_base_ids],
        attachments_knowledge_base_id=_str(row.attachments_knowledge_base_id),
        archived=row.archived,
        attachments=[attachment(a) for a in attachments],
        create_time=timestamp(row.create_time),
        update_time=timestamp(row.update_time),
        last_message_time=timestamp(row.last_message_time),
        folder_id=_str(row.folder_id),
    )


def attachment(row: AttachmentRow) -> chat_pb2.Attachment:
    return chat_pb2.Attachment(
        id=str(row.id),
        chat_id=str(row.chat_id),
        file_id=str(row.file_id),
        document_id=_str(row.document_id),
        filename=row.filename,
        status=chat_pb2.AttachmentStatus.ValueType(row.status),
        error_message=row.error_message,
        create_time=timestamp(row.create_time),
    )


def search_ref(row: SearchRow) -> chat_pb2.SearchResultRef:
    ref = chat_pb2.SearchResultRef(
        block_id=row.block_id,
        document_id=row.document_id,
        page=row.page,
        text=row.text,
        score=row.score,
        filename=row.filename,
    )
    if row.box:
        json_format.ParseDict(row.box, ref.box, ignore_unknown_fields=True)
    return ref


def citation(cited: citations.Cited) -> chat_pb2.Citation:
    row = cited.result
    out = chat_pb2.Citation(
        marker=cited.marker,
        search_result_index=cited.index,
        document_id=row.document_id,
        filename=row.filename,
        page=row.page,
        block_id=row.block_id,
    )
    if row.box:
        json_format.ParseDict(row.box, out.box, ignore_unknown_fields=True)
    return out


def message(row: MessageRow) -> chat_pb2.Message:
    """A stored message with its images, search results and (for an answer) the search
    results its content cites."""
    msg = chat_pb2.Message(
        id=str(row.id),
        chat_id=str(row.chat_id),
        role=chat_pb2.MessageRole.ValueType(row.role),
        content=row.content,
        status=chat_pb2.MessageStatus.ValueType(row.status),
        models_used=list(row.models_used),
        usage=chat_pb2.TokenUsage(
            input_tokens=row.input_tokens,
            output_tokens=row.output_tokens,
            total_tokens=row.total_tokens,
        ),
        images=[image_proto(i) for i in row.images],
        search_results=[search_ref(s) for s in row.search_results],
        file_ids=[str(f) for f in row.file_ids],
        model_profile=chat_pb2.ModelProfile.ValueType(row.model_profile),
        role_prompt_id=_str(row.role_prompt_id),
        role_prompt_version=row.role_prompt_version,
        create_time=timestamp(row.create_time),
        reply_to_message_id=_str(row.reply_to_id),
        superseded=row.superseded,
    )
    if row.role == chat_pb2.MESSAGE_ROLE_ASSISTANT:
        msg.citations.extend(citation(c) for c in citations.cited(row.content, row.search_results))
    if row.error is not None:
        msg.error.CopyFrom(
            chat_pb2.TurnError(
                code=row.error.code,
                reason=row.error.reason,
                message=row.error.message,
                retryable=row.error.retryable,
            )
        )
    return msg


def role_prompt(row: RoleRow) -> chat_pb2.RolePrompt:
    return chat_pb2.RolePrompt(
        id=str(row.id),
        name=row.name,
        description=row.description,
        content=row.content,
        version=row.version,
        is_active=row.is_active,
        create_time=timestamp(row.create_time),
        update_time=timestamp(row.update_time),
    )


def system_prompt(row: SystemPromptRow) -> chat_pb2.SystemPrompt:
    return chat_pb2.SystemPrompt(
        id=str(row.id),
        name=SYSTEM_PROMPT_ENUMS[row.name],
        version=row.version,
        content=row.content,
        description=row.description,
        is_active=row.is_active,
        create_time=timestamp(row.create_time),
    )


def system_settings(row: SystemSettingsRow) -> chat_pb2.SystemSettings:
    return chat_pb2.SystemSettings(
        allowed_models=list(row.allowed_models),
        flash_model=row.flash_model,
        pro_model=row.pro_model,
        local_model_enabled=row.local_model_enabled,
        limits=chat_pb2.ChatLimits(
            max_message_chars=row.max_message_chars,
            max_attachments_per_chat=row.max_attachments_per_chat,
            max_tool_iterations=row.max_tool_iterations,
            max_zooms_per_turn=row.max_zooms_per_turn,
        ),
        default_model_profile=chat_pb2.ModelProfile.ValueType(row.default_model_profile),
        update_time=timestamp(row.update_time),
    )
