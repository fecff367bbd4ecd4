"""Helpers shared by test modules (import them as ``from helpers import ...``; tests/conftest.py
puts this directory on ``sys.path`` so subdirectories can too).

- NumPy oracles and comparisons for reductions: :func:`oracle`, :func:`assert_same`;
- test data: :func:`write_nc` (a netCDF-4 file with a chosen layout) and the :func:`datasets`
  hypothesis strategy, :data:`SHARED` (the real climate files in tests/data);
- the two kernel paths: :data:`PATHS` and :func:`kernel_path` (compiled one-pass reductions, or
  NumPy as an installation without a C compiler runs).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import netCDF4
import numpy as np
import pytest
from hypothesis import strategies as st

from activestorage import fused

SHARED = Path(__file__).resolve().parent / "data"  # real climate files (tests/data/README.md)
DTYPES = ["i1", "u1", "i2", "u2", "i4", "u4", "i8", "u8", "f4", "f8"]
OPS = ["mean", "min", "max", "sum", "count"]


def oracle(x: np.ma.MaskedArray, op: str, axis=None, keepdims=False):
    """numpy.ma's answer; where no value contributes (including empty selections, where NumPy
    would give NaN or 0) the documented answer is masked."""
    x = np.ma.asarray(x)
    n = np.ma.count(x, axis=axis, keepdims=keepdims)
    if op == "count":
        return n
    if x.size == 0:  # every result element has no contributing value
        return np.ma.masked_all(np.shape(n)) if np.ndim(n) else np.ma.masked
    return getattr(np.ma, op)(x, axis=axis, keepdims=keepdims)


def assert_same(got, want, dtype, op):
    got_m = np.ma.getmaskarray(np.ma.asarray(got))
    want_m = np.ma.getmaskarray(np.ma.asarray(want))
    assert np.shape(got) == np.shape(want), (np.shape(got), np.shape(want))
    np.testing.assert_array_equal(got_m, want_m)
    g = np.ma.getdata(np.ma.asarray(got))[~got_m]
    w = np.ma.getdata(np.ma.asarray(want))[~want_m]
    if op in ("min", "max", "count", "select") or (op == "sum" and np.dtype(dtype).kind in "iu"):
        np.testing.assert_array_equal(g, w)
    else:
        rtol = 2e-5 if np.dtype(dtype) == np.float32 else 1e-9
        np.testing.assert_allclose(g.astype(np.float64), w.astype(np.float64), rtol=rtol,
                                   atol=rtol * (np.abs(w).max() if w.size else 0))


def write_nc(path, data, *, chunks=None, zlib=False, shuffle=False, fletcher32=False,
             endian="native", attrs=None, fill_value=None, compression=None):
    with netCDF4.Dataset(path, "w") as ds:
        dims = []
        for i, n in enumerate(data.shape):
            ds.createDimension(f"d{i}", n)
            dims.append(f"d{i}")
        kw = {}
        if compression:
            kw["compression"] = compression
        v = ds.createVariable("v", data.dtype, dims, zlib=zlib, shuffle=shuffle,
                              fletcher32=fletcher32, endian=endian,
                              chunksizes=chunks, contiguous=chunks is None and not zlib,
                              fill_value=fill_value, **kw)
        v.set_auto_maskandscale(False)
        for k, val in (attrs or {}).items():
            v.setncattr(k, val)
        v[...] = data
    return path


@st.composite
def datasets(draw):
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    ndim = draw(st.integers(1, 3))
    shape = tuple(draw(st.integers(1, 7)) for _ in range(ndim))
    n = int(np.prod(shape))
    if dtype.kind == "f":
        data = np.asarray(draw(st.lists(st.integers(-1000, 1000), min_size=n, max_size=n)),
                          dtype) / 8
    else:
        info = np.iinfo(dtype)
        lo, hi = max(info.min, -100), min(info.max, 100)
        data = np.asarray(draw(st.lists(st.integers(lo, hi), min_size=n, max_size=n)), dtype)
    data = data.reshape(shape)
    layout = draw(st.sampled_from(["contiguous", "chunked", "zlib", "zlib+shuffle+fletcher32"]))
    chunks = None if layout == "contiguous" else [draw(st.integers(1, s)) for s in shape]
    attrs, fill = {}, None
    kind = draw(st.sampled_from(["none", "fill", "missing", "missing2", "range", "min", "max",
                                 "fill+range"]))
    pick = lambda: dtype.type(data.flat[draw(st.integers(0, n - 1))])  # noqa: E731
    if kind in ("fill", "fill+range"):
        fill = pick()
    if kind == "missing":
        attrs["missing_value"] = pick()
    if kind == "missing2":
        attrs["missing_value"] = np.array([pick(), pick()], dtype)
    if kind in ("range", "fill+range"):
        a, b = sorted([pick(), pick()])
        attrs["valid_range"] = np.array([a, b], dtype)
    if kind == "min":
        attrs["valid_min"] = pick()
    if kind == "max":
        attrs["valid_max"] = pick()
    endian = draw(st.sampled_from(["native", "big"]))
    return dict(data=data, chunks=chunks, layout=layout, attrs=attrs, fill=fill, endian=endian)


# ------------------------------------------------------------------------------ kernel paths

#: ``@pytest.mark.parametrize("compiled", PATHS)``, then ``with kernel_path(compiled): ...``
PATHS = [pytest.param(True, id="compiled"), pytest.param(False, id="numpy")]


@contextlib.contextmanager
def kernel_path(compiled: bool) -> Iterator[None]:
    """The compiled fast path on or off for the duration of the block.

    Asking for the compiled path when the extension is not built skips the test (a failure under
    CI=true, see conftest.py) rather than silently running NumPy under the ``compiled`` name.
    """
    if compiled and not fused.COMPILED:
        pytest.skip("activestorage._fused is not built: the compiled kernel path cannot run")
    saved = fused._c
    if not compiled:
        fused._c = None
    try:
        yield
    finally:
        fused._c = saved


# ------------------------------------------------------------- moments oracle (#21)

MOMENT_OPS = ["var", "std", "range", "rms", "sum_of_squares"]


def moments_oracle(x, op: str, axis=None, keepdims: bool = False, weights=None, ddof=0):
    """numpy.ma's answer for the #21 operations in float64: ``np.ma.average`` for (weighted)
    means, ``np.ma.var``/``np.ma.std`` where they are defined (unit weights, ``n > ddof``);
    ``var = m2 / (sw - ddof*sw2/sw)``, NaN where that is not positive; masked where no element
    is present (for means, variances and rms also where the weights sum to 0). ``weights``:
    an array broadcastable to ``x`` (None: unit weights); ``range`` is ``max - min``."""
    x = np.ma.asarray(x)
    if x.ndim == 0:  # a selection of one element (every axis indexed by an integer)
        w1 = None if weights is None else np.reshape(weights, (1,))
        return moments_oracle(x.reshape(1), op, None, False, w1, ddof)
    xf = np.ma.asarray(x, np.float64)
    ax = tuple(range(x.ndim)) if axis is None else (axis if isinstance(axis, tuple) else (axis,))
    n = np.ma.count(x, axis=ax, keepdims=True)
    if op == "range" and x.size == 0:
        out = np.ma.masked_all(n.shape)
    elif op == "range":
        lo = np.ma.min(xf, axis=ax, keepdims=True)
        r = np.ma.max(xf, axis=ax, keepdims=True) - lo
        out = np.ma.MaskedArray(np.ma.getdata(r), mask=n == 0)
    else:
        w = np.ones(x.shape) if weights is None else np.broadcast_to(weights, x.shape)
        mask = np.ma.getmaskarray(x)
        we = np.where(mask, 0.0, w)
        sw = we.sum(axis=ax, keepdims=True)
        sw2 = (we * we).sum(axis=ax, keepdims=True)
        data = np.where(mask, 0.0, np.ma.getdata(xf))
        with np.errstate(all="ignore"):
            mean = np.where(sw > 0, (we * data).sum(axis=ax, keepdims=True) / sw, 0.0)
            if weights is not None and (sw > 0).all() and x.size:  # the documented oracle
                np.testing.assert_allclose(
                    mean, np.ma.getdata(np.ma.average(xf, axis=ax, weights=w, keepdims=True)),
                    rtol=1e-9, atol=1e-9 * (np.abs(data).max() + 1))
            m2 = (we * (data - mean) ** 2).sum(axis=ax, keepdims=True)
            denom = sw - ddof * np.where(sw > 0, sw2 / np.where(sw > 0, sw, 1), 0)
            var = np.where(denom > 0, m2 / np.where(denom > 0, denom, 1), np.nan)
            value = {"mean": mean, "sum": mean * sw, "var": var, "std": np.sqrt(var),
                     "rms": np.sqrt(np.where(sw > 0, m2 / np.where(sw > 0, sw, 1), 0) + mean ** 2),
                     "sum_of_squares": m2 + sw * mean ** 2}[op]
        no_weight = (sw <= 0) & (op in ("mean", "var", "std", "rms"))
        out = np.ma.MaskedArray(value, mask=(n == 0) | no_weight)
        if weights is None and op in ("var", "std") and x.size:
            ref = getattr(np.ma, op)(xf, axis=ax, ddof=ddof, keepdims=True)
            ok = ~np.ma.getmaskarray(out) & (n > ddof)
            np.testing.assert_allclose(np.ma.getdata(out)[ok], np.ma.getdata(ref)[ok],
                                       rtol=1e-9, atol=1e-12)
    if not keepdims:
        out = out.reshape(tuple(s for i, s in enumerate(out.shape) if i not in ax))
        if out.ndim == 0:
            return np.ma.masked if out.mask.item() else out.data[()]
    return out


def assert_moments(got, want, op: str, dtype) -> None:
    """``got`` (Active's) equals ``want`` (:func:`moments_oracle`): masks, NaNs, values."""
    got_m = np.ma.getmaskarray(np.ma.asarray(got))
    want_m = np.ma.getmaskarray(np.ma.asarray(want))
    assert np.shape(got) == np.shape(want), (np.shape(got), np.shape(want))
    np.testing.assert_array_equal(got_m, want_m)
    g = np.ma.getdata(np.ma.asarray(got))[~got_m].astype(np.float64)
    w = np.ma.getdata(np.ma.asarray(want))[~want_m].astype(np.float64)
    np.testing.assert_array_equal(np.isnan(g), np.isnan(w))
    ok = ~np.isnan(w)
    if op == "range" and np.dtype(dtype).kind in "iu":
        np.testing.assert_array_equal(g[ok], w[ok])
    else:
        scale = np.abs(w[ok]).max(initial=0)
        np.testing.assert_allclose(g[ok], w[ok], rtol=1e-7 if op == "range" else 1e-9,
                                   atol=1e-9 * scale + 1e-12)
