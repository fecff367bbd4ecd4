"""Local files: one handle per file, bytes read with ``os.preadv`` into the caller's buffer or
viewed in a memory map.

Every read goes into a buffer the caller keeps (one copy, into memory that stays hot in cache:
the in-process backend keeps one per thread), so RSS is bounded whatever the file's size.

With ``use_mmap`` a range can instead be viewed in a read-only map of the file, no copy: its pages
are mapped in one call (``MADV_POPULATE_READ``, Linux 5.14+, which also reports a range past the
end of a truncated file instead of crashing on it) and dropped after use (:meth:`release`,
``MADV_DONTNEED``). Whether that is faster than the copy depends on the machine (~15 % faster on
one VM, ~15 % slower on another), and populating maps the page cache's large folios around each
range, so RSS then depends on how the file came into the cache.
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
import sys
import threading
from typing import Any, Iterator

from ..errors import StorageError
from ..kernel import StoredPieces
from ._body import Consumer
from .base import Account, ByteStore, ObjectInfo
from .urls import local_path

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


class LocalStore(ByteStore):
    """Reads ranges of local files (no per-read opens; thread-safe).

    ``use_mmap``: read with ``os.preadv`` (False), view a memory map (True), or map where the OS
    can populate and drop a range's pages in one call each (None: Linux 5.14+; a map without that
    faults page by page, which is slower than reading). ``missing_status``: the status of a file
    that cannot be opened (400 where the caller named it, 404 where a manifest did).
    """

    kind = "file"

    def __init__(self, use_mmap: bool | None = False, *, missing_status: int = 400,
                 account: Account | None = None) -> None:
        super().__init__(account)
        self.use_mmap = use_mmap
        self.missing_status = missing_status
        self._populate = _POPULATE_READ is not None and use_mmap is not False
        self._fds: dict[str, int] = {}
        self._maps: dict[int, tuple[mmap.mmap, int] | None] = {}
        self._lock = threading.Lock()

    def _fd(self, url: str) -> int:
        fd = self._fds.get(url)
        if fd is None:
            with self._lock:
                fd = self._fds.get(url)
                if fd is None:
                    path = local_path(url)
                    try:
                        fd = os.open(path, os.O_RDONLY)
                    except OSError as exc:
                        raise StorageError(f"cannot open {path}: {exc.strerror}",
                                           status=self.missing_status, store=path) from exc
                    self._maps[fd] = self._map(fd) if self.mapping() else None
                    self._fds[url] = fd
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

    def mapping(self) -> bool:
        """Whether ranges are viewed in a map (where :meth:`read_into` is given ``map_ok``)."""
        return self.use_mmap is True or (self.use_mmap is None and self._populate)

    def head(self, url: str) -> ObjectInfo:
        return ObjectInfo(os.fstat(self._fd(url)).st_size)

    def read_object(self, url: str) -> bytes:
        path = local_path(url)
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError as exc:
            raise StorageError(f"cannot open {path}: {exc.strerror or exc}",
                               status=self.missing_status, store=path) from exc

    def find(self, url: str) -> dict[str, ObjectInfo]:
        out = {}
        for top, _dirs, files in os.walk(local_path(url)):
            for name in files:
                path = os.path.join(top, name)
                try:
                    out[path] = ObjectInfo(os.stat(path).st_size)
                except OSError:  # removed while listing
                    continue
        return out

    def list_dir(self, url: str) -> list[str]:
        try:
            return os.listdir(local_path(url))
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as exc:
            raise StorageError(f"cannot list {local_path(url)}: {exc.strerror or exc}",
                               store=local_path(url)) from exc

    def read_into(self, url: str, offset: int, size: int, buf: bytearray | None,
                  map_ok: bool = False) -> Any:
        """``size`` bytes at ``offset``: with ``map_ok`` a view of the map where possible (give it
        back to :meth:`release`), else a view of ``buf`` (large enough), or fresh bytes if
        ``buf`` is None. A short read is an error, never padding."""
        fd = self._fd(url)
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
            raise StorageError(f"{local_path(url)}: short read at offset {offset}: wanted {size} "
                               f"bytes, got {n} (file truncated or chunk index stale?)",
                               store=local_path(url))
        return data

    def read_range(self, url: str, start: int, end: int, *, etag: str | None = None,
                   version_id: str | None = None, consume: Consumer | None = None) -> Any:
        """``[start, end)`` of a local file as fresh bytes (pins do not apply to files)."""
        if consume is not None:
            raise StorageError("local files are read whole, not consumed", status=400, store=url)
        if end <= start:
            return b""
        data = self.read_into(url, start, end - start, None)
        self._account(bytes_read=len(data), requests=1)
        return data

    def pieces(self, url: str, offset: int, size: int, buf: bytearray) -> "FileRange":
        """The range as pieces read into ``buf`` one at a time, for the inflater."""
        return FileRange(self, url, offset, size, buf)

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

    def release(self, url: str, data: Any, offset: int, size: int) -> None:
        """Drop a mapped range's pages from this process (they stay in the page cache).

        The range is widened to whole aligned blocks of ``_FAULT_AROUND``: a page shared with a
        neighbouring chunk that another thread dropped is faulted back in with the pages around
        it (its whole large folio), which lie in those blocks; dropping them here means nothing
        stays mapped after the last user. (A neighbour still reading there faults it in again.)
        """
        mapped = self._maps.get(self._fds.get(url, -1))
        if mapped is None or not isinstance(data, memoryview) or data.obj is not mapped[0]:
            return
        start = offset - offset % _FAULT_AROUND
        end = -(-(offset + size) // _FAULT_AROUND) * _FAULT_AROUND
        try:
            mapped[0].madvise(mmap.MADV_DONTNEED, start, min(end, mapped[1]) - start)
        except (OSError, ValueError):  # only a memory-use hint
            pass

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


class FileRange(StoredPieces):
    """A range of a file read into one reused piece buffer as the inflater asks for it."""

    __slots__ = ("_store", "_url", "_offset", "_size", "_buf")

    def __init__(self, store: LocalStore, url: str, offset: int, size: int,
                 buf: bytearray) -> None:
        self._store, self._url, self._offset, self._size, self._buf = \
            store, url, offset, size, buf

    @property
    def nbytes(self) -> int:
        return self._size

    def pieces(self) -> Iterator[memoryview]:
        step = min(len(self._buf), STREAM_PIECE)
        for pos in range(0, self._size, step):
            n = min(step, self._size - pos)
            yield self._store.read_into(self._url, self._offset + pos, n, self._buf)
