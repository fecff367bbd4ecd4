"""Coalescing: reduce a run of adjacent uncompressed chunks with a few vectorised calls.

HDF5 and netCDF-3 writers usually lay chunks out back to back. When consecutive requests read
neighbouring byte ranges of one object and carry no codecs, one read fetches them all. Inside
that run, chunks described the same way (dtype, byte order, shape, order, selection, axes, missing
data) sit at a regular byte stride — every chunk, or every n-th when a selection cuts the chunk
grid into n differently-selected columns — so each such group is one strided array view of shape
``(k, *chunk_shape)`` and one reduction replaces ``k``: that removes the per-chunk Python overhead
that dominates small chunks.

Callers that only need the partials combined (chunks landing in the same part of the result)
pass a ``slot`` per request: requests sharing a slot may then be folded into one partial, which
is returned for the first of them, with ``None`` for the rest. Folding happens inside NumPy (the
stacked axis is reduced too), so the caller adds one partial per group instead of one per chunk.
"""

from __future__ import annotations

from typing import Any, Hashable, Sequence

import numpy as np

from .kernel import Partial, reduce_array
from .request import ChunkRequest

#: a run is cut at this many bytes so memory in flight stays bounded
MAX_RUN_BYTES = 8 * 2**20
#: only chunks smaller than this are stacked: a larger one amortises its own per-call cost, and
#: reading it alone keeps each thread's buffer to one chunk
MAX_STACKED_CHUNK = 2**20


def _plain(r: ChunkRequest) -> bool:
    return (r.compression is None and not r.filters and r.size is not None
            and r.size == r.nbytes and 0 < r.nbytes < MAX_STACKED_CHUNK)


def runs(requests: Sequence[ChunkRequest], max_bytes: int = MAX_RUN_BYTES) -> list[tuple[int, int]]:
    """Split ``requests`` into index spans ``[a, b)`` of small uncompressed chunks stored back to back.

    A span longer than one can be read at once and reduced with :func:`reduce_run`.
    """
    spans = []
    i, n = 0, len(requests)
    plain: dict[Any, bool] = {}  # by what _plain looks at: requests of one variable share it

    def is_plain(q: ChunkRequest) -> bool:
        if q.weights is not None:  # weights are per chunk: such chunks are reduced one by one
            return False
        key = (q.size, q.shape, q.dtype, q.compression is None, not q.filters)
        ok = plain.get(key)
        if ok is None:
            ok = plain[key] = _plain(q)
        return ok

    while i < n:
        j = i + 1
        r = requests[i]
        if is_plain(r):
            total = r.size or 0
            end = r.offset + total
            while j < n:
                q = requests[j]
                size = q.size or 0
                if not (q.offset == end and q.url == r.url and total + size <= max_bytes
                        and is_plain(q)):
                    break
                total += size
                end += size
                j += 1
        spans.append((i, j))
        i = j
    return spans


def _layout(r: ChunkRequest) -> tuple[Any, ...]:
    """Everything that must agree for two chunks to be reduced as one stacked array (the missing
    spec by identity: requests of one variable share one, and hashing it per chunk is costly;
    equal specs in distinct objects only stack less)."""
    return (r.dtype, r.byte_order, r.shape, r.order, r.selection, r.axis, id(r.missing), r.size)


def _groups(requests: Sequence[ChunkRequest], slots: Sequence[Hashable] | None) -> list[list[int]]:
    """Indices of alike requests (and equal slots), split where the byte stride changes."""
    by_key: dict[Any, list[int]] = {}
    for i, r in enumerate(requests):
        key: Any = (_layout(r), None if slots is None else slots[i])
        group = by_key.get(key)
        if group is None:
            by_key[key] = [i]
        else:
            group.append(i)
    out: list[list[int]] = []
    for members in by_key.values():
        seg = [members[0]]
        stride = None
        for m in members[1:]:
            d = requests[m].offset - requests[seg[-1]].offset
            if stride is None or d == stride:
                stride = d
                seg.append(m)
            else:
                out.append(seg)
                seg, stride = [m], None
        out.append(seg)
    return out


def _stacked(raw: Any, base: int, reqs: Sequence[ChunkRequest]) -> np.ndarray:
    """A ``(k, *shape)`` view of ``raw`` (bytes from offset ``base``) over alike chunks ``reqs``."""
    r0 = reqs[0]
    dtype = r0.stored_dtype
    shape = r0.shape
    strides = [dtype.itemsize] * len(shape)
    if r0.order == "F":
        for i in range(1, len(shape)):
            strides[i] = strides[i - 1] * shape[i - 1]
    else:
        for i in range(len(shape) - 2, -1, -1):
            strides[i] = strides[i + 1] * shape[i + 1]
    step = reqs[1].offset - r0.offset if len(reqs) > 1 else (r0.size or 0)
    x = np.ndarray((len(reqs),) + shape, dtype=dtype, buffer=raw, offset=r0.offset - base,
                   strides=(step,) + tuple(strides))
    if not dtype.isnative:
        x = x.astype(dtype.newbyteorder("="))
    return x


def reduce_run(raw: Any, requests: Sequence[ChunkRequest], operation: str,
               slots: Sequence[Hashable] | None = None) -> list[Partial | None]:
    """Reduce the chunks of one run (see :func:`runs`) whose bytes are ``raw`` back to back.

    One partial per request, in order; with ``slots``, requests sharing a slot may be folded into
    the partial of the first of them (the others get ``None``). ``select`` is not supported here.
    """
    base = requests[0].offset
    out: list[Partial | None] = [None] * len(requests)
    fold = slots is not None
    for seg in _groups(requests, slots):
        reqs = [requests[i] for i in seg]
        r0 = reqs[0]
        x = _stacked(raw, base, reqs)
        sl = r0.selection_slices()
        if sl is not None:
            x = x[(slice(None),) + sl]
        axes = tuple(a + 1 for a in r0.reduce_axes)
        if fold:
            p = reduce_array(x, operation, (0,) + axes, r0.missing)
            out[seg[0]] = Partial(p.values[0], p.counts[0])
        else:
            p = reduce_array(x, operation, axes, r0.missing)
            for j, i in enumerate(seg):
                out[i] = Partial(p.values[j], p.counts[j])
    return out
