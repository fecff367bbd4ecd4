"""Local files: one handle per file, bytes by memory map (zero-copy) or ``os.pread``; kernel in-process.

Chunks are read through a read-only memory map of each file, so an uncompressed chunk is reduced
straight from the page cache with no copy, and a compressed one is handed to the decompressor
without an intermediate buffer. ``select`` results are copied out (they must outlive the map).
With ``use_mmap=False`` every read is an ``os.pread``.
"""

from __future__ import annotations

import mmap
import os
import threading
from typing import Any, Sequence

from ..coalesce import reduce_run, runs
from ..errors import StorageError
from ..kernel import Partial, reduce_chunk
from ..request import ChunkRequest
from .base import Backend


class _File:
    __slots__ = ("fd", "map", "size")

    def __init__(self, path: str, use_mmap: bool) -> None:
        try:
            self.fd = os.open(path, os.O_RDONLY)
        except OSError as exc:
            raise StorageError(f"cannot open {path}: {exc.strerror}", status=400, store=path) from exc
        self.size = os.fstat(self.fd).st_size
        self.map: mmap.mmap | None = None
        if use_mmap and self.size:
            try:
                self.map = mmap.mmap(self.fd, 0, access=mmap.ACCESS_READ)
            except (OSError, ValueError):  # e.g. special files: fall back to pread
                self.map = None

    def close(self) -> None:
        if self.map is not None:
            try:
                self.map.close()
            except BufferError:  # a view is still alive somewhere; the GC will unmap it
                pass
        os.close(self.fd)


class PosixBackend(Backend):
    """Reads chunks of local files (no per-chunk opens; thread-safe)."""

    name = "posix"

    def __init__(self, use_mmap: bool = True) -> None:
        super().__init__()
        self.use_mmap = use_mmap
        self._files: dict[str, _File] = {}
        self._lock = threading.Lock()

    @property
    def default_threads(self) -> int:
        return os.cpu_count() or 1

    def _file(self, path: str) -> _File:
        f = self._files.get(path)
        if f is None:
            with self._lock:
                f = self._files.get(path)
                if f is None:
                    f = self._files[path] = _File(path, self.use_mmap)
        return f

    def _bytes(self, path: str, offset: int, size: int, copy: bool) -> Any:
        f = self._file(path)
        if f.map is not None and not copy and offset + size <= f.size:
            return memoryview(f.map)[offset:offset + size]
        data = os.pread(f.fd, size, offset)
        if len(data) != size:
            raise StorageError(f"{path}: short read at offset {offset}: wanted {size} bytes, "
                               f"got {len(data)} (file truncated or index stale?)", store=path)
        return data

    def read(self, path: str, offset: int, size: int) -> bytes:
        """``size`` bytes at ``offset`` of ``path``; a short read is an error, never padding."""
        return bytes(self._bytes(path, offset, size, copy=True))

    def reduce_chunk(self, request: ChunkRequest, operation: str) -> Partial:
        return self.reduce_chunks([request], operation)[0]

    def reduce_chunks(self, requests: Sequence[ChunkRequest], operation: str) -> list[Partial]:
        out: list[Partial] = []
        nbytes = 0
        copy = operation == "select"
        spans = [(i, i + 1) for i in range(len(requests))] if copy else runs(requests)
        for a, b in spans:
            r = requests[a]
            size = sum(q.size for q in requests[a:b])  # type: ignore[misc]
            raw = self._bytes(r.url, r.offset, size, copy)  # type: ignore[arg-type]
            nbytes += size
            if b - a == 1:
                out.append(reduce_chunk(raw, r, operation))
            else:
                out.extend(reduce_run(raw, requests[a:b], operation))
            del raw
        self._account(bytes_read=nbytes, requests=len(spans))
        return out

    def close(self) -> None:
        with self._lock:
            for f in self._files.values():
                f.close()
            self._files.clear()
