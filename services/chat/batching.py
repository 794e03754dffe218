"""Admission and batching for one loaded base model.

Turns wait in a bounded FIFO; one worker takes, each round, the oldest waiting job and
up to `batch_size - 1` more for the same adapter (peft switches adapters per model, not
per row, so a batch shares one) and runs them as one generation in a thread. A job that
would wait past `queue_limit` is refused at once with MODEL_BUSY and a retry hint; one
that waits is told its position, so no turn waits silently to its deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from google.rpc import code_pb2

from services.chat.providers.base import ProviderError, Usage
from services.common.errors import Reason

# What a job's consumer receives: text, the final usage, an error, or None (the end).
Item = str | Usage | BaseException | None


@dataclass(eq=False)
class Job:
    """One turn's generation request."""

    adapter: str | None  # batch key: jobs of one batch share their adapter
    messages: list[dict[str, str]]
    max_new_tokens: int
    loop: asyncio.AbstractEventLoop
    payload: Any = None  # what the runner needs besides (e.g. the adapter folder)
    out: asyncio.Queue[Item] = field(default_factory=asyncio.Queue)
    stop: threading.Event = field(default_factory=threading.Event)

    def send(self, item: Item) -> None:
        """From the generation thread to the consumer."""
        self.loop.call_soon_threadsafe(self.out.put_nowait, item)


class Busy(ProviderError):
    """The queue is full: retry after `retry_after` seconds."""

    def __init__(self, retry_after: int, waiting: int) -> None:
        super().__init__(
            Reason.MODEL_BUSY,
            code_pb2.RESOURCE_EXHAUSTED,
            f"Модель перегружена: в очереди {waiting} запросов. Повторите через {retry_after} с.",
            retryable=True,
        )
        self.retry_after = retry_after


class Scheduler:
    """The queue and worker of one base model; `run(jobs)` generates a batch (in a
    thread) and delivers every job's items itself."""

    def __init__(
        self,
        run: Callable[[list[Job]], None],
        *,
        batch_size: int,
        queue_limit: int,
        name: str = "",
    ) -> None:
        self.run = run
        self.batch_size = max(1, batch_size)
        self.queue_limit = max(0, queue_limit)
        self.name = name
        self.waiting: deque[Job] = deque()
        self.running: list[Job] = []
        self.batches = 0  # batches run (tests and the bench read it)
        self.largest_batch = 0
        self._seconds_per_batch = 1.0  # moving average: the retry hint
        # Runs while jobs wait and ends when none does (nothing pending at shutdown).
        self._worker: asyncio.Task[None] | None = None

    @property
    def busy(self) -> bool:
        """Jobs wait, or a batch runs whose consumers have not all had their end."""
        return bool(self.waiting) or self._running_open()

    def _running_open(self) -> bool:
        # A consumer sets its job's stop when it leaves (end, error or going away).
        return any(not job.stop.is_set() for job in self.running)

    def retry_after(self) -> int:
        """Seconds until the queue has room, roughly: the batches ahead at the recent pace."""
        batches = len(self.waiting) / self.batch_size + 1
        return max(1, math.ceil(batches * self._seconds_per_batch))

    def check(self) -> None:
        """Raises Busy when a new job would be refused now."""
        if len(self.waiting) >= self.queue_limit + self._free_slots():
            raise Busy(self.retry_after(), len(self.waiting))

    def _free_slots(self) -> int:
        # An idle worker takes a batch at once: those jobs never count as queued. A batch
        # whose consumers all have their end counts as over, though its thread may not
        # have returned yet.
        return 0 if self._running_open() else self.batch_size

    def submit(self, job: Job) -> int:
        """Queues `job`; returns its position in the queue (0: it starts with the next
        batch), or raises Busy."""
        self.check()
        ahead = len(self.waiting)
        self.waiting.append(job)
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(
                self._work(), name=f"batch-{self.name}"
            )
        # Jobs an idle worker takes with its next batch are not queued.
        position = ahead + 1 - self._free_slots()
        return max(position, 0)

    def cancel(self, job: Job) -> None:
        """Drops a job that has not started (its consumer went away)."""
        with contextlib.suppress(ValueError):
            self.waiting.remove(job)

    def _take(self) -> list[Job]:
        first = self.waiting.popleft()
        batch = [first]
        for job in list(self.waiting):
            if len(batch) >= self.batch_size:
                break
            if job.adapter == first.adapter:
                self.waiting.remove(job)
                batch.append(job)
        return batch

    async def _work(self) -> None:
        while self.waiting:
            batch = [j for j in self._take() if not j.stop.is_set()]
            if not batch:
                continue
            self.running = batch
            self.batches += 1
            self.largest_batch = max(self.largest_batch, len(batch))
            start = time.perf_counter()
            try:
                await asyncio.to_thread(self.run, batch)
            except BaseException as exc:  # the runner failed outside a job: tell them all
                for job in batch:
                    job.send(exc if isinstance(exc, Exception) else RuntimeError("stopped"))
                if not isinstance(exc, Exception):
                    raise
            finally:
                self.running = []
            elapsed = time.perf_counter() - start
            self._seconds_per_batch = 0.7 * self._seconds_per_batch + 0.3 * elapsed

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(BaseException):
                await self._worker
