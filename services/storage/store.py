"""All SQL of the storage service. Every query on a user's file names the owner.

`Store` is built once in `server.Wiring.build` from the service's `App` and reads
`app.pool` at call time (the pool connects after the servicers are built; the `sync`
command passes `Connected(pool)`). It returns `FileRow`s (frozen dataclasses); nothing
above this module sees SQL or an asyncpg exception. ListFiles is a keyset page over
`(created_at, id)`, newest first, so files added while a client pages never shift or
repeat what it sees.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any

from services.common.db import Database
from services.common.pages import PageRequest

_COLUMNS = (
    "id, user_id, bucket, storage_path, filename, content_type, size_bytes, sha256, "
    "declared_sha256, status, backend, labels, created_at, deleted_at, upload_expires_at"
)


@dataclass(frozen=True, slots=True)
class FileRow:
    id: uuid.UUID
    user_id: str
    bucket: str
    storage_path: str
    filename: str
    content_type: str
    size_bytes: int
    sha256: str
    declared_sha256: str
    status: str
    backend: str
    labels: dict[str, str]
    created_at: dt.datetime
    deleted_at: dt.datetime | None
    upload_expires_at: dt.datetime | None

    @property
    def page_key(self) -> tuple[dt.datetime, uuid.UUID]:
        """The unique keyset ListFiles pages by (newest first)."""
        return (self.created_at, self.id)


def _row(record: Any) -> FileRow:
    return FileRow(**dict(record))


def _opt(record: Any) -> FileRow | None:
    return None if record is None else _row(record)


class Store:
    def __init__(self, db: Database) -> None:
        self._db = db

    @property
    def pool(self) -> Any:
        return self._db.pool

    async def insert_uploading(
        self,
        *,
        id: uuid.UUID,
        user_id: str,
        bucket: str,
        storage_path: str,
        filename: str,
        size_bytes: int,
        declared_sha256: str,
        backend: str,
        labels: dict[str, str],
        upload_expires_at: dt.datetime,
    ) -> FileRow:
        record = await self.pool.fetchrow(
            f"""INSERT INTO files (id, user_id, bucket, storage_path, filename, size_bytes,
                                   sha256, declared_sha256, status, backend, labels,
                                   upload_expires_at)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $7, 'uploading', $8, $9, $10)
                RETURNING {_COLUMNS}""",
            id,
            user_id,
            bucket,
            storage_path,
            filename,
            size_bytes,
            declared_sha256,
            backend,
            labels,
            upload_expires_at,
        )
        return _row(record)

    async def mark_ready(
        self,
        id: uuid.UUID,
        user_id: str,
        *,
        content_type: str,
        size_bytes: int,
        sha256: str,
        backend: str,
    ) -> FileRow | None:
        """UPLOADING → READY; None when the file is no longer UPLOADING (deleted)."""
        record = await self.pool.fetchrow(
            f"""UPDATE files SET status = 'ready', content_type = $3, size_bytes = $4,
                       sha256 = $5, backend = $6, upload_expires_at = NULL
                WHERE id = $1 AND user_id = $2 AND status = 'uploading'
                RETURNING {_COLUMNS}""",
            id,
            user_id,
            content_type,
            size_bytes,
            sha256,
            backend,
        )
        return _opt(record)

    async def get(self, id: uuid.UUID, user_id: str) -> FileRow | None:
        record = await self.pool.fetchrow(
            f"SELECT {_COLUMNS} FROM files WHERE id = $1 AND user_id = $2", id, user_id
        )
        return _opt(record)

    async def get_any_user(self, id: uuid.UUID) -> FileRow | None:
        """For signed-URL requests, whose signature stands in for the user."""
        record = await self.pool.fetchrow(f"SELECT {_COLUMNS} FROM files WHERE id = $1", id)
        return _opt(record)

    async def delete_row(self, id: uuid.UUID) -> None:
        await self.pool.execute("DELETE FROM files WHERE id = $1", id)

    async def soft_delete(self, id: uuid.UUID, user_id: str) -> FileRow | None:
        """Marks DELETED (keeping the first delete time); None when not the user's."""
        record = await self.pool.fetchrow(
            f"""UPDATE files SET status = 'deleted',
                       deleted_at = COALESCE(deleted_at, clock_timestamp())
                WHERE id = $1 AND user_id = $2
                RETURNING {_COLUMNS}""",
            id,
            user_id,
        )
        return _opt(record)

    async def list_files(
        self,
        user_id: str,
        page: PageRequest,
        *,
        bucket: str | None,
        labels: dict[str, str],
    ) -> list[FileRow]:
        """`page.limit` of the user's files (not deleted) after `page.after`, newest
        first by (created_at, id)."""
        args: list[Any] = [user_id, page.limit]
        where = ["user_id = $1", "status <> 'deleted'"]
        if bucket is not None:
            args.append(bucket)
            where.append(f"bucket = ${len(args)}")
        if labels:
            args.append(labels)
            where.append(f"labels @> ${len(args)}::jsonb")
        if page.after is not None:
            created_at, file_id = page.after
            args.extend((created_at, file_id))
            where.append(f"(created_at, id) < (${len(args) - 1}, ${len(args)})")
        records = await self.pool.fetch(
            f"""SELECT {_COLUMNS} FROM files WHERE {" AND ".join(where)}
                ORDER BY created_at DESC, id DESC LIMIT $2""",
            *args,
        )
        return [_row(r) for r in records]

    # -- background work ----------------------------------------------------------------
    async def purgeable(self, retention: dt.timedelta, grace: dt.timedelta) -> list[FileRow]:
        """Deleted files past retention and UPLOADING files abandoned past the grace."""
        records = await self.pool.fetch(
            f"""SELECT {_COLUMNS} FROM files
                WHERE (status = 'deleted' AND deleted_at < clock_timestamp() - $1::interval)
                   OR (status = 'uploading'
                       AND upload_expires_at < clock_timestamp() - $2::interval)
                ORDER BY created_at LIMIT 500""",
            retention,
            grace,
        )
        return [_row(r) for r in records]

    async def local_ready(self, limit: int = 100) -> list[FileRow]:
        records = await self.pool.fetch(
            f"""SELECT {_COLUMNS} FROM files WHERE backend = 'local' AND status = 'ready'
                ORDER BY created_at LIMIT $1""",
            limit,
        )
        return [_row(r) for r in records]

    async def set_backend(self, id: uuid.UUID, *, old: str, new: str) -> bool:
        """Moves a file's backend; False when it changed meanwhile (e.g. deleted)."""
        done = await self.pool.fetchval(
            """UPDATE files SET backend = $3 WHERE id = $1 AND backend = $2
                   AND status = 'ready' RETURNING true""",
            id,
            old,
            new,
        )
        return bool(done)
