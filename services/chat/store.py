"""All SQL of the chat service, returning typed rows (frozen dataclasses) and raising
domain errors: every query on a user's chat names its owner, a unique-index conflict
comes back as ALREADY_EXISTS or TURN_IN_PROGRESS, never as a database exception.

Enum-like columns hold the contract's enum numbers (`chat_pb2` constants); list queries
are keyset pages (`services.common.pages`): each takes a `PageRequest` and returns up to
`page.limit` rows ordered by a unique key after `page.after`.

`Store` implements the pipeline's persistence protocol
(`services.chat.pipeline.persistence.TurnStore`); `turn_context` loads everything a turn
starts from in one query.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from aivera.chat.v1 import chat_pb2
from services.common.db import Database
from services.common.errors import AlreadyExists, FailedPrecondition, InvalidArgument, Reason
from services.common.pages import PageRequest

ROLE_USER = chat_pb2.MESSAGE_ROLE_USER
ROLE_ASSISTANT = chat_pb2.MESSAGE_ROLE_ASSISTANT
STATUS_COMPLETE = chat_pb2.MESSAGE_STATUS_COMPLETE
STATUS_INCOMPLETE = chat_pb2.MESSAGE_STATUS_INCOMPLETE
STATUS_ERROR = chat_pb2.MESSAGE_STATUS_ERROR
STATUS_IN_PROGRESS = chat_pb2.MESSAGE_STATUS_IN_PROGRESS
ATTACHMENT_INGESTING = chat_pb2.ATTACHMENT_STATUS_INGESTING
ATTACHMENT_READY = chat_pb2.ATTACHMENT_STATUS_READY
ATTACHMENT_FAILED = chat_pb2.ATTACHMENT_STATUS_FAILED
# Messages a model sees as history: those that hold an answer (partial ones included).
HISTORY_STATUSES = [STATUS_COMPLETE, STATUS_INCOMPLETE]

_CHAT_COLUMNS = (
    "id, user_id, title, clone_id, knowledge_base_ids, attachments_knowledge_base_id, "
    "archived, create_time, update_time, last_message_time, folder_id"
)
_MESSAGE_COLUMNS = (
    "id, chat_id, seq, role, content, status, models_used, input_tokens, output_tokens, "
    "total_tokens, error, file_ids, model_profile, role_prompt_id, role_prompt_version, "
    "create_time, reply_to_id, superseded"
)
_ATTACHMENT_COLUMNS = (
    "id, chat_id, file_id, document_id, filename, status, error_message, create_time"
)
_FOLDER_COLUMNS = "id, user_id, parent_id, name, create_time, update_time"
_FOLDER_DOCUMENT_COLUMNS = "folder_id, document_id, knowledge_base_id, filename, add_time"
_ROLE_COLUMNS = "id, name, description, content, version, is_active, create_time, update_time"
_SYSTEM_PROMPT_COLUMNS = "id, name, version, content, description, is_active, create_time"
_SYSTEM_COLUMNS = (
    "allowed_models, flash_model, pro_model, local_model_enabled, default_model_profile, "
    "max_message_chars, max_attachments_per_chat, max_tool_iterations, max_zooms_per_turn, "
    "update_time"
)
# What UpdateSystemSettings may change (column names).
SYSTEM_SETTINGS_FIELDS = frozenset(_SYSTEM_COLUMNS.replace(" ", "").split(",")) - {"update_time"}


def not_latest() -> FailedPrecondition:
    """RegenerateMessage / EditMessage of a message that is not the chat's latest."""
    return FailedPrecondition(
        "only the chat's latest message can be regenerated or edited",
        reason=Reason.NOT_LATEST_MESSAGE,
    )


def turn_in_progress() -> FailedPrecondition:
    """The error of a second turn while one runs in the chat (any replica)."""
    return FailedPrecondition(
        "a turn is already running in this chat; wait for it to finish",
        reason=Reason.TURN_IN_PROGRESS,
    )


# -- rows -----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ChatRow:
    id: uuid.UUID
    user_id: str
    title: str
    clone_id: uuid.UUID | None
    knowledge_base_ids: tuple[uuid.UUID, ...]
    attachments_knowledge_base_id: uuid.UUID | None
    archived: bool
    create_time: dt.datetime
    update_time: dt.datetime
    last_message_time: dt.datetime | None
    folder_id: uuid.UUID | None = None  # the project folder holding it

    @property
    def activity(self) -> dt.datetime:
        """What ListChats orders by: the last message, else the creation."""
        return self.last_message_time or self.create_time


@dataclass(frozen=True, slots=True)
class AttachmentRow:
    id: uuid.UUID
    chat_id: uuid.UUID
    file_id: uuid.UUID
    document_id: uuid.UUID | None
    filename: str
    status: int  # AttachmentStatus
    error_message: str
    create_time: dt.datetime


@dataclass(frozen=True, slots=True)
class ImageRow:
    """An image a turn produced (a crop or a zoom), stored in the storage service."""

    kind: int  # ImageKind
    file_id: str
    document_id: str
    page: int
    box: dict[str, Any] | None  # aivera.common.v1.BoundingBox as JSON
    scale: float
    width: int
    height: int
    size_bytes: int
    mime_type: str
    description: str
    id: str = field(default_factory=lambda: str(uuid.uuid4()))


@dataclass(frozen=True, slots=True)
class SearchRow:
    """A search result a turn used (one block)."""

    block_id: str
    document_id: str
    page: int
    text: str
    box: dict[str, Any] | None
    score: float
    filename: str = ""


@dataclass(frozen=True, slots=True)
class StoredError:
    """The TurnError of a message (jsonb column `error`)."""

    code: int  # google.rpc.Code
    reason: str
    message: str
    retryable: bool


@dataclass(frozen=True, slots=True)
class MessageRow:
    id: uuid.UUID
    chat_id: uuid.UUID
    seq: int
    role: int  # MessageRole
    content: str
    status: int  # MessageStatus
    models_used: tuple[str, ...]
    input_tokens: int
    output_tokens: int
    total_tokens: int
    error: StoredError | None
    file_ids: tuple[uuid.UUID, ...]
    model_profile: int
    role_prompt_id: uuid.UUID | None
    role_prompt_version: int
    create_time: dt.datetime
    images: tuple[ImageRow, ...] = ()
    search_results: tuple[SearchRow, ...] = ()
    reply_to_id: uuid.UUID | None = None  # an answer's user message
    superseded: bool = False  # replaced by a regenerated answer or an edited message


@dataclass(frozen=True, slots=True)
class SearchHitRow:
    """A message found by SearchMessages."""

    message: MessageRow
    chat_title: str
    snippet: str
    rank: float


@dataclass(frozen=True, slots=True)
class TurnOutcome:
    """How a turn ended, stored once by `finish_turn`."""

    status: int  # MessageStatus
    content: str
    models_used: list[str]
    input_tokens: int
    output_tokens: int
    total_tokens: int
    error: StoredError | None
    images: list[ImageRow]
    search_results: list[SearchRow]


# What a running turn learns at each flush (`flush_turn`).
TURN_RUNNING = "running"
TURN_CANCELLED = "cancelled"  # CancelTurn on another replica
TURN_DELETED = "deleted"  # the chat was deleted


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """One event of a turn's log: its seq and the serialized ChatEvent."""

    seq: int
    event: bytes
    terminal: bool


