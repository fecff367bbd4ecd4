"""A compact chunk index: the byte ranges of a chunked variable as NumPy arrays over the chunk grid.

A dict of :class:`~activestorage.formats.base.Locator` objects costs about 300 bytes per chunk
(the locator, its key tuple, the boxed ints, the dict slot): 300 MB for a million chunks. HDF5
chunks of one variable all live in one object, so :class:`ChunkIndex` keeps one ``url`` (and
ETag/version id), an ``offsets`` and a ``sizes`` array shaped like the chunk grid (12 bytes a
chunk), and a small dict of *exceptions*: chunks whose locator differs from the shared defaults
(HDF5 chunks that skipped a filter carry codec overrides). It is a read-only
``Mapping[coords, Locator]`` that builds locators on demand, so code written against a dict keeps
working; :meth:`~activestorage.formats.base.Variable.request_for` reads the arrays directly.
"""

from __future__ import annotations

import sys
from collections.abc import ItemsView, Iterator, Mapping, Sequence, ValuesView
from dataclasses import replace
from typing import Any

import numpy as np

from .locator import Locator

__all__ = ["ChunkIndex", "pin_locators"]

#: ``offsets`` value of a chunk that was never written
UNWRITTEN = -1

#: chunks converted to coordinate tuples at a time while iterating (bounds the temporary lists)
_ITER_BLOCK = 1 << 16

Coords = tuple[int, ...]


