"""Calls to the storage service (datasets in, checkpoints and adapters out). The caller's
identity is relayed by the channel: the user's token inside an RPC, or the internal
credential on behalf of the user in background work (`acting_for`)."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from typing import Any

import grpc

from aivera.storage.v1 import storage_pb2, storage_pb2_grpc
from services.common.errors import FailedPrecondition, NotFound, ServiceError, Unavailable

CHUNK = 1024 * 1024
BUCKET_NAMES: dict[int, str] = {
    storage_pb2.BUCKET_DATASETS: "datasets",
    storage_pb2.BUCKET_MODELS: "models",
}


def map_error(exc: grpc.aio.AioRpcError, what: str) -> ServiceError:
    code = exc.code()
    if code == grpc.StatusCode.NOT_FOUND:
        return NotFound(f"{what} not found")
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return FailedPrecondition(f"{what}: {exc.details()}")
    return Unavailable(f"storage service: {exc.details() or code.name}")


class Storage:
    """The storage RPCs the training service needs, with storage errors mapped to ours."""

    def __init__(self, channel: grpc.aio.Channel, internal_token: str) -> None:
        self.stub = storage_pb2_grpc.StorageServiceStub(channel)
        self.internal_token = internal_token

    async def get_file(self, file_id: str) -> storage_pb2.File:
        try:
            file: storage_pb2.File = await self.stub.GetFile(
                storage_pb2.GetFileRequest(id=file_id), timeout=30
            )
        except grpc.aio.AioRpcError as exc:
            raise map_error(exc, f"file {file_id!r}") from None
        return file

    async def download(self, file_id: str) -> bytes:
        parts: list[bytes] = []
        try:
            call = self.stub.Download(
                storage_pb2.DownloadRequest(id=file_id),
                timeout=600,
            )
            async for message in call:
                if message.HasField("chunk"):
                    parts.append(message.chunk)
        except grpc.aio.AioRpcError as exc:
            raise map_error(exc, f"file {file_id!r}") from None
        return b"".join(parts)

    async def upload(
        self, bucket: int, filename: str, data: bytes, labels: dict[str, str] | None = None
    ) -> storage_pb2.File:
        sha = hashlib.sha256(data).hexdigest()

        async def requests() -> AsyncIterator[storage_pb2.UploadRequest]:
            yield storage_pb2.UploadRequest(
                header=storage_pb2.UploadHeader(
                    bucket=bucket,  # type: ignore[arg-type]
                    filename=filename,
                    size_bytes=len(data),
                    sha256=sha,
                    labels=labels or {},
                )
            )
            for i in range(0, len(data), CHUNK):
                yield storage_pb2.UploadRequest(chunk=data[i : i + CHUNK])

        try:
            result: Any = await self.stub.Upload(requests(), timeout=600)
        except grpc.aio.AioRpcError as exc:
            raise map_error(exc, filename) from None
        return result  # type: ignore[no-any-return]

    async def download_url(self, file_id: str, ttl: int) -> tuple[str, Any]:
        try:
            resp = await self.stub.CreateDownloadUrl(
                storage_pb2.CreateDownloadUrlRequest(id=file_id, ttl_seconds=ttl), timeout=30
            )
        except grpc.aio.AioRpcError as exc:
            raise map_error(exc, f"file {file_id!r}") from None
        return resp.url, resp.expire_time


def storage_path(bucket: int, user_id: str, file: storage_pb2.File) -> str:
    return f"{BUCKET_NAMES.get(bucket, 'models')}/{user_id}/{file.id}/{file.filename}"
