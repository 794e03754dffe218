"""Calls to other services of the mesh: one error mapping, one set of deadlines, and the
storage client every service that moves files uses.

Services never import each other; they talk over gRPC through channels from
`App.channel` (which relay the caller, the request id and the remaining deadline). What
comes back as a failure is mapped once here: a status a user caused (NOT_FOUND,
INVALID_ARGUMENT, FAILED_PRECONDITION, …) keeps its code, message and ErrorInfo reason,
so the user learns what the other service said; anything else (UNAVAILABLE, a deadline,
an internal error, a credential problem between services) is this service's dependency
being down: UNAVAILABLE with reason DEPENDENCY_UNAVAILABLE, retryable.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from aivera.storage.v1 import storage_pb2, storage_pb2_grpc
from services.common import tracing
from services.common.config import CommonSettings
from services.common.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Reason,
    ResourceExhausted,
    ServiceError,
    Unavailable,
    fallback_reason,
    reason_value,
)

# Storage takes chunks of at most 1 MiB and sends chunks of at most 1 MiB.
CHUNK_BYTES = 1024 * 1024

# Codes whose meaning is the user's request, passed on as they are.
_PASSED_ON: dict[grpc.StatusCode, type[ServiceError]] = {
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
}


@dataclass(frozen=True, slots=True)
class Deadlines:
    """Seconds a call to another service may take, by kind (from the settings)."""

    lookup: float = 10.0
    work: float = 60.0
    transfer: float = 600.0

    @classmethod
    def from_settings(cls, settings: CommonSettings) -> Deadlines:
        return cls(
            lookup=settings.rpc_lookup_deadline_seconds,
            work=settings.rpc_work_deadline_seconds,
            transfer=settings.rpc_transfer_deadline_seconds,
        )


def remote_reason(exc: grpc.aio.AioRpcError) -> tuple[int, dict[str, str]]:
    """The ErrorInfo reason and metadata the other service sent (fallback: by code)."""
    try:
        status = rpc_status.from_call(exc)
    except (ValueError, TypeError):
        status = None
    if status is not None:
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                value = reason_value(info.reason)
                if value:
                    return value, dict(info.metadata)
    return fallback_reason(exc.code()), {}


def map_rpc_error(exc: grpc.aio.AioRpcError, what: str) -> ServiceError:
    """A failed call to another service as the error this service answers with.
    `what` names the thing asked for ("document search", "file"), for messages."""
    code = exc.code()
    cls = _PASSED_ON.get(code)
    if cls is not None:
        reason, metadata = remote_reason(exc)
        return cls(
            exc.details() or f"{what}: {code.name.lower()}", reason=reason, metadata=metadata
        )
    return Unavailable(
        f"{what} is unavailable ({code.name})",
        reason=Reason.DEPENDENCY_UNAVAILABLE,
        metadata={"dependency": what},
    )


class StorageClient:
    """The storage RPCs other services use, with one chunk size and settings' deadlines.
    The caller is relayed by the channel (this service's token and a delegation for the
    user; services.common.identity)."""

    def __init__(self, channel: grpc.aio.Channel, deadlines: Deadlines) -> None:
        self.channel = channel
        self.stub = storage_pb2_grpc.StorageServiceStub(channel)
        self.deadlines = deadlines

    async def get_file(self, file_id: str) -> storage_pb2.File:
        """The file's metadata; NOT_FOUND for a missing or another user's file."""
        try:
            f: storage_pb2.File = await self.stub.GetFile(
                storage_pb2.GetFileRequest(id=file_id), timeout=self.deadlines.lookup
            )
        except grpc.aio.AioRpcError as exc:
            raise map_rpc_error(exc, "file") from None
        return f

    async def chunks(self, file_id: str) -> AsyncIterator[bytes]:
        """The file's bytes as they arrive."""
        call = self.stub.Download(
            storage_pb2.DownloadRequest(id=file_id), timeout=self.deadlines.transfer
        )
        try:
            async for message in call:
                if message.WhichOneof("payload") == "chunk":
                    yield message.chunk
        except grpc.aio.AioRpcError as exc:
            raise map_rpc_error(exc, "file download") from None

    async def download(self, file_id: str) -> bytes:
        """The whole file (for files a service holds in memory anyway)."""
        with tracing.span("storage.download", {"storage.file_id": file_id}) as span:
            data = b"".join([chunk async for chunk in self.chunks(file_id)])
            span.set_attribute("storage.bytes", len(data))
        return data

    async def upload(
        self,
        bucket: storage_pb2.Bucket.ValueType,
        filename: str,
        data: bytes,
        labels: dict[str, str] | None = None,
    ) -> storage_pb2.File:
        """Store `data` as a new file; its sha256 is checked by storage."""

        async def requests() -> AsyncIterator[storage_pb2.UploadRequest]:
            yield storage_pb2.UploadRequest(
                header=storage_pb2.UploadHeader(
                    bucket=bucket,
                    filename=filename,
                    size_bytes=len(data),
                    sha256=hashlib.sha256(data).hexdigest(),
                    labels=labels or {},
                )
            )
            view = memoryview(data)
            for start in range(0, len(data), CHUNK_BYTES):
                yield storage_pb2.UploadRequest(chunk=bytes(view[start : start + CHUNK_BYTES]))

        async def send() -> Any:
            # The call starts inside the transfer's span, so its client span is a child.
            return await self.stub.Upload(requests(), timeout=self.deadlines.transfer)

        attrs = {"storage.bytes": len(data), "storage.bucket": storage_pb2.Bucket.Name(bucket)}
        try:
            f: Any = await tracing.within("storage.upload", send(), attrs)
        except grpc.aio.AioRpcError as exc:
            raise map_rpc_error(exc, "file upload") from None
        return f  # type: ignore[no-any-return]

    async def delete_file(self, file_id: str) -> None:
        """Delete a file; one that is already gone is fine."""
        try:
            await self.stub.DeleteFile(
                storage_pb2.DeleteFileRequest(id=file_id), timeout=self.deadlines.lookup
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise map_rpc_error(exc, "file delete") from None

    async def download_url(self, file_id: str, ttl_seconds: int) -> tuple[str, dt.datetime | None]:
        """A signed URL of the file and when it expires."""
        try:
            reply = await self.stub.CreateDownloadUrl(
                storage_pb2.CreateDownloadUrlRequest(id=file_id, ttl_seconds=ttl_seconds),
                timeout=self.deadlines.lookup,
            )
        except grpc.aio.AioRpcError as exc:
            raise map_rpc_error(exc, "download URL") from None
        expire = reply.expire_time.ToDatetime(dt.UTC) if reply.HasField("expire_time") else None
        return reply.url, expire
