"""The storage domain: uploads, downloads, signed URLs, listing, deletion and purge.

Handlers in servicer.py validate nothing themselves and convert rows to protos; the
rules live here and in buckets.py / sniff.py / names.py. `Files` is built once in
`server.Wiring.build` with its `Store` (from the service's `App`) and its backends, and
reads and writes rows only through the store.

Failures carry the contract's reasons so programs can branch: FILE_TOO_LARGE (over the
bucket's limit, declared or received), UNSUPPORTED_FORMAT (the sniffed type is not one
the bucket accepts), CHECKSUM_MISMATCH (bytes differ from the declared size or sha256),
FILE_NOT_READY (not uploaded yet, or deleted), DEPENDENCY_UNAVAILABLE (object storage
down), NOT_FOUND for a missing or another user's file, INVALID_PAGE_TOKEN for a
ListFiles token issued for another caller or other filters (`services.common.pages`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aivera.storage.v1 import storage_pb2
from services.common import pages
from services.common.errors import (
    FailedPrecondition,
    InvalidArgument,
    Reason,
    Unavailable,
    not_found,
)
from services.common.protoutil import parse_uuid
from services.storage.backends.aio import SerialJobs
from services.storage.backends.base import CHUNK, Backend, BackendUnavailable, Writer
from services.storage.backends.local import LocalBackend
from services.storage.buckets import (
    BucketRule,
    Buckets,
    check_labels,
    check_sha256,
    too_large,
)
from services.storage.config import StorageSettings
from services.storage.fallback import FallbackWriter, sync_to_s3
from services.storage.memory import RELEASE_AFTER, release
from services.storage.names import sanitize
from services.storage.sniff import Sniffer
from services.storage.store import FileRow, Store

if TYPE_CHECKING:  # aioboto3 is imported only when the S3 backend is configured
    from services.storage.backends.s3 import S3Backend, S3Writer

log = logging.getLogger("aivera.storage")

DEFAULT_URL_TTL = 3600
MAX_URL_TTL = 7 * 24 * 3600


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


_SAFE_USER_ID = re.compile(r"[A-Za-z0-9_\-]{1,128}")


def object_key(rule: BucketRule, user_id: str, file_id: uuid.UUID, filename: str) -> str:
    """`{bucket}/{user_id}/{file_id}/{filename}`; the filename is already sanitised and
    user ids are auth's UUIDs, but a key must never gain extra path parts."""
    if not _SAFE_USER_ID.fullmatch(user_id):
        raise InvalidArgument("the caller's user id cannot be used in a storage path")
    return f"{rule.name}/{user_id}/{file_id}/{filename}"


def url_ttl(value: int, *, field: str = "ttl_seconds") -> int:
    if value < 0:
        raise InvalidArgument(f"{field} must not be negative", field=field)
    if value > MAX_URL_TTL:
        raise InvalidArgument(f"{field} must be at most {MAX_URL_TTL} (7 days)", field=field)
    return value or DEFAULT_URL_TTL


def _require_ready(row: FileRow, id: str) -> None:
    if row.status != "ready":
        raise FailedPrecondition(
            f"file {id!r} is {row.status}, not ready",
            reason=Reason.FILE_NOT_READY,
            metadata={"status": row.status},
        )


@dataclass(frozen=True, slots=True)
class SignedUrl:
    url: str
    expire_time: dt.datetime
    headers: dict[str, str]