@dataclass(frozen=True, slots=True)
class WatchedTurn:
    """A turn as WatchTurn sees it in the database."""

    message: MessageRow
    stale: bool  # IN_PROGRESS without a heartbeat for stale_seconds (its replica is gone)


@dataclass(frozen=True, slots=True)
class SystemSettingsRow:
    allowed_models: tuple[str, ...]
    flash_model: str
    pro_model: str
    local_model_enabled: bool
    default_model_profile: int  # ModelProfile
    max_message_chars: int
    max_attachments_per_chat: int
    max_tool_iterations: int
    max_zooms_per_turn: int
    update_time: dt.datetime | None


@dataclass(frozen=True, slots=True)
class UserSettingsRow:
    model_profile: int | None  # None: the system default
    role_id: uuid.UUID | None  # the selected role while it is active
    update_time: dt.datetime


@dataclass(frozen=True, slots=True)
class RoleRow:
    id: uuid.UUID
    name: str
    description: str
    content: str
    version: int
    is_active: bool
    create_time: dt.datetime
    update_time: dt.datetime


@dataclass(frozen=True, slots=True)
class SystemPromptRow:
    id: uuid.UUID
    name: str  # llm_system | json_annotation | html_ocr | flash_extractor
    version: int
    content: str
    description: str
    is_active: bool
    create_time: dt.datetime


@dataclass(frozen=True, slots=True)
class RoleRef:
    """The selected role prompt a turn uses."""

    id: uuid.UUID
    content: str
    version: int


@dataclass(frozen=True, slots=True)
class TurnContext:
    """Everything a turn starts from, read in one query before anything is stored."""

    chat: ChatRow
    system: SystemSettingsRow
    model_profile: int | None  # the user's setting; None: the system default
    role: RoleRef | None  # the user's selected role, when active
    prompts: dict[str, str]  # active system prompts by name
    attached_file_ids: frozenset[str]  # files already attached to the chat
    history: tuple[tuple[int, str], ...]  # (role, content) of earlier messages, oldest first
    turn_running: bool  # a live (not stale) turn runs in the chat
    # (knowledge base id, document id) of the documents of the chat's folder subtree.
    folder_documents: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class FolderRow:
    id: uuid.UUID
    user_id: str
    parent_id: uuid.UUID | None
    name: str
    create_time: dt.datetime
    update_time: dt.datetime


@dataclass(frozen=True, slots=True)
class FolderDocumentRow:
    folder_id: uuid.UUID
    document_id: uuid.UUID
    knowledge_base_id: uuid.UUID
    filename: str
    add_time: dt.datetime


# -- record → row ---------------------------------------------------------------------------
def _folder(r: Any) -> FolderRow:
    return FolderRow(**{f.name: r[f.name] for f in dataclasses.fields(FolderRow)})


def _folder_document(r: Any) -> FolderDocumentRow:
    return FolderDocumentRow(**{f.name: r[f.name] for f in dataclasses.fields(FolderDocumentRow)})


def _folder_exists(name: str) -> AlreadyExists:
    return AlreadyExists(f"a folder named {name!r} exists here", metadata={"resource": "folder"})


def _chat(r: Any) -> ChatRow:
    return ChatRow(
        id=r["id"],
        user_id=r["user_id"],
        title=r["title"],
        clone_id=r["clone_id"],
        knowledge_base_ids=tuple(r["knowledge_base_ids"]),
        attachments_knowledge_base_id=r["attachments_knowledge_base_id"],
        archived=r["archived"],
        create_time=r["create_time"],
        update_time=r["update_time"],
        last_message_time=r["last_message_time"],
        folder_id=r["folder_id"],
    )


def _attachment(r: Any) -> AttachmentRow:
    return AttachmentRow(**{f.name: r[f.name] for f in dataclasses.fields(AttachmentRow)})


def _error(value: Any) -> StoredError | None:
    if not value:
        return None
    return StoredError(
        code=int(value.get("code", 0)),
        reason=str(value.get("reason", "")),
        message=str(value.get("message", "")),
        retryable=bool(value.get("retryable", False)),
    )


def _message(r: Any) -> MessageRow:
    return MessageRow(
        id=r["id"],
        chat_id=r["chat_id"],
        seq=r["seq"],
        role=r["role"],
        content=r["content"],
        status=r["status"],
        models_used=tuple(r["models_used"]),
        input_tokens=r["input_tokens"],
        output_tokens=r["output_tokens"],
        total_tokens=r["total_tokens"],
        error=_error(r["error"]),
        file_ids=tuple(r["file_ids"]),
        model_profile=r["model_profile"],
        role_prompt_id=r["role_prompt_id"],
        role_prompt_version=r["role_prompt_version"],
        create_time=r["create_time"],
        reply_to_id=r["reply_to_id"],
        superseded=r["superseded"],
    )


def _image(r: Any) -> ImageRow:
    return ImageRow(
        id=str(r["id"]),
        kind=r["kind"],
        file_id=str(r["file_id"]),
        document_id="" if r["document_id"] is None else str(r["document_id"]),
        page=r["page"],
        box=r["box"],
        scale=r["scale"],
        width=r["width"],
        height=r["height"],
        size_bytes=r["size_bytes"],
        mime_type=r["mime_type"],
        description=r["description"],
    )


def _search(r: Any) -> SearchRow:
    return SearchRow(
        block_id=r["block_id"],
        document_id="" if r["document_id"] is None else str(r["document_id"]),
        page=r["page"],
        text=r["text"],
        box=r["box"],
        score=r["score"],
        filename=r["filename"],
    )


def _system(r: Any, prefix: str = "") -> SystemSettingsRow:
    values = {f.name: r[prefix + f.name] for f in dataclasses.fields(SystemSettingsRow)}
    values["allowed_models"] = tuple(values["allowed_models"])
    return SystemSettingsRow(**values)


def _role(r: Any) -> RoleRow:
    return RoleRow(**{f.name: r[f.name] for f in dataclasses.fields(RoleRow)})


def _system_prompt(r: Any) -> SystemPromptRow:
    return SystemPromptRow(**{f.name: r[f.name] for f in dataclasses.fields(SystemPromptRow)})


def _uuid_or_none(value: str) -> uuid.UUID | None:
    return uuid.UUID(value) if value else None


def _error_json(error: StoredError | None) -> dict[str, Any] | None:
    return None if error is None else dataclasses.asdict(error)


