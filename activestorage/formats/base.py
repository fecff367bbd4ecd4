"""What every format reader produces: a :class:`Variable` with a chunk index of :class:`Locator`s.

A format (netCDF-4/HDF5, netCDF-3, Zarr, a manifest) is read once into a Variable; from then on
planning and reduction never look at the format again. A chunk is just a byte range of an object,
so backends need nothing format-specific.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

import numpy as np

from ..request import ChunkRequest, Missing
from .chunk_index import ChunkIndex
from .locator import Locator

__all__ = ["Locator", "Variable"]

#: builds a ChunkRequest from a tuple of all its fields in order, skipping the named tuple's
#: Python-level ``__new__`` (half the cost of a request); request_for passes every field
_new_request = tuple.__new__
assert len(ChunkRequest._fields) == 15, "request_for builds ChunkRequest with 15 fields"


@dataclass(slots=True)
class Variable:
    """A variable's metadata and chunk index, independent of the format it came from.

    ``dtype`` is native-order; ``byte_order`` is how the bytes are stored. ``chunks`` maps chunk
    grid coordinates to locators (a dict, or a compact
    :class:`~activestorage.formats.chunk_index.ChunkIndex`); coordinates absent from it are
    unallocated and read as ``fill_value``. ``missing`` is the netCDF-4 reader's notion of
    missing data in stored units; ``scale_factor``/``add_offset`` unpack results.
    """

    name: str
    source: str
    dtype: np.dtype
    shape: tuple[int, ...]
    chunk_shape: tuple[int, ...]
    chunks: Mapping[tuple[int, ...], Locator]
    byte_order: str = "little"
    order: str = "C"
    compression: Mapping[str, Any] | None = None
    filters: tuple[Mapping[str, Any], ...] = ()
    missing: Missing = field(default_factory=Missing)
    fill_value: Any = None
    scale_factor: Any = None
    add_offset: Any = None
    attrs: dict[str, Any] = field(default_factory=dict)
    dimensions: tuple[str, ...] = ()
    format: str = ""
    #: what reading this metadata cost the store (remote datasets): bytes and requests
    metadata_bytes: int = 0
    metadata_requests: int = 0

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def grid(self) -> tuple[int, ...]:
        """Number of chunks along each axis."""
        return tuple(math.ceil(n / c) if c else 0 for n, c in zip(self.shape, self.chunk_shape))

    @property
    def nchunks(self) -> int:
        return math.prod(self.grid)

    @property
    def chunk_nbytes(self) -> int:
        """Decoded size of one chunk in bytes."""
        return math.prod(self.chunk_shape) * self.dtype.itemsize

    @property
    def stored_bytes(self) -> int:
        chunks = self.chunks
        if type(chunks) is ChunkIndex:
            return chunks.stored_bytes
        return sum(loc.size for loc in chunks.values())

    @property
    def packed(self) -> bool:
        return self.scale_factor is not None or self.add_offset is not None

    def chunk_origin(self, coords: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(i * c for i, c in zip(coords, self.chunk_shape))

    def iter_coords(self) -> Iterator[tuple[int, ...]]:
        return iter(np.ndindex(*self.grid))

    def request_for(self, coords: tuple[int, ...],
                    selection: tuple[tuple[int, int, int], ...] | None = None,
                    axis: tuple[int, ...] | None = None) -> ChunkRequest | None:
        """The :class:`ChunkRequest` reading chunk ``coords`` (None if it was never written),
        for ``selection`` (inside the chunk; None: all of it) and reducing ``axis``.

        Called once per chunk touched, so it builds the request from a tuple of its fields (in
        :class:`ChunkRequest` order), and for a :class:`ChunkIndex` reads a chunk without
        exceptions straight from its arrays (``coords`` must then lie inside the grid, as planned
        ones do: negative ones would wrap around).
        """
        chunks = self.chunks
        if type(chunks) is ChunkIndex:
            exceptions = chunks.exceptions
            if not exceptions or coords not in exceptions:
                try:
                    offset = chunks._offset_at[coords]
                except (IndexError, TypeError, ValueError, NotImplementedError):
                    return None
                if offset < 0:
                    return None
                filters = self.filters
                return _new_request(ChunkRequest, (
                    self.dtype, self.chunk_shape, offset, chunks._size_at[coords], chunks.url,
                    self.byte_order, self.order, selection, axis, self.compression,
                    filters if type(filters) is tuple else tuple(filters),
                    None if self.missing.is_empty() else self.missing, chunks.etag,
                    chunks.version_id, None))
        loc = chunks.get(coords)
        if loc is None:
            return None
        compression = self.compression if loc.compression is None else loc.compression
        if loc.no_compression:
            compression = None
        filters = self.filters if loc.filters is None else loc.filters
        return _new_request(ChunkRequest, (
            self.dtype, self.chunk_shape, loc.offset, loc.size, loc.url, self.byte_order,
            self.order, selection, axis, compression,
            filters if type(filters) is tuple else tuple(filters),
            None if self.missing.is_empty() else self.missing, loc.etag, loc.version_id, None))
