"""The S3 backend (aioboto3; any S3-compatible endpoint).

Small objects are buffered (at most the multipart threshold) and stored with one
PutObject; larger ones go up as a multipart upload, one part in flight while the next is
received, so a stream holds at most two parts in memory whatever the file size.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any, Literal, TypeVar

import aioboto3
import aiohttp
from botocore.config import Config  # type: ignore[import-untyped]
from botocore.exceptions import BotoCoreError, ClientError  # type: ignore[import-untyped]

from services.storage.backends.base import CHUNK, BackendUnavailable, Kind, Presigned
from services.storage.config import StorageSettings

log = logging.getLogger("aivera.storage.s3")

T = TypeVar("T")


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


async def _call(aw: Awaitable[T]) -> T:
    """Await an S3 call, turning "cannot reach S3" into BackendUnavailable."""
    try:
        return await aw
    except ClientError as exc:
        if _status(exc) >= 500:
            raise BackendUnavailable(f"object storage answered {_status(exc)}") from exc
        raise
    except (BotoCoreError, aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise BackendUnavailable("object storage is unreachable") from exc


class S3Writer:
    kind: Kind = "s3"

    def __init__(
        self, client: Any, bucket: str, key: str, *, multipart: bool, part_size: int
    ) -> None:
        self._client = client
        self._bucket = bucket
        self._key = key
        self._multipart = multipart
        self._part_size = part_size
        # Received chunks not yet sent, joined into a part only when one is full: a
        # growing bytearray would be reallocated and copied over and over.
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []
        self._pending: asyncio.Task[None] | None = None

    @property
    def replayable(self) -> bool:
        """Nothing has left this process yet: every byte is still in the buffer."""
        return self._upload_id is None and not self._parts

    def buffered(self) -> bytes:
        return b"".join(self._chunks)

    def _take(self, size: int) -> bytes:
        """The first `size` buffered bytes (all of them when fewer), removed."""
        taken: list[bytes] = []
        got = 0
        while self._chunks and got < size:
            chunk = self._chunks.pop(0)
            if got + len(chunk) > size:
                cut = size - got
                self._chunks.insert(0, chunk[cut:])
                chunk = chunk[:cut]
            taken.append(chunk)
            got += len(chunk)
        self._buffered -= got
        return b"".join(taken)

    async def write(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._buffered += len(chunk)
        if not self._multipart and self._buffered > self._part_size:
            self._multipart = True  # more than announced: switch to parts
        if self._multipart and self._buffered >= self._part_size:
            await self._start_multipart()  # before taking: a failure keeps the buffer whole
            await self._send_part(self._take(self._part_size))

    async def _start_multipart(self) -> None:
        if self._upload_id is None:
            created = await _call(
                self._client.create_multipart_upload(Bucket=self._bucket, Key=self._key)
            )
            self._upload_id = str(created["UploadId"])

    async def _send_part(self, data: bytes) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            await pending
        number = len(self._parts) + 1
        self._parts.append({"PartNumber": number})
        self._pending = asyncio.create_task(self._upload_part(number, data))

    async def _upload_part(self, number: int, data: bytes) -> None:
        resp = await _call(
            self._client.upload_part(
                Bucket=self._bucket,
                Key=self._key,
                UploadId=self._upload_id,
                PartNumber=number,
                Body=data,
            )
        )
        self._parts[number - 1]["ETag"] = resp["ETag"]

    async def commit(self) -> None:
        if self._upload_id is None:
            body = self.buffered()
            await _call(self._client.put_object(Bucket=self._bucket, Key=self._key, Body=body))
            self._chunks.clear()
            self._buffered = 0
            return
        if self._buffered:
            await self._send_part(self._take(self._buffered))
        if self._pending is not None:
            pending, self._pending = self._pending, None
            await pending
        await _call(
            self._client.complete_multipart_upload(
                Bucket=self._bucket,
                Key=self._key,
                UploadId=self._upload_id,
                MultipartUpload={"Parts": self._parts},
            )
        )

    async def abort(self) -> None:
        self._chunks.clear()
        self._buffered = 0
        if self._pending is not None:
            self._pending.cancel()
            with contextlib.suppress(BaseException):
                await self._pending
        if self._upload_id is not None:
            try:
                await self._client.abort_multipart_upload(
                    Bucket=self._bucket, Key=self._key, UploadId=self._upload_id
                )
            except Exception as exc:  # the purge task removes what is left
                log.warning("could not abort multipart upload of %s: %s", self._key, exc)


class S3Backend:
    kind: Kind = "s3"

    def __init__(self, settings: StorageSettings) -> None:
        self.bucket = settings.s3_bucket
        self._settings = settings
        self._threshold = settings.storage_multipart_threshold
        self._part_size = max(settings.storage_multipart_part_size, 5 * 1024 * 1024)
        self._stack = contextlib.AsyncExitStack()
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            raise BackendUnavailable("object storage client is not started")
        return self._client

    async def start(self) -> None:
        s = self._settings
        secret = s.s3_secret_access_key.get_secret_value() if s.s3_secret_access_key else None
        session = aioboto3.Session(
            aws_access_key_id=s.s3_access_key_id,
            aws_secret_access_key=secret,
            region_name=s.s3_region,
        )
        config = Config(
            signature_version="s3v4",
            s3={"addressing_style": "path" if s.s3_path_style else "auto"},
            connect_timeout=s.s3_connect_timeout_seconds,
            read_timeout=s.s3_read_timeout_seconds,
            retries={"max_attempts": s.s3_max_attempts, "mode": "standard"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            max_pool_connections=32,
        )
        self._client = await self._stack.enter_async_context(
            session.client("s3", endpoint_url=s.s3_endpoint_url, config=config)
        )

    async def close(self) -> None:
        await self._stack.aclose()
        self._client = None

    async def ensure_bucket(self) -> None:
        try:
            await _call(self.client.head_bucket(Bucket=self.bucket))
            return
        except ClientError as exc:
            if _status(exc) != 404 and _code(exc) not in ("404", "NoSuchBucket", "NotFound"):
                raise
        params: dict[str, Any] = {"Bucket": self.bucket}
        if self._settings.s3_region != "us-east-1":
            params["CreateBucketConfiguration"] = {"LocationConstraint": self._settings.s3_region}
        try:
            await _call(self.client.create_bucket(**params))
        except ClientError:  # created meanwhile by another replica
            return
        # Multipart uploads of a crashed process are dropped by S3 itself after a day.
        rule = {
            "ID": "abort-incomplete-multipart",
            "Status": "Enabled",
            "Filter": {"Prefix": ""},
            "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1},
        }
        try:
            await _call(
                self.client.put_bucket_lifecycle_configuration(
                    Bucket=self.bucket, LifecycleConfiguration={"Rules": [rule]}
                )
            )
        except ClientError as exc:
            log.warning("could not set the bucket's lifecycle rule: %s", exc)
        log.info("created bucket %s", self.bucket)

    async def open_writer(self, key: str, size_hint: int) -> S3Writer:
        return S3Writer(
            self.client,
            self.bucket,
            key,
            multipart=size_hint > self._threshold,
            part_size=self._part_size,
        )

    async def read(self, key: str, offset: int = 0, length: int = 0) -> AsyncIterator[bytes]:
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if offset or length:
            end = "" if length <= 0 else str(offset + length - 1)
            params["Range"] = f"bytes={offset}-{end}"
        resp = await _call(self.client.get_object(**params))
        body = resp["Body"]
        try:
            buf = bytearray()
            while True:
                data = await _call(body.read(CHUNK - len(buf)))
                if not data:
                    break
                buf += data
                if len(buf) >= CHUNK:
                    yield bytes(buf)
                    buf.clear()
            if buf:
                yield bytes(buf)
        finally:
            body.close()

    async def size(self, key: str) -> int | None:
        try:
            head = await _call(self.client.head_object(Bucket=self.bucket, Key=key))
        except ClientError as exc:
            if _status(exc) == 404:
                return None
            raise
        return int(head["ContentLength"])

    async def delete(self, key: str) -> None:
        await _call(self.client.delete_object(Bucket=self.bucket, Key=key))

    async def presign(
        self, key: str, method: Literal["GET", "PUT"], file_id: str, expires_at: int, size: int
    ) -> Presigned:
        ttl = max(1, expires_at - int(time.time()))
        if method == "PUT":
            params = {"Bucket": self.bucket, "Key": key, "ContentLength": size}
            url = await self.client.generate_presigned_url(
                "put_object", Params=params, ExpiresIn=ttl
            )
            return Presigned(str(url), {"content-length": str(size)})
        url = await self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=ttl
        )
        return Presigned(str(url))

    async def check(self) -> bool:
        try:
            await _call(self.client.head_bucket(Bucket=self.bucket))
        except Exception:
            return False
        return True
