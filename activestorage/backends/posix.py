"""The ``posix`` backend: local files read on the calling thread into per-thread buffers (or
viewed in a memory map), kernel in-process.

It is the in-process backend (:class:`~activestorage.backends.inprocess.StoreBackend`) with its
thread-buffer read plan; the reading itself is :class:`~activestorage.stores.local.LocalStore`'s.
"""

from __future__ import annotations

import os

from .inprocess import StoreBackend


class PosixBackend(StoreBackend):
    """Reads chunks of local files (no per-chunk opens; thread-safe)."""

    name = "posix"

    def __init__(self, use_mmap: bool | None = False) -> None:
        """``use_mmap``: read with ``os.preadv`` (False, the default: RSS is exactly the
        threads' buffers), reduce from a memory map (True), or map where the OS can populate and
        drop a range's pages in one call each (None: Linux 5.14+)."""
        super().__init__(thread_buffers=True, use_mmap=use_mmap)
        self.use_mmap = use_mmap

    @property
    def default_threads(self) -> int:
        return os.cpu_count() or 1

    def _mapping(self) -> bool:
        return self.files.mapping()

    def read(self, path: str, offset: int, size: int) -> bytes:
        """``size`` bytes at ``offset`` of ``path``; a short read is an error, never padding."""
        return self.files.read_into(path, offset, size, None)
