"""The page-cache state every method is timed in: the files read (not just written) and resident.

Two things make "a warm page cache" less warm than it sounds:

- **How the file came into the cache.** A file written moments ago sits in the cache in the
  pieces the writer's calls made, mostly small folios; reading fills it in large folios as
  readahead grows (here, 2 MiB ones). Copying the same bytes out of small folios cost ~1.5x
  (plain file, 4 MiB ``pread`` s: 88 vs 61 ms). Data users reduce was written elsewhere and
  read, so :func:`recache` drops each file and reads it back once before timing.
- **Whether it stays there.** Some hosts reclaim page cache on their own schedule, whatever the
  free memory: on the sandbox VMs these figures come from, an idle 415 MB file lost ~2 MB/s of
  its pages (``fincore``), so a timed run could read part of its file from disk. :class:`Pinned`
  maps each file and ``mlock`` s it for the whole run, in the parent process (no method's RSS
  counts it), so nothing is evicted.

:func:`resident` measures a file's share in the cache (``mincore``); the run records it per
method before and after, so a figure taken off a partly evicted file shows.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
import sys
from pathlib import Path
from typing import Any

#: bytes per read when :func:`recache` reads a file back (what a sequential reader uses)
RECACHE_READ = 8 << 20

_libc: Any = None
if sys.platform.startswith("linux"):
    try:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        _libc.mmap.restype = ctypes.c_void_p
        _libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                               ctypes.c_int, ctypes.c_long]
        _libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        for name in ("mlock", "munlock"):
            getattr(_libc, name).argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        _libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    except (OSError, AttributeError):
        _libc = None

_MAP_FAILED = ctypes.c_void_p(-1).value


def recache(path: Path, piece: int = RECACHE_READ) -> bool:
    """Leave ``path`` in the page cache as reading it leaves it: flushed, dropped from the
    cache, read once front to back. False where the OS cannot drop it (no ``posix_fadvise``):
    the cache is then left as it is."""
    if not hasattr(os, "posix_fadvise"):
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)  # dirty pages are not dropped
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        buf = bytearray(piece)
        offset = 0
        while n := os.preadv(fd, [buf], offset):
            offset += n
    finally:
        os.close(fd)
    return True


def _map(fd: int, size: int) -> int | None:
    addr = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
    return None if addr in (None, _MAP_FAILED) else addr


def resident(path: Path) -> float | None:
    """The share of ``path``'s pages in the page cache (0..1), or None where unknown."""
    if _libc is None:
        return None
    size = os.path.getsize(path)
    if not size:
        return 1.0
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = _map(fd, size)
    finally:
        os.close(fd)
    if addr is None:
        return None
    try:
        pages = -(-size // mmap.PAGESIZE)
        vec = ctypes.create_string_buffer(pages)
        if _libc.mincore(ctypes.c_void_p(addr), size, vec) != 0:
            return None
        return sum(b & 1 for b in vec.raw) / pages
    finally:
        _libc.munmap(ctypes.c_void_p(addr), size)


class Pinned:
    """Keep files in the page cache while the ``with`` block runs (``mlock`` of a read-only
    map of each). ``pinned`` lists the files it could pin; ``why`` says why not the others
    (no privilege or limit: ``RLIMIT_MEMLOCK``, ``CAP_IPC_LOCK``)."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths
        self.pinned: list[Path] = []
        self.why: list[str] = []
        self._maps: list[tuple[int, int]] = []

    def __enter__(self) -> "Pinned":
        if _libc is None:
            self.why.append("no mlock on this platform")
            return self
        for path in self.paths:
            size = os.path.getsize(path)
            fd = os.open(path, os.O_RDONLY)
            try:
                addr = _map(fd, size) if size else None
            finally:
                os.close(fd)
            if addr is None:
                self.why.append(f"{path.name}: cannot map it")
                continue
            if _libc.mlock(ctypes.c_void_p(addr), size) != 0:
                err = ctypes.get_errno()
                _libc.munmap(ctypes.c_void_p(addr), size)
                self.why.append(f"{path.name}: mlock: {os.strerror(err)}")
                continue
            self._maps.append((addr, size))
            self.pinned.append(path)
        return self

    def __exit__(self, *exc: object) -> None:
        for addr, size in self._maps:
            _libc.munlock(ctypes.c_void_p(addr), size)
            _libc.munmap(ctypes.c_void_p(addr), size)
        self._maps.clear()
