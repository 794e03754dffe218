"""A job's outputs in the storage service and the model artifacts that list them: the
`storage_path` the database keeps (never a URL), checkpoint tars and adapter files that
workers upload, and signed download URLs of a model's files, made on demand."""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from dataclasses import dataclass
from typing import Any

from aivera.storage.v1 import storage_pb2
from services.common import pages
from services.common.errors import FailedPrecondition, InvalidArgument, NotFound, Reason, not_found
from services.common.protoutil import parse_uuid
from services.common.remote import StorageClient
from services.training.store import ModelRow, Store

BUCKET_NAMES: dict[int, str] = {
    storage_pb2.BUCKET_DATASETS: "datasets",
    storage_pb2.BUCKET_MODELS: "models",
}
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")
MIN_URL_TTL, MAX_URL_TTL, DEFAULT_URL_TTL = 60, 86400, 3600


def storage_path(bucket: int, user_id: str, file: storage_pb2.File) -> str:
    """Where storage keeps a file: `<bucket>/<user>/<file id>/<filename>`."""
    return f"{BUCKET_NAMES.get(bucket, 'models')}/{user_id}/{file.id}/{file.filename}"


@dataclass(frozen=True, slots=True)
class Upload:
    file: storage_pb2.File
    storage_path: str


@dataclass(frozen=True, slots=True)
class FileUrl:
    name: str
    url: str
    size_bytes: int


async def upload_checkpoint(
    storage: StorageClient, *, user_id: str, job_id: uuid.UUID, step: int, blob: bytes
) -> Upload:
    file = await storage.upload(
        storage_pb2.BUCKET_MODELS,
        f"checkpoint-{job_id}-step-{step}.tar",
        blob,
        labels={"purpose": "checkpoint", "job_id": str(job_id)},
    )
    return Upload(file, storage_path(storage_pb2.BUCKET_MODELS, user_id, file))


async def upload_adapter(
    storage: StorageClient, *, job_id: uuid.UUID, files: dict[str, bytes]
) -> list[dict[str, Any]]:
    """The adapter's files in the `models` bucket, as a model artifact lists them."""
    out: list[dict[str, Any]] = []
    for name in ADAPTER_FILES:
        content = files[name]
        f = await storage.upload(
            storage_pb2.BUCKET_MODELS,
            name,
            content,
            labels={"purpose": "adapter", "job_id": str(job_id)},
        )
        out.append(
            {
                "name": name,
                "file_id": f.id,
                "size_bytes": len(content),
                "sha256": hashlib.sha256(content).hexdigest(),
            }
        )
    return out


class Models:
    """Model artifacts of a user: read, listed, and downloaded through signed URLs."""

    def __init__(self, store: Store, storage: StorageClient) -> None:
        self.store = store
        self.storage = storage

    async def get(self, user: str, raw_id: str) -> ModelRow:
        row = await self.store.get_model(user, parse_uuid(raw_id, field="id"))
        if row is None:
            raise not_found("model", raw_id)
        return row

    async def list_models(
        self, user: str, clone_id: str, page: pages.PageRequest
    ) -> tuple[list[ModelRow], str]:
        clone = parse_uuid(clone_id, field="clone_id") if clone_id else None
        return await self.store.list_models(user, clone, page)

    async def download_urls(
        self, user: str, raw_id: str, ttl_seconds: int
    ) -> tuple[list[FileUrl], dt.datetime | None]:
        """A signed URL per file of the model, and when the first of them expires."""
        ttl = ttl_seconds or DEFAULT_URL_TTL
        if not MIN_URL_TTL <= ttl <= MAX_URL_TTL:
            raise InvalidArgument(
                f"ttl_seconds must be between {MIN_URL_TTL} and {MAX_URL_TTL}",
                field="ttl_seconds",
            )
        row = await self.get(user, raw_id)
        urls: list[FileUrl] = []
        expire: dt.datetime | None = None
        for f in row.files:
            try:
                url, exp = await self.storage.download_url(f["file_id"], ttl)
            except NotFound:
                raise FailedPrecondition(
                    f"the file {f['name']} of the model is missing",
                    reason=Reason.MODEL_NOT_READY,
                    metadata={"file": f["name"]},
                ) from None
            urls.append(FileUrl(f["name"], url, int(f["size_bytes"])))
            if exp is not None and (expire is None or exp < expire):
                expire = exp
        return urls, expire
