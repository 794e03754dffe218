"""Fault injection with real processes, for any test that needs a dependency to fail.

- `database_down(pg)` — stops a real Postgres cluster (`LocalPostgres`, e.g. one from
  `services.common.devpg.temporary_cluster`) for the body of an `async with`, and starts
  it again on the way out (also when the body fails). Stopping runs in a thread, so
  services running in the test's event loop keep going during the outage.
- `database_stopped(pg)` — the same as a plain `with`, for synchronous tests.
- `kill(proc_or_pid)` — kills a process (SIGKILL by default, or SIGTERM to see it drain)
  and waits until it is gone; `killed_on_exit(proc)` makes sure a child never outlives
  the test.

Use a cluster of the test module's own (not the session's `pg` fixture) when stopping
it: other modules share the session cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from services.common.devpg import LocalPostgres


@contextlib.asynccontextmanager
async def database_down(pg: LocalPostgres) -> AsyncIterator[None]:
    """Postgres is stopped inside the block and running again after it."""
    await asyncio.to_thread(pg.stop)
    try:
        yield
    finally:
        await asyncio.to_thread(pg.start, fast=True)


@contextlib.contextmanager
def database_stopped(pg: LocalPostgres) -> Iterator[None]:
    """`database_down` for synchronous code."""
    pg.stop()
    try:
        yield
    finally:
        pg.start(fast=True)


def kill(
    proc: subprocess.Popen[bytes] | subprocess.Popen[str] | int,
    sig: int = signal.SIGKILL,
    *,
    timeout: float = 30.0,
) -> int | None:
    """Sends `sig` to a child (a Popen) or to any process (a pid) and waits until it is
    gone; returns a child's exit status (None for a pid). SIGKILL after `timeout`."""
    if isinstance(proc, int):
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc, sig)
        end = time.monotonic() + timeout
        while _alive(proc):
            if time.monotonic() > end:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc, signal.SIGKILL)
            time.sleep(0.05)
        return None
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def _alive(pid: int) -> bool:
    """Running (a zombie that its parent has not reaped yet counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@contextlib.contextmanager
def killed_on_exit(
    proc: subprocess.Popen[bytes] | subprocess.Popen[str],
) -> Iterator[subprocess.Popen[bytes] | subprocess.Popen[str]]:
    """The child is killed (and reaped) when the block ends, whatever happened."""
    try:
        yield proc
    finally:
        kill(proc)
