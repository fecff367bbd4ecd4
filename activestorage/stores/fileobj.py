"""A dataset URL (local path, ``s3://``, ``http(s)://``) as a seekable file for metadata reads.

HDF5 metadata is many small reads scattered over the file; over a network each one would be a round
trip. :func:`open_url` puts an LRU block cache (fsspec's ``BlockCache``) in front of the byte
store that reads the URL, so h5py/h5netcdf/pyfive read the superblock, object headers and chunk
B-trees in a few large range GETs, and counts what that costs (:class:`StorageStats`: bytes,
requests, seconds). The stores' options and typed errors apply unchanged.
"""

from __future__ import annotations

import io
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from ..errors import StorageError
from .urls import local_path, url_kind

#: block size of the metadata cache. Measured on netCDF-4 files (requests / bytes to open a
#: variable and list its chunk index): with 1600 64-KiB chunks, 16 KiB blocks: 34 / 544 KiB,
#: 64 KiB: 29 / 1.8 MiB, 512 KiB: 28 / 14 MiB. The request count is set by how many chunk B-tree
#: nodes are scattered through the file, the bytes by the block size, so blocks are small; 64 KiB
#: still covers a typical file's header metadata (superblock, object headers) in one GET.
DEFAULT_BLOCK_SIZE = 64 * 1024
#: blocks kept in the LRU cache (bounds memory at DEFAULT_BLOCK_SIZE * DEFAULT_MAX_BLOCKS = 16 MiB).
DEFAULT_MAX_BLOCKS = 256


# ------------------------------------------------------------------------ counting file

@dataclass
class StorageStats:
    """What reading through a :class:`CountingFile` cost: bytes and requests to the store, and
    the seconds spent waiting for them."""

    bytes_read: int = 0
    requests: int = 0
    seconds: float = 0.0


class CountingFile(io.RawIOBase):
    """A read-only seekable file over a store, counting store reads in :attr:`stats`.

    Remote files count each range GET the block cache makes (plus the one HEAD request that finds
    the object's size and ETag); local files count each ``read`` call. :attr:`etag` and
    :attr:`version_id` are the object's, when the store reports them, so locators can be pinned.
    """

    def __init__(self, url: str, inner: Any, *, size: int, etag: str | None = None,
                 version_id: str | None = None, stats: StorageStats | None = None,
                 count_reads: bool = False) -> None:
        super().__init__()
        self.url = url
        self.name = url
        self._inner = inner
        self.size = size
        self.etag = etag
        self.version_id = version_id
        self.stats = stats or StorageStats()
        self._count_reads = count_reads
        self._lock = threading.Lock()

    def _account(self, nbytes: int, seconds: float) -> None:
        with self._lock:
            self.stats.bytes_read += nbytes
            self.stats.requests += 1
            self.stats.seconds += seconds

    def wrap_fetcher(self, fetcher: Callable[[int, int], Any]) -> Callable[[int, int], bytes]:
        """A fetcher that counts what the store's reads cost (the store raises typed errors)."""
        def fetch(start: int, end: int) -> bytes:
            t0 = time.perf_counter()
            data = bytes(fetcher(start, end))  # blocks are small; callers expect bytes
            self._account(len(data), time.perf_counter() - t0)
            return data
        return fetch

    # io interface
    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = 0) -> int:
        return self._inner.seek(pos, whence)

    def tell(self) -> int:
        return self._inner.tell()

    def readinto(self, b: Any) -> int:
        t0 = time.perf_counter()
        mv = memoryview(b).cast("B")
        data = self._inner.read(len(mv))
        n = len(data)
        mv[:n] = data
        if self._count_reads:
            self._account(n, time.perf_counter() - t0)
        return n

    def read(self, n: int = -1) -> bytes:
        t0 = time.perf_counter()
        data = self._inner.read(n)
        if self._count_reads:
            self._account(len(data), time.perf_counter() - t0)
        return data

    def close(self) -> None:
        if not self.closed:
            try:
                self._inner.close()
            finally:
                super().close()


def open_url(url: str, storage_options: Mapping[str, Any] | None = None, *,
             block_size: int = DEFAULT_BLOCK_SIZE, max_blocks: int = DEFAULT_MAX_BLOCKS,
             timeout: float = 30.0, env: Mapping[str, str] | None = None) -> CountingFile:
    """Open ``url`` for reading with a block cache sized for HDF5 metadata; see the module doc.

    Raises :class:`~activestorage.errors.StorageError` (naming the URL) when the object cannot be
    opened: missing bucket/object (status 404), refused credentials (401), unreachable store (502).
    """
    kind = url_kind(url)
    if kind == "file":
        path = local_path(url)
        try:
            f = open(path, "rb")  # noqa: SIM115 - closed by CountingFile.close
        except OSError as exc:
            raise StorageError(f"cannot open {path}: {exc.strerror or exc}", status=404,
                               store=path) from exc
        return CountingFile(path, f, size=os.fstat(f.fileno()).st_size, count_reads=True)

    from fsspec.caching import BlockCache

    from . import open_store

    stats = StorageStats()
    t0 = time.perf_counter()
    # retries as s3fs had them for metadata (3 attempts); config_kwargs may say otherwise
    store = open_store(url, storage_options, timeout=timeout, retries=2, env=env)
    try:
        info = store.head(url)  # size, ETag and version id, with a clean 404
    except BaseException:
        store.close()
        raise
    stats.requests += 1  # the HEAD that found size and ETag
    stats.seconds += time.perf_counter() - t0
    cf = CountingFile(url, None, size=info.size,
                      etag=info.etag.strip('"') if info.etag else None,
                      version_id=info.version_id, stats=stats)
    # fsspec's LRU block cache over the store's range reads: HDF5 metadata (superblock, object
    # headers, chunk B-trees) comes in a few block-sized GETs
    def read(start: int, end: int) -> Any:  # the cache asks for whole blocks, even the last
        return store.read_range(url, start, min(end, info.size))

    cache = BlockCache(block_size, cf.wrap_fetcher(read), info.size, maxblocks=max_blocks)
    cf._inner = _CachedFile(cache, info.size, store)
    return cf


class _CachedFile:
    """A seekable read-only file over a block cache (fsspec's cache interface: ``_fetch``)."""

    def __init__(self, cache: Any, size: int, store: Any) -> None:
        self._cache, self._size, self._store, self._pos = cache, size, store, 0

    def seek(self, pos: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._size}[whence]
        if base + pos < 0:
            raise ValueError("negative seek position")
        self._pos = base + pos
        return self._pos

    def tell(self) -> int:
        return self._pos

    def read(self, n: int = -1) -> bytes:
        end = self._size if n is None or n < 0 else min(self._size, self._pos + n)
        if end <= self._pos:
            return b""
        data = self._cache._fetch(self._pos, end)
        self._pos += len(data)
        return data

    def close(self) -> None:
        self._store.close()
