"""The S3 backend (aioboto3; any S3-compatible endpoint).

Small objects are buffered (at most one part) and stored with one PutObject; larger ones
go up as a multipart upload, one part in flight while the next is received, so a stream
holds at most two parts in memory whatever the file size (see `S3Writer`).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.util
import io
import logging
import sys
import time
from collections.abc import AsyncIterator, Awaitable
from types import ModuleType
from typing import Any, Literal, TypeVar

import aiohttp
from botocore.config import Config  # type: ignore[import-untyped]
from botocore.exceptions import BotoCoreError, ClientError  # type: ignore[import-untyped]

from services.storage.backends.base import CHUNK, BackendUnavailable, Kind, Presigned
from services.storage.config import StorageSettings

log = logging.getLogger("aivera.storage.s3")


def _import_aioboto3() -> ModuleType:
    """aioboto3, without the httpx backend aiobotocore loads when httpx is installed.

    The service talks to S3 through aiohttp only, and the storage image has no httpx,
    but a development environment does: there aiobotocore imported it, and httpx its
    command line's rich, pygments and click, ~6 MB the service never used (a tenth of
    its idle memory with the S3 client). A None entry in sys.modules makes aiobotocore's
    optional `import httpx` fail as it would without httpx; the entry is removed again,
    so other code in the process can still import httpx."""
    if "httpx" in sys.modules or importlib.util.find_spec("httpx") is None:
        return importlib.import_module("aioboto3")
    sys.modules["httpx"] = None  # type: ignore[assignment]
    try:
        return importlib.import_module("aioboto3")
    finally:
        del sys.modules["httpx"]


aioboto3 = _import_aioboto3()

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
    """Streams one object to S3: a single PutObject while it fits in one part, else a
    multipart upload.

    Chunks are written into the part being filled as they arrive (a `BytesIO` sized
    once, handed to botocore as the part's body, which aiohttp sends in 64 KiB pieces),
    so a part is never joined or copied whole. One part is in flight while the stream
    goes on: the chunks that arrive meanwhile are kept as they came (no copy) up to
    `lookahead` bytes, and the next part's buffer is allocated only once the part in
    flight is sent. A stream so holds at most `part_size + lookahead` bytes (12 MiB at
    the default 8 MiB parts; a second part buffer next to the one in flight made it 16),
    and a slow S3 slows it down through gRPC flow control. The next part is still ready
    at once: the held chunks plus what gRPC's window buffered meanwhile fill most of it.
    """

    kind: Kind = "s3"

    def __init__(
        self, client: Any, bucket: str, key: str, *, multipart: bool, part_size: int
    ) -> None:
        self._client = client
        self._bucket = bucket
        self._key = key
        # Announced as bigger than one part: size each part's buffer once up front.
        self._presize = multipart
        self._part_size = part_size
        self._lookahead = part_size // 2
        self._part: io.BytesIO | None = self._new_part()  # None: not allocated yet
        self._filled = 0  # bytes of `_part` written so far
        # Chunks received while a part was in flight and no part buffer was allocated.
        self._held: list[bytes] = []
        self._held_bytes = 0
        self._sending = 0  # bytes of the part in flight
        # A chunk a failed write could not place (only before anything left the
        # process): still part of `buffered()`, so the fallback replays every byte.
        self._unplaced = b""
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []
        self._pending: asyncio.Task[None] | None = None

    def _new_part(self) -> io.BytesIO:
        part = io.BytesIO()
        if self._presize:  # one allocation per part instead of growing it chunk by chunk
            part.seek(self._part_size - 1)
            part.write(b"\0")
            part.seek(0)
        return part

    @property
    def replayable(self) -> bool:
        """Nothing has left this process yet: every byte is still in the buffer."""
        return self._upload_id is None and not self._parts

    @property
    def buffered_bytes(self) -> int:
        """Bytes received and not yet handed to S3: the part being filled and the chunks
        held for the next one (a part in flight not counted)."""
        return self._filled + self._held_bytes + len(self._unplaced)

    @property
    def resident_bytes(self) -> int:
        """Bytes this writer holds in memory: the part in flight, the allocated part
        buffer (all of it when sized up front) and the held chunks."""
        part = 0
        if self._part is not None:
            part = self._part_size if self._presize else self._filled
        return self._sending + part + self._held_bytes + len(self._unplaced)

    def buffered(self) -> bytes:
        """Every byte received and not yet sent (a copy; for the local fallback)."""
        part = self._part.getvalue()[: self._filled] if self._part is not None else b""
        return part + b"".join(self._held) + self._unplaced

    async def write(self, chunk: bytes) -> None:
        if self._unplaced:
            raise BackendUnavailable("object storage failed earlier in this upload")
        view = memoryview(chunk)
        while view:
            if self._filled == self._part_size:  # a full part and more bytes: send it
                try:
                    await self._start_multipart()
                except BaseException:
                    self._unplaced = bytes(view)
                    raise
                await self._send_part()
            if self._part is None:
                in_flight = self._pending is not None and not self._pending.done()
                if in_flight and self._held_bytes + len(view) <= self._lookahead:
                    piece = chunk if len(view) == len(chunk) else bytes(view)
                    self._held.append(piece)
                    self._held_bytes += len(piece)
                    return
                await self._next_part()
                continue  # the held chunks may have filled it
            n = min(len(view), self._part_size - self._filled)
            self._place(view[:n])
            view = view[n:]

    def _place(self, data: memoryview | bytes) -> None:
        assert self._part is not None
        self._part.write(data)
        self._filled += len(data)

    async def _next_part(self) -> None:
        """Once the part in flight is sent: the next part's buffer, with the held chunks."""
        await self._wait_pending()
        self._part = self._new_part()
        held, self._held, self._held_bytes = self._held, [], 0
        for piece in held:  # fewer than `part_size` bytes: they fit
            self._place(piece)

    async def _wait_pending(self) -> None:
        if self._pending is not None:  # one part in flight at a time
            pending, self._pending = self._pending, None
            try:
                await pending
            finally:
                self._sending = 0

    async def _start_multipart(self) -> None:
        if self._upload_id is None:
            created = await _call(
                self._client.create_multipart_upload(Bucket=self._bucket, Key=self._key)
            )
            self._upload_id = str(created["UploadId"])

    def _body(self) -> io.BytesIO:
        """The part being filled as a request body: cut to its bytes, positioned at 0.
        It stays the current part (so `buffered()` still has it) until replaced."""
        body = self._part if self._part is not None else io.BytesIO()
        if self._presize and self._filled < self._part_size:
            body.truncate(self._filled)  # the last part: drop the unused room
        body.seek(0)
        return body

    async def _send_part(self) -> None:
        await self._wait_pending()
        number = len(self._parts) + 1
        self._parts.append({"PartNumber": number})
        body = self._body()
        # The next part's buffer is allocated only once this one is sent (`_next_part`).
        self._part = None
        self._sending, self._filled = self._filled, 0
        self._pending = asyncio.create_task(self._upload_part(number, body))

    async def _upload_part(self, number: int, body: io.BytesIO) -> None:
        resp = await _call(
            self._client.upload_part(
                Bucket=self._bucket,
                Key=self._key,
                UploadId=self._upload_id,
                PartNumber=number,
                Body=body,
            )
        )
        self._parts[number - 1]["ETag"] = resp["ETag"]

    async def commit(self) -> None:
        if self._upload_id is None:
            body = self._body()
            await _call(self._client.put_object(Bucket=self._bucket, Key=self._key, Body=body))
            self._part, self._filled = io.BytesIO(), 0
            return
        if self._held:
            await self._next_part()
        if self._filled:
            await self._send_part()
        await self._wait_pending()
        await _call(
            self._client.complete_multipart_upload(
                Bucket=self._bucket,
                Key=self._key,
                UploadId=self._upload_id,
                MultipartUpload={"Parts": self._parts},
            )
        )

    async def abort(self) -> None:
        self._part = None
        self._filled = 0
        self._held, self._held_bytes = [], 0
        self._unplaced = b""
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
