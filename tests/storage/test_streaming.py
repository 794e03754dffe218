"""Bounded streaming: the chunk queues of an upload and the S3 writer's parts.

No timing: a gated job proves a queue waits when full, and a fake S3 client counts what
is held at once while 1 GiB goes through the multipart path.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import subprocess
import sys
import threading
import tracemalloc
from typing import Any

import aiohttp
import pytest

from services.storage.backends.aio import DEPTH, SerialJobs
from services.storage.backends.base import BackendUnavailable
from services.storage.backends.s3 import S3Writer
from services.storage.config import MiB
from services.storage.memory import tune_malloc

PART = 8 * MiB  # the default part size


async def test_serial_jobs_keep_order_and_wait_when_full() -> None:
    done: list[int] = []
    gate = threading.Event()

    def job(n: int) -> None:
        gate.wait(10)
        done.append(n)

    jobs: SerialJobs[int] = SerialJobs(job, depth=3)
    for n in range(3):
        await jobs.put(n)  # room for all three: returns at once
    fourth = asyncio.ensure_future(jobs.put(3))
    for _ in range(20):
        await asyncio.sleep(0)
    assert not fourth.done()  # the first job is held by the gate: no room
    assert len(jobs) == 3
    gate.set()
    await fourth
    for n in range(4, 40):
        await jobs.put(n)
    await jobs.join()
    assert done == list(range(40))
    assert jobs.high_water == 3 and len(jobs) == 0


async def test_serial_jobs_raise_the_first_failure_and_close_waits() -> None:
    ran: list[int] = []

    def job(n: int) -> None:
        if n == 2:
            raise OSError("disk full")
        ran.append(n)

    jobs: SerialJobs[int] = SerialJobs(job, depth=2)
    with pytest.raises(OSError, match="disk full"):
        for n in range(10):
            await jobs.put(n)
        await jobs.join()
    assert ran == [0, 1]
    await jobs.close()  # never raises
    with pytest.raises(OSError):
        await jobs.put(99)

    gate = threading.Event()
    started = threading.Event()

    def slow(n: int) -> None:
        started.set()
        gate.wait(10)
        ran.append(n)

    held: SerialJobs[int] = SerialJobs(slow, depth=4)
    for n in (100, 101, 102):
        await held.put(n)
    await asyncio.to_thread(started.wait, 10)
    closing = asyncio.ensure_future(held.close())
    for _ in range(20):
        await asyncio.sleep(0)
    assert not closing.done()  # waits for the running job
    gate.set()
    await closing
    assert ran[-1] == 100 and 101 not in ran  # what had not started was dropped


class FakeS3:
    """Just enough of an S3 client for `S3Writer`, counting what is held at once."""

    def __init__(self, *, fail_create: bool = False) -> None:
        self.fail_create = fail_create
        self.hasher = hashlib.sha256()
        self.sizes: list[int] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.completed: list[dict[str, Any]] | None = None
        self.put: bytes | None = None

    async def create_multipart_upload(self, **kw: Any) -> dict[str, Any]:
        if self.fail_create:
            raise aiohttp.ClientConnectionError("connection refused")
        return {"UploadId": "u1"}

    async def upload_part(self, *, Body: io.BytesIO, PartNumber: int, **kw: Any) -> Any:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            for _ in range(3):  # let the writer receive meanwhile
                await asyncio.sleep(0)
            size = 0
            while piece := Body.read(64 * 1024):  # as aiohttp sends it: no copy of the part
                size += len(piece)
                self.hasher.update(piece)
            assert len(self.sizes) == PartNumber - 1  # in order
            self.sizes.append(size)
            return {"ETag": f'"{PartNumber}"'}
        finally:
            self.in_flight -= 1

    async def complete_multipart_upload(self, *, MultipartUpload: Any, **kw: Any) -> Any:
        self.completed = MultipartUpload["Parts"]
        return {}

    async def put_object(self, *, Body: io.BytesIO, **kw: Any) -> Any:
        self.put = Body.read()
        return {}

    async def abort_multipart_upload(self, **kw: Any) -> Any:
        return {}


async def test_s3_writer_holds_at_most_two_parts_through_1_gib() -> None:
    client = FakeS3()
    size = 1024 * MiB + 123
    writer = S3Writer(client, "b", "k", multipart=True, part_size=PART)
    block = hashlib.sha256(b"x").digest() * (MiB // 32)
    expected = hashlib.sha256()
    sent = 0
    while sent < size:
        chunk = block[: min(MiB, size - sent)]
        await writer.write(chunk)
        expected.update(chunk)
        sent += len(chunk)
        # The part being filled, never more than one part; at most one more in flight.
        assert writer.buffered_bytes <= PART
        assert client.in_flight <= 1
    await writer.commit()
    assert client.max_in_flight == 1
    assert client.hasher.hexdigest() == expected.hexdigest()
    assert client.sizes == [PART] * 128 + [123]
    assert client.completed is not None and len(client.completed) == 129


async def test_s3_writer_allocates_the_next_part_once_the_one_in_flight_is_sent() -> None:
    """While a part is in flight the chunks that arrive are held as they came, up to half
    a part, and the next part's buffer is allocated only once the part in flight is sent:
    the writer's own memory stays under 1.5 parts (plus a chunk), where a second part
    buffer next to the one in flight made it 2 parts. Measured with tracemalloc."""
    client = FakeS3()
    writer = S3Writer(client, "b", "k", multipart=True, part_size=PART)
    chunks = [os.urandom(MiB) for _ in range(4)]  # reused: a held chunk is no new memory
    expected = hashlib.sha256()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for i in range(8 * PART // MiB):
            await writer.write(chunks[i % 4])
            expected.update(chunks[i % 4])
        await writer.commit()
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert peak < PART + PART // 2 + MiB, peak / MiB
    assert client.sizes == [PART] * 8
    assert client.hasher.hexdigest() == expected.hexdigest()


async def test_s3_writer_held_chunks_of_any_size_keep_their_order() -> None:
    """Chunks that straddle parts, and chunks still held when the stream ends."""
    client = FakeS3()
    writer = S3Writer(client, "b", "k", multipart=True, part_size=PART)
    data = os.urandom(2 * PART + 3 * MiB + 5)
    for i in range(0, len(data), 700 * 1024):
        await writer.write(data[i : i + 700 * 1024])
        assert writer.buffered_bytes <= PART
    await writer.commit()
    assert client.sizes == [PART, PART, 3 * MiB + 5]
    assert client.hasher.hexdigest() == hashlib.sha256(data).hexdigest()


def test_s3_backend_leaves_httpx_unloaded() -> None:
    """aiobotocore imports httpx when it is installed (and httpx its CLI's rich,
    pygments and click): ~6 MB the service, which talks to S3 through aiohttp, never
    uses. The S3 backend keeps them out; httpx stays importable for other code."""
    pytest.importorskip("httpx")
    code = (
        "import sys\n"
        "import services.storage.backends.s3 as s3\n"
        "loaded = {m.split('.')[0] for m in sys.modules} & {'httpx', 'rich', 'pygments', 'click'}\n"
        "assert not loaded, loaded\n"
        "assert s3.aioboto3.Session\n"
        "import httpx\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)


async def test_s3_writer_small_object_is_one_put() -> None:
    client = FakeS3()
    writer = S3Writer(client, "b", "k", multipart=False, part_size=PART)
    data = b"a" * (PART - 1)
    await writer.write(data[:MiB])
    await writer.write(data[MiB:])
    await writer.commit()
    assert client.put == data and client.sizes == []


async def test_s3_writer_failure_before_any_byte_left_keeps_every_byte() -> None:
    client = FakeS3(fail_create=True)
    writer = S3Writer(client, "b", "k", multipart=True, part_size=PART)
    data = bytes(range(256)) * (PART // 256) + b"tail" * 1000
    await writer.write(data[:PART])
    with pytest.raises(BackendUnavailable):
        await writer.write(data[PART:])  # needs a multipart upload, which fails
    assert writer.replayable
    assert writer.buffered() == data  # the fallback replays all of it locally
    await writer.abort()


def test_tune_malloc_respects_the_operator(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    applied = tune_malloc()
    assert applied["MALLOC_ARENA_MAX"] is False
    assert set(applied) == {"MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"}


def test_default_queue_depth_is_small() -> None:
    assert 1 <= DEPTH <= 8  # a stream queues a few MiB, not the file