class Store:
    """The chat schema, on the App as its `Database`: the pool is read at query time
    (it exists once the service has connected)."""

    def __init__(self, database: Database) -> None:
        self._database = database

    @property
    def pool(self) -> Any:
        return self._database.pool

    # -- chats --------------------------------------------------------------------------
    async def create_chat(
        self,
        user_id: str,
        title: str,
        clone_id: str,
        knowledge_base_ids: Sequence[str],
        folder_id: uuid.UUID | None = None,
    ) -> ChatRow:
        row = await self.pool.fetchrow(
            f"""INSERT INTO chats (id, user_id, title, clone_id, knowledge_base_ids, folder_id)
                VALUES ($1, $2, $3, $4, $5, $6) RETURNING {_CHAT_COLUMNS}""",
            uuid.uuid4(),
            user_id,
            title,
            _uuid_or_none(clone_id),
            [uuid.UUID(k) for k in knowledge_base_ids],
            folder_id,
        )
        return _chat(row)

    async def get_chat(self, user_id: str, chat_id: uuid.UUID) -> ChatRow | None:
        row = await self.pool.fetchrow(
            f"""SELECT {_CHAT_COLUMNS} FROM chats
                WHERE id = $1 AND user_id = $2 AND delete_time IS NULL""",
            chat_id,
            user_id,
        )
        return None if row is None else _chat(row)

    async def list_chats(
        self, user_id: str, archived: bool | None, page: PageRequest
    ) -> list[ChatRow]:
        """Newest activity first; keyset (activity, id)."""
        args: list[Any] = [user_id, page.limit]
        where = ["user_id = $1", "delete_time IS NULL"]
        if archived is not None:
            args.append(archived)
            where.append(f"archived = ${len(args)}")
        if page.after is not None:
            activity, chat_id = page.after
            args.extend([activity, chat_id])
            where.append(
                f"(coalesce(last_message_time, create_time), id) < (${len(args) - 1}, ${len(args)})"
            )
        rows = await self.pool.fetch(
            f"""SELECT {_CHAT_COLUMNS} FROM chats WHERE {" AND ".join(where)}
                ORDER BY coalesce(last_message_time, create_time) DESC, id DESC
                LIMIT $2""",
            *args,
        )
        return [_chat(r) for r in rows]

    async def update_chat(
        self,
        user_id: str,
        chat_id: uuid.UUID,
        title: str | None,
        archived: bool | None,
        folder: tuple[bool, uuid.UUID | None] = (False, None),
    ) -> ChatRow | None:
        """`folder`: (whether to move it, the folder or None for the top)."""
        move, folder_id = folder
        row = await self.pool.fetchrow(
            f"""UPDATE chats SET title = coalesce($3, title), archived = coalesce($4, archived),
                    folder_id = CASE WHEN $5 THEN $6::uuid ELSE folder_id END,
                    update_time = clock_timestamp()
                WHERE id = $1 AND user_id = $2 AND delete_time IS NULL
                RETURNING {_CHAT_COLUMNS}""",
            chat_id,
            user_id,
            title,
            archived,
            move,
            folder_id,
        )
        return None if row is None else _chat(row)

    async def delete_chat(self, user_id: str, chat_id: uuid.UUID) -> bool:
        row = await self.pool.fetchrow(
            """UPDATE chats SET delete_time = clock_timestamp()
               WHERE id = $1 AND user_id = $2 AND delete_time IS NULL RETURNING id""",
            chat_id,
            user_id,
        )
        return row is not None

    async def set_attachments_kb(self, chat_id: uuid.UUID, kb_id: str) -> str:
        """Sets the chat's own knowledge base unless one is set already; returns it."""
        value: uuid.UUID = await self.pool.fetchval(
            """UPDATE chats SET attachments_knowledge_base_id =
                   coalesce(attachments_knowledge_base_id, $2)
               WHERE id = $1 RETURNING attachments_knowledge_base_id""",
            chat_id,
            uuid.UUID(kb_id),
        )
        return str(value)

    # -- attachments --------------------------------------------------------------------
    async def list_attachments(
        self, chat_id: uuid.UUID, ids: Sequence[uuid.UUID] | None = None
    ) -> list[AttachmentRow]:
        """The chat's attachments, oldest first (only `ids` when given)."""
        rows = await self.pool.fetch(
            f"""SELECT {_ATTACHMENT_COLUMNS} FROM attachments
                WHERE chat_id = $1 AND ($2::uuid[] IS NULL OR id = ANY($2))
                ORDER BY create_time, id""",
            chat_id,
            None if ids is None else list(ids),
        )
        return [_attachment(r) for r in rows]

    async def find_attachment(
        self, chat_id: uuid.UUID, file_id: uuid.UUID
    ) -> tuple[AttachmentRow | None, int]:
        """(the attachment of `file_id` or None, how many attachments the chat has)."""
        row = await self.pool.fetchrow(
            f"""SELECT (SELECT count(*) FROM attachments WHERE chat_id = $1) AS total,
                       a.* FROM (SELECT 1) one
                LEFT JOIN (SELECT {_ATTACHMENT_COLUMNS} FROM attachments
                           WHERE chat_id = $1 AND file_id = $2) a ON true""",
            chat_id,
            file_id,
        )
        found = None if row["id"] is None else _attachment(row)
        return found, int(row["total"])

    async def add_attachment(
        self, chat_id: uuid.UUID, file_id: uuid.UUID, filename: str
    ) -> tuple[AttachmentRow, bool]:
        """(attachment, created): an attachment of the same file is returned as is."""
        row = await self.pool.fetchrow(
            f"""INSERT INTO attachments (id, chat_id, file_id, filename, status)
                VALUES ($1, $2, $3, $4, $5) ON CONFLICT (chat_id, file_id) DO NOTHING
                RETURNING {_ATTACHMENT_COLUMNS}""",
            uuid.uuid4(),
            chat_id,
            file_id,
            filename,
            ATTACHMENT_INGESTING,
        )
        if row is not None:
            return _attachment(row), True
        existing = await self.pool.fetchrow(
            f"SELECT {_ATTACHMENT_COLUMNS} FROM attachments WHERE chat_id = $1 AND file_id = $2",
            chat_id,
            file_id,
        )
        return _attachment(existing), False

    async def delete_attachment(self, attachment_id: uuid.UUID) -> None:
        await self.pool.execute("DELETE FROM attachments WHERE id = $1", attachment_id)

    async def set_attachment_state(
        self, attachment_id: uuid.UUID, status: int, document_id: str = "", error: str = ""
    ) -> None:
        await self.pool.execute(
            """UPDATE attachments SET status = $2,
                   document_id = coalesce($3, document_id), error_message = $4
               WHERE id = $1""",
            attachment_id,
            status,
            _uuid_or_none(document_id),
            error,
        )

    # -- messages -----------------------------------------------------------------------
    async def list_messages(
        self,
        chat_id: uuid.UUID,
        page: PageRequest,
        *,
        newest_first: bool,
        include_superseded: bool = False,
    ) -> list[MessageRow]:
        """Up to `page.limit` messages after the keyset (seq,), with their images and
        search results: oldest first, or newest first (the tail, going back in time).
        Superseded messages (earlier answers, edited messages) only when asked."""
        after = None if page.after is None else page.after[0]
        if newest_first:
            query = f"""SELECT {_MESSAGE_COLUMNS} FROM messages
                        WHERE chat_id = $1 AND ($3::bigint IS NULL OR seq < $3)
                          AND ($4 OR NOT superseded)
                        ORDER BY seq DESC LIMIT $2"""
        else:
            query = f"""SELECT {_MESSAGE_COLUMNS} FROM messages
                        WHERE chat_id = $1 AND ($3::bigint IS NULL OR seq > $3)
                          AND ($4 OR NOT superseded)
                        ORDER BY seq LIMIT $2"""
        rows = [
            _message(r)
            for r in await self.pool.fetch(query, chat_id, page.limit, after, include_superseded)
        ]
        return await self._with_extras(rows)

    async def search_messages(
        self, user_id: str, query: str, chat_id: uuid.UUID | None, page: PageRequest
    ) -> list[SearchHitRow]:
        """The user's messages matching `query` (web-search syntax, Russian or English
        word forms), best first; keyset (rank, seq). The document expression and the
        predicate are those of the index `messages_fts` (migration 0004)."""
        after_rank, after_seq = page.after if page.after is not None else (None, None)
        rows = await self.pool.fetch(
            f"""WITH q AS (SELECT websearch_to_tsquery('russian', $2)
                                  || websearch_to_tsquery('english', $2) AS query),
                found AS (
                    SELECT {", ".join("m." + c for c in _MESSAGE_COLUMNS.split(", "))},
                           c.title AS chat_title,
                           ts_rank(to_tsvector('russian', m.content)
                                   || to_tsvector('english', m.content), q.query)::float8
                               AS rank,
                           q.query
                    FROM messages m JOIN chats c ON c.id = m.chat_id, q
                    WHERE c.user_id = $1 AND c.delete_time IS NULL
                      AND ($3::uuid IS NULL OR c.id = $3)
                      AND m.status IN (1, 2) AND NOT m.superseded
                      AND (to_tsvector('russian', m.content)
                           || to_tsvector('english', m.content)) @@ q.query)
                SELECT found.*,
                       ts_headline('russian', content, query,
                                   'StartSel=«, StopSel=», MaxWords=30, MinWords=8')
                           AS snippet
                FROM found
                WHERE $5::float8 IS NULL OR (rank, seq) < ($5, $6::bigint)
                ORDER BY rank DESC, seq DESC LIMIT $4""",
            user_id,
            query,
            chat_id,
            page.limit,
            after_rank,
            after_seq,
        )
        return [
            SearchHitRow(_message(r), r["chat_title"], r["snippet"], float(r["rank"])) for r in rows
        ]

    async def get_message(
        self, user_id: str, chat_id: uuid.UUID, message_id: uuid.UUID
    ) -> MessageRow | None:
        """A message of the user's chat; None when it, or the chat, is missing, deleted
        or another user's."""
        row = await self.pool.fetchrow(
            f"""SELECT {", ".join("m." + c for c in _MESSAGE_COLUMNS.split(", "))}
                FROM messages m JOIN chats c ON c.id = m.chat_id
                WHERE m.id = $1 AND m.chat_id = $2 AND c.user_id = $3
                  AND c.delete_time IS NULL""",
            message_id,
            chat_id,
            user_id,
        )
        return None if row is None else (await self._with_extras([_message(row)]))[0]

    async def _with_extras(self, rows: list[MessageRow]) -> list[MessageRow]:
        if not rows:
            return rows
        ids = [r.id for r in rows]
        images: dict[uuid.UUID, list[ImageRow]] = {}
        results: dict[uuid.UUID, list[SearchRow]] = {}
        for r in await self.pool.fetch(
            "SELECT * FROM message_images WHERE message_id = ANY($1) ORDER BY message_id, ord",
            ids,
        ):
            images.setdefault(r["message_id"], []).append(_image(r))
        for r in await self.pool.fetch(
            """SELECT * FROM message_search_results WHERE message_id = ANY($1)
               ORDER BY message_id, ord""",
            ids,
        ):
            results.setdefault(r["message_id"], []).append(_search(r))
        return [
            dataclasses.replace(
                r,
                images=tuple(images.get(r.id, ())),
                search_results=tuple(results.get(r.id, ())),
            )
            for r in rows
        ]

    # -- turns --------------------------------------------------------------------------
    async def turn_context(
        self,
        user_id: str,
        chat_id: uuid.UUID,
        *,
        history: int,
        stale_seconds: float,
        before_seq: int | None = None,
    ) -> TurnContext | None:
        """The user's chat with what a turn needs (system and user settings, the selected
        role, active system prompts, attached files, the last `history` current messages
        with text (before `before_seq` when given), whether a live turn runs): one query;
        None for a chat that is missing, deleted or another user's."""
        system = ", ".join(f"s.{c} AS s_{c}" for c in _SYSTEM_COLUMNS.split(", "))
        row = await self.pool.fetchrow(
            f"""SELECT c.id, c.user_id, c.title, c.clone_id, c.knowledge_base_ids,
                       c.attachments_knowledge_base_id, c.archived, c.create_time,
                       c.update_time, c.last_message_time, c.folder_id, {system},
                       u.model_profile AS user_model_profile,
                       r.id AS role_id, r.content AS role_content, r.version AS role_version,
                       (SELECT coalesce(jsonb_object_agg(p.name, p.content), '{{}}')
                          FROM prompts_system p WHERE p.is_active) AS prompts,
                       ARRAY(SELECT a.file_id FROM attachments a WHERE a.chat_id = c.id)
                           AS attached_file_ids,
                       (SELECT coalesce(jsonb_agg(jsonb_build_array(h.role, h.content)
                                                  ORDER BY h.seq), '[]')
                          FROM (SELECT m.seq, m.role, m.content FROM messages m
                                WHERE m.chat_id = c.id AND m.content <> ''
                                  AND m.status = ANY($3::smallint[]) AND NOT m.superseded
                                  AND ($7::bigint IS NULL OR m.seq < $7)
                                ORDER BY m.seq DESC LIMIT $4) h) AS history,
                       EXISTS (SELECT 1 FROM messages m
                               WHERE m.chat_id = c.id AND m.status = $5
                                 AND m.heartbeat_time >= clock_timestamp()
                                     - make_interval(secs => $6)) AS turn_running,
                       (WITH RECURSIVE sub AS (
                            SELECT f.id FROM folders f WHERE f.id = c.folder_id
                            UNION SELECT f.id FROM folders f JOIN sub ON f.parent_id = sub.id)
                        SELECT coalesce(jsonb_agg(DISTINCT jsonb_build_array(
                                   d.knowledge_base_id, d.document_id)), '[]')
                        FROM folder_documents d WHERE d.folder_id IN (SELECT id FROM sub))
                           AS folder_documents
                FROM chats c
                CROSS JOIN settings_system s
                LEFT JOIN settings_user u ON u.user_id = c.user_id
                LEFT JOIN prompts_user r
                       ON r.id = u.selected_role_prompt_id AND r.is_active
                WHERE c.id = $1 AND c.user_id = $2 AND c.delete_time IS NULL""",
            chat_id,
            user_id,
            HISTORY_STATUSES,
            history,
            STATUS_IN_PROGRESS,
            stale_seconds,
            before_seq,
        )
        if row is None:
            return None
        role = None
        if row["role_id"] is not None:
            role = RoleRef(row["role_id"], row["role_content"], row["role_version"])
        return TurnContext(
            chat=_chat(row),
            system=_system(row, "s_"),
            model_profile=row["user_model_profile"] or None,
            role=role,
            prompts=dict(row["prompts"]),
            attached_file_ids=frozenset(str(f) for f in row["attached_file_ids"]),
            history=tuple((int(h[0]), str(h[1])) for h in row["history"]),
            turn_running=row["turn_running"],
            folder_documents=tuple((str(d[0]), str(d[1])) for d in row["folder_documents"]),
        )

    async def begin_turn(
        self,
        chat_id: uuid.UUID,
        *,
        text: str,
        file_ids: Sequence[str],
        model_profile: int,
        role_prompt_id: str,
        role_prompt_version: int,
        stale_seconds: float,
        regenerate: uuid.UUID | None = None,
        edit: uuid.UUID | None = None,
        images: Sequence[ImageRow] = (),
    ) -> tuple[MessageRow, MessageRow]:
        """Stores the user message (with the images the user sent) and the IN_PROGRESS
        answer in one transaction. The
        unique index on running answers is the turn lock (it holds across replicas): a
        chat with a live turn raises TURN_IN_PROGRESS and stores nothing; a turn whose
        heartbeat went stale (its replica died) is closed as INCOMPLETE first.

        `regenerate` (a user message): no new user message; the answers after it are
        superseded and the new answer replies to it. `edit` (a user message): it and
        everything after it are superseded and `text` is stored as a new user message.
        Either raises NOT_LATEST_MESSAGE when a newer user message exists."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                """UPDATE messages SET status = $3, heartbeat_time = NULL
                   WHERE chat_id = $1 AND status = $4
                     AND heartbeat_time < clock_timestamp() - make_interval(secs => $2)""",
                chat_id,
                stale_seconds,
                STATUS_INCOMPLETE,
                STATUS_IN_PROGRESS,
            )
            try:
                target = regenerate or edit
                if target is not None:
                    await self._supersede(conn, chat_id, target, inclusive=edit is not None)
                if regenerate is not None:
                    user = await conn.fetchrow(
                        f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE id = $1", regenerate
                    )
                else:
                    user = await conn.fetchrow(
                        f"""INSERT INTO messages (id, chat_id, role, content, status, file_ids)
                            VALUES ($1, $2, $3, $4, $5, $6) RETURNING {_MESSAGE_COLUMNS}""",
                        uuid.uuid4(),
                        chat_id,
                        ROLE_USER,
                        text,
                        STATUS_COMPLETE,
                        [uuid.UUID(f) for f in file_ids],
                    )
                    await _insert_images(conn, user["id"], images)
                answer = await conn.fetchrow(
                    f"""INSERT INTO messages (id, chat_id, role, status, model_profile,
                            role_prompt_id, role_prompt_version, heartbeat_time, reply_to_id)
                        VALUES ($1, $2, $3, $4, $5, $6, $7, clock_timestamp(), $8)
                        RETURNING {_MESSAGE_COLUMNS}""",
                    uuid.uuid4(),
                    chat_id,
                    ROLE_ASSISTANT,
                    STATUS_IN_PROGRESS,
                    model_profile,
                    _uuid_or_none(role_prompt_id),
                    role_prompt_version,
                    user["id"],
                )
            except asyncpg.UniqueViolationError:
                raise turn_in_progress() from None
            await conn.execute(
                "UPDATE chats SET last_message_time = $2 WHERE id = $1",
                chat_id,
                answer["create_time"],
            )
        user_row = _message(user)
        if regenerate is None:
            user_row = dataclasses.replace(user_row, images=tuple(images))
        else:
            user_row = (await self._with_extras([user_row]))[0]
        return user_row, _message(answer)

    @staticmethod
    async def _supersede(
        conn: Any, chat_id: uuid.UUID, user_message: uuid.UUID, *, inclusive: bool
    ) -> None:
        """Marks the messages after the user message (and it too when `inclusive`) as
        superseded; NOT_LATEST_MESSAGE when it is not the chat's latest user message."""
        seq = await conn.fetchval(
            """SELECT seq FROM messages
               WHERE id = $1 AND chat_id = $2 AND role = $3 AND NOT superseded
               FOR UPDATE""",
            user_message,
            chat_id,
            ROLE_USER,
        )
        newer = seq is None or await conn.fetchval(
            """SELECT EXISTS (SELECT 1 FROM messages WHERE chat_id = $1 AND seq > $2
                              AND role = $3 AND NOT superseded)""",
            chat_id,
            seq,
            ROLE_USER,
        )
        if newer:
            raise not_latest()
        await conn.execute(
            """UPDATE messages SET superseded = true
               WHERE chat_id = $1 AND NOT superseded AND (seq > $2 OR ($3 AND seq = $2))""",
            chat_id,
            seq,
            inclusive,
        )

    async def flush_turn(
        self, message_id: uuid.UUID, content: str, events: Sequence[StoredEvent] = ()
    ) -> str:
        """Appends the turn's new events to its log and writes the partial answer and
        the heartbeat (the renewal of the turn's lease) in one transaction. Returns
        TURN_RUNNING, TURN_CANCELLED (CancelTurn was asked on another replica) or
        TURN_DELETED (the chat was deleted): the turn should stop."""
        # One statement, so one round trip per flush (500 streams flush 500 times a
        # second): a data-modifying CTE runs even though the UPDATE does not read it,
        # and a single statement is atomic.
        batch = _batch(events)
        row = await self.pool.fetchrow(
            f"""WITH logged AS ({_append_sql(4)})
               UPDATE messages m
               SET content = CASE WHEN m.status = $3 THEN $2 ELSE m.content END,
                   heartbeat_time = CASE WHEN m.status = $3 THEN clock_timestamp() END
               FROM chats c
               WHERE m.id = $1 AND c.id = m.chat_id
               RETURNING c.delete_time IS NULL AS alive, m.cancel_requested""",
            message_id,
            content,
            STATUS_IN_PROGRESS,
            *batch,
        )
        if row is None or not row["alive"]:
            return TURN_DELETED
        return TURN_CANCELLED if row["cancel_requested"] else TURN_RUNNING

    async def finish_turn(
        self, message_id: uuid.UUID, outcome: TurnOutcome, events: Sequence[StoredEvent] = ()
    ) -> MessageRow:
        """Stores the answer, its images and search results, and the rest of its event
        log (the terminal event included) in one transaction; returns the message. Safe
        to repeat (a retried or spooled write): the same outcome is stored once."""
        async with self.pool.acquire() as conn, conn.transaction():
            await _append_events(conn, message_id, events)
            row = await conn.fetchrow(
                f"""UPDATE messages SET status = $2, content = $3, models_used = $4,
                        input_tokens = $5, output_tokens = $6, total_tokens = $7, error = $8,
                        heartbeat_time = NULL
                    WHERE id = $1 RETURNING {_MESSAGE_COLUMNS}""",
                message_id,
                outcome.status,
                outcome.content,
                outcome.models_used,
                outcome.input_tokens,
                outcome.output_tokens,
                outcome.total_tokens,
                _error_json(outcome.error),
            )
            await _insert_images(conn, message_id, outcome.images)
            await conn.executemany(
                """INSERT INTO message_search_results (message_id, ord, block_id, document_id,
                       page, text, box, score, filename)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT DO NOTHING""",
                [
                    (
                        message_id,
                        n,
                        s.block_id,
                        _uuid_or_none(s.document_id),
                        s.page,
                        s.text,
                        s.box,
                        s.score,
                        s.filename,
                    )
                    for n, s in enumerate(outcome.search_results)
                ],
            )
            await conn.execute(
                "UPDATE chats SET last_message_time = $2 WHERE id = $1",
                row["chat_id"],
                row["create_time"],
            )
        return dataclasses.replace(
            _message(row),
            images=tuple(outcome.images),
            search_results=tuple(outcome.search_results),
        )

    async def watched_turn(
        self, user_id: str, chat_id: uuid.UUID, message_id: uuid.UUID, stale_seconds: float
    ) -> WatchedTurn | None:
        """The user's turn (its answer message) in the user's chat; None for a turn or
        chat that is missing, deleted or another user's."""
        row = await self.pool.fetchrow(
            f"""SELECT {", ".join("m." + c for c in _MESSAGE_COLUMNS.split(", "))},
                       (m.status = $5 AND (m.heartbeat_time IS NULL OR m.heartbeat_time
                            < clock_timestamp() - make_interval(secs => $6))) AS stale
                FROM messages m JOIN chats c ON c.id = m.chat_id
                WHERE m.id = $1 AND m.chat_id = $2 AND c.user_id = $3
                  AND c.delete_time IS NULL AND m.role = $4""",
            message_id,
            chat_id,
            user_id,
            ROLE_ASSISTANT,
            STATUS_IN_PROGRESS,
            stale_seconds,
        )
        if row is None:
            return None
        message = _message(row)
        if message.status != STATUS_IN_PROGRESS:
            message = (await self._with_extras([message]))[0]
        return WatchedTurn(message, bool(row["stale"]))

    async def turn_events(
        self, message_id: uuid.UUID, after_seq: int, limit: int = 1000
    ) -> list[StoredEvent]:
        """The turn's logged events with a seq above `after_seq`, in order (from at most
        `limit` batches)."""
        rows = await self.pool.fetch(
            """SELECT first_seq, events, terminal FROM turn_events
               WHERE message_id = $1 AND last_seq > $2 ORDER BY first_seq LIMIT $3""",
            message_id,
            after_seq,
            limit,
        )
        out: list[StoredEvent] = []
        last = after_seq
        for row in rows:
            batch = _unpack_events(int(row["first_seq"]), bytes(row["events"]), row["terminal"])
            for event in batch:
                if event.seq > last:  # overlapping batches (a repeated write) count once
                    out.append(event)
                    last = event.seq
        return out

    async def turn_log_end(self, message_id: uuid.UUID) -> tuple[int, bool]:
        """(last seq of the turn's log, 0 when empty; whether it holds the terminal event)."""
        row = await self.pool.fetchrow(
            """SELECT coalesce(max(last_seq), 0) AS last,
                      coalesce(bool_or(terminal), false) AS ended
               FROM turn_events WHERE message_id = $1""",
            message_id,
        )
        return int(row["last"]), bool(row["ended"])

    async def close_turn_log(self, message_id: uuid.UUID, event: StoredEvent) -> None:
        """Ends the log of a turn that ended without its terminal event (its replica
        died): the first writer wins, so every watcher replays the same end."""
        async with self.pool.acquire() as conn, conn.transaction():
            await _append_events(conn, message_id, [event])

    async def request_cancel(self, user_id: str, chat_id: uuid.UUID, message_id: uuid.UUID) -> bool:
        """Flags the user's running turn for its replica to stop; False for a turn or
        chat that is missing, deleted or another user's (a finished turn: True, no-op)."""
        row = await self.pool.fetchrow(
            """UPDATE messages m SET cancel_requested = (m.status = $5)
               FROM chats c
               WHERE m.id = $1 AND m.chat_id = $2 AND c.id = m.chat_id AND c.user_id = $3
                 AND c.delete_time IS NULL AND m.role = $4
               RETURNING m.id""",
            message_id,
            chat_id,
            user_id,
            ROLE_ASSISTANT,
            STATUS_IN_PROGRESS,
        )
        return row is not None

    async def close_stale_turns(self, stale_seconds: float) -> int:
        """Start-up sweep: answers whose turn lost its replica become INCOMPLETE."""
        result: str = await self.pool.execute(
            """UPDATE messages SET status = $2, heartbeat_time = NULL
               WHERE status = $3
                 AND heartbeat_time < clock_timestamp() - make_interval(secs => $1)""",
            stale_seconds,
            STATUS_INCOMPLETE,
            STATUS_IN_PROGRESS,
        )
        return int(result.split()[-1])

    # -- settings -----------------------------------------------------------------------
    async def system_settings(self) -> SystemSettingsRow:
        return _system(await self.pool.fetchrow(f"SELECT {_SYSTEM_COLUMNS} FROM settings_system"))

    async def update_system_settings(self, values: dict[str, Any]) -> SystemSettingsRow:
        unknown = set(values) - SYSTEM_SETTINGS_FIELDS
        if unknown:
            raise InvalidArgument(f"unknown system settings: {', '.join(sorted(unknown))}")
        sets = "".join(f"{k} = ${n}, " for n, k in enumerate(values, start=1))
        row = await self.pool.fetchrow(
            f"""UPDATE settings_system SET {sets}update_time = clock_timestamp()
                RETURNING {_SYSTEM_COLUMNS}""",
            *values.values(),
        )
        return _system(row)

    async def user_settings(self, user_id: str) -> UserSettingsRow | None:
        row = await self.pool.fetchrow(
            """SELECT s.model_profile, s.update_time,
                      CASE WHEN r.is_active THEN s.selected_role_prompt_id END AS role_id
               FROM settings_user s LEFT JOIN prompts_user r ON r.id = s.selected_role_prompt_id
               WHERE s.user_id = $1""",
            user_id,
        )
        if row is None:
            return None
        return UserSettingsRow(row["model_profile"] or None, row["role_id"], row["update_time"])

    async def update_user_settings(
        self, user_id: str, model_profile: int | None, role: tuple[bool, uuid.UUID | None]
    ) -> None:
        set_role, role_id = role
        await self.pool.execute(
            """INSERT INTO settings_user (user_id, model_profile, selected_role_prompt_id)
               VALUES ($1, $2, $4)
               ON CONFLICT (user_id) DO UPDATE SET
                   model_profile = coalesce($2, settings_user.model_profile),
                   selected_role_prompt_id = CASE WHEN $3 THEN $4
                       ELSE settings_user.selected_role_prompt_id END,
                   update_time = clock_timestamp()""",
            user_id,
            model_profile,
            set_role,
            role_id,
        )

    # -- prompts ------------------------------------------------------------------------
    async def list_system_prompts(
        self, name: str | None, all_versions: bool, page: PageRequest
    ) -> list[SystemPromptRow]:
        """By name, newest version first; keyset (name, version)."""
        after_name, after_version = page.after if page.after is not None else (None, None)
        rows = await self.pool.fetch(
            f"""SELECT {_SYSTEM_PROMPT_COLUMNS} FROM prompts_system
                WHERE ($1::text IS NULL OR name = $1) AND ($2 OR is_active)
                  AND ($4::text IS NULL OR name > $4 OR (name = $4 AND version < $5))
                ORDER BY name, version DESC LIMIT $3""",
            name,
            all_versions,
            page.limit,
            after_name,
            after_version,
        )
        return [_system_prompt(r) for r in rows]

    async def create_system_prompt(
        self, name: str, content: str, description: str, activate: bool
    ) -> SystemPromptRow:
        async with self.pool.acquire() as conn, conn.transaction():
            # Serialise versions of one name.
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext('prompts_system:' || $1))", name
            )
            version = await conn.fetchval(
                "SELECT coalesce(max(version), 0) + 1 FROM prompts_system WHERE name = $1", name
            )
            if activate:
                await conn.execute(
                    "UPDATE prompts_system SET is_active = false WHERE name = $1 AND is_active",
                    name,
                )
            row = await conn.fetchrow(
                f"""INSERT INTO prompts_system (id, name, version, content, description, is_active)
                    VALUES ($1, $2, $3, $4, $5, $6) RETURNING {_SYSTEM_PROMPT_COLUMNS}""",
                uuid.uuid4(),
                name,
                version,
                content,
                description,
                activate,
            )
        return _system_prompt(row)

    async def activate_system_prompt(self, prompt_id: uuid.UUID) -> SystemPromptRow | None:
        async with self.pool.acquire() as conn, conn.transaction():
            name = await conn.fetchval("SELECT name FROM prompts_system WHERE id = $1", prompt_id)
            if name is None:
                return None
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext('prompts_system:' || $1))", name
            )
            await conn.execute(
                """UPDATE prompts_system SET is_active = false
                   WHERE name = $1 AND is_active AND id <> $2""",
                name,
                prompt_id,
            )
            row = await conn.fetchrow(
                f"""UPDATE prompts_system SET is_active = true WHERE id = $1
                    RETURNING {_SYSTEM_PROMPT_COLUMNS}""",
                prompt_id,
            )
        return _system_prompt(row)

    async def list_roles(self, active_only: bool, page: PageRequest) -> list[RoleRow]:
        """By name; keyset (name, id)."""
        after_name, after_id = page.after if page.after is not None else (None, None)
        rows = await self.pool.fetch(
            f"""SELECT {_ROLE_COLUMNS} FROM prompts_user
                WHERE ($1 = false OR is_active)
                  AND ($3::text IS NULL OR (name, id) > ($3, $4::uuid))
                ORDER BY name, id LIMIT $2""",
            active_only,
            page.limit,
            after_name,
            after_id,
        )
        return [_role(r) for r in rows]

    async def get_role(self, role_id: uuid.UUID) -> RoleRow | None:
        row = await self.pool.fetchrow(
            f"SELECT {_ROLE_COLUMNS} FROM prompts_user WHERE id = $1", role_id
        )
        return None if row is None else _role(row)

    async def create_role(self, name: str, content: str, description: str) -> RoleRow:
        """A new active role, version 1; ALREADY_EXISTS for a name in use."""
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                row = await conn.fetchrow(
                    f"""INSERT INTO prompts_user (id, name, description, content)
                        VALUES ($1, $2, $3, $4) RETURNING {_ROLE_COLUMNS}""",
                    uuid.uuid4(),
                    name,
                    description,
                    content,
                )
                await conn.execute(
                    """INSERT INTO prompts_user_versions (role_id, version, content)
                       VALUES ($1, 1, $2)""",
                    row["id"],
                    content,
                )
        except asyncpg.UniqueViolationError:
            raise _role_exists(name) from None
        return _role(row)

    async def update_role(self, role_id: uuid.UUID, values: dict[str, Any]) -> RoleRow | None:
        """Changes name/description/content/is_active; a new content is a new version.
        None for an unknown role; ALREADY_EXISTS for a name in use."""
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                current = await conn.fetchrow(
                    f"SELECT {_ROLE_COLUMNS} FROM prompts_user WHERE id = $1 FOR UPDATE", role_id
                )
                if current is None:
                    return None
                version = current["version"]
                if "content" in values and values["content"] != current["content"]:
                    version += 1
                    await conn.execute(
                        """INSERT INTO prompts_user_versions (role_id, version, content)
                           VALUES ($1, $2, $3)""",
                        role_id,
                        version,
                        values["content"],
                    )
                merged = {
                    k: values.get(k, current[k])
                    for k in ("name", "description", "content", "is_active")
                }
                row = await conn.fetchrow(
                    f"""UPDATE prompts_user SET name = $2, description = $3, content = $4,
                            is_active = $5, version = $6, update_time = clock_timestamp()
                        WHERE id = $1 RETURNING {_ROLE_COLUMNS}""",
                    role_id,
                    merged["name"],
                    merged["description"],
                    merged["content"],
                    merged["is_active"],
                    version,
                )
        except asyncpg.UniqueViolationError:
            raise _role_exists(str(values.get("name", ""))) from None
        return _role(row)

    # -- projects -----------------------------------------------------------------------
    async def create_folder(
        self, user_id: str, name: str, parent_id: uuid.UUID | None
    ) -> FolderRow:
        """ALREADY_EXISTS for a sibling of the same name."""
        try:
            row = await self.pool.fetchrow(
                f"""INSERT INTO folders (id, user_id, parent_id, name) VALUES ($1, $2, $3, $4)
                    RETURNING {_FOLDER_COLUMNS}""",
                uuid.uuid4(),
                user_id,
                parent_id,
                name,
            )
        except asyncpg.UniqueViolationError:
            raise _folder_exists(name) from None
        return _folder(row)

    async def get_folder(self, user_id: str, folder_id: uuid.UUID) -> FolderRow | None:
        row = await self.pool.fetchrow(
            f"SELECT {_FOLDER_COLUMNS} FROM folders WHERE id = $1 AND user_id = $2",
            folder_id,
            user_id,
        )
        return None if row is None else _folder(row)

    async def folder_path(self, user_id: str, folder_id: uuid.UUID) -> list[uuid.UUID]:
        """The folder's ancestors and itself, top first; empty when not the user's."""
        rows = await self.pool.fetch(
            """WITH RECURSIVE up AS (
                   SELECT id, parent_id, 0 AS n FROM folders WHERE id = $1 AND user_id = $2
                   UNION ALL
                   SELECT f.id, f.parent_id, up.n + 1 FROM folders f JOIN up ON f.id = up.parent_id)
               SELECT id FROM up ORDER BY n DESC""",
            folder_id,
            user_id,
        )
        return [r["id"] for r in rows]

    async def subtree_height(self, folder_id: uuid.UUID) -> int:
        """Levels of the folder's subtree, itself included."""
        value: int = await self.pool.fetchval(
            """WITH RECURSIVE down AS (
                   SELECT id, 1 AS n FROM folders WHERE id = $1
                   UNION ALL
                   SELECT f.id, down.n + 1 FROM folders f JOIN down ON f.parent_id = down.id)
               SELECT max(n) FROM down""",
            folder_id,
        )
        return value or 0

    async def update_folder(
        self,
        user_id: str,
        folder_id: uuid.UUID,
        name: str | None,
        parent: tuple[bool, uuid.UUID | None],
    ) -> FolderRow | None:
        move, parent_id = parent
        try:
            row = await self.pool.fetchrow(
                f"""UPDATE folders SET name = coalesce($3, name),
                        parent_id = CASE WHEN $4 THEN $5::uuid ELSE parent_id END,
                        update_time = clock_timestamp()
                    WHERE id = $1 AND user_id = $2 RETURNING {_FOLDER_COLUMNS}""",
                folder_id,
                user_id,
                name,
                move,
                parent_id,
            )
        except asyncpg.UniqueViolationError:
            raise _folder_exists(name or "") from None
        return None if row is None else _folder(row)

    async def delete_folder(self, user_id: str, folder_id: uuid.UUID) -> bool:
        """Deletes the folder with its subtree (placements cascade, chats move to the top)."""
        row = await self.pool.fetchrow(
            "DELETE FROM folders WHERE id = $1 AND user_id = $2 RETURNING id", folder_id, user_id
        )
        return row is not None

    async def tree(
        self, user_id: str, limit: int
    ) -> tuple[list[FolderRow], list[FolderDocumentRow], list[ChatRow]]:
        """Up to `limit` of the user's folders with their documents and (live) chats."""
        folders = [
            _folder(r)
            for r in await self.pool.fetch(
                f"""SELECT {_FOLDER_COLUMNS} FROM folders WHERE user_id = $1
                    ORDER BY lower(name), id LIMIT $2""",
                user_id,
                limit,
            )
        ]
        ids = [f.id for f in folders]
        documents = [
            _folder_document(r)
            for r in await self.pool.fetch(
                f"""SELECT {_FOLDER_DOCUMENT_COLUMNS} FROM folder_documents
                    WHERE folder_id = ANY($1) ORDER BY lower(filename), document_id""",
                ids,
            )
        ]
        chats = [
            _chat(r)
            for r in await self.pool.fetch(
                f"""SELECT {_CHAT_COLUMNS} FROM chats
                    WHERE user_id = $1 AND folder_id = ANY($2) AND delete_time IS NULL
                    ORDER BY coalesce(last_message_time, create_time) DESC, id DESC""",
                user_id,
                ids,
            )
        ]
        return folders, documents, chats

    async def add_folder_document(
        self, folder_id: uuid.UUID, document_id: uuid.UUID, kb_id: uuid.UUID, filename: str
    ) -> FolderDocumentRow:
        """The placement; an existing one is returned as is."""
        row = await self.pool.fetchrow(
            f"""WITH added AS (
                    INSERT INTO folder_documents (folder_id, document_id, knowledge_base_id,
                                                  filename)
                    VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING
                    RETURNING {_FOLDER_DOCUMENT_COLUMNS})
                SELECT * FROM added
                UNION ALL
                SELECT {_FOLDER_DOCUMENT_COLUMNS} FROM folder_documents
                WHERE folder_id = $1 AND document_id = $2 LIMIT 1""",
            folder_id,
            document_id,
            kb_id,
            filename,
        )
        return _folder_document(row)

    async def remove_folder_document(
        self, user_id: str, folder_id: uuid.UUID, document_id: uuid.UUID
    ) -> bool:
        row = await self.pool.fetchrow(
            """DELETE FROM folder_documents d USING folders f
               WHERE d.folder_id = $1 AND d.document_id = $2 AND f.id = d.folder_id
                 AND f.user_id = $3 RETURNING d.document_id""",
            folder_id,
            document_id,
            user_id,
        )
        return row is not None

    async def document_answers(
        self, user_id: str, document_id: uuid.UUID, page: PageRequest
    ) -> list[MessageRow]:
        """The user's finished answers that used the document, newest first; keyset (seq,)."""
        after = None if page.after is None else page.after[0]
        rows = await self.pool.fetch(
            f"""SELECT {", ".join("m." + c for c in _MESSAGE_COLUMNS.split(", "))}
                FROM messages m JOIN chats c ON c.id = m.chat_id
                WHERE c.user_id = $1 AND c.delete_time IS NULL AND m.role = $4
                  AND m.status = $5 AND NOT m.superseded
                  AND EXISTS (SELECT 1 FROM message_search_results r
                              WHERE r.message_id = m.id AND r.document_id = $2)
                  AND ($6::bigint IS NULL OR m.seq < $6)
                ORDER BY m.seq DESC LIMIT $3""",
            user_id,
            document_id,
            page.limit,
            ROLE_ASSISTANT,
            STATUS_COMPLETE,
            after,
        )
        return await self._with_extras([_message(r) for r in rows])


