"""Datasets: a storage file registered as training data, validated in the background
(VALIDATING → READY with token stats, or ERROR with line-numbered problems, and a
notification either way), previewed with the base model's chat template, and deleted
only while no active job uses it."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

from aivera.storage.v1 import storage_pb2
from aivera.training.v1 import datasets_pb2, notifications_pb2
from services.common import context as ctx
from services.common import pages
from services.common.errors import (
    FailedPrecondition,
    InvalidArgument,
    Reason,
    ServiceError,
    not_found,
)
from services.common.identity import ServiceIdentity, grant_now
from services.common.protoutil import parse_uuid
from services.common.remote import StorageClient
from services.training import basemodels, checks, data
from services.training.config import TrainingSettings
from services.training.store import DatasetRow, Store

log = logging.getLogger("aivera.training.datasets")
D = datasets_pb2
N = notifications_pb2
Spawn = Callable[[Coroutine[Any, Any, None], str], object]

DEFAULT_MAX_SEQ_LENGTH = 2048
MIN_SEQ_LENGTH, MAX_SEQ_LENGTH = 16, 32768
MAX_PREVIEW = 50
DEFAULT_PREVIEW = 5


def stats_and_preview(
    tokenizer: Any, examples: list[data.Example], max_len: int, limit: int
) -> tuple[data.TokenStats, list[D.PreviewExample]]:
    """Token stats of all examples and the preview of the first `limit` (CPU work: run
    it in a thread)."""
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


async def owned(store: Store, user: str, raw_id: str, field: str = "id") -> DatasetRow:
    """The user's dataset; NOT_FOUND for a missing, deleted or another user's one."""
    row = await store.get_dataset(user, parse_uuid(raw_id, field=field))
    if row is None:
        raise not_found("dataset", raw_id)
    return row


class Datasets:
    def __init__(
        self,
        store: Store,
        settings: TrainingSettings,
        storage: StorageClient,
        spawn: Spawn,
        identity: ServiceIdentity | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.storage = storage
        self.spawn = spawn
        self.identity = identity

    async def get(self, user: str, raw_id: str, field: str = "id") -> DatasetRow:
        return await owned(self.store, user, raw_id, field)

    async def list_datasets(
        self, user: str, status: int, page: pages.PageRequest
    ) -> tuple[list[DatasetRow], str]:
        return await self.store.list_datasets(user, status, page)

    async def create(
        self,
        user: str,
        *,
        name: str,
        file_id: str,
        base_model: str,
        max_seq_length: int,
        description: str = "",
    ) -> DatasetRow:
        name = checks.name(name)
        description = checks.description(description)
        base_model = checks.base_model(self.settings, base_model)
        max_len = max_seq_length or DEFAULT_MAX_SEQ_LENGTH
        if not MIN_SEQ_LENGTH <= max_len <= MAX_SEQ_LENGTH:
            raise InvalidArgument(
                f"max_seq_length must be between {MIN_SEQ_LENGTH} and {MAX_SEQ_LENGTH}",
                field="max_seq_length",
            )
        if not file_id:
            raise InvalidArgument("file_id is required", field="file_id")
        file = await self.storage.get_file(file_id)
        if file.bucket != storage_pb2.BUCKET_DATASETS:
            raise FailedPrecondition("the file is not in the `datasets` bucket")
        if file.status != storage_pb2.FILE_STATUS_READY:
            raise FailedPrecondition(
                "the file's upload is not complete (or it was deleted)",
                reason=Reason.FILE_NOT_READY,
            )
        if file.size_bytes > self.settings.dataset_max_bytes:
            raise InvalidArgument(
                f"file_id is {file.size_bytes} bytes, over the limit of "
                f"{self.settings.dataset_max_bytes}",
                field="file_id",
                reason=Reason.FILE_TOO_LARGE,
            )
        # Validation reads the file after this request: on a grant taken now.
        grant = await grant_now(self.identity)
        row = await self.store.insert_dataset(
            user_id=user,
            name=name,
            file_id=file.id,
            size_bytes=file.size_bytes,
            status=D.DATASET_STATUS_VALIDATING,
            base_model=base_model,
            max_seq_length=max_len,
            description=description,
        )
        if grant is not None:
            await self.store.put_grant(row.id, user, grant)
        self.spawn(self.validate(row.id, user), f"validate-dataset-{row.id}")
        return row

    async def resume_pending(self) -> None:
        """Restart the validations a previous process left unfinished."""
        for ds_id, user in await self.store.validating_datasets(D.DATASET_STATUS_VALIDATING):
            self.spawn(self.validate(ds_id, user), f"validate-dataset-{ds_id}")

    async def validate(self, ds_id: uuid.UUID, user: str) -> None:
        """Background validation: VALIDATING → READY (stats) or ERROR (errors)."""
        row = await self.store.dataset_by_id(ds_id)
        if row is None:
            return
        errors: list[dict[str, Any]] = []
        error_count = 0
        fmt = 0
        stats: dict[str, Any] | None = None
        try:
            grant = await self.store.grant_of(ds_id)
            with ctx.acting_for(user, grant=grant):
                raw = await self.storage.download(row.file_id)
            if len(raw) > self.settings.dataset_max_bytes:
                raise ValueError("the file is over the dataset size limit")
            parsed = data.parse_jsonl(raw, max_errors=self.settings.dataset_max_errors)
            fmt, error_count = parsed.format, parsed.error_count
            errors = [{"line": ln, "message": msg} for ln, msg in parsed.errors]
            if not parsed.examples and not error_count:
                error_count, errors = 1, [{"line": 0, "message": "the file has no records"}]
            if not error_count:
                tok = await asyncio.to_thread(basemodels.tokenizer, row.base_model, self.settings)
                token_stats, _ = await asyncio.to_thread(
                    stats_and_preview, tok, parsed.examples, row.max_seq_length, 0
                )
                stats = token_stats.as_dict()
        except (ServiceError, ValueError, OSError) as exc:
            message = exc.message if isinstance(exc, ServiceError) else str(exc)
            error_count, errors = 1, [{"line": 0, "message": f"could not read the file: {message}"}]
        status = D.DATASET_STATUS_ERROR if error_count else D.DATASET_STATUS_READY
        await self.store.drop_grant(ds_id)  # the file is read: nothing more to do for the user
        async with self.store.transaction() as tx:
            await tx.finish_dataset(
                ds_id,
                status=status,
                format=fmt,
                errors=errors,
                error_count=error_count,
                stats=stats,
            )
            if status == D.DATASET_STATUS_READY:
                count = stats["example_count"] if stats else 0
                await tx.notify(
                    user,
                    N.NOTIFICATION_KIND_DATASET_READY,
                    "Dataset ready",
                    f"Dataset {row.name!r} is ready: {count} examples.",
                    dataset_id=str(ds_id),
                )
            else:
                first = errors[0] if errors else {"line": 0, "message": "invalid"}
                await tx.notify(
                    user,
                    N.NOTIFICATION_KIND_DATASET_FAILED,
                    "Dataset invalid",
                    f"Dataset {row.name!r} has {error_count} problem(s); line "
                    f"{first['line']}: {first['message']}",
                    dataset_id=str(ds_id),
                )

    async def update(self, user: str, dataset: D.Dataset, paths: list[str]) -> DatasetRow:
        """Rename or describe a dataset (the fields in `paths`)."""
        if not paths or any(p not in ("name", "description") for p in paths):
            raise InvalidArgument(
                "update_mask must name `name` and/or `description`", field="update_mask"
            )
        name = checks.name(dataset.name, "dataset.name") if "name" in paths else None
        text = (
            checks.description(dataset.description, "dataset.description")
            if "description" in paths
            else None
        )
        row = await owned(self.store, user, dataset.id, "dataset.id")
        await self.store.update_dataset(row.id, name=name, description=text)
        return await owned(self.store, user, dataset.id, "dataset.id")

    async def delete(self, user: str, raw_id: str) -> None:
        async with self.store.transaction() as tx:
            # The user's job-creation lock: a CreateJob in flight either sees the dataset
            # deleted or holds its job before this check counts it.
            await tx.lock_user(user)
            row = await owned(tx, user, raw_id)
            if await tx.active_jobs_using(row.id):
                raise FailedPrecondition(
                    "a job that uses this dataset is still active", reason=Reason.IN_USE
                )
            await tx.delete_dataset(row.id)

    async def preview(self, user: str, raw_id: str, limit: int) -> list[D.PreviewExample]:
        """The first `limit` examples as the base model's chat template renders them,
        with the spans that carry loss."""
        if limit < 0:
            raise InvalidArgument("limit must not be negative", field="limit")
        limit = min(limit or DEFAULT_PREVIEW, MAX_PREVIEW)
        row = await self.get(user, raw_id)
        if row.status == D.DATASET_STATUS_VALIDATING:
            raise FailedPrecondition(
                "the dataset is still being validated", reason=Reason.DATASET_NOT_READY
            )
        raw = await self.storage.download(row.file_id)
        parsed = data.parse_jsonl(raw, max_errors=0)
        tok = await asyncio.to_thread(basemodels.tokenizer, row.base_model, self.settings)
        _, preview = await asyncio.to_thread(
            stats_and_preview, tok, parsed.examples[:limit], row.max_seq_length, limit
        )
        return preview
