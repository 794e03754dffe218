"""Keep the service's memory flat and its 1 MiB buffers cheap while big files stream.

Every 1 MiB chunk is a fresh buffer (gRPC's slices, the message, the bytes object),
allocated by whichever thread touches it (gRPC's threads, the I/O pool, the event loop).

- Arenas: glibc gives contending threads arenas of their own and keeps freed memory in
  each, so the resident size creeps up with each transfer. One arena (the same as
  MALLOC_ARENA_MAX=1) lets a buffer freed by any thread serve the next one of any other
  (gRPC's thread, the loop, the I/O pool: a handful of threads, little lock contention);
  with two, a 1 GiB S3 upload peaked ~10 MB higher.
- Thresholds: by default a buffer over 128 KiB is its own mmap, and glibc's dynamic
  threshold (raised when such a buffer is freed) is undone by trimming; either way each
  1 MiB buffer lands on fresh pages, and faulting 256 zeroed pages in costs more than the
  copy itself (building and serialising one 1 MiB message took ~1.4 ms instead of
  ~0.2 ms; a 256 MiB download spent ~0.35 s of CPU, now ~0.17 s). Fixed thresholds (the same as
  MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_) let freed buffers be reused from the
  heap; the trim threshold bounds what an arena keeps beyond its live buffers.

- Release: within a transfer the heap's free space is reused by the next chunks; after
  one, what its chunks left free inside the heap (not only at its top, which the trim
  threshold covers) stays resident until `release` hands those pages back. The service
  calls it once started (the garbage of imports and client set-up) and after each
  transfer of at least `RELEASE_AFTER` bytes (a 1 GiB S3 upload otherwise leaves ~11 MB
  more resident for the downloads and uploads after it).

Each setting is skipped when the operator set its environment variable. No-op off glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

MiB = 1024 * 1024

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8

ARENAS = 1
# Above the 1 MiB chunk (and a chunk's message framing), below an S3 part (8 MiB by
# default), which stays an mmap of its own and goes back to the system when sent.
MMAP_THRESHOLD = 4 * MiB
# Free memory an arena keeps at its top before giving it back: a handful of chunks.
TRIM_THRESHOLD = 16 * MiB
# Transfers smaller than this leave too little behind to be worth a release.
RELEASE_AFTER = 64 * MiB


@functools.cache  # find_library runs ldconfig: look once
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt  # noqa: B018 - missing off glibc
    except (OSError, AttributeError):
        return None
    return libc


def tune_malloc(
    arenas: int = ARENAS, mmap_threshold: int = MMAP_THRESHOLD, trim_threshold: int = TRIM_THRESHOLD
) -> dict[str, bool]:
    """Applies the settings above; returns which ones took effect."""
    libc = _libc()
    wanted = (
        ("MALLOC_ARENA_MAX", _M_ARENA_MAX, arenas),
        ("MALLOC_MMAP_THRESHOLD_", _M_MMAP_THRESHOLD, mmap_threshold),
        ("MALLOC_TRIM_THRESHOLD_", _M_TRIM_THRESHOLD, trim_threshold),
    )
    applied: dict[str, bool] = {}
    for env, param, value in wanted:
        if env in os.environ or libc is None:  # the operator decided, or not glibc
            applied[env] = False
            continue
        applied[env] = bool(libc.mallopt(param, value))
    return applied


def release() -> bool:
    """Gives the allocator's free pages back to the system (glibc's malloc_trim(0),
    which also returns whole free pages inside the heap). False off glibc."""
    trim = getattr(_libc(), "malloc_trim", None)
    if trim is None:
        return False
    return bool(trim(0))