class ChunkIndex(Mapping[Coords, Locator]):
    """Chunk grid coordinates -> :class:`Locator`, stored as arrays over the grid.

    ``offsets`` (int64, the grid's shape) holds each chunk's byte offset in ``url``, ``-1`` where
    the chunk was never written; ``sizes`` (same shape, uint32 or int64) its stored size, 0 where
    unwritten. Every chunk shares ``url``/``etag``/``version_id`` except those in ``exceptions``,
    whose full :class:`Locator` is kept (its offset and size must match the arrays). The arrays are
    made read-only: an index is immutable, methods that change it return a new one sharing them.

    Lengths, iteration (written chunks in C order), lookup and equality behave as for the
    equivalent dict. Coordinates must be tuples of ints (as in a dict of tuples).
    """

    __slots__ = ("url", "offsets", "sizes", "etag", "version_id", "exceptions", "_len",
                 "_offset_at", "_size_at")

    def __init__(self, url: str, offsets: np.ndarray, sizes: np.ndarray, etag: str | None = None,
                 version_id: str | None = None,
                 exceptions: Mapping[Coords, Locator] | None = None) -> None:
        offsets = np.asarray(offsets, dtype=np.int64, order="C")  # (keeps 0-d arrays 0-d)
        sizes = np.asarray(sizes, order="C")
        if sizes.dtype not in (np.dtype(np.uint32), np.dtype(np.int64)):
            sizes = sizes.astype(_size_dtype(sizes))
        if sizes.shape != offsets.shape:
            raise ValueError(f"sizes shape {sizes.shape} differs from offsets {offsets.shape}")
        offsets.flags.writeable = False
        sizes.flags.writeable = False
        self.url = url
        self.offsets = offsets
        self.sizes = sizes
        self.etag = etag
        self.version_id = version_id
        #: memoryviews give Python ints for a tuple index ~2x faster than NumPy scalar indexing
        self._offset_at = memoryview(offsets)
        self._size_at = memoryview(sizes)
        # exceptions equal to the shared default are dropped: one representation per mapping
        self.exceptions: dict[Coords, Locator] = {}
        for coords, loc in (exceptions or {}).items():
            offset = self._offset(coords)
            if offset < 0 or offset != loc.offset or self._size_at[coords] != loc.size:
                raise ValueError(f"exception {coords} {loc} does not match the arrays")
            if loc != Locator(url, offset, loc.size, etag, version_id):
                self.exceptions[coords] = loc
        self._len = int(np.count_nonzero(offsets >= 0))

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_mapping(cls, grid: tuple[int, ...], chunks: Mapping[Coords, Locator]) -> "ChunkIndex":
        """The index equivalent to ``chunks`` (any mapping of locators) over a ``grid``.

        The most common (url, etag, version_id) becomes the shared default; locators that differ
        from it otherwise become exceptions. Raises ValueError for coordinates outside the grid or
        negative offsets.
        """
        offsets = np.full(grid, UNWRITTEN, dtype=np.int64)
        sizes = np.zeros(grid, dtype=np.int64)
        counts: dict[tuple[str, str | None, str | None], int] = {}
        for coords, loc in chunks.items():
            if loc.offset < 0:
                raise ValueError(f"chunk {coords} has a negative offset {loc.offset}")
            if len(coords) != len(grid) or any(not 0 <= c < n for c, n in zip(coords, grid)):
                raise ValueError(f"chunk {coords} lies outside the grid {grid}")
            offsets[coords] = loc.offset
            sizes[coords] = loc.size
            ident = (loc.url, loc.etag, loc.version_id)
            counts[ident] = counts.get(ident, 0) + 1
        url, etag, version_id = max(counts, key=counts.__getitem__) if counts else ("", None, None)
        return cls(url, offsets, sizes.astype(_size_dtype(sizes)), etag, version_id, chunks)

    def pinned(self, etag: str | None, version_id: str | None) -> "ChunkIndex":
        """This index with every chunk pinned to ``etag``/``version_id`` (arrays shared)."""
        exceptions = {c: replace(loc, etag=etag, version_id=version_id)
                      for c, loc in self.exceptions.items()}
        return ChunkIndex(self.url, self.offsets, self.sizes, etag, version_id, exceptions)

    # ------------------------------------------------------------------ Mapping

    def _offset(self, coords: Any) -> int:
        """The offset array's entry for ``coords``, -1 for anything that is not a grid position."""
        if type(coords) is not tuple:
            return UNWRITTEN
        try:
            offset = self._offset_at[coords]
        except (IndexError, TypeError, ValueError, NotImplementedError):
            return UNWRITTEN
        if offset >= 0 and coords and min(coords) < 0:  # memoryviews accept negative indexes
            return UNWRITTEN
        return offset

    def get(self, coords: Any, default: Any = None) -> Any:
        exceptions = self.exceptions
        if exceptions:
            loc = exceptions.get(coords)
            if loc is not None:
                return loc
        offset = self._offset(coords)
        if offset < 0:
            return default
        return Locator(self.url, offset, self._size_at[coords], self.etag, self.version_id)

    def __getitem__(self, coords: Coords) -> Locator:
        loc = self.get(coords)
        if loc is None:
            raise KeyError(coords)
        return loc

    def __contains__(self, coords: object) -> bool:
        return self._offset(coords) >= 0

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[Coords]:
        """Written chunks' coordinates in C order, as tuples of Python ints."""
        if self.offsets.ndim == 0:
            if self._len:
                yield ()
            return
        written = np.flatnonzero(self.offsets.reshape(-1) >= 0)
        for start in range(0, written.size, _ITER_BLOCK):
            block = np.unravel_index(written[start:start + _ITER_BLOCK], self.offsets.shape)
            yield from zip(*(axis.tolist() for axis in block))

    def items(self) -> ItemsView[Coords, Locator]:
        return _Items(self)

    def values(self) -> ValuesView[Locator]:
        return _Values(self)

    def _iter_items(self) -> Iterator[tuple[Coords, Locator]]:
        """(coords, locator) of written chunks in C order, without re-validating coordinates."""
        exceptions, offset_at, size_at = self.exceptions, self._offset_at, self._size_at
        url, etag, version_id = self.url, self.etag, self.version_id
        for coords in self:
            loc = exceptions.get(coords) if exceptions else None
            yield coords, (loc if loc is not None else
                           Locator(url, offset_at[coords], size_at[coords], etag, version_id))

    def __eq__(self, other: object) -> bool:
        # exceptions are canonical (never equal to the defaults), so the arrays decide
        if isinstance(other, ChunkIndex) and self.offsets.shape == other.offsets.shape and \
                (self.url, self.etag, self.version_id) == (other.url, other.etag, other.version_id):
            return (self.exceptions == other.exceptions
                    and np.array_equal(self.offsets, other.offsets)
                    and np.array_equal(self.sizes, other.sizes))
        return super().__eq__(other)

    def __repr__(self) -> str:
        return (f"<ChunkIndex {self._len} of {self.offsets.size} chunks written, grid "
                f"{self.offsets.shape}, {self.url!r}, {len(self.exceptions)} exceptions>")

    def __reduce__(self) -> tuple[Any, ...]:
        # the arrays pickle as raw bytes: ~12 bytes a chunk (memoryviews cannot pickle)
        return (ChunkIndex, (self.url, self.offsets, self.sizes, self.etag, self.version_id,
                             self.exceptions or None))

    # ------------------------------------------------------------------ vectorised

    @property
    def grid(self) -> tuple[int, ...]:
        """The chunk grid's shape (chunks along each axis)."""
        return self.offsets.shape

    @property
    def stored_bytes(self) -> int:
        """Total stored size of the written chunks (unwritten chunks have size 0)."""
        return int(self.sizes.sum(dtype=np.int64))

    @property
    def nbytes(self) -> int:
        """Approximate memory held by the index: the arrays plus the exception dict."""
        extra = sys.getsizeof(self.exceptions) if self.exceptions else 0
        for coords, loc in self.exceptions.items():
            extra += sys.getsizeof(coords) + sys.getsizeof(loc) + 28 * (len(coords) + 2)
        return self.offsets.nbytes + self.sizes.nbytes + extra

    def stored(self, ids: Sequence[Sequence[int]]) -> tuple[int, int]:
        """Stored bytes of the chunks in the outer product of per-axis chunk indices ``ids`` (the
        chunks a selection touches, :attr:`activestorage.plan.Plan.ids`), and how many of them
        were never written: one vectorised read of the arrays instead of a Locator per chunk."""
        where = np.ix_(*(np.asarray(i, dtype=np.intp) for i in ids))
        written = self.offsets[where] >= 0
        return (int(self.sizes[where].sum(dtype=np.int64)),
                int(written.size - np.count_nonzero(written)))


class _Items(ItemsView[Coords, Locator]):
    _mapping: ChunkIndex

    def __iter__(self) -> Iterator[tuple[Coords, Locator]]:
        return self._mapping._iter_items()


class _Values(ValuesView[Locator]):
    _mapping: ChunkIndex

    def __iter__(self) -> Iterator[Locator]:
        return (loc for _coords, loc in self._mapping._iter_items())


def _size_dtype(sizes: np.ndarray) -> np.dtype:
    """uint32 when every size fits (HDF5 chunks are < 4 GiB), else int64."""
    if sizes.size == 0 or (int(sizes.min()) >= 0 and int(sizes.max()) <= np.iinfo(np.uint32).max):
        return np.dtype(np.uint32)
    return np.dtype(np.int64)


def pin_locators(chunks: Mapping[Coords, Locator], etag: str | None,
                 version_id: str | None) -> Mapping[Coords, Locator]:
    """``chunks`` with every locator pinned to ``etag``/``version_id``: a read of a changed object
    then fails. A :class:`ChunkIndex` stays compact; other mappings become a new dict."""
    if isinstance(chunks, ChunkIndex):
        return chunks.pinned(etag, version_id)
    return {k: replace(loc, etag=etag, version_id=version_id) for k, loc in chunks.items()}
