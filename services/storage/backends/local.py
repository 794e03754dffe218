"""The local filesystem backend: objects are files under DATA_DIR/storage/<key>.

Writes go to `<key>.partial` and are renamed into place on commit, so a reader never
sees half a file. Signed URLs point at the storage service's own HTTP port.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import BinaryIO, Literal

from services.storage.backends.aio import DEPTH, SerialJobs, run_io
from services.storage.backends.base import CHUNK, Kind, Presigned
from services.storage.signing import UrlSigner

PARTIAL = ".partial"


class LocalWriter:
    """Writes `<key>.partial`, renamed to `<key>` on commit. Chunks are written behind
    the stream, in order, on the I/O pool (`SerialJobs`: at most `depth` chunks queued),
    so receiving the next chunk overlaps writing this one. Each step keeps running when
    its caller is cancelled, and `abort` waits for it, so nothing opened late is left
    behind."""

    kind: Kind = "local"

    def __init__(self, path: Path, *, depth: int = DEPTH) -> None:
        self._path = path
        self._tmp = path.with_name(path.name + PARTIAL)
        self._file: BinaryIO | None = None
        self._busy: asyncio.Future[None] | None = None
        self.jobs: SerialJobs[bytes] = SerialJobs(self._write, depth)

    def _ensure_open(self) -> BinaryIO:
        if self._file is None:
            self._tmp.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self._tmp, "wb")  # noqa: SIM115 - closed by commit/abort
        return self._file

    def _write(self, chunk: bytes) -> None:
        self._ensure_open().write(chunk)

    def _commit(self) -> None:
        self._ensure_open().close()
        os.replace(self._tmp, self._path)

    def _abort(self) -> None:
        if self._file is not None:
            self._file.close()
        with contextlib.suppress(FileNotFoundError):
            self._tmp.unlink()

    async def write(self, chunk: bytes) -> None:
        await self.jobs.put(chunk)

    async def commit(self) -> None:
        await self.jobs.join()
        self._busy = asyncio.ensure_future(run_io(self._commit))
        await asyncio.shield(self._busy)

    async def abort(self) -> None:
        await self.jobs.close()
        if self._busy is not None:
            await asyncio.gather(self._busy, return_exceptions=True)
        await run_io(self._abort)


class LocalBackend:
    kind: Kind = "local"

    def __init__(self, root: Path, signer: UrlSigner, base_url: Callable[[], str]) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self._signer = signer
        self._base_url = base_url

    def path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root not in path.parents:
            raise ValueError(f"key {key!r} leaves the storage root")
        return path

    async def open_writer(self, key: str, size_hint: int) -> LocalWriter:
        return LocalWriter(self.path(key))

    async def read(self, key: str, offset: int = 0, length: int = 0) -> AsyncIterator[bytes]:
        path = self.path(key)
        f = await run_io(open, path, "rb")
        left = length if length > 0 else None

        def next_chunk() -> bytes:
            nonlocal left
            want = CHUNK if left is None else min(CHUNK, left)
            data = f.read(want) if want > 0 else b""
            if left is not None:
                left -= len(data)
            return data

        ahead: asyncio.Future[bytes] | None = None
        try:
            await run_io(f.seek, offset)
            ahead = asyncio.ensure_future(run_io(next_chunk))
            while True:
                data = await ahead
                ahead = None
                if not data:
                    break
                # Read the next chunk while this one is sent.
                ahead = asyncio.ensure_future(run_io(next_chunk))
                yield data
        finally:
            if ahead is not None:  # let the read in its thread finish before closing
                await asyncio.gather(ahead, return_exceptions=True)
            await run_io(f.close)

    async def size(self, key: str) -> int | None:
        try:
            st = await run_io(os.stat, self.path(key))
        except FileNotFoundError:
            return None
        return st.st_size

    async def delete(self, key: str) -> None:
        path = self.path(key)

        def remove() -> None:
            for p in (path, path.with_name(path.name + PARTIAL)):
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
            # Drop the now empty {file_id} and {user_id} folders.
            parent = path.parent
            for _ in range(2):
                try:
                    parent.rmdir()
                except OSError:
                    break
                parent = parent.parent

        await run_io(remove)

    async def presign(
        self, key: str, method: Literal["GET", "PUT"], file_id: str, expires_at: int, size: int
    ) -> Presigned:
        url = self._signer.sign(
            self._base_url(), method, file_id, expires_at, size if method == "PUT" else 0
        )
        headers = {"content-length": str(size)} if method == "PUT" else {}
        return Presigned(url, headers)

    async def check(self) -> bool:
        return await run_io(os.access, self.root, os.W_OK)
