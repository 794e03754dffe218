"""Keep the service's memory flat while big files stream through.

Every 1 MiB chunk is a fresh buffer, allocated by whichever thread touches it (gRPC's
threads, the I/O pool, the event loop). glibc gives contending threads arenas of their
own and keeps freed memory in them, so the resident size creeps up with each transfer.
Capping the arenas (the same as MALLOC_ARENA_MAX=2) keeps it flat. No-op off glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

_M_ARENA_MAX = -8


def cap_malloc_arenas(arenas: int = 2) -> bool:
    if "MALLOC_ARENA_MAX" in os.environ:  # the operator decided
        return False
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(_M_ARENA_MAX, arenas))
    except (OSError, AttributeError):
        return False
