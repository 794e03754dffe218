"""The local fallback while S3 is down, and the sync that moves such files to S3 later.

A write starts on S3. If S3 cannot be reached before any byte has left the process (the
first PutObject, or the creation of the multipart upload), the buffered bytes and the
rest of the stream go to the local backend instead, the file is recorded with
backend=local and a warning is logged. `python -m services.storage sync` (and the
background task while S3 answers) copies such files to S3, flips their backend and
removes the local copy.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from services.storage.backends.base import BackendUnavailable, Kind
from services.storage.backends.local import LocalBackend, LocalWriter
from services.storage.store import Store

if TYPE_CHECKING:
    from services.storage.backends.s3 import S3Backend, S3Writer

log = logging.getLogger("aivera.storage.fallback")


class FallbackWriter:
    def __init__(self, primary: S3Writer, local: LocalBackend, key: str) -> None:
        self._primary = primary
        self._local_backend = local
        self._key = key
        self._local: LocalWriter | None = None

    @property
    def kind(self) -> Kind:
        return "s3" if self._local is None else "local"

    async def _switch(self, exc: BackendUnavailable) -> LocalWriter:
        log.warning(
            "object storage unreachable (%s); writing %s to the local fallback",
            exc.message,
            self._key,
        )
        local = await self._local_backend.open_writer(self._key, 0)
        self._local = local
        await local.write(self._primary.buffered())
        await self._primary.abort()
        return local

    async def write(self, chunk: bytes) -> None:
        if self._local is not None:
            await self._local.write(chunk)
            return
        try:
            await self._primary.write(chunk)
        except BackendUnavailable as exc:
            if not self._primary.replayable:
                raise
            await self._switch(exc)

    async def commit(self) -> None:
        if self._local is None:
            try:
                await self._primary.commit()
                return
            except BackendUnavailable as exc:
                if not self._primary.replayable:
                    raise
                await self._switch(exc)
        assert self._local is not None
        await self._local.commit()

    async def abort(self) -> None:
        if self._local is not None:
            await self._local.abort()
        await self._primary.abort()


async def sync_to_s3(
    store: Store,
    local: LocalBackend,
    s3: S3Backend,
    *,
    batch: int = 100,
    stop: Callable[[], bool] = lambda: False,
) -> int:
    """Moves READY files of the local backend to S3; returns how many moved. Stops at
    the first sign that S3 is down (the rest waits for the next run)."""
    moved = 0
    failed: set[object] = set()
    while not stop():
        rows = [r for r in await store.local_ready(batch) if r.id not in failed]
        if not rows:
            break
        for row in rows:
            size = await local.size(row.storage_path)
            if size is None:
                log.error("fallback file %s has no local object; skipped", row.id)
                failed.add(row.id)
                continue
            writer = await s3.open_writer(row.storage_path, size)
            try:
                async for chunk in local.read(row.storage_path):
                    await writer.write(chunk)
                await writer.commit()
            except BaseException:
                await writer.abort()
                raise
            if await store.set_backend(row.id, old="local", new="s3"):
                await local.delete(row.storage_path)
                moved += 1
                log.info("synced %s to object storage", row.id)
            else:  # deleted meanwhile: the purge task handles the local copy
                await s3.delete(row.storage_path)
                failed.add(row.id)
        if len(rows) < batch:
            break
    return moved
