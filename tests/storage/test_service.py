"""The storage service through real gRPC, once per backend (local and S3 via moto):
round trips, every rejection, listing, deletion and purge, and user isolation."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from aivera.storage.v1 import storage_pb2, storage_pb2_grpc
from services.storage.config import MiB
from tests.helpers.errors import error_info, reason
from tests.storage.conftest import (
    PART,
    PDF,
    PNG,
    Svc,
    code_of,
    download,
    requests,
    safetensors,
    sha,
    upload,
)

DOCS = storage_pb2.BUCKET_DOCUMENTS
BACKEND = {"local": storage_pb2.BACKEND_LOCAL, "s3": storage_pb2.BACKEND_S3}


def user() -> str:
    return str(uuid.uuid4())


@pytest.mark.parametrize(
    ("size", "bucket", "name", "ctype"),
    [
        (0, 0, "tiny.md", "text/markdown"),
        (3 * MiB + 123, DOCS, "scan.pdf", "application/pdf"),
        (2 * PART + MiB, storage_pb2.BUCKET_MODELS, "adapter.safetensors", ""),
    ],
    ids=["small", "multi-chunk", "multipart"],
)
async def test_round_trip(
    svc: Svc, size: int, bucket: storage_pb2.Bucket.ValueType, name: str, ctype: str
) -> None:
    u = user()
    if size == 0:
        data, bucket = "# Привет\nсмотри: small file\n".encode(), DOCS
    elif name.endswith(".pdf"):
        data = (PDF + os.urandom(size))[:size]
    else:
        data, ctype = safetensors(size), "application/vnd.safetensors"
    f = await upload(
        svc, u, data, bucket=bucket, filename=name, sha256=sha(data), labels={"kb_id": "k1"}
    )
    assert f.status == storage_pb2.FILE_STATUS_READY
    assert f.backend == BACKEND[svc.backend]
    assert (f.size_bytes, f.sha256, f.content_type) == (len(data), sha(data), ctype)
    assert f.filename == name and dict(f.labels) == {"kb_id": "k1"}
    assert f.create_time.seconds > 0 and not f.HasField("delete_time")
    got = await svc.stub.GetFile(storage_pb2.GetFileRequest(id=f.id), metadata=svc.md(u))
    assert got == f
    meta, body, _ = await download(svc, u, f.id)
    assert meta == f and body == data
    # Ranges.
    _, part, _ = await download(svc, u, f.id, offset=5, length=10)
    assert part == data[5:15]
    _, tail, _ = await download(svc, u, f.id, offset=len(data) - 3, length=100)
    assert tail == data[-3:]
    _, nothing, sent = await download(svc, u, f.id, offset=len(data))
    assert nothing == b"" and sent == 0
    assert svc.backend == "local" or await svc.objects(u) == [
        f"{bucket_name(bucket)}/{u}/{f.id}/{name}"
    ]


def bucket_name(bucket: storage_pb2.Bucket.ValueType) -> str:
    return {DOCS: "documents", storage_pb2.BUCKET_MODELS: "models"}[bucket]


async def test_cyrillic_and_unsafe_names(svc: Svc) -> None:
    u = user()
    f = await upload(svc, u, b"hello", filename="../../etc/Отчёт за год.txt")
    assert f.filename == "Отчёт за год.txt" and f.content_type == "text/plain"
    _, body, _ = await download(svc, u, f.id)
    assert body == b"hello"
    if svc.backend == "local":
        assert (svc.files.local.root / "documents" / u / f.id / "Отчёт за год.txt").is_file()
    # Control characters are refused at the edge (the RPC wrapper), never stored.
    err = await _upload_error(svc, u, requests(b"hello", filename="Отчёт\x00.txt"))
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert _field(err) == "header.filename"


async def test_download_rejections(svc: Svc) -> None:
    u = user()
    f = await upload(svc, u, b"0123456789", filename="a.txt")
    for offset, length in ((-1, 0), (0, -1), (11, 0)):
        code = await code_of(download(svc, u, f.id, offset, length))
        assert code is grpc.StatusCode.INVALID_ARGUMENT, (offset, length)
    assert await code_of(download(svc, u, "not-a-uuid")) is grpc.StatusCode.INVALID_ARGUMENT
    assert await code_of(download(svc, u, str(uuid.uuid4()))) is grpc.StatusCode.NOT_FOUND


def _sync_upload(
    svc: Svc, md: tuple[tuple[str, str], ...], reqs: Iterable[storage_pb2.UploadRequest]
) -> storage_pb2.File:
    # The blocking client: grpc.aio's client reports INTERNAL ("Failed execute_batch")
    # instead of the server's status when the server ends the call while the client is
    # still writing (grpc/grpc#36066) -- exactly what an early rejection does.
    with grpc.insecure_channel(f"127.0.0.1:{svc.app.grpc_port}") as ch:
        stub = storage_pb2_grpc.StorageServiceStub(ch)
        result: storage_pb2.File = stub.Upload(iter(reqs), metadata=md)
        return result


async def _upload_error(
    svc: Svc, u: str, reqs: Iterable[storage_pb2.UploadRequest]
) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        await asyncio.to_thread(_sync_upload, svc, svc.md(u), reqs)
    return info.value


def _field(err: grpc.RpcError) -> str:
    status = rpc_status.from_call(err)
    if status is None:
        return ""
    for detail in status.details:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            return str(bad.field_violations[0].field)
    return ""


async def test_upload_rejections_leave_nothing(svc: Svc) -> None:
    u = user()
    text = b"plain text " * 100
    header = next(requests(text, filename="n.txt"))
    chunk = storage_pb2.UploadRequest(chunk=text)
    INVALID, EXHAUSTED = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED
    BAD, MISMATCH, FORMAT, TOO_LARGE = (
        "INVALID_ARGUMENT",
        "CHECKSUM_MISMATCH",
        "UNSUPPORTED_FORMAT",
        "FILE_TOO_LARGE",
    )
    cases: dict[str, tuple[list[storage_pb2.UploadRequest], grpc.StatusCode, str, str]] = {
        "empty stream": ([], INVALID, "header", BAD),
        "chunk first": ([chunk], INVALID, "header", BAD),
        "repeated header": ([header, chunk, header], INVALID, "header", BAD),
        "no bucket": (
            list(requests(text, bucket=storage_pb2.BUCKET_UNSPECIFIED)),
            INVALID,
            "header.bucket",
            BAD,
        ),
        "bad filename": (list(requests(text, filename="../..")), INVALID, "header.filename", BAD),
        "bad label": (
            list(requests(text, labels={"Bad Key": "v"})),
            INVALID,
            "header.labels",
            BAD,
        ),
        "bad sha": (list(requests(text, sha256="abc")), INVALID, "header.sha256", BAD),
        "negative size": (list(requests(text, size=-1)), INVALID, "header.size_bytes", BAD),
        "chunk over 1 MiB": (
            list(requests(b"a" * (MiB + 1), chunk=MiB + 1, filename="a.txt")),
            INVALID,
            "chunk",
            BAD,
        ),
        "empty chunk": ([header, storage_pb2.UploadRequest(chunk=b"")], INVALID, "chunk", BAD),
        "fewer bytes": (
            list(requests(text, size=len(text) + 1)),
            INVALID,
            "header.size_bytes",
            MISMATCH,
        ),
        "more bytes": (
            list(requests(text, size=len(text) - 1)),
            INVALID,
            "header.size_bytes",
            MISMATCH,
        ),
        "sha mismatch": (
            list(requests(text, sha256=sha(b"other"))),
            INVALID,
            "header.sha256",
            MISMATCH,
        ),
        "type not allowed": (
            list(requests(PNG, bucket=storage_pb2.BUCKET_DATASETS, filename="x.json")),
            INVALID,
            "",
            FORMAT,
        ),
        "text posing as png": (
            list(requests(b"hello", bucket=storage_pb2.BUCKET_IMAGES, filename="x.png")),
            INVALID,
            "",
            FORMAT,
        ),
        "binary posing as text": (
            list(requests(b"\x00\x01\x02\x03", filename="x.txt")),
            INVALID,
            "",
            FORMAT,
        ),
        "declared over limit": (
            list(requests(PNG, bucket=storage_pb2.BUCKET_IMAGES, size=2 * MiB + 1)),
            EXHAUSTED,
            "",
            TOO_LARGE,
        ),
        "received over limit": (
            list(
                requests(
                    PNG + bytes(2 * MiB),
                    bucket=storage_pb2.BUCKET_IMAGES,
                    filename="big.png",
                    size=2 * MiB,
                )
            ),
            EXHAUSTED,
            "",
            TOO_LARGE,
        ),
    }
    for name, (reqs, code, field, why) in cases.items():
        err = await _upload_error(svc, u, reqs)
        assert err.code() is code, (name, err.details())
        assert _field(err) == field, name
        assert reason(err) == why, name
    listed = await svc.stub.ListFiles(storage_pb2.ListFilesRequest(), metadata=svc.md(u))
    assert list(listed.files) == []
    assert await svc.objects(u) == []


async def test_over_limit_stops_reading_at_once(svc: Svc) -> None:
    u = user()
    sent = 0
    total_chunks = 200  # 200 MiB if it were all read

    def stream() -> Iterator[storage_pb2.UploadRequest]:
        nonlocal sent
        yield storage_pb2.UploadRequest(
            header=storage_pb2.UploadHeader(
                bucket=storage_pb2.BUCKET_IMAGES, filename="big.png", size_bytes=2 * MiB
            )
        )
        block = PNG + bytes(MiB - len(PNG))
        for _ in range(total_chunks):
            sent += 1
            yield storage_pb2.UploadRequest(chunk=block)

    err = await _upload_error(svc, u, stream())
    assert err.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert reason(err) == "FILE_TOO_LARGE"
    info = error_info(err)
    assert info.domain == "storage.aivera.dev"
    assert info.metadata["bucket"] == "images" and info.metadata["limit_bytes"] == str(2 * MiB)
    assert sent < 40, sent
    assert await svc.objects(u) == []


async def test_cancelled_upload_removes_partial_object(svc: Svc) -> None:
    u = user()
    gate = asyncio.Event()

    async def stream() -> AsyncIterator[storage_pb2.UploadRequest]:
        data = PDF + bytes(PART + MiB)
        for req in requests(data, filename="c.pdf"):
            yield req
            if req.WhichOneof("payload") == "chunk" and not gate.is_set():
                gate.set()
                await asyncio.sleep(3600)

    call = svc.stub.Upload(stream(), metadata=svc.md(u))
    await gate.wait()
    await asyncio.sleep(0.3)  # the server has the row and a partial object now
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    for _ in range(50):
        listed = await svc.stub.ListFiles(storage_pb2.ListFilesRequest(), metadata=svc.md(u))
        if not listed.files and not await svc.objects(u):
            break
        await asyncio.sleep(0.1)
    assert list(listed.files) == [] and await svc.objects(u) == []


async def test_list_files(svc: Svc) -> None:
    u = user()
    ids = []
    for i in range(5):
        bucket = DOCS if i % 2 == 0 else storage_pb2.BUCKET_IMAGES
        data = b"doc %d" % i if bucket == DOCS else PNG
        f = await upload(
            svc, u, data, bucket=bucket, filename=f"f{i}.txt", labels={"n": str(i), "kb": "x"}
        )
        ids.append(f.id)
    md = svc.md(u)
    seen: list[str] = []
    token = ""
    while True:
        page = await svc.stub.ListFiles(
            storage_pb2.ListFilesRequest(page_size=2, page_token=token), metadata=md
        )
        assert len(page.files) <= 2
        seen += [f.id for f in page.files]
        token = page.next_page_token
        if not token:
            break
    assert seen == ids[::-1]  # newest first, every file once
    docs = await svc.stub.ListFiles(storage_pb2.ListFilesRequest(bucket=DOCS), metadata=md)
    assert [f.id for f in docs.files] == [ids[4], ids[2], ids[0]]
    by_label = await svc.stub.ListFiles(
        storage_pb2.ListFilesRequest(labels={"n": "3", "kb": "x"}), metadata=md
    )
    assert [f.id for f in by_label.files] == [ids[3]]
    await svc.stub.DeleteFile(storage_pb2.DeleteFileRequest(id=ids[4]), metadata=md)
    pending = await svc.stub.CreateUploadUrl(
        storage_pb2.CreateUploadUrlRequest(bucket=DOCS, filename="later.md", size_bytes=3),
        metadata=md,
    )
    listed = await svc.stub.ListFiles(storage_pb2.ListFilesRequest(), metadata=md)
    assert [f.id for f in listed.files] == [pending.file.id, *ids[3::-1]]
    assert listed.files[0].status == storage_pb2.FILE_STATUS_UPLOADING
    for bad in (
        storage_pb2.ListFilesRequest(page_size=-1),
        storage_pb2.ListFilesRequest(page_token="garbage!"),
        storage_pb2.ListFilesRequest(page_token="eyJ4IjoxfQ"),  # {"x":1}
        storage_pb2.ListFilesRequest(bucket=99),  # type: ignore[arg-type]
    ):
        assert (
            await code_of(svc.stub.ListFiles(bad, metadata=md)) is grpc.StatusCode.INVALID_ARGUMENT
        )
    big = await svc.stub.ListFiles(storage_pb2.ListFilesRequest(page_size=1000), metadata=md)
    assert len(big.files) == 5 and not big.next_page_token


async def _pages(
    svc: Svc, md: tuple[tuple[str, str], ...], between: Any = None, **filters: Any
) -> list[str]:
    """Every file id ListFiles returns, page by page (size 2); `between` runs after
    each page but the last."""
    seen: list[str] = []
    token = ""
    while True:
        page = await svc.stub.ListFiles(
            storage_pb2.ListFilesRequest(page_size=2, page_token=token, **filters), metadata=md
        )
        seen += [f.id for f in page.files]
        token = page.next_page_token
        if not token:
            return seen
        if between is not None:
            await between()


async def test_list_files_pages_stay_stable_under_inserts(svc: Svc) -> None:
    u = user()
    md = svc.md(u)
    ids = [(await upload(svc, u, b"v%d" % i, filename=f"v{i}.txt")).id for i in range(5)]
    added: list[str] = []

    async def add_two() -> None:
        for _ in range(2):
            added.append((await upload(svc, u, b"new", filename="new.txt")).id)

    seen = await _pages(svc, md, between=add_two)
    assert len(seen) == len(set(seen)), "a file was listed twice"
    assert seen == ids[::-1]  # newest first; files added meanwhile sit before the cursor
    assert len(added) == 4
    listed = await svc.stub.ListFiles(storage_pb2.ListFilesRequest(), metadata=md)
    assert [f.id for f in listed.files] == [*added[::-1], *ids[::-1]]


async def test_list_files_page_token_is_bound_to_caller_and_filters(svc: Svc) -> None:
    u, other = user(), user()
    md = svc.md(u)
    for i in range(3):
        await upload(svc, u, b"d%d" % i, filename=f"d{i}.txt", labels={"kb": "1"})
    await upload(svc, other, b"x", filename="x.txt", labels={"kb": "1"})

    async def first(**filters: Any) -> str:
        page = await svc.stub.ListFiles(
            storage_pb2.ListFilesRequest(page_size=1, **filters), metadata=md
        )
        assert page.next_page_token
        return str(page.next_page_token)

    plain, docs, labelled = await first(), await first(bucket=DOCS), await first(labels={"kb": "1"})
    # Each token continues the list it came from.
    for token, filters in (
        (plain, {}),
        (docs, {"bucket": DOCS}),
        (labelled, {"labels": {"kb": "1"}}),
    ):
        page = await svc.stub.ListFiles(
            storage_pb2.ListFilesRequest(page_size=1, page_token=token, **filters), metadata=md
        )
        assert len(page.files) == 1
    misuse: list[tuple[str, str, dict[str, Any], tuple[tuple[str, str], ...]]] = [
        ("no bucket -> documents", plain, {"bucket": DOCS}, md),
        ("documents -> no bucket", docs, {}, md),
        ("documents -> images", docs, {"bucket": storage_pb2.BUCKET_IMAGES}, md),
        ("labels -> none", labelled, {}, md),
        ("labels -> other labels", labelled, {"labels": {"kb": "2"}}, md),
        ("another user", plain, {}, svc.md(other)),
        ("another user, internal", plain, {}, svc.internal_md(other)),
        ("edited", plain[:-3] + ("AAA" if plain[-3:] != "AAA" else "BBB"), {}, md),
    ]
    for name, token, filters, who in misuse:
        request = storage_pb2.ListFilesRequest(page_size=1, page_token=token, **filters)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await svc.stub.ListFiles(request, metadata=who)
        assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT, name
        assert reason(info.value) == "INVALID_PAGE_TOKEN", name


async def test_delete_then_purge(svc: Svc) -> None:
    u = user()
    md = svc.md(u)
    f = await upload(svc, u, b"to be deleted", filename="d.txt")
    await svc.stub.DeleteFile(storage_pb2.DeleteFileRequest(id=f.id), metadata=md)
    got = await svc.stub.GetFile(storage_pb2.GetFileRequest(id=f.id), metadata=md)
    assert got.status == storage_pb2.FILE_STATUS_DELETED and got.HasField("delete_time")
    await svc.stub.DeleteFile(storage_pb2.DeleteFileRequest(id=f.id), metadata=md)  # again: ok
    again = await svc.stub.GetFile(storage_pb2.GetFileRequest(id=f.id), metadata=md)
    assert again.delete_time == got.delete_time
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await download(svc, u, f.id)
    assert info.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert reason(info.value) == "FILE_NOT_READY"
    url_req = storage_pb2.CreateDownloadUrlRequest(id=f.id)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await svc.stub.CreateDownloadUrl(url_req, metadata=md)
    assert info.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert reason(info.value) == "FILE_NOT_READY"
    assert len(await svc.objects(u)) == 1  # soft: the bytes stay until the purge
    # An upload URL that expired without being used is purged as well.
    stale = await svc.stub.CreateUploadUrl(
        storage_pb2.CreateUploadUrlRequest(
            bucket=DOCS, filename="never.md", size_bytes=3, ttl_seconds=1
        ),
        metadata=md,
    )
    await asyncio.sleep(1.1)
    assert await svc.files.purge() >= 2  # retention 0 in the test settings
    for gone in (f.id, stale.file.id):
        code = await code_of(svc.stub.GetFile(storage_pb2.GetFileRequest(id=gone), metadata=md))
        assert code is grpc.StatusCode.NOT_FOUND
    assert await svc.objects(u) == []
    assert (
        await code_of(
            svc.stub.DeleteFile(storage_pb2.DeleteFileRequest(id=str(uuid.uuid4())), metadata=md)
        )
        is grpc.StatusCode.NOT_FOUND
    )


async def test_other_users_file_is_not_found_everywhere(svc: Svc) -> None:
    a, b = user(), user()
    f = await upload(svc, a, b"a's secret", filename="s.txt")
    pending = await svc.stub.CreateUploadUrl(
        storage_pb2.CreateUploadUrlRequest(bucket=DOCS, filename="p.txt", size_bytes=3),
        metadata=svc.md(a),
    )
    mb = svc.md(b)
    calls = {
        "GetFile": svc.stub.GetFile(storage_pb2.GetFileRequest(id=f.id), metadata=mb),
        "Download": download(svc, b, f.id),
        "DeleteFile": svc.stub.DeleteFile(storage_pb2.DeleteFileRequest(id=f.id), metadata=mb),
        "CreateDownloadUrl": svc.stub.CreateDownloadUrl(
            storage_pb2.CreateDownloadUrlRequest(id=f.id), metadata=mb
        ),
        "CompleteUpload": svc.stub.CompleteUpload(
            storage_pb2.CompleteUploadRequest(id=pending.file.id), metadata=mb
        ),
    }
    for name, call in calls.items():
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call
        assert info.value.code() is grpc.StatusCode.NOT_FOUND, name
        # The same answer as for a file that does not exist: nothing tells it apart.
        assert reason(info.value) == "NOT_FOUND", name
        assert error_info(info.value).metadata == {"resource": "file"}, name
    listed = await svc.stub.ListFiles(storage_pb2.ListFilesRequest(), metadata=mb)
    assert list(listed.files) == []
    # A's file is untouched, and a service acting for A with a delegation sees it.
    got = await svc.stub.GetFile(storage_pb2.GetFileRequest(id=f.id), metadata=svc.internal_md(a))
    assert got.status == storage_pb2.FILE_STATUS_READY
    code = await code_of(
        svc.stub.GetFile(storage_pb2.GetFileRequest(id=f.id), metadata=svc.internal_md(b))
    )
    assert code is grpc.StatusCode.NOT_FOUND


async def test_a_service_with_a_delegation_uploads_for_the_user(svc: Svc) -> None:
    u = user()
    data = b'{"prompt": "x"}\n{"prompt": "y"}\n'
    f = await upload(
        svc, u, data, md=svc.internal_md(u), bucket=storage_pb2.BUCKET_DATASETS, filename="t.jsonl"
    )
    assert f.content_type == "application/jsonl"
    _, body, _ = await download(svc, u, f.id)
    assert body == data
    code = await code_of(svc.stub.GetFile(storage_pb2.GetFileRequest(id=f.id)))
    assert code is grpc.StatusCode.UNAUTHENTICATED


async def test_s3_bucket_drops_abandoned_multipart_uploads(svc: Svc) -> None:
    if svc.files.s3 is None:
        pytest.skip("S3 only")
    s3 = svc.files.s3
    lifecycle = await s3.client.get_bucket_lifecycle_configuration(Bucket=s3.bucket)
    rules = lifecycle["Rules"]
    assert rules[0]["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 1}


async def test_unsafe_user_id_never_reaches_a_path(svc: Svc) -> None:
    md = svc.internal_md("../../etc")
    code = await code_of(svc.stub.Upload(requests(b"x", filename="a.txt"), metadata=md))
    assert code is grpc.StatusCode.INVALID_ARGUMENT


async def test_a_very_long_file_name_is_shortened_and_stored(svc: Svc) -> None:
    # Found by tests/robustness: 255 bytes plus `.partial` was past the file system's limit.
    u = user()
    f = await upload(svc, u, b"long", filename="a" * 300 + ".txt")
    assert f.filename.endswith(".txt") and len(f.filename.encode()) <= 240
    _, body, _ = await download(svc, u, f.id)
    assert body == b"long"


async def test_empty_file(svc: Svc) -> None:
    u = user()
    f = await upload(svc, u, b"", filename="empty.txt")
    assert (f.size_bytes, f.content_type, f.sha256) == (0, "text/plain", sha(b""))
    _, body, sent = await download(svc, u, f.id)
    assert body == b"" and sent == 0
    code = await code_of(
        svc.stub.Upload(
            requests(b"", bucket=storage_pb2.BUCKET_IMAGES, filename="e.png"), metadata=svc.md(u)
        )
    )
    assert code is grpc.StatusCode.INVALID_ARGUMENT


async def test_upload_writes_behind_the_stream_with_bounded_queues(
    svc: Svc, monkeypatch: pytest.MonkeyPatch
) -> None:
    """However far the sender could run ahead, a slow disk holds the stream back: the
    chunks received but not yet written never exceed the write queue (plus the one in
    hand). Domain level, so gRPC's own window does not blur the bound."""
    if svc.backend != "local":
        pytest.skip("the S3 writer's bound is covered in test_streaming.py")
    from services.storage.backends.aio import DEPTH
    from services.storage.backends.local import LocalWriter

    written = 0
    original = LocalWriter._write

    def slow_write(self: LocalWriter, chunk: bytes) -> None:
        nonlocal written
        time.sleep(0.002)  # a slow disk: the stream must wait for it, not pile up
        original(self, chunk)
        written += 1

    monkeypatch.setattr(LocalWriter, "_write", slow_write)
    chunks = 48
    data = safetensors(chunks * MiB)
    ahead: list[int] = []

    async def stream() -> AsyncIterator[storage_pb2.UploadRequest]:
        for i, req in enumerate(
            requests(data, bucket=storage_pb2.BUCKET_MODELS, filename="w.safetensors")
        ):
            if i:
                ahead.append(i - 1 - written)  # chunks handed over, not yet on disk
            yield req

    row = await svc.files.upload(user(), stream())
    assert row.size_bytes == len(data) and row.sha256 == sha(data)
    assert written == chunks
    assert max(ahead) <= DEPTH + 1, ahead
    assert max(ahead) >= 2  # the sender did get ahead: the queue was used


