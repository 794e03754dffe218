"""DatasetService: registering storage files as datasets, background validation, preview."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import uuid
from typing import Any

from google.protobuf import empty_pb2

from aivera.storage.v1 import storage_pb2
from aivera.training.v1 import datasets_pb2, notifications_pb2
from services.common import context as ctx
from services.common.errors import (
    FailedPrecondition,
    InvalidArgument,
    ServiceError,
    not_found,
)
from services.common.pages import decode_token, encode_token, page_size
from services.common.protoutil import parse_uuid
from services.common.server import App
from services.training import basemodels, data, store
from services.training.config import TrainingSettings
from services.training.storage_io import Storage

log = logging.getLogger("aivera.training.datasets")
D = datasets_pb2


def check_name(name: str, field: str = "name", *, required: bool = True) -> str:
    name = name.strip()
    if required and not name:
        raise InvalidArgument(f"{field} must not be empty", field=field)
    if len(name) > 200:
        raise InvalidArgument(f"{field} must be at most 200 characters", field=field)
    return name


def check_base_model(settings: TrainingSettings, name: str, field: str = "base_model") -> str:
    name = name or settings.default_base_model()
    if name not in settings.allowed_base_models:
        raise InvalidArgument(
            f"{field} {name!r} is not allowed; allowed: {', '.join(settings.allowed_base_models)}",
            field=field,
        )
    return name


async def load_dataset(conn: Any, user_id: str, raw_id: str, field: str = "id") -> Any:
    ds_id = parse_uuid(raw_id, field=field)
    row = await conn.fetchrow(
        "SELECT * FROM datasets WHERE id = $1 AND user_id = $2 AND deleted_at IS NULL",
        ds_id,
        user_id,
    )
    if row is None:
        raise not_found("dataset", raw_id)
    return row


def _stats_and_preview(
    tokenizer: Any, examples: list[data.Example], max_len: int, limit: int
) -> tuple[data.TokenStats, list[D.PreviewExample]]:
    stats = data.TokenStats()
    preview: list[D.PreviewExample] = []
    for index, example in enumerate(examples):
        rendered = data.render(tokenizer, example.messages)
        stats.add(rendered, max_len)
        if index < limit:
            preview.append(_preview(index, example, rendered, max_len))
    return stats, preview


def _preview(index: int, example: data.Example, r: data.Rendered, max_len: int) -> D.PreviewExample:
    n = len(r.input_ids)
    truncated = n > max_len
    cut = r.offsets[max_len - 1][1] if truncated else len(r.text)
    p = D.PreviewExample(
        index=index,
        line=example.line,
        conversation_id=example.conversation_id,
        text=r.text[:cut],
        token_count=n,
        trained_token_count=sum(r.trained[:max_len]),
        truncated=truncated,
    )
    for start, end in r.spans:
        if start < cut:
            p.trained_spans.add(start=start, end=min(end, cut))
    return p


class DatasetService:
    def __init__(self, app: App, settings: TrainingSettings) -> None:
        self.app = app
        self.settings = settings

    def storage(self) -> Storage:
        return Storage(self.app.channel(self.settings.storage_addr), self.settings.internal_token())

    async def CreateDataset(self, request: D.CreateDatasetRequest, context: Any) -> D.Dataset:
        user = ctx.require_user_id()
        name = check_name(request.name)
        base_model = check_base_model(self.settings, request.base_model)
        max_len = request.max_seq_length or 2048
        if not 16 <= max_len <= 32768:
            raise InvalidArgument(
                "max_seq_length must be between 16 and 32768", field="max_seq_length"
            )
        if not request.file_id:
            raise InvalidArgument("file_id is required", field="file_id")
        file = await self.storage().get_file(request.file_id)
        if file.bucket != storage_pb2.BUCKET_DATASETS:
            raise FailedPrecondition("the file is not in the `datasets` bucket")
        if file.status != storage_pb2.FILE_STATUS_READY:
            raise FailedPrecondition("the file's upload is not complete (or it was deleted)")
        if file.size_bytes > self.settings.dataset_max_bytes:
            raise InvalidArgument(
                f"file_id is {file.size_bytes} bytes, over the limit of "
                f"{self.settings.dataset_max_bytes}",
                field="file_id",
            )
        ds_id = uuid.uuid4()
        row = await self.app.pool.fetchrow(
            """INSERT INTO datasets (id, user_id, name, file_id, size_bytes, status, base_model,
                                     max_seq_length)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING *""",
            ds_id,
            user,
            name,
            file.id,
            file.size_bytes,
            D.DATASET_STATUS_VALIDATING,
            base_model,
            max_len,
        )
        self.app.spawn(self.validate(ds_id, user), name=f"validate-dataset-{ds_id}")
        return store.dataset_proto(row)

    async def validate(self, ds_id: uuid.UUID, user: str) -> None:
        """Background validation: VALIDATING → READY (stats) or ERROR (errors)."""
        row = await self.app.pool.fetchrow("SELECT * FROM datasets WHERE id = $1", ds_id)
        errors: list[dict[str, Any]] = []
        error_count = 0
        fmt = 0
        stats: dict[str, Any] | None = None
        try:
            with ctx.acting_for(user):
                raw = await self.storage().download(row["file_id"])
            if len(raw) > self.settings.dataset_max_bytes:
                raise ValueError("the file is over the dataset size limit")
            parsed = data.parse_jsonl(raw, max_errors=self.settings.dataset_max_errors)
            fmt, error_count = parsed.format, parsed.error_count
            errors = [{"line": ln, "message": msg} for ln, msg in parsed.errors]
            if not parsed.examples and not error_count:
                error_count, errors = 1, [{"line": 0, "message": "the file has no records"}]
            if not error_count:
                tok = await asyncio.to_thread(
                    basemodels.tokenizer, row["base_model"], self.settings
                )
                token_stats, _ = await asyncio.to_thread(
                    _stats_and_preview, tok, parsed.examples, row["max_seq_length"], 0
                )
                stats = token_stats.as_dict()
        except (ServiceError, ValueError, OSError) as exc:
            message = exc.message if isinstance(exc, ServiceError) else str(exc)
            error_count, errors = 1, [{"line": 0, "message": f"could not read the file: {message}"}]
        status = D.DATASET_STATUS_ERROR if error_count else D.DATASET_STATUS_READY
        async with self.app.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                """UPDATE datasets SET status = $2, format = $3, errors = $4, error_count = $5,
                          stats = $6, updated_at = clock_timestamp() WHERE id = $1""",
                ds_id,
                status,
                fmt,
                errors,
                error_count,
                stats,
            )
            N = notifications_pb2
            if status == D.DATASET_STATUS_READY:
                await store.notify_user(
                    conn,
                    user,
                    N.NOTIFICATION_KIND_DATASET_READY,
                    "Dataset ready",
                    f"Dataset {row['name']!r} is ready: {stats and stats['example_count']} "
                    "examples.",
                    dataset_id=str(ds_id),
                )
            else:
                first = errors[0] if errors else {"line": 0, "message": "invalid"}
                await store.notify_user(
                    conn,
                    user,
                    N.NOTIFICATION_KIND_DATASET_FAILED,
                    "Dataset invalid",
                    f"Dataset {row['name']!r} has {error_count} problem(s); line "
                    f"{first['line']}: {first['message']}",
                    dataset_id=str(ds_id),
                )

    async def resume_pending(self) -> None:
        rows = await self.app.pool.fetch(
            "SELECT id, user_id FROM datasets WHERE status = $1 AND deleted_at IS NULL",
            D.DATASET_STATUS_VALIDATING,
        )
        for r in rows:
            self.app.spawn(self.validate(r["id"], r["user_id"]), name=f"validate-dataset-{r['id']}")

    async def GetDataset(self, request: D.GetDatasetRequest, context: Any) -> D.Dataset:
        row = await load_dataset(self.app.pool, ctx.require_user_id(), request.id)
        return store.dataset_proto(row)

    async def ListDatasets(
        self, request: D.ListDatasetsRequest, context: Any
    ) -> D.ListDatasetsResponse:
        user = ctx.require_user_id()
        size = page_size(request.page_size)
        pos = decode_token(request.page_token)
        args: list[Any] = [user, request.status or None, size + 1]
        where = ""
        if pos is not None:
            try:
                args += [dt.datetime.fromisoformat(pos["t"]), uuid.UUID(pos["id"])]
            except (KeyError, ValueError, TypeError):
                raise InvalidArgument("page_token is not valid", field="page_token") from None
            where = "AND (created_at, id) < ($4, $5)"
        rows = await self.app.pool.fetch(
            f"""SELECT * FROM datasets WHERE user_id = $1 AND deleted_at IS NULL
                AND ($2::smallint IS NULL OR status = $2) {where}
                ORDER BY created_at DESC, id DESC LIMIT $3""",
            *args,
        )
        out = D.ListDatasetsResponse(datasets=[store.dataset_proto(r) for r in rows[:size]])
        if len(rows) > size:
            last = rows[size - 1]
            out.next_page_token = encode_token(
                {"t": last["created_at"].isoformat(), "id": str(last["id"])}
            )
        return out

    async def DeleteDataset(self, request: D.DeleteDatasetRequest, context: Any) -> empty_pb2.Empty:
        user = ctx.require_user_id()
        async with self.app.pool.acquire() as conn, conn.transaction():
            row = await load_dataset(conn, user, request.id)
            busy = await conn.fetchval(
                """SELECT count(*) FROM training_jobs WHERE dataset_id = $1
                   AND deleted_at IS NULL AND status = ANY($2::smallint[])""",
                row["id"],
                list(store.ACTIVE),
            )
            if busy:
                raise FailedPrecondition("a job that uses this dataset is still active")
            await conn.execute(
                "UPDATE datasets SET deleted_at = clock_timestamp() WHERE id = $1", row["id"]
            )
        return empty_pb2.Empty()

    async def PreviewDataset(
        self, request: D.PreviewDatasetRequest, context: Any
    ) -> D.PreviewDatasetResponse:
        user = ctx.require_user_id()
        if request.limit < 0:
            raise InvalidArgument("limit must not be negative", field="limit")
        limit = min(request.limit or 5, 50)
        row = await load_dataset(self.app.pool, user, request.id)
        if row["status"] == D.DATASET_STATUS_VALIDATING:
            raise FailedPrecondition("the dataset is still being validated")
        raw = await self.storage().download(row["file_id"])
        parsed = data.parse_jsonl(raw, max_errors=0)
        tok = await asyncio.to_thread(basemodels.tokenizer, row["base_model"], self.settings)
        _, preview = await asyncio.to_thread(
            _stats_and_preview, tok, parsed.examples[:limit], row["max_seq_length"], limit
        )
        return D.PreviewDatasetResponse(examples=preview)