def _append_sql(n: int) -> str:
    """Appends a batch (consecutive seqs) to a turn's log as one row. Parameters: $1 the
    message, ${n}..${n+3} first seq (NULL: nothing to log), last seq, the packed events,
    terminal. A repeated write starts at the same seq (a turn advances what it persisted
    only on success) and may carry more events: the longer batch wins. A log that has
    ended takes nothing more."""
    return f"""INSERT INTO turn_events (message_id, first_seq, last_seq, events, terminal)
       SELECT $1, ${n}::bigint, ${n + 1}::bigint, ${n + 2}::bytea, ${n + 3}::boolean
       WHERE ${n}::bigint IS NOT NULL
         AND NOT EXISTS (SELECT 1 FROM turn_events WHERE message_id = $1 AND terminal)
       ON CONFLICT (message_id, first_seq) DO UPDATE
         SET last_seq = EXCLUDED.last_seq, events = EXCLUDED.events,
             terminal = EXCLUDED.terminal
         WHERE EXCLUDED.last_seq > turn_events.last_seq"""


def _batch(events: Sequence[StoredEvent]) -> tuple[int | None, int | None, bytes, bool]:
    """The batch parameters of `_append_sql` for `events` (first seq None: nothing)."""
    if not events:
        return None, None, b"", False
    return (
        events[0].seq,
        events[-1].seq,
        b"".join(len(e.event).to_bytes(4, "big") + e.event for e in events),
        any(e.terminal for e in events),
    )