async def test_a_big_transfer_gives_its_free_memory_back(
    svc: Svc, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An upload or a download of at least RELEASE_AFTER bytes hands the allocator's free
    pages back when it ends (what its chunks left free would stay resident); smaller
    ones do not pay for it."""
    import services.storage.files as files_module

    released: list[bool] = []

    def release() -> bool:
        released.append(True)
        return True

    monkeypatch.setattr(files_module, "RELEASE_AFTER", 2 * MiB)
    monkeypatch.setattr(files_module, "release", release)
    owner = user()
    await upload(svc, owner, b"# small\n")
    assert released == []
    data = b"# notes\n" * (3 * MiB // 8)
    f = await upload(svc, owner, data)
    assert released == [True]
    _, body, _ = await download(svc, owner, f.id)
    assert body == data and released == [True, True]
    await download(svc, owner, f.id, length=MiB)  # a small range: no release
    assert released == [True, True]


async def test_purge_file_is_training_only_and_scoped_to_the_owner(svc: Svc) -> None:
    owner, other = user(), user()
    f = await upload(svc, owner, b"adapter", filename="adapter.safetensors")
    purge = svc.internal
    training = svc.keyring.service_md("training", audience="storage")
    request = storage_pb2.PurgeFileRequest(id=f.id, user_id=owner)
    # Only training may purge: another service, or the user's own token, is refused.
    err = await error_of(
        purge.PurgeFile(request, metadata=svc.keyring.service_md("rag", audience="storage"))
    )
    assert err.code() is grpc.StatusCode.PERMISSION_DENIED and reason(err) == "CALLER_NOT_ALLOWED"
    assert await code_of(purge.PurgeFile(request, metadata=svc.md(owner))) is (
        grpc.StatusCode.PERMISSION_DENIED
    )
    # Bad input, and another user's file (named with the wrong owner), change nothing.
    assert (
        await code_of(purge.PurgeFile(storage_pb2.PurgeFileRequest(id=f.id), metadata=training))
        is grpc.StatusCode.INVALID_ARGUMENT
    )
    assert (
        await code_of(
            purge.PurgeFile(storage_pb2.PurgeFileRequest(id=f.id, user_id=other), metadata=training)
        )
        is grpc.StatusCode.NOT_FOUND
    )
    still = await svc.stub.GetFile(storage_pb2.GetFileRequest(id=f.id), metadata=svc.md(owner))
    assert still.status == storage_pb2.FILE_STATUS_READY
    await purge.PurgeFile(request, metadata=training)
    gone = await svc.stub.GetFile(storage_pb2.GetFileRequest(id=f.id), metadata=svc.md(owner))
    assert gone.status == storage_pb2.FILE_STATUS_DELETED


async def error_of(aw: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await aw
    return info.value
