"""All SQL of the chat service. Every query on a user's chat names its owner.

Rows come back as asyncpg records; `convert.py` turns them into protos.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from services.common.errors import FailedPrecondition

# Proto enum numbers stored in smallint columns.
ROLE_USER, ROLE_ASSISTANT = 1, 2
STATUS_COMPLETE, STATUS_INCOMPLETE, STATUS_ERROR, STATUS_IN_PROGRESS = 1, 2, 3, 4
ATTACHMENT_INGESTING, ATTACHMENT_READY, ATTACHMENT_FAILED = 1, 2, 3

_CHAT_COLUMNS = (
    "id, user_id, title, clone_id, knowledge_base_ids, attachments_knowledge_base_id, "
    "archived, create_time, update_time, last_message_time"
)
_MESSAGE_COLUMNS = (
    "id, chat_id, seq, role, content, status, models_used, input_tokens, output_tokens, "
    "total_tokens, error, file_ids, model_profile, role_prompt_id, role_prompt_version, "
    "create_time"
)
_ROLE_COLUMNS = "id, name, description, content, version, is_active, create_time, update_time"
_SYSTEM_PROMPT_COLUMNS = "id, name, version, content, description, is_active, create_time"


class TurnBusy(FailedPrecondition):
    def __init__(self) -> None:
        super().__init__("a turn is already running in this chat; wait for it to finish")


@dataclass
class ImageRow:
    kind: int
    file_id: str
    document_id: str
    page: int
    box: dict[str, Any] | None
    scale: float
    width: int
    height: int
    size_bytes: int
    mime_type: str
    description: str
    id: str = field(default_factory=lambda: str(uuid.uuid4()))


@dataclass
class SearchRow:
    block_id: str
    document_id: str
    page: int
    text: str
    box: dict[str, Any] | None
    score: float


@dataclass
class TurnOutcome:
    status: int
    content: str
    models_used: list[str]
    input_tokens: int
    output_tokens: int
    total_tokens: int
    error: dict[str, Any] | None
    images: list[ImageRow]
    search_results: list[SearchRow]


def _uuid_or_none(value: str) -> uuid.UUID | None:
    return uuid.UUID(value) if value else None


class Store:
    def __init__(self, pool: Any) -> None:
        self.pool = pool

    # -- chats --------------------------------------------------------------------------
    async def create_chat(
        self, user_id: str, title: str, clone_id: str, knowledge_base_ids: Sequence[str]
    ) -> Any:
        return await self.pool.fetchrow(
            f"""INSERT INTO chats (id, user_id, title, clone_id, knowledge_base_ids)
                VALUES ($1, $2, $3, $4, $5) RETURNING {_CHAT_COLUMNS}""",
            uuid.uuid4(),
            user_id,
            title,
            _uuid_or_none(clone_id),
            [uuid.UUID(k) for k in knowledge_base_ids],
        )

    async def get_chat(self, user_id: str, chat_id: uuid.UUID) -> Any:
        return await self.pool.fetchrow(
            f"""SELECT {_CHAT_COLUMNS} FROM chats
                WHERE id = $1 AND user_id = $2 AND delete_time IS NULL""",
            chat_id,
            user_id,
        )

    async def list_chats(
        self, user_id: str, archived: bool | None, limit: int, after: tuple[dt.datetime, str] | None
    ) -> list[Any]:
        args: list[Any] = [user_id, limit]
        where = ["user_id = $1", "delete_time IS NULL"]
        if archived is not None:
            args.append(archived)
            where.append(f"archived = ${len(args)}")
        if after is not None:
            args.extend([after[0], uuid.UUID(after[1])])
            where.append(
                f"(coalesce(last_message_time, create_time), id) < (${len(args) - 1}, ${len(args)})"
            )
        rows: list[Any] = await self.pool.fetch(
            f"""SELECT {_CHAT_COLUMNS}, coalesce(last_message_time, create_time) AS activity
                FROM chats WHERE {" AND ".join(where)}
                ORDER BY coalesce(last_message_time, create_time) DESC, id DESC
                LIMIT $2""",
            *args,
        )
        return rows

    async def update_chat(
        self, user_id: str, chat_id: uuid.UUID, title: str | None, archived: bool | None
    ) -> Any:
        return await self.pool.fetchrow(
            f"""UPDATE chats SET title = coalesce($3, title), archived = coalesce($4, archived),
                    update_time = clock_timestamp()
                WHERE id = $1 AND user_id = $2 AND delete_time IS NULL
                RETURNING {_CHAT_COLUMNS}""",
            chat_id,
            user_id,
            title,
            archived,
        )

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
    async def list_attachments(self, chat_id: uuid.UUID) -> list[Any]:
        rows: list[Any] = await self.pool.fetch(
            "SELECT * FROM attachments WHERE chat_id = $1 ORDER BY create_time, id", chat_id
        )
        return rows

    async def count_attachments(self, chat_id: uuid.UUID) -> int:
        count: int = await self.pool.fetchval(
            "SELECT count(*) FROM attachments WHERE chat_id = $1", chat_id
        )
        return count

    async def add_attachment(
        self, chat_id: uuid.UUID, file_id: uuid.UUID, filename: str
    ) -> tuple[Any, bool]:
        """(attachment, created): an attachment of the same file is returned as is."""
        row = await self.pool.fetchrow(
            """INSERT INTO attachments (id, chat_id, file_id, filename, status)
               VALUES ($1, $2, $3, $4, $5) ON CONFLICT (chat_id, file_id) DO NOTHING
               RETURNING *""",
            uuid.uuid4(),
            chat_id,
            file_id,
            filename,
            ATTACHMENT_INGESTING,
        )
        if row is not None:
            return row, True
        existing = await self.pool.fetchrow(
            "SELECT * FROM attachments WHERE chat_id = $1 AND file_id = $2", chat_id, file_id
        )
        return existing, False

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
        self, chat_id: uuid.UUID, limit: int, *, tail: bool, cursor: int | None
    ) -> list[Any]:
        if tail:
            rows = await self.pool.fetch(
                f"""SELECT {_MESSAGE_COLUMNS} FROM messages
                    WHERE chat_id = $1 AND ($3::bigint IS NULL OR seq < $3)
                    ORDER BY seq DESC LIMIT $2""",
                chat_id,
                limit,
                cursor,
            )
            return list(reversed(rows))
        result: list[Any] = await self.pool.fetch(
            f"""SELECT {_MESSAGE_COLUMNS} FROM messages
                WHERE chat_id = $1 AND ($3::bigint IS NULL OR seq > $3)
                ORDER BY seq LIMIT $2""",
            chat_id,
            limit,
            cursor,
        )
        return result

    async def history(self, chat_id: uuid.UUID, before_seq: int, limit: int) -> list[Any]:
        """The chat's earlier messages with text, oldest first (for the model's context)."""
        rows = await self.pool.fetch(
            """SELECT role, content FROM messages
               WHERE chat_id = $1 AND seq < $2 AND content <> '' AND status IN (1, 2)
               ORDER BY seq DESC LIMIT $3""",
            chat_id,
            before_seq,
            limit,
        )
        return list(reversed(rows))

    async def message_extras(
        self, message_ids: Sequence[uuid.UUID]
    ) -> tuple[dict[uuid.UUID, list[Any]], dict[uuid.UUID, list[Any]]]:
        images: dict[uuid.UUID, list[Any]] = {}
        results: dict[uuid.UUID, list[Any]] = {}
        if not message_ids:
            return images, results
        for row in await self.pool.fetch(
            "SELECT * FROM message_images WHERE message_id = ANY($1) ORDER BY message_id, ord",
            list(message_ids),
        ):
            images.setdefault(row["message_id"], []).append(row)
        for row in await self.pool.fetch(
            """SELECT * FROM message_search_results WHERE message_id = ANY($1)
               ORDER BY message_id, ord""",
            list(message_ids),
        ):
            results.setdefault(row["message_id"], []).append(row)
        return images, results

    async def get_message(self, message_id: uuid.UUID) -> Any:
        return await self.pool.fetchrow(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE id = $1", message_id
        )

    # -- turns --------------------------------------------------------------------------
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
    ) -> tuple[Any, Any]:
        """Stores the user message and the IN_PROGRESS answer in one transaction. The
        unique index on running answers is the turn lock (it holds across replicas): a
        chat with a live turn raises TurnBusy and stores nothing; a turn whose heartbeat
        went stale (its replica died) is closed as INCOMPLETE first."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                """UPDATE messages SET status = 2, heartbeat_time = NULL
                   WHERE chat_id = $1 AND status = 4
                     AND heartbeat_time < clock_timestamp() - make_interval(secs => $2)""",
                chat_id,
                stale_seconds,
            )
            try:
                user = await conn.fetchrow(
                    f"""INSERT INTO messages (id, chat_id, role, content, status, file_ids)
                        VALUES ($1, $2, 1, $3, 1, $4) RETURNING {_MESSAGE_COLUMNS}""",
                    uuid.uuid4(),
                    chat_id,
                    text,
                    [uuid.UUID(f) for f in file_ids],
                )
                answer = await conn.fetchrow(
                    f"""INSERT INTO messages (id, chat_id, role, status, model_profile,
                            role_prompt_id, role_prompt_version, heartbeat_time)
                        VALUES ($1, $2, 2, 4, $3, $4, $5, clock_timestamp())
                        RETURNING {_MESSAGE_COLUMNS}""",
                    uuid.uuid4(),
                    chat_id,
                    model_profile,
                    _uuid_or_none(role_prompt_id),
                    role_prompt_version,
                )
            except asyncpg.UniqueViolationError:
                raise TurnBusy() from None
            await conn.execute(
                "UPDATE chats SET last_message_time = $2 WHERE id = $1",
                chat_id,
                user["create_time"],
            )
        return user, answer

    async def flush_turn(self, message_id: uuid.UUID, content: str) -> bool:
        """Writes the partial answer and the heartbeat; False when the chat was deleted
        meanwhile (the turn should stop)."""
        alive: bool | None = await self.pool.fetchval(
            """UPDATE messages m SET content = $2, heartbeat_time = clock_timestamp()
               FROM chats c
               WHERE m.id = $1 AND m.status = 4 AND c.id = m.chat_id
               RETURNING c.delete_time IS NULL""",
            message_id,
            content,
        )
        return bool(alive)

    async def finish_turn(self, message_id: uuid.UUID, outcome: TurnOutcome) -> Any:
        async with self.pool.acquire() as conn, conn.transaction():
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
                outcome.error,
            )
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
                    for n, i in enumerate(outcome.images)
                ],
            )
            await conn.executemany(
                """INSERT INTO message_search_results (message_id, ord, block_id, document_id,
                       page, text, box, score)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING""",
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
                    )
                    for n, s in enumerate(outcome.search_results)
                ],
            )
            await conn.execute(
                "UPDATE chats SET last_message_time = $2 WHERE id = $1",
                row["chat_id"],
                row["create_time"],
            )
        return row

    async def close_stale_turns(self, stale_seconds: float) -> int:
        """Start-up sweep: answers whose turn lost its replica become INCOMPLETE."""
        result: str = await self.pool.execute(
            """UPDATE messages SET status = 2, heartbeat_time = NULL
               WHERE status = 4
                 AND heartbeat_time < clock_timestamp() - make_interval(secs => $1)""",
            stale_seconds,
        )
        return int(result.split()[-1])

    # -- settings -----------------------------------------------------------------------
    async def system_settings(self) -> Any:
        return await self.pool.fetchrow("SELECT * FROM settings_system")

    async def update_system_settings(self, values: dict[str, Any]) -> Any:
        sets = ", ".join(f"{k} = ${n}" for n, k in enumerate(values, start=1))
        return await self.pool.fetchrow(
            f"UPDATE settings_system SET {sets}, update_time = clock_timestamp() RETURNING *",
            *values.values(),
        )

    async def user_settings(self, user_id: str) -> Any:
        return await self.pool.fetchrow(
            """SELECT s.model_profile, s.update_time,
                      CASE WHEN r.is_active THEN s.selected_role_prompt_id END AS role_id
               FROM settings_user s LEFT JOIN prompts_user r ON r.id = s.selected_role_prompt_id
               WHERE s.user_id = $1""",
            user_id,
        )

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
    async def active_system_prompts(self) -> dict[str, str]:
        rows = await self.pool.fetch("SELECT name, content FROM prompts_system WHERE is_active")
        return {r["name"]: r["content"] for r in rows}

    async def list_system_prompts(
        self, name: str | None, all_versions: bool, limit: int, offset: int
    ) -> list[Any]:
        rows: list[Any] = await self.pool.fetch(
            f"""SELECT {_SYSTEM_PROMPT_COLUMNS} FROM prompts_system
                WHERE ($1::text IS NULL OR name = $1) AND ($2 OR is_active)
                ORDER BY name, version DESC LIMIT $3 OFFSET $4""",
            name,
            all_versions,
            limit,
            offset,
        )
        return rows

    async def create_system_prompt(
        self, name: str, content: str, description: str, activate: bool
    ) -> Any:
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
            return await conn.fetchrow(
                f"""INSERT INTO prompts_system (id, name, version, content, description, is_active)
                    VALUES ($1, $2, $3, $4, $5, $6) RETURNING {_SYSTEM_PROMPT_COLUMNS}""",
                uuid.uuid4(),
                name,
                version,
                content,
                description,
                activate,
            )

    async def activate_system_prompt(self, prompt_id: uuid.UUID) -> Any:
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
            return await conn.fetchrow(
                f"""UPDATE prompts_system SET is_active = true WHERE id = $1
                    RETURNING {_SYSTEM_PROMPT_COLUMNS}""",
                prompt_id,
            )

    async def list_roles(self, active_only: bool, limit: int, offset: int) -> list[Any]:
        rows: list[Any] = await self.pool.fetch(
            f"""SELECT {_ROLE_COLUMNS} FROM prompts_user WHERE ($1 = false OR is_active)
                ORDER BY name, id LIMIT $2 OFFSET $3""",
            active_only,
            limit,
            offset,
        )
        return rows

    async def get_role(self, role_id: uuid.UUID) -> Any:
        return await self.pool.fetchrow(
            f"SELECT {_ROLE_COLUMNS} FROM prompts_user WHERE id = $1", role_id
        )

    async def create_role(self, name: str, content: str, description: str) -> Any:
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
                "INSERT INTO prompts_user_versions (role_id, version, content) VALUES ($1, 1, $2)",
                row["id"],
                content,
            )
            return row

    async def update_role(self, role_id: uuid.UUID, values: dict[str, Any]) -> Any:
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
            return await conn.fetchrow(
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
