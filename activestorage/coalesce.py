"""Coalescing: reduce a run of adjacent, uncompressed, alike chunks as one stacked array.

HDF5 and netCDF-3 writers usually lay chunks out back to back. When consecutive requests read
neighbouring byte ranges of one object and describe chunks the same way (dtype, byte order,
shape, order, selection, axes, missing data) and carry no codecs, their bytes form one array of
shape ``(k, *chunk_shape)``: one read and one vectorised reduction replace ``k`` of each, which
removes the per-chunk Python overhead that dominates small chunks.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .kernel import Partial, reduce_array
from .request import ChunkRequest

#: a run is cut at this many bytes so memory in flight stays bounded
MAX_RUN_BYTES = 8 * 2**20


def _alike(a: ChunkRequest, b: ChunkRequest) -> bool:
    return (b.url == a.url and b.offset == a.offset + a.size and b.size == a.size
            and b.shape == a.shape and b.selection == a.selection and b.axis == a.axis
            and b.missing == a.missing and b.dtype == a.dtype and b.byte_order == a.byte_order
            and b.order == a.order and b.compression is None and not b.filters)


def _plain(r: ChunkRequest) -> bool:
    return (r.compression is None and not r.filters and r.size is not None
            and r.size == r.nbytes and r.nbytes > 0)


def runs(requests: Sequence[ChunkRequest], max_bytes: int = MAX_RUN_BYTES) -> list[tuple[int, int]]:
    """Split ``requests`` into index spans ``[a, b)``; spans longer than one can be stacked."""
    spans = []
    i, n = 0, len(requests)
    while i < n:
        j = i + 1
        r = requests[i]
        if _plain(r):
            total = r.size or 0
            while (j < n and total + (requests[j].size or 0) <= max_bytes
                   and _alike(requests[j - 1], requests[j])):
                total += requests[j].size or 0
                j += 1
        spans.append((i, j))
        i = j
    return spans


def reduce_run(raw: Any, requests: Sequence[ChunkRequest], operation: str) -> list[Partial]:
    """Reduce ``len(requests)`` alike chunks whose bytes are ``raw`` back to back."""
    r0 = requests[0]
    k = len(requests)
    flat = np.frombuffer(raw, dtype=r0.stored_dtype)
    if not flat.dtype.isnative:
        flat = flat.astype(flat.dtype.newbyteorder("="))
    ndim = len(r0.shape)
    if r0.order == "F":
        x = flat.reshape((k,) + r0.shape[::-1]).transpose((0,) + tuple(range(ndim, 0, -1)))
    else:
        x = flat.reshape((k,) + r0.shape)
    sl = r0.selection_slices()
    if sl is not None:
        x = x[(slice(None),) + sl]
    p = reduce_array(x, operation, tuple(a + 1 for a in r0.reduce_axes), r0.missing)
    return [Partial(p.values[i], p.counts[i]) for i in range(k)]