class Files:
    def __init__(
        self,
        settings: StorageSettings,
        store: Store,
        local: LocalBackend,
        s3: S3Backend | None,
    ) -> None:
        self.settings = settings
        self.buckets = Buckets(settings)
        self.store = store
        self.local = local
        self.s3 = s3
        self.primary: Backend = s3 if settings.storage_backend == "s3" and s3 else local

    def backend(self, kind: str) -> Backend:
        if kind == "local":
            return self.local
        if self.s3 is None:
            raise Unavailable(
                "this file lives in object storage, which is not configured",
                reason=Reason.DEPENDENCY_UNAVAILABLE,
                metadata={"dependency": "object storage"},
            )
        return self.s3

    async def _owned(self, user_id: str, id: str, *, field: str = "id") -> FileRow:
        file_id = parse_uuid(id, field=field)
        row = await self.store.get(file_id, user_id)
        if row is None:
            raise not_found("file", id)
        return row

    # -- streamed upload ----------------------------------------------------------------
    async def _writer(self, key: str, size: int) -> Writer:
        primary = await self.primary.open_writer(key, size)
        if primary.kind == "s3" and self.settings.storage_fallback_local:
            s3_writer: S3Writer = primary  # type: ignore[assignment]
            return FallbackWriter(s3_writer, self.local, key)
        return primary

    async def upload(
        self, user_id: str, messages: AsyncIterator[storage_pb2.UploadRequest]
    ) -> FileRow:
        it = aiter(messages)
        first = await anext(it, None)
        if first is None or first.WhichOneof("payload") != "header":
            raise InvalidArgument("the first message must be a header", field="header")
        header = first.header
        rule = self.buckets.from_proto(header.bucket, field="header.bucket")
        name = sanitize(header.filename, field="header.filename")
        labels = check_labels(header.labels, field="header.labels")
        declared_sha = check_sha256(header.sha256, field="header.sha256")
        rule.check_declared_size(header.size_bytes, field="header.size_bytes")
        size = header.size_bytes

        file_id = uuid.uuid4()
        key = object_key(rule, user_id, file_id, name)
        writer = await self._writer(key, size)
        ttl = dt.timedelta(seconds=self.settings.storage_stream_upload_ttl_seconds)
        await self.store.insert_uploading(
            id=file_id,
            user_id=user_id,
            bucket=rule.name,
            storage_path=key,
            filename=name,
            size_bytes=size,
            declared_sha256=declared_sha,
            backend=writer.kind,
            labels=labels,
            upload_expires_at=_now() + ttl,
        )
        committed = False
        total = 0
        hasher = hashlib.sha256()
        # Hashing (which releases the GIL) runs behind the stream on the I/O pool, as
        # the local writer's disk writes do: the loop only receives and hands chunks on.
        hashing: SerialJobs[bytes] = SerialJobs(hasher.update)
        try:
            sniffer = Sniffer()
            async for msg in it:
                kind = msg.WhichOneof("payload")
                if kind == "header":
                    raise InvalidArgument("the header must be sent once, first", field="header")
                chunk = msg.chunk
                if not chunk:
                    raise InvalidArgument("a chunk must carry 1 byte to 1 MiB", field="chunk")
                if len(chunk) > CHUNK:
                    raise InvalidArgument(
                        f"a chunk carries {len(chunk)} bytes; at most {CHUNK} are allowed",
                        field="chunk",
                    )
                total += len(chunk)
                if total > rule.max_bytes:
                    raise too_large(rule, f"the upload passed the {rule.name} bucket's limit")
                if total > size:
                    raise InvalidArgument(
                        f"received more than the {size} bytes declared in header.size_bytes",
                        field="header.size_bytes",
                        reason=Reason.CHECKSUM_MISMATCH,
                    )
                sniffer.feed(chunk)
                await hashing.put(chunk)
                await writer.write(chunk)
            await hashing.join()
            if total != size:
                raise InvalidArgument(
                    f"received {total} bytes but header.size_bytes is {size}",
                    field="header.size_bytes",
                    reason=Reason.CHECKSUM_MISMATCH,
                )
            digest = hasher.hexdigest()
            if declared_sha and declared_sha != digest:
                raise InvalidArgument(
                    "the content's sha256 differs from header.sha256",
                    field="header.sha256",
                    reason=Reason.CHECKSUM_MISMATCH,
                )
            content_type = rule.check_type(sniffer.result(name))
            await writer.commit()
            committed = True
            row = await self.store.mark_ready(
                file_id,
                user_id,
                content_type=content_type,
                size_bytes=total,
                sha256=digest,
                backend=writer.kind,
            )
            if row is None:
                raise FailedPrecondition(
                    "the file was deleted while it was uploading", reason=Reason.FILE_NOT_READY
                )
            return row
        except BaseException:
            # Shielded: a cancelled call still waits for the hash job and removes the
            # partial object and its row.
            await asyncio.shield(self._discard(writer, committed, key, file_id, hashing))
            raise
        finally:
            if total >= RELEASE_AFTER:  # what its chunks left free goes back to the system
                release()

    async def _discard(
        self,
        writer: Writer,
        committed: bool,
        key: str,
        file_id: uuid.UUID,
        hashing: SerialJobs[bytes],
    ) -> None:
        await hashing.close()
        try:
            if committed:
                await self.backend(writer.kind).delete(key)
            else:
                await writer.abort()
        except Exception as exc:  # the purge task retries via the UPLOADING row
            log.warning("could not remove the partial object of %s: %s", file_id, exc)
            return
        try:
            await self.store.delete_row(file_id)
        except Exception as exc:
            log.warning("could not remove the row of failed upload %s: %s", file_id, exc)

    # -- reads --------------------------------------------------------------------------
    async def get(self, user_id: str, id: str) -> FileRow:
        return await self._owned(user_id, id)

    async def download(
        self, user_id: str, id: str, offset: int, length: int
    ) -> tuple[FileRow, AsyncIterator[bytes]]:
        if offset < 0:
            raise InvalidArgument("offset must not be negative", field="offset")
        if length < 0:
            raise InvalidArgument("length must not be negative", field="length")
        row = await self._owned(user_id, id)
        _require_ready(row, id)
        if offset > row.size_bytes:
            raise InvalidArgument(
                f"offset {offset} is past the end of the file ({row.size_bytes} bytes)",
                field="offset",
            )
        end = row.size_bytes if length == 0 else min(row.size_bytes, offset + length)
        backend = self.backend(row.backend)
        return row, self._range(backend, row.storage_path, offset, end - offset)

    async def _range(
        self, backend: Backend, key: str, offset: int, count: int
    ) -> AsyncIterator[bytes]:
        if count <= 0:
            return
        try:
            async for chunk in backend.read(key, offset, count):
                yield chunk
        finally:
            if count >= RELEASE_AFTER:  # as after an upload
                release()

    async def list(
        self,
        user_id: str,
        *,
        page_size: int,
        page_token: str,
        bucket: storage_pb2.Bucket.ValueType,
        labels: dict[str, str],
    ) -> tuple[list[FileRow], str]:
        """One page of the user's files, newest first, and the next page token. The
        token is valid only for the same caller, bucket and labels."""
        bucket_name = None
        if bucket != storage_pb2.BUCKET_UNSPECIFIED:
            bucket_name = self.buckets.from_proto(bucket).name
        labels = check_labels(labels)
        label_filter = json.dumps(labels, sort_keys=True, separators=(",", ":"))
        page = pages.request(
            page_size, page_token, filter=f"bucket={bucket_name or ''}|labels={label_filter}"
        )
        rows = await self.store.list_files(user_id, page, bucket=bucket_name, labels=labels)
        return pages.take(rows, page, key=lambda r: r.page_key)

    async def delete(self, user_id: str, id: str) -> None:
        file_id = parse_uuid(id, field="id")
        if await self.store.soft_delete(file_id, user_id) is None:
            raise not_found("file", id)

    # -- signed URLs --------------------------------------------------------------------
    async def _writable_backend(self) -> Backend:
        if self.primary is self.s3 and self.s3 is not None and not await self.s3.check():
            if self.settings.storage_fallback_local:
                log.warning("object storage unreachable; issuing a local upload URL instead")
                return self.local
            raise BackendUnavailable("object storage is unreachable")
        return self.primary

    async def create_upload_url(
        self,
        user_id: str,
        *,
        bucket: storage_pb2.Bucket.ValueType,
        filename: str,
        size: int,
        sha256: str,
        labels: dict[str, str],
        ttl_seconds: int,
    ) -> tuple[FileRow, SignedUrl]:
        rule: BucketRule = self.buckets.from_proto(bucket)
        name = sanitize(filename)
        labels = check_labels(labels)
        declared_sha = check_sha256(sha256, field="sha256")
        ttl = url_ttl(ttl_seconds)
        rule.check_declared_size(size, field="size_bytes")
        backend = await self._writable_backend()
        file_id = uuid.uuid4()
        key = object_key(rule, user_id, file_id, name)
        expires_at = int(time.time()) + ttl
        expire_time = dt.datetime.fromtimestamp(expires_at, dt.UTC)
        row = await self.store.insert_uploading(
            id=file_id,
            user_id=user_id,
            bucket=rule.name,
            storage_path=key,
            filename=name,
            size_bytes=size,
            declared_sha256=declared_sha,
            backend=backend.kind,
            labels=labels,
            upload_expires_at=expire_time,
        )
        signed = await backend.presign(key, "PUT", str(file_id), expires_at, size)
        return row, SignedUrl(signed.url, expire_time, signed.headers)

    async def complete_upload(self, user_id: str, id: str, sha256: str) -> FileRow:
        given_sha = check_sha256(sha256, field="sha256")
        row = await self._owned(user_id, id)
        if row.status == "ready":
            return row
        if row.status == "deleted":
            raise FailedPrecondition(f"file {id!r} is deleted", reason=Reason.FILE_NOT_READY)
        backend = self.backend(row.backend)
        stored = await backend.size(row.storage_path)
        if stored is None:
            raise FailedPrecondition(
                f"nothing has been uploaded to file {id!r} yet", reason=Reason.FILE_NOT_READY
            )
        rule = self.buckets.by_name(row.bucket)
        try:
            if stored != row.size_bytes:
                raise InvalidArgument(
                    f"the uploaded object has {stored} bytes; {row.size_bytes} were declared",
                    reason=Reason.CHECKSUM_MISMATCH,
                )
            hasher = hashlib.sha256()
            sniffer = Sniffer()
            async for chunk in backend.read(row.storage_path):
                hasher.update(chunk)
                sniffer.feed(chunk)
            digest = hasher.hexdigest()
            for field, expected in (("sha256", given_sha), ("declared sha256", row.sha256)):
                if expected and expected != digest:
                    raise InvalidArgument(
                        f"the uploaded object's sha256 differs from the {field}",
                        field="sha256",
                        reason=Reason.CHECKSUM_MISMATCH,
                    )
            content_type = rule.check_type(sniffer.result(row.filename))
        except InvalidArgument:
            await backend.delete(row.storage_path)
            raise
        ready = await self.store.mark_ready(
            row.id,
            user_id,
            content_type=content_type,
            size_bytes=stored,
            sha256=digest,
            backend=row.backend,
        )
        if ready is None:
            raise FailedPrecondition(f"file {id!r} is deleted", reason=Reason.FILE_NOT_READY)
        return ready

    async def create_download_url(self, user_id: str, id: str, ttl_seconds: int) -> SignedUrl:
        ttl = url_ttl(ttl_seconds)
        row = await self._owned(user_id, id)
        _require_ready(row, id)
        expires_at = int(time.time()) + ttl
        signed = await self.backend(row.backend).presign(
            row.storage_path, "GET", str(row.id), expires_at, 0
        )
        return SignedUrl(signed.url, dt.datetime.fromtimestamp(expires_at, dt.UTC), signed.headers)

    # -- background ---------------------------------------------------------------------
    async def purge(self) -> int:
        """Removes objects and rows of files deleted longer ago than the retention, and of
        abandoned uploads. Returns how many files were purged."""
        retention = dt.timedelta(days=self.settings.storage_retention_days)
        grace = dt.timedelta(seconds=self.settings.storage_upload_grace_seconds)
        purged = 0
        for row in await self.store.purgeable(retention, grace):
            try:
                await self.backend(row.backend).delete(row.storage_path)
            except Exception as exc:
                log.warning("purge of %s failed, retried later: %s", row.id, exc)
                continue
            await self.store.delete_row(row.id)
            purged += 1
        if purged:
            log.info("purged %d file(s)", purged)
        return purged

    async def sync(self) -> int:
        if self.s3 is None:
            return 0
        return await sync_to_s3(self.store, self.local, self.s3)

    async def background(self) -> None:
        """The purge loop (and the fallback sync while S3 answers)."""
        while True:
            try:
                await self.purge()
                if (
                    self.s3 is not None
                    and self.settings.storage_auto_sync
                    and self.settings.storage_fallback_local
                    and await self.s3.check()
                ):
                    await self.sync()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("storage background pass failed")
            await asyncio.sleep(self.settings.storage_purge_interval_seconds)
