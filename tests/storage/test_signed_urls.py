"""Direct transfers: CreateUploadUrl → PUT → CompleteUpload, and CreateDownloadUrl → GET,
on both backends. The local backend's URLs are checked end to end (expiry, method,
tampering). moto does not enforce S3 signatures or expiry, so S3 URLs are checked by
verifying their SigV4 query signature here, as S3 itself would."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import time
import uuid
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

import aiohttp
import grpc
import pytest

from aivera.storage.v1 import storage_pb2
from tests.helpers.errors import reason
from tests.storage.conftest import PDF, PNG, Svc, code_of, download, sha

DOCS = storage_pb2.BUCKET_DOCUMENTS


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def s3_url_valid(
    method: str, url: str, headers: dict[str, str], *, secret: str = "test", now: float
) -> bool:
    """SigV4 query-string verification, as S3 does it."""
    parts = urlsplit(url)
    params = dict(parse_qsl(parts.query, keep_blank_values=True))
    signature = params.pop("X-Amz-Signature")
    amz_date = params["X-Amz-Date"]
    start = dt.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
    if now > start.timestamp() + int(params["X-Amz-Expires"]):
        return False
    signed = params["X-Amz-SignedHeaders"].split(";")
    values = {"host": parts.netloc, **{k.lower(): v for k, v in headers.items()}}
    canonical = "\n".join(
        [
            method,
            parts.path,
            "&".join(
                f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}"
                for k, v in sorted(params.items())
            ),
            "".join(f"{h}:{values[h].strip()}\n" for h in signed),
            ";".join(signed),
            "UNSIGNED-PAYLOAD",
        ]
    )
    scope = params["X-Amz-Credential"].split("/", 1)[1]
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    day, region, service, terminal = scope.split("/")
    key = _hmac(_hmac(_hmac(_hmac(f"AWS4{secret}".encode(), day), region), service), terminal)
    return hmac.compare_digest(
        hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest(), signature
    )


async def _put(url: str, data: bytes, headers: dict[str, str]) -> int:
    async with aiohttp.ClientSession() as http, http.put(url, data=data, headers=headers) as r:
        return r.status


async def _get(url: str) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as http, http.get(url) as r:
        return r.status, await r.read()


async def test_upload_url_round_trip(svc: Svc) -> None:
    u = str(uuid.uuid4())
    md = svc.md(u)
    data = "# Заметки\n".encode() * 1000
    created = await svc.stub.CreateUploadUrl(
        storage_pb2.CreateUploadUrlRequest(
            bucket=DOCS,
            filename="../заметки.md",
            size_bytes=len(data),
            sha256=sha(data),
            labels={"purpose": "kb"},
            ttl_seconds=120,
        ),
        metadata=md,
    )
    f = created.file
    assert f.status == storage_pb2.FILE_STATUS_UPLOADING and f.filename == "заметки.md"
    assert f.content_type == "" and f.sha256 == sha(data) and f.size_bytes == len(data)
    assert abs(created.expire_time.seconds - (time.time() + 120)) < 5
    assert created.headers["content-length"] == str(len(data))
    assert "storage" not in created.url.split("?")[0].split("/")[-1]  # the id, not a path
    complete = storage_pb2.CompleteUploadRequest(id=f.id)
    err = await _error_of(svc.stub.CompleteUpload(complete, metadata=md))  # nothing uploaded yet
    assert (err.code(), reason(err)) == (grpc.StatusCode.FAILED_PRECONDITION, "FILE_NOT_READY")
    assert await _put(created.url, data, dict(created.headers)) == 200
    ready = await svc.stub.CompleteUpload(complete, metadata=md)
    assert ready.status == storage_pb2.FILE_STATUS_READY
    assert (ready.content_type, ready.sha256, ready.size_bytes) == (
        "text/markdown",
        sha(data),
        len(data),
    )
    assert await svc.stub.CompleteUpload(complete, metadata=md) == ready  # retry: unchanged
    _, body, _ = await download(svc, u, f.id)
    assert body == data
    if svc.backend == "local":  # the URL is single-purpose: no second PUT once READY
        assert await _put(created.url, data, dict(created.headers)) == 409


async def _error_of(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value


async def test_complete_upload_rejects_bad_content_and_allows_retry(svc: Svc) -> None:
    u = str(uuid.uuid4())
    md = svc.md(u)
    good = PDF
    created = await svc.stub.CreateUploadUrl(
        storage_pb2.CreateUploadUrlRequest(bucket=DOCS, filename="x.pdf", size_bytes=len(good)),
        metadata=md,
    )
    headers = dict(created.headers)
    complete = storage_pb2.CompleteUploadRequest(id=created.file.id)
    wrong_type = (PNG * 100)[: len(good)]
    wrong_sha = storage_pb2.CompleteUploadRequest(id=created.file.id, sha256=sha(b"other"))
    for content, request, why in (
        (wrong_type, complete, "UNSUPPORTED_FORMAT"),
        (good, wrong_sha, "CHECKSUM_MISMATCH"),
    ):
        assert await _put(created.url, content, headers) == 200
        err = await _error_of(svc.stub.CompleteUpload(request, metadata=md))
        assert (err.code(), reason(err)) == (grpc.StatusCode.INVALID_ARGUMENT, why)
        got = await svc.stub.GetFile(storage_pb2.GetFileRequest(id=created.file.id), metadata=md)
        assert got.status == storage_pb2.FILE_STATUS_UPLOADING
        assert await svc.objects(u) == []  # the bad object was removed
    if svc.backend == "local":  # a body of another size is refused by the PUT itself
        assert await _put(created.url, good + b"x", {}) == 400
    else:  # S3 stores it; CompleteUpload refuses it
        assert await _put(created.url, good + b"x", {}) == 200
        err = await _error_of(svc.stub.CompleteUpload(complete, metadata=md))
        invalid = grpc.StatusCode.INVALID_ARGUMENT
        assert (err.code(), reason(err)) == (invalid, "CHECKSUM_MISMATCH")
    assert await _put(created.url, good, headers) == 200
    ready = await svc.stub.CompleteUpload(
        storage_pb2.CompleteUploadRequest(id=created.file.id, sha256=sha(good)), metadata=md
    )
    assert ready.content_type == "application/pdf"
    await svc.stub.DeleteFile(storage_pb2.DeleteFileRequest(id=ready.id), metadata=md)
    # Deleted while uploading: completion is refused.
    other = await svc.stub.CreateUploadUrl(
        storage_pb2.CreateUploadUrlRequest(bucket=DOCS, filename="y.pdf", size_bytes=len(good)),
        metadata=md,
    )
    await svc.stub.DeleteFile(storage_pb2.DeleteFileRequest(id=other.file.id), metadata=md)
    err = await _error_of(
        svc.stub.CompleteUpload(storage_pb2.CompleteUploadRequest(id=other.file.id), metadata=md)
    )
    assert (err.code(), reason(err)) == (grpc.StatusCode.FAILED_PRECONDITION, "FILE_NOT_READY")


async def test_create_upload_url_rejections(svc: Svc) -> None:
    md = svc.md(str(uuid.uuid4()))
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    cases = [
        (storage_pb2.CreateUploadUrlRequest(filename="a.md", size_bytes=1), invalid),
        (storage_pb2.CreateUploadUrlRequest(bucket=DOCS, filename="..", size_bytes=1), invalid),
        (
            storage_pb2.CreateUploadUrlRequest(
                bucket=DOCS, filename="a.md", size_bytes=1, ttl_seconds=-1
            ),
            invalid,
        ),
        (
            storage_pb2.CreateUploadUrlRequest(
                bucket=DOCS, filename="a.md", size_bytes=1, ttl_seconds=604801
            ),
            invalid,
        ),
        (
            storage_pb2.CreateUploadUrlRequest(
                bucket=DOCS, filename="a.md", size_bytes=1, sha256="zz"
            ),
            invalid,
        ),
        (
            storage_pb2.CreateUploadUrlRequest(
                bucket=DOCS, filename="a.md", size_bytes=1, labels={"BAD": "x"}
            ),
            invalid,
        ),
        (
            storage_pb2.CreateUploadUrlRequest(
                bucket=storage_pb2.BUCKET_IMAGES, filename="a.png", size_bytes=2 * 1024 * 1024 + 1
            ),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        ),
    ]
    for request, code in cases:
        err = await _error_of(svc.stub.CreateUploadUrl(request, metadata=md))
        assert err.code() is code, request
        if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
            assert reason(err) == "FILE_TOO_LARGE"


async def test_download_url(svc: Svc) -> None:
    u = str(uuid.uuid4())
    md = svc.md(u)
    data = PDF * 50
    f = await svc.stub.Upload(
        iter(
            [
                storage_pb2.UploadRequest(
                    header=storage_pb2.UploadHeader(
                        bucket=DOCS, filename="Доклад.pdf", size_bytes=len(data)
                    )
                ),
                storage_pb2.UploadRequest(chunk=data),
            ]
        ),
        metadata=md,
    )
    resp = await svc.stub.CreateDownloadUrl(
        storage_pb2.CreateDownloadUrlRequest(id=f.id), metadata=md
    )
    assert abs(resp.expire_time.seconds - (time.time() + 3600)) < 5
    async with aiohttp.ClientSession() as http, http.get(resp.url) as r:
        assert (r.status, await r.read()) == (200, data)
        if svc.backend == "local":
            assert r.headers["Content-Type"] == "application/pdf"
            disposition = r.headers["Content-Disposition"]
            assert (
                disposition
                == "attachment; filename*=UTF-8''%D0%94%D0%BE%D0%BA%D0%BB%D0%B0%D0%B4.pdf"
            )
    week = await svc.stub.CreateDownloadUrl(
        storage_pb2.CreateDownloadUrlRequest(id=f.id, ttl_seconds=604800), metadata=md
    )
    assert abs(week.expire_time.seconds - (time.time() + 604800)) < 5
    for ttl in (-1, 604801):
        code = await code_of(
            svc.stub.CreateDownloadUrl(
                storage_pb2.CreateDownloadUrlRequest(id=f.id, ttl_seconds=ttl), metadata=md
            )
        )
        assert code is grpc.StatusCode.INVALID_ARGUMENT
    pending = await svc.stub.CreateUploadUrl(
        storage_pb2.CreateUploadUrlRequest(bucket=DOCS, filename="p.md", size_bytes=3),
        metadata=md,
    )
    code = await code_of(
        svc.stub.CreateDownloadUrl(
            storage_pb2.CreateDownloadUrlRequest(id=pending.file.id), metadata=md
        )
    )
    assert code is grpc.StatusCode.FAILED_PRECONDITION


async def test_urls_expire_and_are_bound_to_their_method(svc: Svc) -> None:
    u = str(uuid.uuid4())
    md = svc.md(u)
    data = b"short-lived"
    f = await svc.stub.Upload(
        iter(
            [
                storage_pb2.UploadRequest(
                    header=storage_pb2.UploadHeader(bucket=DOCS, filename="s.txt", size_bytes=11)
                ),
                storage_pb2.UploadRequest(chunk=data),
            ]
        ),
        metadata=md,
    )
    get = await svc.stub.CreateDownloadUrl(
        storage_pb2.CreateDownloadUrlRequest(id=f.id, ttl_seconds=1), metadata=md
    )
    put = await svc.stub.CreateUploadUrl(
        storage_pb2.CreateUploadUrlRequest(
            bucket=DOCS, filename="n.txt", size_bytes=len(data), ttl_seconds=1
        ),
        metadata=md,
    )
    put_headers = dict(put.headers)
    if svc.backend == "s3":
        now = time.time()
        assert s3_url_valid("GET", get.url, {}, now=now)
        assert s3_url_valid("PUT", put.url, put_headers, now=now)
        assert not s3_url_valid("PUT", get.url, {}, now=now)
        assert not s3_url_valid("GET", put.url, put_headers, now=now)
        assert not s3_url_valid("DELETE", get.url, {}, now=now)
        assert not s3_url_valid("GET", get.url, {}, now=now + 2)
        assert not s3_url_valid("PUT", put.url, put_headers, now=now + 2)
        assert not s3_url_valid("GET", get.url.replace("s.txt", "x.txt"), {}, now=now)
        return
    # Local backend: the storage service's HTTP port enforces all of it. Method binding
    # is checked with long-lived URLs, so a slow machine cannot expire them mid-check.
    live_get = await svc.stub.CreateDownloadUrl(
        storage_pb2.CreateDownloadUrlRequest(id=f.id, ttl_seconds=600), metadata=md
    )
    live_put = await svc.stub.CreateUploadUrl(
        storage_pb2.CreateUploadUrlRequest(
            bucket=DOCS, filename="m.txt", size_bytes=len(data), ttl_seconds=600
        ),
        metadata=md,
    )
    assert (await _get(live_get.url))[0] == 200
    assert await _put(live_get.url, data, {}) == 403  # a GET URL does not allow PUT
    assert (await _get(live_put.url))[0] == 403  # a PUT URL does not allow GET
    tampered = live_get.url.replace("sig=", "sig=0")
    assert (await _get(tampered))[0] == 403
    other = live_get.url.replace(f.id, live_put.file.id)
    assert (await _get(other))[0] == 403
    async with aiohttp.ClientSession() as http, http.delete(live_get.url) as r:
        assert r.status == 405
    await asyncio.sleep(2.1)
    assert (await _get(get.url))[0] == 403
    assert await _put(put.url, data, put_headers) == 403


@pytest.mark.parametrize("ttl", [0, 30])
async def test_upload_url_expiry_is_reported(svc: Svc, ttl: int) -> None:
    md = svc.md(str(uuid.uuid4()))
    created = await svc.stub.CreateUploadUrl(
        storage_pb2.CreateUploadUrlRequest(
            bucket=DOCS, filename="a.md", size_bytes=1, ttl_seconds=ttl
        ),
        metadata=md,
    )
    assert abs(created.expire_time.seconds - (time.time() + (ttl or 3600))) < 5
