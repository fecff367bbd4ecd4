"""Local files: one handle per file, bytes read with ``os.preadv`` or from a memory map; kernel
in-process.

By default every chunk is read with ``os.preadv`` into a buffer each worker thread keeps (one
copy, into memory that stays hot in cache), so RSS is threads x the largest read, exactly,
whatever the file's size. Deflated chunks are read a piece at a time as they inflate (the buffer
is one piece), into a decode buffer each thread keeps. Runs of small adjacent uncompressed chunks
are read at once and reduced as a few stacked arrays, folding partials that share a result slot
(:mod:`activestorage.coalesce`). ``select`` results always get bytes of their own.

With ``use_mmap`` uncompressed chunks are reduced straight from a read-only map of the file, no
copy: the pages of a read are mapped in one call before the kernel runs
(``MADV_POPULATE_READ``, Linux 5.14+, which also reports a range past the end of a truncated file
instead of crashing on it) and dropped right after (``MADV_DONTNEED``). Whether that is faster
than the copy depends on the machine (~15 % faster on one VM, ~15 % slower on another), and
populating maps the page cache's large folios around each range, so RSS then depends on how the
file came into the cache.
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
import sys
import threading
from typing import Any, Hashable, Iterator, Sequence

import numpy as np

from ..coalesce import reduce_run, runs
from ..errors import StorageError
from ..kernel import Partial, StoredPieces, reduce_chunk, scratch_bytes, streams
from ..request import ChunkRequest
from .base import InProcessBackend

log = logging.getLogger(__name__)

#: madvise advice mapping a range's pages in one call (Linux >= 5.14; Python does not name it yet)
_POPULATE_READ = (getattr(mmap, "MADV_POPULATE_READ", 22) if sys.platform.startswith("linux")
                  else None)
_PAGE = mmap.PAGESIZE
#: a fault maps the pages around the faulting one: within 64 KiB (fault_around_bytes), or the
#: whole large folio the page cache holds it in, which is at most a PMD (2 MiB with 4 KiB pages)
_FAULT_AROUND = max(64 * 1024, 512 * _PAGE)
#: deflated chunks are read this many bytes at a time, each piece inflated before the next is read
STREAM_PIECE = 256 * 1024


class PosixBackend(InProcessBackend):
    """Reads chunks of local files (no per-chunk opens; thread-safe)."""

    name = "posix"

    def __init__(self, use_mmap: bool | None = False) -> None:
        """``use_mmap``: read with ``os.preadv`` (False, the default: RSS is exactly the
        threads' buffers), reduce from a memory map (True), or map where the OS can populate and
        drop a range's pages in one call each (None: Linux 5.14+; a map without that faults page
        by page, which is slower than reading)."""
        super().__init__()
        self.use_mmap = use_mmap
        self._populate = _POPULATE_READ is not None and use_mmap is not False
        self._fds: dict[str, int] = {}
        self._maps: dict[int, tuple[mmap.mmap, int] | None] = {}
        self._lock = threading.Lock()
        self._local = threading.local()  # each thread's read and decode buffers, kept

    @property
    def default_threads(self) -> int:
        return os.cpu_count() or 1

    def _fd(self, path: str) -> int:
        fd = self._fds.get(path)
        if fd is None:
            with self._lock:
                fd = self._fds.get(path)
                if fd is None:
                    try:
                        fd = os.open(path, os.O_RDONLY)
                    except OSError as exc:
                        raise StorageError(f"cannot open {path}: {exc.strerror}", status=400,
                                           store=path) from exc
                    self._maps[fd] = self._map(fd) if self._mapping() else None
                    self._fds[path] = fd
        return fd

    @staticmethod
    def _map(fd: int) -> tuple[mmap.mmap, int] | None:
        size = os.fstat(fd).st_size
        if not size:
            return None
        try:
            return mmap.mmap(fd, 0, access=mmap.ACCESS_READ), size
        except (OSError, ValueError):  # special files: read them instead
            return None

    def _buffer(self, name: str, size: int) -> bytearray:
        """This thread's reusable buffer ``name`` ("read", "piece" or "scratch"), at least ``size``
        bytes (memory already touched and in cache; one of each per thread, so RSS stays bounded)."""
        buf = getattr(self._local, name, None)
        if buf is None or len(buf) < size:
            # grow by a quarter at least: compressed sizes vary a little from batch to batch
            buf = bytearray(size if buf is None else max(size, len(buf) * 5 // 4))
            setattr(self._local, name, buf)
        return buf

    def _mapping(self) -> bool:
        return self.use_mmap is True or (self.use_mmap is None and self._populate)

    def _read(self, path: str, offset: int, size: int, buf: bytearray | None,
              map_ok: bool = False) -> Any:
        """``size`` bytes at ``offset``: with ``map_ok`` a view of the map where possible (give it
        back to :meth:`_release`), else a view of ``buf`` (large enough), or fresh bytes if
        ``buf`` is None."""
        fd = self._fd(path)
        mapped = self._maps.get(fd)
        if map_ok and mapped is not None and offset + size <= mapped[1] \
                and self._map_in(mapped[0], offset, size):
            return memoryview(mapped[0])[offset:offset + size]
        if buf is None:
            data: Any = os.pread(fd, size, offset)
            n = len(data)
        else:
            data = memoryview(buf)[:size]
            n = os.preadv(fd, [data], offset)
        if n != size:
            raise StorageError(f"{path}: short read at offset {offset}: wanted {size} bytes, "
                               f"got {n} (file truncated or chunk index stale?)", store=path)
        return data

    def _map_in(self, m: mmap.mmap, offset: int, size: int) -> bool:
        """Map the pages of a range in one call; False where the range cannot be read from the
        map (past the end of a file truncated since it was mapped: read it to report that)."""
        if not self._populate or not size:
            return True
        start = offset - offset % _PAGE
        try:
            m.madvise(_POPULATE_READ, start, offset + size - start)
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.ENOSYS):  # a kernel before 5.14
                log.debug("MADV_POPULATE_READ unsupported (%s): reading with preadv", exc)
                self._populate = False
                return self.use_mmap is True
            return False
        return True

    def _release(self, path: str, data: Any, offset: int, size: int) -> None:
        """Drop a mapped range's pages from this process (they stay in the page cache).

        The range is widened to whole aligned blocks of ``_FAULT_AROUND``: a page shared with a
        neighbouring chunk that another thread dropped is faulted back in with the pages around
        it (its whole large folio), which lie in those blocks; dropping them here means nothing
        stays mapped after the last user. (A neighbour still reading there faults it in again.)
        """
        mapped = self._maps.get(self._fds.get(path, -1))
        if mapped is None or not isinstance(data, memoryview) or data.obj is not mapped[0]:
            return
        start = offset - offset % _FAULT_AROUND
        end = -(-(offset + size) // _FAULT_AROUND) * _FAULT_AROUND
        try:
            mapped[0].madvise(mmap.MADV_DONTNEED, start, min(end, mapped[1]) - start)
        except (OSError, ValueError):  # only a memory-use hint
            pass

    def read(self, path: str, offset: int, size: int) -> bytes:
        """``size`` bytes at ``offset`` of ``path``; a short read is an error, never padding."""
        return self._read(path, offset, size, None)

    def reduce_chunk(self, request: ChunkRequest, operation: str) -> Partial:
        return self.reduce_chunks([request], operation)[0]

    def _reduce(self, requests: Sequence[ChunkRequest], operation: str,
                slots: Sequence[Hashable] | None) -> list[Partial | None]:
        out: list[Partial | None] = []
        own = operation == "select"  # selections keep their bytes: no shared buffer
        spans = [(i, i + 1) for i in range(len(requests))] if own else runs(requests)
        sizes = [sum(q.size for q in requests[a:b]) for a, b in spans]  # type: ignore[misc]
        # decoded chunks (codecs undone) go to this thread's scratch buffer, not fresh memory
        decoded = scratch_bytes(requests)
        # Stored bytes that are decoded anyway are read into this thread's buffer: the copy is
        # small next to inflating them, and mapping them would add the page cache's large folios
        # around each range to RSS. Deflated chunks are read a piece at a time as they inflate,
        # so the buffer is one piece, not one compressed chunk. With the map, uncompressed chunks
        # are reduced from it, no copy.
        map_ok = not own and not decoded and self._mapping()
        streamed = [not own and b - a == 1 and streams(requests[a]) for a, b in spans]
        whole = [size for size, st in zip(sizes, streamed) if not st]
        buf = None if own or map_ok or not whole else self._buffer("read", max(whole))
        work = np.frombuffer(self._buffer("scratch", decoded), np.uint8) if decoded else None
        for (a, b), size, st in zip(spans, sizes, streamed):
            r = requests[a]
            raw: Any
            if st:
                raw = _FileRange(self, r.url, r.offset, size,  # type: ignore[arg-type]
                                 self._buffer("piece", STREAM_PIECE))
            else:
                raw = self._read(r.url, r.offset, size, buf, map_ok)  # type: ignore[arg-type]
            try:
                if b - a == 1:
                    out.append(reduce_chunk(raw, r, operation, work))
                else:
                    out.extend(reduce_run(raw, requests[a:b], operation,
                                          None if slots is None else slots[a:b]))
            finally:
                self._release(r.url, raw, r.offset, size)  # type: ignore[arg-type]
            del raw
        self._account(bytes_read=sum(sizes), requests=len(spans))
        return out

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                mapped = self._maps.get(fd)
                if mapped is not None:
                    try:
                        mapped[0].close()
                    except BufferError:  # a view is still alive; the GC unmaps it later
                        pass
                try:
                    os.close(fd)
                except OSError:
                    pass
            self._fds.clear()
            self._maps.clear()


class _FileRange(StoredPieces):
    """A chunk's stored bytes read into one reused piece buffer as the inflater asks for them."""

    __slots__ = ("_backend", "_path", "_offset", "_size", "_buf")

    def __init__(self, backend: PosixBackend, path: str, offset: int, size: int,
                 buf: bytearray) -> None:
        self._backend, self._path, self._offset, self._size, self._buf = \
            backend, path, offset, size, buf

    @property
    def nbytes(self) -> int:
        return self._size

    def pieces(self) -> Iterator[memoryview]:
        step = min(len(self._buf), STREAM_PIECE)
        for pos in range(0, self._size, step):
            n = min(step, self._size - pos)
            yield self._backend._read(self._path, self._offset + pos, n, self._buf)
