"""A job's outputs in the storage service and the model artifacts that list them: the
`storage_path` the database keeps (never a URL), checkpoint tars and adapter files that
workers upload, and signed download URLs of a model's files, made on demand."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import logging
import uuid
from dataclasses import dataclass
from typing import Any

import grpc

from aivera.storage.v1 import storage_pb2, storage_pb2_grpc
from aivera.training.v1 import jobs_pb2, models_pb2, notifications_pb2
from services.common import context as ctx
from services.common import pages
from services.common.errors import FailedPrecondition, InvalidArgument, NotFound, Reason, not_found
from services.common.identity import ServiceIdentity, grant_now
from services.common.protoutil import parse_uuid
from services.common.remote import StorageClient, map_rpc_error
from services.training import basemodels, checks, convert, executors
from services.training.config import TrainingSettings
from services.training.store import JobRow, ModelRow, Store

log = logging.getLogger("aivera.training.models")

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


def checkpoint_adapter(job: JobRow, blob: bytes, base_model_path: str) -> dict[str, bytes]:
    """The adapter files of a checkpoint tar: its weights with the job's adapter config (a
    simulated job's checkpoint has none: the placeholder)."""
    hp = convert.hp_from_json(job.hyperparameters)
    if job.executor == jobs_pb2.EXECUTOR_SIMULATE:
        return executors.placeholder_adapter(hp)
    files = executors.read_tar(blob)
    if "adapter_model.safetensors" not in files:
        raise FailedPrecondition(
            "the checkpoint holds no adapter weights", reason=Reason.MODEL_NOT_READY
        )
    config = executors.adapter_config(hp, base_model_path)
    return {
        "adapter_model.safetensors": files["adapter_model.safetensors"],
        "adapter_config.json": json.dumps(config, indent=2).encode(),
    }


class Models:
    """Model artifacts of a user: read, listed, renamed, deleted (files purged after the
    retention period), promoted from checkpoints, and downloaded through signed URLs."""

    def __init__(
        self,
        store: Store,
        storage: StorageClient,
        settings: TrainingSettings,
        identity: ServiceIdentity | None = None,
    ) -> None:
        self.store = store
        self.storage = storage
        self.settings = settings
        self.identity = identity
        # Retention purges are training's own right (StorageInternalService, callers:
        # training), not done for the user, who may be long signed out.
        self.purger = storage_pb2_grpc.StorageInternalServiceStub(storage.channel)

    async def rename(
        self, user: str, model: models_pb2.ModelArtifact, paths: list[str]
    ) -> ModelRow:
        if paths != ["name"]:
            raise InvalidArgument("update_mask must be exactly `name`", field="update_mask")
        name = checks.name(model.name, "model.name")
        row = await self.get(user, model.id)
        await self.store.rename_model(row.id, name)
        return await self.get(user, model.id)

    async def delete(self, user: str, raw_id: str) -> None:
        """Soft-delete; clones whose active model it was lose it and their owner is told."""
        # Without a mesh identity (dev and tests of one service) the purge acts for the
        # user with what stands in for a grant (identity.grant_now).
        grant = None if self.identity else await grant_now(None)
        async with self.store.transaction() as tx:
            row = await tx.get_model(user, parse_uuid(raw_id, field="id"))
            if row is None:
                raise not_found("model", raw_id)
            for clone_id, clone_name in await tx.delete_model(row.id):
                await tx.notify(
                    user,
                    notifications_pb2.NOTIFICATION_KIND_MODEL_DELETED,
                    "Model deleted",
                    f"Clone {clone_name!r} lost its model {row.name!r}: it answers with its "
                    "base model until you set another.",
                    model_id=str(row.id),
                    clone_id=str(clone_id),
                )
        if grant is not None:
            await self.store.put_grant(row.id, user, grant)

    async def promote(self, user: str, job_id: str, checkpoint_id: str, name: str) -> ModelRow:
        """A model from a checkpoint of one of the user's jobs."""
        name = checks.name(name, required=False)
        job = await self.store.get_job(user, parse_uuid(job_id, field="job_id"))
        if job is None:
            raise not_found("job", job_id)
        ck = await self.store.get_checkpoint(
            job.id, parse_uuid(checkpoint_id, field="checkpoint_id")
        )
        if ck is None:
            raise not_found("checkpoint", checkpoint_id)
        if job.image_lora_id is not None:
            raise FailedPrecondition(
                "the job trains an image LoRA: its checkpoints are not text adapters",
                reason=Reason.MODEL_NOT_READY,
            )
        blob = await self.storage.download(ck.file_id)
        path = ""
        if job.executor != jobs_pb2.EXECUTOR_SIMULATE:
            try:
                path = str(
                    await asyncio.to_thread(basemodels.resolve, job.base_model, self.settings)
                )
            except FileNotFoundError:
                path = job.base_model
        files = checkpoint_adapter(job, blob, path)
        uploaded = await upload_adapter(self.storage, job_id=job.id, files=files)
        return await self.store.insert_model(
            user_id=user,
            name=name or f"{job.name} (step {ck.step})",
            job_id=job.id,
            clone_id=job.clone_id,
            base_model=job.base_model,
            method=job.method,
            kind=models_pb2.MODEL_KIND_LORA_ADAPTER,
            files=uploaded,
            steps=ck.step,
            final_loss=ck.loss,
            final_eval_loss=ck.eval_loss,
            simulated=job.executor == jobs_pb2.EXECUTOR_SIMULATE,
            checkpoint_id=ck.id,
        )

    async def purge_once(self) -> int:
        """Delete the files of models deleted longer than the retention period ago; how
        many models were purged. A file already gone counts as purged."""
        rows = await self.store.models_to_purge(self.settings.training_model_retention_seconds)
        for row in rows:
            for f in row.files:
                await self.purge_file(f["file_id"], row.user_id, row.id)
            await self.store.mark_purged(row.id)
            await self.store.drop_grant(row.id)
            log.info("purged the files of deleted model %s", row.id)
        return len(rows)

    async def purge_file(self, file_id: str, user_id: str, resource_id: uuid.UUID) -> None:
        """Delete one file of a deleted model (or image LoRA: image_retention.py), acting
        for the owner with the grant kept under `resource_id` when this process has no
        mesh identity; one already gone is fine."""
        try:
            if self.identity is not None:
                await self.purger.PurgeFile(
                    storage_pb2.PurgeFileRequest(id=file_id, user_id=user_id),
                    timeout=self.storage.deadlines.lookup,
                )
                return
            with ctx.acting_for(user_id, grant=await self.store.grant_of(resource_id)):
                await self.storage.delete_file(file_id)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise map_rpc_error(exc, "file purge") from None

    async def purge_loop(self) -> None:
        while True:
            try:
                await self.purge_once()
            except Exception as exc:  # storage or Postgres down: try again next round
                log.warning("model purge failed: %s", exc)
            await asyncio.sleep(self.settings.training_purge_interval_seconds)

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
