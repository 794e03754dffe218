"""S3 down at write time: with the local fallback on, nothing is lost (the file is written
locally, readable, and moved to S3 by `sync`); with it off, the upload is UNAVAILABLE and
leaves nothing behind."""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import grpc
import pytest

from aivera.storage.v1 import storage_pb2, storage_pb2_grpc
from services.storage.config import MiB
from services.storage.server import Wiring, make_spec, sync_command
from tests.helpers.errors import error_info
from tests.helpers.services import bearer, channel, running
from tests.helpers.tokens import Keyring
from tests.storage.conftest import (
    PART,
    PDF,
    Moto,
    code_of,
    requests,
    sha,
    start_moto,
    storage_settings,
)

DOCS = storage_pb2.BUCKET_DOCUMENTS


@pytest.fixture(scope="module")
def own_moto() -> Iterator[Moto]:
    m = start_moto()
    try:
        yield m
    finally:
        m.stop()


async def _file_bytes(stub: storage_pb2_grpc.StorageServiceStub, id: str, md: object) -> bytes:
    out = b""
    async for msg in stub.Download(storage_pb2.DownloadRequest(id=id), metadata=md):
        out += msg.chunk
    return out


async def test_s3_down_with_fallback_then_sync(own_moto: Moto, database_url: str) -> None:
    keyring = Keyring()
    u = str(uuid.uuid4())
    md = bearer(keyring.mint(u))
    small = "# пока S3 лежит\n".encode() * 10
    big = (PDF + bytes(range(256)) * 40_000)[: PART + 2 * MiB]  # multipart-sized
    with tempfile.TemporaryDirectory() as tmp:
        settings = storage_settings(
            "s3",
            database_url=database_url,
            data_dir=Path(tmp),
            s3_url=own_moto.url,
            storage_fallback_local=True,
            storage_auto_sync=False,
        )
        wiring = Wiring(settings)
        async with running(wiring.spec(), settings, verifier=keyring.verifier()) as app:
            files = wiring.files
            assert files.s3 is not None
            async with channel(app) as ch:
                stub = storage_pb2_grpc.StorageServiceStub(ch)
                up = await stub.Upload(requests(small, filename="a.md"), metadata=md)
                assert up.backend == storage_pb2.BACKEND_S3
                own_moto.stop()  # S3 goes down
                uploaded = []
                for data, name in ((small, "down.md"), (big, "down.pdf")):
                    f = await stub.Upload(requests(data, filename=name), metadata=md)
                    assert f.backend == storage_pb2.BACKEND_LOCAL
                    assert f.status == storage_pb2.FILE_STATUS_READY and f.sha256 == sha(data)
                    assert await _file_bytes(stub, f.id, md) == data
                    uploaded.append((f.id, name, data))
                # Direct uploads fall back as well.
                created = await stub.CreateUploadUrl(
                    storage_pb2.CreateUploadUrlRequest(
                        bucket=DOCS, filename="direct.md", size_bytes=len(small)
                    ),
                    metadata=md,
                )
                assert created.file.backend == storage_pb2.BACKEND_LOCAL
                async with (
                    aiohttp.ClientSession() as http,
                    http.put(created.url, data=small, headers=dict(created.headers)) as r,
                ):
                    assert r.status == 200
                done = await stub.CompleteUpload(
                    storage_pb2.CompleteUploadRequest(id=created.file.id), metadata=md
                )
                assert done.backend == storage_pb2.BACKEND_LOCAL
                uploaded.append((done.id, "direct.md", small))
                # A file that lives on S3 is UNAVAILABLE while S3 is down.
                code = await code_of(_file_bytes(stub, up.id, md))
                assert code is grpc.StatusCode.UNAVAILABLE

                own_moto.restart()  # S3 is back: `python -m services.storage sync`
                await sync_command(settings)
                for id, name, data in uploaded:
                    got = await stub.GetFile(storage_pb2.GetFileRequest(id=id), metadata=md)
                    assert got.backend == storage_pb2.BACKEND_S3, name
                    assert await _file_bytes(stub, id, md) == data
                    key = f"documents/{u}/{id}/{name}"
                    assert not (files.local.root / key).exists()
                    head = await files.s3.client.head_object(Bucket=files.s3.bucket, Key=key)
                    assert head["ContentLength"] == len(data)
                assert await files.sync() == 0  # nothing left


async def test_s3_down_without_fallback_is_unavailable(database_url: str) -> None:
    keyring = Keyring()
    u = str(uuid.uuid4())
    md = bearer(keyring.mint(u))
    m = start_moto()
    with tempfile.TemporaryDirectory() as tmp:
        settings = storage_settings(
            "s3", database_url=database_url, data_dir=Path(tmp), s3_url=m.url
        )
        spec = make_spec(settings)
        async with running(spec, settings, verifier=keyring.verifier()) as app:
            async with channel(app) as ch:
                stub = storage_pb2_grpc.StorageServiceStub(ch)
                m.stop()
                calls = {
                    "Upload": stub.Upload(requests(b"hello", filename="a.txt"), metadata=md),
                    "CreateUploadUrl": stub.CreateUploadUrl(
                        storage_pb2.CreateUploadUrlRequest(
                            bucket=DOCS, filename="a.md", size_bytes=1
                        ),
                        metadata=md,
                    ),
                }
                for name, call in calls.items():
                    with pytest.raises(grpc.aio.AioRpcError) as info:
                        await call
                    assert info.value.code() is grpc.StatusCode.UNAVAILABLE, name
                    got = error_info(info.value)
                    assert got.reason == "DEPENDENCY_UNAVAILABLE", name
                    assert got.metadata["dependency"] == "object storage", name
                listed = await stub.ListFiles(storage_pb2.ListFilesRequest(), metadata=md)
                assert list(listed.files) == []
                assert not any(
                    p.is_file() for p in (Path(tmp) / "storage").rglob("*") if u in str(p)
                )
