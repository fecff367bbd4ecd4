"""A read-only zarr v3 ``Store`` over one of our byte stores, so zarr reads a Zarr store's metadata
through :mod:`activestorage.stores` (the same options, connections and typed errors as every other
read) instead of a second transport stack (s3fs/fsspec).

zarr only ever reads metadata documents through it (chunks are read by the backends from the
chunk index); its methods run the store's synchronous calls in a worker thread. A missing key
(the store says 404) is ``None``, as zarr expects; every other failure is the store's
:class:`~activestorage.errors.StorageError`, which zarr passes through unchanged.

Imported only after zarr itself (``formats.zarr.import_zarr``): zarr is an optional dependency.
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, Iterable

from zarr.abc.store import (ByteRequest, OffsetByteRequest, RangeByteRequest, Store,
                            SuffixByteRequest)

from ..errors import StorageError
from ..stores.base import ByteStore


class ByteStoreZarr(Store):
    """The keys under ``root`` (a URL or local path) of ``store``, read-only."""

    supports_writes = False
    supports_deletes = False
    supports_partial_writes = False
    supports_listing = True

    def __init__(self, store: ByteStore, root: str) -> None:
        super().__init__(read_only=True)
        self.store = store
        self.root = root.rstrip("/")

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, ByteStoreZarr) and other.store is self.store
                and other.root == self.root)

    def __repr__(self) -> str:
        return f"ByteStoreZarr({self.root!r})"

    def _url(self, key: str) -> str:
        key = key.strip("/")
        return f"{self.root}/{key}" if key else self.root

    def _read(self, key: str, byte_range: ByteRequest | None) -> Any:
        url = self._url(key)
        try:
            if byte_range is None:
                return self.store.read_object(url)
            if isinstance(byte_range, RangeByteRequest):
                return self.store.read_range(url, byte_range.start, byte_range.end)
            size = self.store.size(url)
            if isinstance(byte_range, OffsetByteRequest):
                return self.store.read_range(url, byte_range.offset, size)
            if isinstance(byte_range, SuffixByteRequest):
                return self.store.read_range(url, max(0, size - byte_range.suffix), size)
        except StorageError as exc:
            if exc.status == 404:
                return None
            raise
        raise TypeError(f"unexpected byte range {byte_range!r}")

    async def get(self, key: str, prototype: Any, byte_range: ByteRequest | None = None
                  ) -> Any:
        data = await asyncio.to_thread(self._read, key, byte_range)
        return None if data is None else prototype.buffer.from_bytes(bytes(data))

    async def get_partial_values(self, prototype: Any,
                                 key_ranges: Iterable[tuple[str, ByteRequest | None]]
                                 ) -> list[Any]:
        return list(await asyncio.gather(*(self.get(k, prototype, r) for k, r in key_ranges)))

    async def exists(self, key: str) -> bool:
        try:
            await asyncio.to_thread(self.store.head, self._url(key))
        except StorageError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def list(self) -> AsyncIterator[str]:
        for key in await asyncio.to_thread(self._keys):
            yield key

    async def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        for key in await asyncio.to_thread(self._keys):
            if key.startswith(prefix):
                yield key

    async def list_dir(self, prefix: str) -> AsyncIterator[str]:
        for name in sorted(await asyncio.to_thread(self.store.list_dir, self._url(prefix))):
            yield name

    def _keys(self) -> list[str]:
        return sorted(url[len(self.root) + 1:] for url in self.store.find(self.root))

    async def set(self, key: str, value: Any) -> None:
        raise PermissionError(f"{self.root} is opened read-only")

    async def delete(self, key: str) -> None:
        raise PermissionError(f"{self.root} is opened read-only")
