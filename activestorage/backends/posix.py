"""Local files: ``os.pread`` through one open handle per file, the kernel in-process."""

from __future__ import annotations

import os
import threading
from typing import Sequence

from ..errors import StorageError
from ..kernel import Partial, reduce_chunk
from ..request import ChunkRequest
from .base import Backend


class PosixBackend(Backend):
    """Reads chunks of local files with ``os.pread`` (no per-chunk opens; thread-safe)."""

    name = "posix"

    def __init__(self) -> None:
        super().__init__()
        self._fds: dict[str, int] = {}
        self._lock = threading.Lock()

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
                    self._fds[path] = fd
        return fd

    def read(self, path: str, offset: int, size: int) -> bytes:
        """``size`` bytes at ``offset`` of ``path``; a short read is an error, never padding."""
        data = os.pread(self._fd(path), size, offset)
        if len(data) != size:
            raise StorageError(f"{path}: short read at offset {offset}: wanted {size} bytes, "
                               f"got {len(data)} (file truncated or index stale?)", store=path)
        return data

    def reduce_chunk(self, request: ChunkRequest, operation: str) -> Partial:
        assert request.url is not None and request.size is not None
        raw = self.read(request.url, request.offset, request.size)
        self._account(bytes_read=len(raw), requests=1)
        return reduce_chunk(raw, request, operation)

    def reduce_chunks(self, requests: Sequence[ChunkRequest], operation: str) -> list[Partial]:
        out = []
        nbytes = 0
        for r in requests:
            raw = self.read(r.url, r.offset, r.size)  # type: ignore[arg-type]
            nbytes += len(raw)
            out.append(reduce_chunk(raw, r, operation))
        self._account(bytes_read=nbytes, requests=len(requests))
        return out

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                try:
                    os.close(fd)
                except OSError:
                    pass
            self._fds.clear()