async def _append_events(conn: Any, message_id: uuid.UUID, events: Sequence[StoredEvent]) -> None:
    """Appends a batch to a turn's log (see `_append_sql`)."""
    if events:
        await conn.execute(_append_sql(2), message_id, *_batch(events))


async def _insert_images(conn: Any, message_id: uuid.UUID, images: Sequence[ImageRow]) -> None:
    """A message's images, in order; a repeated write stores them once."""
    await conn.executemany(
        """INSERT INTO message_images (id, message_id, ord, kind, file_id, document_id,
               page, box, scale, width, height, size_bytes, mime_type, description)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
           ON CONFLICT DO NOTHING""",
        [
            (
                uuid.UUID(i.id),
                message_id,
                n,
                i.kind,
                uuid.UUID(i.file_id),
                _uuid_or_none(i.document_id),
                i.page,
                i.box,
                i.scale,
                i.width,
                i.height,
                i.size_bytes,
                i.mime_type,
                i.description,
            )
            for n, i in enumerate(images)
        ],
    )


def _unpack_events(first_seq: int, data: bytes, terminal: bool) -> list[StoredEvent]:
    """The events of one logged batch; only the last can be the terminal one."""
    out: list[StoredEvent] = []
    view, pos = memoryview(data), 0
    while pos < len(data):
        size = int.from_bytes(view[pos : pos + 4], "big")
        out.append(StoredEvent(first_seq + len(out), bytes(view[pos + 4 : pos + 4 + size]), False))
        pos += 4 + size
    if out and terminal:
        out[-1] = StoredEvent(out[-1].seq, out[-1].event, True)
    return out


def _role_exists(name: str) -> AlreadyExists:
    return AlreadyExists(f"a role named {name!r} exists", metadata={"resource": "role prompt"})
