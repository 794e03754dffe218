"""Storage fixtures: moto's S3 server on a loopback port, and the real storage service
run once per backend (the suite is parametrised over `local` and `s3`)."""

from __future__ import annotations

import hashlib
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from moto.server import ThreadedMotoServer

from aivera.storage.v1 import storage_pb2, storage_pb2_grpc
from services.common.devpg import free_port
from services.common.server import App
from services.storage.config import MiB, StorageSettings
from services.storage.files import Files
from services.storage.server import Wiring
from tests.helpers.services import bearer, channel, running
from tests.helpers.tokens import Keyring

PART = 5 * MiB  # S3's smallest part: multipart-sized files stay small


@dataclass
class Moto:
    port: int
    server: ThreadedMotoServer

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.stop()

    def restart(self) -> None:
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()


def start_moto(port: int | None = None) -> Moto:
    port = port or free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    return Moto(port, server)


@pytest.fixture(scope="session")
def moto() -> Iterator[Moto]:
    m = start_moto()
    try:
        yield m
    finally:
        m.stop()


def storage_settings(
    backend: str,
    *,
    database_url: str,
    data_dir: Path,
    s3_url: str = "",
    **overrides: Any,
) -> StorageSettings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "data_dir": data_dir,
        "storage_backend": backend,
        "s3_endpoint_url": s3_url or None,
        "s3_access_key_id": "test",
        "s3_secret_access_key": "test",
        "s3_bucket": f"aivera-test-{uuid.uuid4().hex[:8]}",
        "s3_path_style": True,
        "s3_connect_timeout_seconds": 1.0,
        "s3_max_attempts": 1,
        "storage_multipart_threshold": PART,
        "storage_multipart_part_size": PART,
        "storage_max_bytes_images": 2 * MiB,
        "storage_max_bytes_documents": 20 * MiB,
        "storage_purge_interval_seconds": 3600,
        "storage_retention_days": 0,
        "storage_upload_grace_seconds": 0,
    }
    values.update(overrides)
    return StorageSettings(**values)


@dataclass
class Svc:
    """A running storage service and what a test needs to talk to it."""

    backend: str
    app: App
    files: Files
    stub: storage_pb2_grpc.StorageServiceStub
    internal: storage_pb2_grpc.StorageInternalServiceStub
    keyring: Keyring
    data_dir: Path

    def md(self, user_id: str) -> tuple[tuple[str, str], ...]:
        return bearer(self.keyring.mint(user_id))

    def internal_md(self, user_id: str) -> tuple[tuple[str, str], ...]:
        """A mesh service (RAG) acting for the user with a delegation for storage."""
        return self.keyring.service_md("rag", user_id, audience="storage")

    async def objects(self, user_id: str) -> list[str]:
        """Keys of every stored object (partial ones too) under the user."""
        found: list[str] = []
        root = self.files.local.root
        found += [
            str(p.relative_to(root))
            for p in root.rglob("*")
            if p.is_file() and f"/{user_id}/" in f"/{p.relative_to(root)}"
        ]
        if self.files.s3 is not None:
            client = self.files.s3.client
            resp = await client.list_objects_v2(Bucket=self.files.s3.bucket)
            found += [o["Key"] for o in resp.get("Contents", []) if f"/{user_id}/" in o["Key"]]
            ups = await client.list_multipart_uploads(Bucket=self.files.s3.bucket)
            found += [u["Key"] for u in ups.get("Uploads", []) if f"/{user_id}/" in u["Key"]]
        return found


@pytest.fixture(scope="module", params=["local", "s3"])
async def svc(request: pytest.FixtureRequest, moto: Moto, database_url: str) -> AsyncIterator[Svc]:
    backend = str(request.param)
    keyring = Keyring()
    with tempfile.TemporaryDirectory(prefix="aivera-storage-") as tmp:
        settings = storage_settings(
            backend,
            database_url=database_url,
            data_dir=Path(tmp),
            s3_url=moto.url,
        )
        wiring = Wiring(settings)
        async with running(wiring.spec(), settings, verifier=keyring.verifier()) as app:
            async with channel(app) as ch:
                yield Svc(
                    backend,
                    app,
                    wiring.files,
                    storage_pb2_grpc.StorageServiceStub(ch),
                    storage_pb2_grpc.StorageInternalServiceStub(ch),
                    keyring,
                    Path(tmp),
                )


def requests(
    data: bytes,
    *,
    bucket: storage_pb2.Bucket.ValueType = storage_pb2.BUCKET_DOCUMENTS,
    filename: str = "notes.md",
    size: int | None = None,
    sha256: str = "",
    labels: dict[str, str] | None = None,
    chunk: int = MiB,
) -> Iterator[storage_pb2.UploadRequest]:
    yield storage_pb2.UploadRequest(
        header=storage_pb2.UploadHeader(
            bucket=bucket,
            filename=filename,
            size_bytes=len(data) if size is None else size,
            sha256=sha256,
            labels=labels or {},
        )
    )
    for i in range(0, len(data), chunk):
        yield storage_pb2.UploadRequest(chunk=data[i : i + chunk])


async def upload(
    svc: Svc, user: str, data: bytes, md: Sequence[tuple[str, str]] | None = None, **kw: Any
) -> storage_pb2.File:
    result: storage_pb2.File = await svc.stub.Upload(
        requests(data, **kw), metadata=md or svc.md(user)
    )
    return result


async def download(
    svc: Svc, user: str, file_id: str, offset: int = 0, length: int = 0
) -> tuple[storage_pb2.File, bytes, int]:
    meta = storage_pb2.File()
    parts: list[bytes] = []
    done = -1
    kinds: list[str] = []
    async for msg in svc.stub.Download(
        storage_pb2.DownloadRequest(id=file_id, offset=offset, length=length),
        metadata=svc.md(user),
    ):
        kind = msg.WhichOneof("payload")
        kinds.append(str(kind))
        if kind == "file":
            meta = msg.file
        elif kind == "chunk":
            assert len(msg.chunk) <= MiB
            parts.append(msg.chunk)
        else:
            done = msg.done.bytes_sent
    assert kinds[0] == "file" and kinds[-1] == "done"
    assert set(kinds[1:-1]) <= {"chunk"}
    body = b"".join(parts)
    assert done == len(body)
    return meta, body, done


async def code_of(aw: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await aw
    return info.value.code()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def safetensors(size: int) -> bytes:
    """A safetensors-looking blob: 8-byte header length, a JSON header, then bytes."""
    header = b'{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'
    head = len(header).to_bytes(8, "little") + header
    body = (hashlib.sha256(b"seed").digest() * (size // 32 + 1))[: size - len(head)]
    return head + body


PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(range(200))
PDF = b"%PDF-1.7\n" + bytes(range(256)) * 10
