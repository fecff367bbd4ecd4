"""Helpers for format tests: rebuild a Variable's data chunk by chunk through the kernel.

Reading each locator's bytes ourselves and decoding them with :func:`reduce_chunk` checks the
reader's locators, codecs, byte order, order and missing-data description against an oracle
(netCDF4-python or zarr reading the same data), independently of the planner in ``Active``.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from activestorage.formats.base import Locator, Variable
from activestorage.kernel import reduce_array, reduce_chunk


def read_local(loc: Locator) -> bytes:
    with open(loc.url, "rb") as f:
        f.seek(loc.offset)
        data = f.read(loc.size)
    assert len(data) == loc.size, f"short read of {loc}"
    return data


def _region(var: Variable, coords):
    origin = var.chunk_origin(coords)
    sel = tuple((0, min(c, n - o), 1) for c, n, o in zip(var.chunk_shape, var.shape, origin))
    region = tuple(slice(o, o + s[1]) for o, s in zip(origin, sel))
    return sel, region


def chunk_partials(var: Variable, op: str, read: Callable[[Locator], bytes] = read_local):
    """(region, Partial) for every chunk of the grid; unwritten chunks are the fill value."""
    for coords in var.iter_coords():
        coords = tuple(int(c) for c in coords)
        sel, region = _region(var, coords)
        req = var.request_for(coords, selection=sel if sel else None)
        if req is not None and not req.shape:
            # the kernel mishandles 0-d chunks (reported to the lead): read a scalar as shape (1,)
            req = req.with_(shape=(1,))
        if req is None:
            x = np.full([s[1] for s in sel], var.fill_value, var.dtype)
            yield region, reduce_array(x, op, tuple(range(x.ndim)) if op != "select" else (),
                                       var.missing)
        else:
            yield region, reduce_chunk(read(var.chunks[coords]), req, op)


def assemble(var: Variable, read: Callable[[Locator], bytes] = read_local) -> np.ma.MaskedArray:
    """The whole variable as a masked array (masked where the kernel counts it missing)."""
    out = np.zeros(var.shape, var.dtype)
    mask = np.zeros(var.shape, bool)
    for region, p in chunk_partials(var, "select", read):
        out[region] = p.values.reshape(out[region].shape)
        mask[region] = (p.counts == 0).reshape(out[region].shape)
    return np.ma.MaskedArray(out, mask)


def reduce_all(var: Variable, op: str, read: Callable[[Locator], bytes] = read_local):
    """Whole-variable min/max/sum/count from per-chunk kernel partials: (value, count)."""
    vals, counts = [], []
    for _region_, p in chunk_partials(var, op, read):
        vals.append(p.values.reshape(-1)[0])
        counts.append(int(p.counts.reshape(-1)[0]))
    n = sum(counts)
    if op == "count":
        return n, n
    if op == "sum":
        return sum(vals[i] for i in range(len(vals))), n
    good = [v for v, c in zip(vals, counts) if c]
    if not good:
        return None, 0
    return (min(good) if op == "min" else max(good)), n


def assert_masked_equal(got: np.ma.MaskedArray, want: np.ma.MaskedArray) -> None:
    got, want = np.ma.asarray(got), np.ma.asarray(want)
    assert got.shape == want.shape, (got.shape, want.shape)
    np.testing.assert_array_equal(np.ma.getmaskarray(got), np.ma.getmaskarray(want))
    keep = ~np.ma.getmaskarray(want)
    np.testing.assert_array_equal(np.ma.getdata(got)[keep], np.ma.getdata(want)[keep])


def assert_reductions(var: Variable, want: np.ma.MaskedArray,
                      read: Callable[[Locator], bytes] = read_local) -> None:
    """min, max, sum and count of the kernel partials against numpy.ma on the oracle."""
    want = np.ma.asarray(want)
    n = int(np.ma.count(want))
    for op in ("count", "min", "max", "sum"):
        value, count = reduce_all(var, op, read)
        assert count == n, (op, count, n)
        if n == 0:
            continue
        expect = getattr(np.ma, op if op != "count" else "count")(want)
        if op == "sum" and var.dtype.kind == "f":
            np.testing.assert_allclose(float(value), float(expect), rtol=1e-5,
                                       atol=1e-5 * float(np.ma.abs(want).max()))
        elif op == "sum":
            assert int(value) == int(np.ma.sum(want.astype(np.int64 if var.dtype.kind == "i"
                                                            else np.uint64)))
        else:
            assert value == expect, (op, value, expect)
