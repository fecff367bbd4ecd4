"""Give the C allocator's free memory back to the OS after calls that churned through it.

An axis reduction allocates a partial the size of the result for every chunk (and one
accumulator per worker thread) and frees it moments later. glibc keeps such freed blocks in
per-thread arenas for reuse instead of unmapping them, so a process's RSS stays megabytes above
what it holds after each such call, and later calls' peaks start from there.
:func:`release_free_memory` asks glibc to return the free pages (``malloc_trim``, as Dask's
workers do); nothing that is in use moves. Elsewhere (musl, macOS, Windows) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from typing import Any

#: calls whose result (values and counts) is at least this large release free memory afterwards
RELEASE_MIN_BYTES = 256 * 1024


def _malloc_trim() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim  # glibc only
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_TRIM = _malloc_trim()


def release_free_memory() -> bool:
    """Return the allocator's free pages to the OS; False where the C library cannot."""
    if _TRIM is None:
        return False
    _TRIM(0)
    return True
