"""Blocking file and hashing work off the event loop, on a small dedicated pool.

Two threads are enough for one chunk being hashed while another is read or written, and
few threads mean few malloc arenas: with the default executor's many threads each 1 MiB
buffer can land in another arena and the service's memory creeps up with every transfer.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

_POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="storage-io")


async def run_io(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_POOL, functools.partial(fn, *args, **kwargs))
