"""Handlers of aivera.storage.v1.StorageService: call the domain, build the protos.

Handlers are thin: the caller's id from the call context, the request's fields to
`files.Files` (which validates, pages and raises domain errors with contract reasons),
typed `FileRow`s back to protos through the enum tables below. No SQL and no database
or backend exception is handled here; the RPC wrapper maps domain errors to statuses.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from google.protobuf import empty_pb2

from aivera.storage.v1 import storage_pb2
from services.common import tracing
from services.common.context import require_user_id
from services.common.errors import InvalidArgument
from services.common.protoutil import timestamp
from services.storage.files import Files
from services.storage.store import FileRow

_BUCKETS: dict[str, storage_pb2.Bucket.ValueType] = {
    "documents": storage_pb2.BUCKET_DOCUMENTS,
    "images": storage_pb2.BUCKET_IMAGES,
    "datasets": storage_pb2.BUCKET_DATASETS,
    "models": storage_pb2.BUCKET_MODELS,
    "training-images": storage_pb2.BUCKET_TRAINING_IMAGES,
}
_STATUS: dict[str, storage_pb2.FileStatus.ValueType] = {
    "uploading": storage_pb2.FILE_STATUS_UPLOADING,
    "ready": storage_pb2.FILE_STATUS_READY,
    "deleted": storage_pb2.FILE_STATUS_DELETED,
}
_BACKEND: dict[str, storage_pb2.Backend.ValueType] = {
    "s3": storage_pb2.BACKEND_S3,
    "local": storage_pb2.BACKEND_LOCAL,
}


def file_proto(row: FileRow) -> storage_pb2.File:
    return storage_pb2.File(
        id=str(row.id),
        bucket=_BUCKETS[row.bucket],
        filename=row.filename,
        content_type=row.content_type,
        size_bytes=row.size_bytes,
        sha256=row.sha256,
        status=_STATUS[row.status],
        backend=_BACKEND[row.backend],
        labels=row.labels,
        create_time=timestamp(row.created_at),
        delete_time=timestamp(row.deleted_at) if row.status == "deleted" else None,
    )


class StorageServiceServicer:
    def __init__(self, files: Files) -> None:
        self.files = files

    async def Upload(
        self, request_iterator: AsyncIterator[storage_pb2.UploadRequest], context: Any
    ) -> storage_pb2.File:
        row = await self.files.upload(require_user_id(), request_iterator)
        # The transfer on the call's span (while tracing is on): how much, to which backend.
        tracing.current_span().set_attributes(
            {"storage.bytes": row.size_bytes, "storage.backend": row.backend}
        )
        return file_proto(row)

    async def Download(
        self, request: storage_pb2.DownloadRequest, context: Any
    ) -> AsyncIterator[storage_pb2.DownloadResponse]:
        row, chunks = await self.files.download(
            require_user_id(), request.id, request.offset, request.length
        )
        yield storage_pb2.DownloadResponse(file=file_proto(row))
        sent = 0
        try:
            async for chunk in chunks:
                sent += len(chunk)
                yield storage_pb2.DownloadResponse(chunk=chunk)
        finally:
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()
        tracing.current_span().set_attributes(
            {"storage.bytes": sent, "storage.backend": row.backend}
        )
        yield storage_pb2.DownloadResponse(done=storage_pb2.DownloadDone(bytes_sent=sent))

    async def GetFile(self, request: storage_pb2.GetFileRequest, context: Any) -> storage_pb2.File:
        return file_proto(await self.files.get(require_user_id(), request.id))

    async def ListFiles(
        self, request: storage_pb2.ListFilesRequest, context: Any
    ) -> storage_pb2.ListFilesResponse:
        rows, token = await self.files.list(
            require_user_id(),
            page_size=request.page_size,
            page_token=request.page_token,
            bucket=request.bucket,
            labels=dict(request.labels),
        )
        return storage_pb2.ListFilesResponse(
            files=[file_proto(r) for r in rows], next_page_token=token
        )

    async def DeleteFile(
        self, request: storage_pb2.DeleteFileRequest, context: Any
    ) -> empty_pb2.Empty:
        await self.files.delete(require_user_id(), request.id)
        return empty_pb2.Empty()

    async def CreateUploadUrl(
        self, request: storage_pb2.CreateUploadUrlRequest, context: Any
    ) -> storage_pb2.CreateUploadUrlResponse:
        row, signed = await self.files.create_upload_url(
            require_user_id(),
            bucket=request.bucket,
            filename=request.filename,
            size=request.size_bytes,
            sha256=request.sha256,
            labels=dict(request.labels),
            ttl_seconds=request.ttl_seconds,
        )
        return storage_pb2.CreateUploadUrlResponse(
            file=file_proto(row),
            url=signed.url,
            expire_time=timestamp(signed.expire_time),
            headers=signed.headers,
        )

    async def CompleteUpload(
        self, request: storage_pb2.CompleteUploadRequest, context: Any
    ) -> storage_pb2.File:
        row = await self.files.complete_upload(require_user_id(), request.id, request.sha256)
        return file_proto(row)

    async def CreateDownloadUrl(
        self, request: storage_pb2.CreateDownloadUrlRequest, context: Any
    ) -> storage_pb2.CreateDownloadUrlResponse:
        signed = await self.files.create_download_url(
            require_user_id(), request.id, request.ttl_seconds
        )
        return storage_pb2.CreateDownloadUrlResponse(
            url=signed.url, expire_time=timestamp(signed.expire_time)
        )


class StorageInternalServiceServicer:
    def __init__(self, files: Files) -> None:
        self.files = files

    async def PurgeFile(
        self, request: storage_pb2.PurgeFileRequest, context: Any
    ) -> empty_pb2.Empty:
        if not request.user_id:
            raise InvalidArgument("user_id is required", field="user_id")
        await self.files.delete(request.user_id, request.id)
        return empty_pb2.Empty()
