"""Blocking file and hashing work off the event loop, on a small dedicated pool.

Two threads are enough for one chunk being hashed while another is written, and few
threads mean few malloc arenas: with the default executor's many threads each 1 MiB
buffer can land in another arena and the service's memory creeps up with every transfer.

`SerialJobs` feeds one stream's chunks to that pool in order through a bounded queue:
the event loop hands a chunk over and goes back to receiving the next one; it waits only
when `depth` chunks are already queued, so a stream holds at most `depth` chunks there
(and a slow disk slows the sender down through gRPC flow control).
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

_POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="storage-io")

# Chunks (1 MiB each) a stream may have queued for its disk writes or its hash.
DEPTH = 4


async def run_io(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_POOL, functools.partial(fn, *args, **kwargs))


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class SerialJobs(Generic[T]):
    """Runs `fn(item)` for every item `put`, in order, one at a time, on the I/O pool.

    `put` returns as soon as the item is queued; it waits only while `depth` items are
    queued or running. The first failure stops the queue and is raised by the next
    `put` or by `join`. One producer (the stream's task) at a time.
    """

    def __init__(self, fn: Callable[[T], object], depth: int = DEPTH) -> None:
        if depth < 1:
            raise ValueError("depth must be at least 1")
        self._fn = fn
        self.depth = depth
        self._items: deque[T] = deque()  # [0] is running while `_active`
        self._lock = threading.Lock()
        self._active = False  # a drain job owns the queue
        self._stopped = False
        self._job: asyncio.Future[None] | None = None
        self._room: asyncio.Future[None] | None = None
        self._error: BaseException | None = None
        self.high_water = 0  # most items ever queued at once (tests check the bound)

    def __len__(self) -> int:
        return len(self._items)

    def _check(self) -> None:
        if self._error is not None:
            raise self._error
        if self._stopped:
            raise RuntimeError("the job queue is closed")

    async def put(self, item: T) -> None:
        self._check()
        loop = asyncio.get_running_loop()
        while True:
            with self._lock:
                if len(self._items) < self.depth:
                    self._items.append(item)
                    self.high_water = max(self.high_water, len(self._items))
                    start = not self._active
                    self._active = True
                    break
                self._room = room = loop.create_future()
            await room
            self._check()
        if start:
            self._job = loop.run_in_executor(_POOL, self._drain, loop)

    def _drain(self, loop: asyncio.AbstractEventLoop) -> None:
        """The pool side: runs queued items until none is left."""
        while True:
            with self._lock:
                if not self._items or self._stopped:
                    self._items.clear()
                    self._active = False
                    self._wake(loop)
                    return
                item = self._items[0]
            try:
                self._fn(item)
            except BaseException as exc:
                with self._lock:
                    self._error = exc
                    self._items.clear()
                    self._active = False
                    self._wake(loop)
                return
            with self._lock:
                self._items.popleft()
                self._wake(loop)

    def _wake(self, loop: asyncio.AbstractEventLoop) -> None:
        """Under the lock: lets a waiting `put` look again."""
        room, self._room = self._room, None
        if room is not None:
            loop.call_soon_threadsafe(_resolve, room)

    async def join(self) -> None:
        """Waits until every queued item ran; raises the first failure."""
        if self._job is not None:
            await asyncio.shield(self._job)  # a cancelled caller leaves the job running
        self._check()

    async def close(self) -> None:
        """Drops what has not started, waits for the item running now, never raises.
        Safe to call after a cancelled `put` or `join`."""
        with self._lock:
            self._stopped = True
            keep = 1 if self._active else 0  # the running item stays until it returns
            while len(self._items) > keep:
                self._items.pop()
            self._wake(asyncio.get_running_loop())
        if self._job is not None:
            await asyncio.gather(self._job, return_exceptions=True)
