"""The numeric kernel against a NumPy oracle that masks data the way netCDF4-python does.

The encoders and the oracle here are written independently of the kernel: a reference HDF5
shuffle and Fletcher-32, stock compressors, and a transcription of netCDF4-python's
``Variable._toma`` masking rules (checked against netCDF4-python itself below).
"""

from __future__ import annotations

import bz2
import gzip
import json
import math
import os
import struct
import subprocess
import sys
import tracemalloc
import zlib
from pathlib import Path
from typing import Any

import numcodecs
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from activestorage import fused, kernel
from activestorage.errors import (ActiveStorageError, DecodeError, RequestValidationError,
                                  UnsupportedError)
from activestorage.kernel import (Partial, StoredPieces, decode, missing_mask, reduce_array,
                                  reduce_chunk, streams, sum_dtype)
from activestorage.request import ChunkRequest, Missing, make_request

from activestorage import kernel
from helpers import PATHS, kernel_path

DTYPES = ["int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
          "float32", "float64"]
COMPRESSIONS = ["zlib", "gzip", "bz2", "zstd", "blosc", "lz4"]
OPS = ["count", "min", "max", "sum", "select"]
DATA_DIR = Path(__file__).resolve().parent / "data"  # real climate files (tests/data/README.md)
NC_DEFAULT_FILL = {"i1": -127, "u1": 255, "i2": -32767, "u2": 65535, "i4": -2147483647,
                   "u4": 4294967295, "i8": -9223372036854775806, "u8": 18446744073709551614,
                   "f4": 9.969209968386869e+36, "f8": 9.969209968386869e+36}

PROPS = settings(max_examples=120, deadline=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# ------------------------------------------------------------------ reference encoders

def shuffle_ref(buf: bytes, es: int) -> bytes:
    """HDF5's shuffle (H5Zshuffle.c): byte k of every element together; leftover bytes as-is."""
    n = len(buf) // es
    if es <= 1 or n <= 1:
        return buf
    whole = bytes(buf[: n * es])
    return b"".join(whole[k::es] for k in range(es)) + bytes(buf[n * es:])


def fletcher32_ref(buf: bytes) -> bytes:
    """HDF5's H5_checksum_fletcher32, transcribed literally; stored little-endian after the data."""
    data = bytes(buf)
    sum1 = sum2 = 0
    words = len(data) // 2
    i = 0
    while words:
        tlen = min(words, 360)
        words -= tlen
        for _ in range(tlen):
            sum1 += (data[i] << 8) | data[i + 1]
            i += 2
            sum2 += sum1
        sum1 = (sum1 & 0xFFFF) + (sum1 >> 16)
        sum2 = (sum2 & 0xFFFF) + (sum2 >> 16)
    if len(data) % 2:
        sum1 += data[i] << 8
        sum2 += sum1
        sum1 = (sum1 & 0xFFFF) + (sum1 >> 16)
        sum2 = (sum2 & 0xFFFF) + (sum2 >> 16)
    sum1 = (sum1 & 0xFFFF) + (sum1 >> 16)
    sum2 = (sum2 & 0xFFFF) + (sum2 >> 16)
    return struct.pack("<I", (sum2 << 16) | sum1)


def compress(buf: bytes, cid: str) -> bytes:
    if cid == "zlib":
        return zlib.compress(buf)
    if cid == "gzip":
        return gzip.compress(buf)
    if cid == "bz2":
        return bz2.compress(buf)
    if cid == "zstd":
        from numcodecs import Zstd
        return bytes(Zstd().encode(buf))
    if cid == "blosc":
        from numcodecs import Blosc
        return bytes(Blosc(cname="lz4", shuffle=Blosc.SHUFFLE).encode(buf))
    if cid == "lz4":
        from numcodecs import LZ4
        return bytes(LZ4().encode(buf))
    raise AssertionError(cid)


def encode(x: np.ndarray, byte_order: str, order: str, compression: str | None,
           filters: tuple[dict, ...]) -> bytes:
    """Store ``x`` the way a writer would: byte order, layout, filters in order, compression,
    then an outer Fletcher-32."""
    stored = x.dtype.newbyteorder("<" if byte_order == "little" else ">")
    buf = x.astype(stored).tobytes(order=order)
    for f in filters:
        if f["id"] == "shuffle":
            buf = shuffle_ref(buf, f["element_size"])
        elif f["id"] == "fletcher32" and not f.get("outer"):
            buf += fletcher32_ref(buf)
    if compression:
        buf = compress(buf, compression)
    for f in filters:
        if f["id"] == "fletcher32" and f.get("outer"):
            buf += fletcher32_ref(buf)
    return buf


# ----------------------------------------------------------------------------- oracle

def nc_mask(data: np.ndarray, attrs: dict, default_fill: bool = True) -> np.ndarray:
    """netCDF4-python's Variable._toma masking (netCDF4 file, fill mode on, no scaling)."""
    dtype = data.dtype
    total = np.zeros(data.shape, bool)
    if "missing_value" in attrs:
        for m in np.atleast_1d(np.array(attrs["missing_value"], dtype)):
            total |= np.isnan(data) if np.isnan(m) else data == m
    if "_FillValue" in attrs:
        fval = np.array(attrs["_FillValue"], dtype)
        total |= np.isnan(data) if np.isnan(fval) else data == fval
    elif default_fill:
        total |= data == np.array(NC_DEFAULT_FILL[dtype.str[1:]], dtype)
    vmin = vmax = None
    if "valid_range" in attrs:
        vmin, vmax = (np.array(v, dtype) for v in attrs["valid_range"])
    else:
        if "valid_min" in attrs:
            vmin = np.array(attrs["valid_min"], dtype)
        if "valid_max" in attrs:
            vmax = np.array(attrs["valid_max"], dtype)
    if vmin is not None:
        total |= data < vmin
    if vmax is not None:
        total |= data > vmax
    return total


def missing_from_attrs(attrs: dict, dtype: np.dtype, default_fill: bool = True) -> Missing:
    """How a format reader describes the same attributes to the kernel."""
    values = [dtype.type(v) for v in np.atleast_1d(attrs.get("missing_value", []))]
    if "_FillValue" in attrs:
        values.append(dtype.type(attrs["_FillValue"]))
    elif default_fill:
        values.append(np.array(NC_DEFAULT_FILL[dtype.str[1:]], dtype)[()])
    if "valid_range" in attrs:
        vmin, vmax = attrs["valid_range"]
    else:
        vmin, vmax = attrs.get("valid_min"), attrs.get("valid_max")
    return Missing(values=tuple(values),
                   valid_min=None if vmin is None else dtype.type(vmin),
                   valid_max=None if vmax is None else dtype.type(vmax))


def oracle(x: np.ndarray, mask: np.ndarray, axis: tuple[int, ...], op: str):
    """Reference (values, counts, sum tolerance) for an already selected array."""
    valid = ~mask
    counts = valid.sum(axis=axis, keepdims=True).astype(np.int64)
    if op == "select":
        return x, valid.astype(np.int64), None
    if op == "count":
        return counts, counts, None
    if op in ("min", "max"):
        if x.dtype.kind == "f":
            fill = np.inf if op == "min" else -np.inf
        else:
            info = np.iinfo(x.dtype)
            fill = info.max if op == "min" else info.min
        filled = np.where(valid, x, np.array(fill, x.dtype))
        f = np.min if op == "min" else np.max
        return (f(filled, axis=axis, keepdims=True) if filled.size
                else np.full(counts.shape, fill, x.dtype)), counts, None
    acc = sum_dtype(x.dtype)
    if x.dtype.kind in "iu":  # modular arithmetic: any order gives NumPy's wrapped result
        return np.where(valid, x, 0).astype(acc).sum(axis=axis, keepdims=True), counts, None
    # floats: exact sum with math.fsum per cell, and a bound on the rounding error of any order
    moved = np.moveaxis(np.where(valid, x, 0).astype(np.float64), axis,
                        range(x.ndim - len(axis), x.ndim))
    kept = moved.shape[: x.ndim - len(axis)]
    cells = moved.reshape(kept + (math.prod(moved.shape[len(kept):]),))
    exact = np.empty(kept, np.float64)
    tol = np.empty(kept, np.float64)
    eps = np.finfo(x.dtype).eps
    for idx in np.ndindex(*kept):
        vals = cells[idx]
        finite = vals[np.isfinite(vals)]
        exact[idx] = math.fsum(finite) if finite.size == vals.size else np.sum(vals)
        tol[idx] = 2 * (vals.size + 1) * eps * math.fsum(np.abs(finite)) + 1e-300
    shape = counts.shape
    return exact.reshape(shape), counts, tol.reshape(shape)


def check(partial: Partial, x: np.ndarray, mask: np.ndarray, axis: tuple[int, ...], op: str):
    values, counts, tol = oracle(x, mask, axis, op)
    assert partial.counts.dtype == np.int64
    np.testing.assert_array_equal(partial.counts, counts)
    expected_dtype = {"count": np.int64, "sum": sum_dtype(x.dtype)}.get(op, x.dtype)
    assert partial.values.dtype == expected_dtype
    assert partial.values.shape == values.shape
    if op == "select":
        np.testing.assert_array_equal(partial.values, values)
    elif op in ("min", "max"):
        present = counts > 0  # where nothing contributed the value is undefined
        np.testing.assert_array_equal(partial.values[present], values[present])
    elif tol is None:
        np.testing.assert_array_equal(partial.values, values)
    else:
        got = partial.values.astype(np.float64)
        finite = np.isfinite(values)
        np.testing.assert_array_equal(np.isnan(got), np.isnan(values))
        np.testing.assert_array_equal(got[~finite & ~np.isnan(values)],
                                      values[~finite & ~np.isnan(values)])
        assert np.all(np.abs(got[finite] - values[finite]) <= tol[finite]), (got, values, tol)


# ------------------------------------------------------------------------- strategies

def scalar_of(dtype: np.dtype, nan: bool = True):
    if dtype.kind == "f":
        width = dtype.itemsize * 8
        bound = 2.0**100 if width == 32 else 2.0**990
        return st.one_of(st.floats(-bound, bound, width=width),
                         st.sampled_from([np.nan] if nan else [0.0]),
                         st.sampled_from([np.inf, -np.inf])).map(dtype.type)
    info = np.iinfo(dtype)
    return st.integers(int(info.min), int(info.max)).map(dtype.type)


@st.composite
def attrs_for(draw, dtype: np.dtype) -> dict:
    """netCDF missing-data attributes, any combination, values in the variable's type."""
    attrs: dict = {}
    kinds = draw(st.sets(st.sampled_from(
        ["missing_value", "missing_values", "_FillValue", "valid_min", "valid_max",
         "valid_range"])))
    if "missing_value" in kinds:
        attrs["missing_value"] = draw(scalar_of(dtype))
    elif "missing_values" in kinds:
        attrs["missing_value"] = draw(st.lists(scalar_of(dtype), min_size=2, max_size=12))
    if "_FillValue" in kinds:
        attrs["_FillValue"] = draw(scalar_of(dtype))
    bounds = scalar_of(dtype, nan=False)
    if "valid_range" in kinds:
        lo, hi = sorted([draw(bounds), draw(bounds)])
        attrs["valid_range"] = [lo, hi]
    if "valid_min" in kinds:
        attrs["valid_min"] = draw(bounds)
    if "valid_max" in kinds:
        attrs["valid_max"] = draw(bounds)
    return attrs


def specials(dtype: np.dtype, attrs: dict) -> list:
    """Values worth hitting: the attributes themselves, neighbours of bounds, extremes."""
    out = []
    for k, v in attrs.items():
        out.extend(np.atleast_1d(np.array(v, dtype)).tolist())
    if dtype.kind == "f":
        out += [np.nan, np.inf, -np.inf, 0.0, -0.0, NC_DEFAULT_FILL["f4"]]
    else:
        info = np.iinfo(dtype)
        out += [int(info.min), int(info.max), 0, 1, NC_DEFAULT_FILL[dtype.str[1:]]]
    return out


@st.composite
def arrays_for(draw, dtype: np.dtype, shape: tuple[int, ...], attrs: dict) -> np.ndarray:
    pool = [dtype.type(v) for v in specials(dtype, attrs)]
    return draw(hnp.arrays(dtype, shape,
                           elements=st.one_of(scalar_of(dtype), st.sampled_from(pool))))


@st.composite
def slices_for(draw, n: int) -> tuple:
    """Python slice arguments for a dimension of ``n``: mostly non-empty, any spelling."""
    if not draw(st.integers(0, 4)):  # anything a Python slice accepts within [-n-1, n]
        bound = st.one_of(st.none(), st.integers(-n - 1, n))
        return draw(bound), draw(bound), draw(st.sampled_from([1, 2, 3, -1, -2, -3]))
    i = draw(st.integers(0, n - 1))
    j = draw(st.integers(i + 1, n))
    step = draw(st.sampled_from([1, 1, 2, 3, -1, -2, -3]))
    start, stop = (i, j) if step > 0 else (j - 1, i - 1 if i else None)
    if draw(st.booleans()):  # negative-index spelling of the same ends
        start -= n
        stop = stop - n if stop is not None and stop < n else stop
    if draw(st.integers(0, 3)) == 0:
        start = None if start in (0, -n) and step > 0 else start
    return start, stop, step


@st.composite
def codecs(draw, itemsize: int):
    compression = draw(st.sampled_from([None] + COMPRESSIONS))
    filters = []
    for _ in range(draw(st.integers(0, 2))):
        kind = draw(st.sampled_from(["shuffle", "fletcher32", "fletcher32_outer"]))
        if kind == "shuffle":
            es = draw(st.sampled_from([itemsize, itemsize, 1, 2, 3, 4, 8, 16]))
            filters.append({"id": "shuffle", "element_size": es})
        elif kind == "fletcher32":
            filters.append({"id": "fletcher32"})
        else:
            filters.append({"id": "fletcher32", "outer": True})
    return compression, tuple(filters)


@st.composite
def cases(draw):
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    shape = tuple(draw(st.lists(st.integers(1, 6), min_size=1, max_size=4)))
    attrs = draw(st.one_of(st.just({}), attrs_for(dtype)))
    default_fill = draw(st.booleans())
    data = draw(arrays_for(dtype, shape, attrs))
    sel = tuple(draw(slices_for(n)) for n in shape)
    if draw(st.booleans()):
        sel = None
    axis = draw(st.one_of(st.none(), st.sets(st.integers(0, len(shape) - 1))))
    axis = None if axis is None else tuple(sorted(axis))
    return dict(dtype=dtype, shape=shape, attrs=attrs, default_fill=default_fill, data=data,
                sel=sel, axis=axis, byte_order=draw(st.sampled_from(["little", "big"])),
                order=draw(st.sampled_from(["C", "F"])), codec=draw(codecs(dtype.itemsize)),
                op=draw(st.sampled_from(OPS)))


def selected(case):
    x, mask = case["data"], nc_mask(case["data"], case["attrs"], case["default_fill"])
    if case["sel"] is not None:
        sl = tuple(slice(*s) for s in case["sel"])
        x, mask = x[sl], mask[sl]
    axis = tuple(range(x.ndim)) if case["axis"] is None else case["axis"]
    # what the examples covered (pytest --hypothesis-show-statistics)
    event("empty selection" if x.size == 0 else "all missing" if mask.all()
          else "some missing" if mask.any() else "none missing")
    event(f"codec {case['codec'][0]} {[f['id'] + ('+outer' * bool(f.get('outer'))) for f in case['codec'][1]]}"[:40])
    return x, mask, axis


# ------------------------------------------------------------------------ properties

@pytest.mark.parametrize("compiled", PATHS)
@PROPS
@given(cases())
def test_reduce_chunk_matches_oracle(compiled, case):
    """Every dtype, byte order, layout, codec, selection, axis set, missing kind and operation,
    with and without the compiled one-pass reductions."""
    with kernel_path(compiled):
        _reduce_chunk_matches_oracle(case)


def _reduce_chunk_matches_oracle(case):
    compression, filters = case["codec"]
    raw = encode(case["data"], case["byte_order"], case["order"], compression, filters)
    missing = missing_from_attrs(case["attrs"], case["dtype"], case["default_fill"])
    sel = None if case["sel"] is None else tuple(
        slice(*s).indices(n) for s, n in zip(case["sel"], case["shape"]))
    req = make_request(case["dtype"], case["shape"], byte_order=case["byte_order"],
                       order=case["order"], selection=sel, axis=case["axis"],
                       compression=None if compression is None else {"id": compression},
                       filters=filters, missing=missing, size=len(raw))
    x, mask, axis = selected(case)
    note(f"case={case!r}\nrequest={req!r}")
    check(reduce_chunk(raw, req, case["op"]), x, mask, axis, case["op"])
    # the same through a reused scratch buffer (dirty from an earlier chunk): same answer, and
    # the partial owns its memory, so reusing the scratch cannot change it
    scratch = np.full(req.nbytes + 16, 0xAB, np.uint8)
    p = reduce_chunk(raw, req, case["op"], scratch)
    scratch[:] = 0xCD
    check(p, x, mask, axis, case["op"])
    assert not np.shares_memory(p.values, scratch) and not np.shares_memory(p.counts, scratch)


@PROPS
@given(cases())
def test_reduce_chunk_through_the_wire(case):
    """The same through from_wire(JSON): raw (possibly negative-step) selections, wire missing."""
    compression, filters = case["codec"]
    raw = encode(case["data"], case["byte_order"], case["order"], compression, filters)
    missing = missing_from_attrs(case["attrs"], case["dtype"], case["default_fill"])
    body = {"dtype": case["dtype"].name, "byte_order": case["byte_order"],
            "order": case["order"], "shape": list(case["shape"]), "size": len(raw),
            "offset": 0}
    if case["sel"] is not None:
        body["selection"] = [list(s) for s in case["sel"]]
    if case["axis"] is not None:
        body["axis"] = list(case["axis"])
    if compression:
        body["compression"] = {"id": compression}
    if filters:
        body["filters"] = [dict(f) for f in filters]
    if not missing.is_empty():
        body["missing"] = missing.to_wire()
    req = ChunkRequest.from_wire(json.loads(json.dumps(body)))
    x, mask, axis = selected(case)
    note(f"case={case!r}\nrequest={req!r}")
    check(reduce_chunk(raw, req, case["op"]), x, mask, axis, case["op"])


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(DTYPES).map(np.dtype), st.data())
def test_nc_mask_oracle_is_netcdf4(tmp_path_factory, dtype, data):
    """The oracle's masking is netCDF4-python's own (a real netCDF-4 file, read masked)."""
    netCDF4 = pytest.importorskip("netCDF4")
    attrs = data.draw(attrs_for(dtype))
    default_fill = "_FillValue" not in attrs
    values = data.draw(arrays_for(dtype, (24,), attrs))
    path = tmp_path_factory.mktemp("nc") / "v.nc"
    with netCDF4.Dataset(path, "w") as ds:
        ds.createDimension("x", 24)
        v = ds.createVariable("v", dtype, ("x",), fill_value=attrs.get("_FillValue"))
        for k, a in attrs.items():
            if k != "_FillValue":
                v.setncattr(k, np.array(a, dtype))
        v.set_auto_mask(False)
        v[:] = values
    with netCDF4.Dataset(path) as ds:
        got = np.ma.getmaskarray(ds["v"][:])
    np.testing.assert_array_equal(got, nc_mask(values, attrs, default_fill))
    req = make_request(dtype, (24,), missing=missing_from_attrs(attrs, dtype, default_fill))
    np.testing.assert_array_equal(reduce_chunk(values.tobytes(), req, "select").counts == 0, got)


# --------------------------------------------------------------------- specific cases

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("byte_order,order", [("little", "C"), ("big", "F")])
def test_whole_chunk_reductions_match_numpy(dtype, byte_order, order):
    """Realistic chunk sizes (the fast path: no selection, nothing missing, every axis)."""
    dt = np.dtype(dtype)
    rng = np.random.default_rng(3)
    if dt.kind == "f":
        x = rng.standard_normal((64, 256)).astype(dt)
    else:
        info = np.iinfo(dt)
        x = rng.integers(info.min, info.max, (64, 256), dtype=dt, endpoint=True)
    raw = encode(x, byte_order, order, None, ())
    for missing in (None, Missing()):
        req = make_request(dt, x.shape, byte_order=byte_order, order=order, missing=missing)
        for op in ("count", "min", "max", "sum"):
            check(reduce_chunk(raw, req, op), x, np.zeros(x.shape, bool), (0, 1), op)
        check(reduce_chunk(raw, req.with_(axis=(0, 1)), "sum"), x, np.zeros(x.shape, bool),
              (0, 1), "sum")


@pytest.mark.parametrize("dtype", DTYPES)
def test_all_missing_gives_count_zero(dtype):
    dt = np.dtype(dtype)
    x = np.full((3, 4), 7, dt)
    req = make_request(dt, x.shape, missing=Missing(values=(dt.type(7),)))
    for op in ("count", "sum", "min", "max"):
        p = reduce_chunk(x.tobytes(), req, op)
        assert p.counts.shape == (1, 1) and p.counts[0, 0] == 0
    assert reduce_chunk(x.tobytes(), req, "sum").values[0, 0] == 0
    p = reduce_chunk(x.tobytes(), req.with_(axis=(1,)), "max")
    np.testing.assert_array_equal(p.counts, np.zeros((3, 1)))


@pytest.mark.parametrize("op", OPS)
def test_empty_selection(op):
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    req = make_request(np.float32, (3, 4), selection=((2, 2, 1), (0, 4, 1)))
    p = reduce_chunk(x.tobytes(), req, op)
    if op == "select":
        assert p.values.shape == (0, 4)
    else:
        assert p.values.shape == (1, 1)
        assert p.counts[0, 0] == 0
    p = reduce_chunk(x.tobytes(), req.with_(axis=(1,)), op)
    assert p.values.shape == (0, 1) if op != "select" else (0, 4)


def test_negative_step_through_index_zero():
    """slice.indices gives stop=-1 for "through index 0"; it must not mean "the last element"."""
    x = np.arange(6, dtype=np.int32)
    req = ChunkRequest.from_wire({"dtype": "int32", "shape": [6], "selection": [[None, None, -1]]})
    assert req.selection == ((5, -1, -1),)
    np.testing.assert_array_equal(reduce_chunk(x.tobytes(), req, "select").values, x[::-1])
    again = ChunkRequest.from_wire(req.to_wire())
    np.testing.assert_array_equal(reduce_chunk(x.tobytes(), again, "select").values, x[::-1])


def test_python_float_fill_value_matches_float32_data():
    """A format may hand over netCDF's default fill as a Python float; it rounds to float32."""
    x = np.array([1, NC_DEFAULT_FILL["f4"], 3], np.float32)
    req = make_request(np.float32, (3,), missing=Missing(values=(NC_DEFAULT_FILL["f4"],)))
    p = reduce_chunk(x.tobytes(), req, "sum")
    assert p.counts[0] == 2 and p.values[0] == 4


def test_missing_values_that_fit_no_element_are_ignored():
    x = np.array([0, 1, 127, -128], np.int8)
    m = Missing(values=(300, 1.5, float("nan"), 1), valid_min=None, valid_max=None)
    np.testing.assert_array_equal(missing_mask(x, m), [False, True, False, False])
    many = Missing(values=tuple(range(2, 40)) + (127,))
    np.testing.assert_array_equal(missing_mask(x, many), [False, False, True, False])
    # a bound that fits no int8 is ignored (netCDF4-python ignores such attributes too)
    assert missing_mask(x, Missing(valid_min=-1000, valid_max=1000)) is None
    assert missing_mask(x, Missing(values=(True,))).tolist() == [False, True, False, False]
    f = np.array([1e38, np.inf, 0.1], np.float32)
    assert missing_mask(f, Missing(values=(1e39,))) is None  # would overflow to inf: ignored
    assert missing_mask(f, Missing(values=(0.1,))).tolist() == [False, False, True]
    assert missing_mask(f, Missing(valid_max=1e300)) is None  # as netCDF4-python: ignored


def test_nan_is_missing_only_when_declared():
    x = np.array([np.nan, 1.0, 2.0], np.float64)
    assert reduce_chunk(x.tobytes(), make_request(np.float64, (3,),
                        missing=Missing(values=(np.nan,))), "sum").values[0] == 3
    assert np.isnan(reduce_chunk(x.tobytes(), make_request(np.float64, (3,),
                    missing=Missing(valid_min=np.float64(0))), "sum").values[0])


def test_reduce_array_rejects_bad_axis_and_operation():
    x = np.zeros((2, 3))
    with pytest.raises(RequestValidationError) as e:
        reduce_array(x, "sum", (2,))
    assert e.value.field == "axis"
    with pytest.raises(RequestValidationError) as e:
        reduce_array(x, "mean", (0,))
    assert e.value.field == "operation"


def test_integer_sum_wraps_like_numpy():
    x = np.array([2**63 - 1, 1, 5], np.int64)
    p = reduce_chunk(x.tobytes(), make_request(np.int64, (3,)), "sum")
    assert p.values.dtype == np.int64 and p.values[0] == np.sum(x)
    u = np.array([2**32 - 1] * 3, np.uint32)
    p = reduce_chunk(u.tobytes(), make_request(np.uint32, (3,)), "sum")
    assert p.values.dtype == np.uint64 and p.values[0] == 3 * (2**32 - 1)


def test_unsupported_dtype_and_codec():
    with pytest.raises(UnsupportedError):
        reduce_chunk(b"\0" * 8, make_request(np.complex64, (1,)), "sum")
    with pytest.raises(UnsupportedError):
        reduce_chunk(b"\0" * 8, make_request(np.float64, (1,), compression={"id": "lzma"}), "sum")
    with pytest.raises(UnsupportedError):
        reduce_chunk(b"\0" * 8, make_request(np.float64, (1,), filters=({"id": "delta"},)), "sum")


# ------------------------------------------------------------------- HDF5 compatibility

def _h5_chunks(tmp_path, dtype, **kwargs):
    h5py = pytest.importorskip("h5py")
    rng = np.random.default_rng(1)
    # compressible (HDF5 skips an optional filter whose output would be larger: mask != 0)
    data = (rng.integers(-3, 4, (8, 10, 6)) * 100 + 7).astype(dtype)
    with h5py.File(tmp_path / "t.h5", "w") as f:
        d = f.create_dataset("v", data=data, chunks=(4, 5, 3), **kwargs)
        chunks = {}
        for i in range(2):
            for j in range(2):
                for k in range(2):
                    mask, raw = d.id.read_direct_chunk((4 * i, 5 * j, 3 * k))
                    assert mask == 0
                    chunks[(i, j, k)] = raw
    return data, chunks


def _check_h5(data, chunks, dtype, compression, filters):
    dt = np.dtype(dtype)
    for (i, j, k), raw in chunks.items():
        req = make_request(dt, (4, 5, 3), compression=compression, filters=filters,
                           size=len(raw))
        expect = data[4 * i:4 * i + 4, 5 * j:5 * j + 5, 3 * k:3 * k + 3]
        np.testing.assert_array_equal(reduce_chunk(raw, req, "select").values, expect)
        assert reduce_chunk(raw, req, "max").values.item() == expect.max()


@pytest.mark.parametrize("dtype", ["<i2", ">i4", "<f4", ">f8", "u1"])
def test_hdf5_fletcher32_shuffle_deflate(tmp_path, dtype):
    """h5py writes shuffle -> deflate -> fletcher32; the checksum covers the stored bytes."""
    data, chunks = _h5_chunks(tmp_path, dtype, fletcher32=True, shuffle=True, compression="gzip")
    itemsize = np.dtype(dtype).itemsize
    _check_h5(data, chunks, dtype, {"id": "gzip"},
              ({"id": "shuffle", "element_size": itemsize}, {"id": "fletcher32", "outer": True}))
    for raw in chunks.values():  # our reference Fletcher-32 is HDF5's
        assert raw[-4:] == fletcher32_ref(raw[:-4])
    raw = bytearray(next(iter(chunks.values())))
    raw[len(raw) // 2] ^= 0x40
    with pytest.raises(DecodeError, match="Fletcher-32"):
        reduce_chunk(bytes(raw), make_request(dtype, (4, 5, 3), compression={"id": "gzip"},
                                              filters=({"id": "fletcher32", "outer": True},)),
                     "sum")


@pytest.mark.parametrize("dtype", ["<f4", ">i8"])
def test_hdf5_shuffle_deflate_and_fletcher32_alone(tmp_path, dtype):
    data, chunks = _h5_chunks(tmp_path, dtype, shuffle=True, compression="gzip",
                              compression_opts=6)
    _check_h5(data, chunks, dtype, {"id": "zlib"},
              ({"id": "shuffle", "element_size": np.dtype(dtype).itemsize},))
    data, chunks = _h5_chunks(tmp_path, dtype, fletcher32=True)
    _check_h5(data, chunks, dtype, None, ({"id": "fletcher32", "outer": True},))
    _check_h5(data, chunks, dtype, None, ({"id": "fletcher32"},))  # same without compression


_PLUGIN_WRITER = """
import sys, numpy as np, h5py, hdf5plugin
data = np.load(sys.argv[1])
with h5py.File(sys.argv[2], "w") as f:
    f.create_dataset("v", data=data, chunks=(4, 5, 3), shuffle=True,
                     **getattr(hdf5plugin, sys.argv[3])())
"""


@pytest.mark.parametrize("name", ["Zstd", "Blosc", "BZip2"])
def test_hdf5plugin_codecs(tmp_path, name):
    """HDF5 plugin filters (blosc 32001, zstd 32015, bzip2 307) write what the kernel reads.

    Written in a child process: hdf5plugin's filters fail to register in a process that imported
    netCDF4 first (it points HDF5_PLUGIN_PATH at its own plugins).
    """
    pytest.importorskip("hdf5plugin", reason="hdf5plugin is not installed")
    h5py = pytest.importorskip("h5py")
    cid = {"Zstd": "zstd", "Blosc": "blosc", "BZip2": "bzip2"}[name]
    data = (np.random.default_rng(2).integers(-3, 4, (8, 10, 6)) * 100 + 7).astype("<f4")
    np.save(tmp_path / "d.npy", data)
    subprocess.run([sys.executable, "-c", _PLUGIN_WRITER, str(tmp_path / "d.npy"),
                    str(tmp_path / "p.h5"), name], check=True, timeout=60,
                   env={k: v for k, v in os.environ.items() if k != "HDF5_PLUGIN_PATH"})
    with h5py.File(tmp_path / "p.h5") as f:
        d = f["v"]
        chunks = {}
        for idx in np.ndindex(2, 2, 2):
            mask, chunks[idx] = d.id.read_direct_chunk(tuple(i * c for i, c in zip(idx, (4, 5, 3))))
            assert mask == 0
    _check_h5(data, chunks, "<f4", {"id": cid}, ({"id": "shuffle", "element_size": 4},))


def _real_variables():
    """(path, name) of numeric netCDF-4 variables of the shared test data, with their chunks."""
    return [("CMIP6_IPSL-CM6A-LR_tas.nc", "tas"), ("cesm2_native.nc", "TREFHT"),
            ("cesm2_native.nc", "date"), ("daily_data_masked.nc", "ta"),
            ("daily_data.nc", "ta")]


@pytest.mark.parametrize("fname,var", _real_variables())
def test_real_files_against_netcdf4(fname, var):
    """Each stored chunk of real climate files, reduced by the kernel, against netCDF4-python."""
    h5py = pytest.importorskip("h5py")
    netCDF4 = pytest.importorskip("netCDF4")
    path = DATA_DIR / fname
    with netCDF4.Dataset(path) as nc:
        ncv = nc[var]
        attrs = {k: ncv.getncattr(k) for k in ncv.ncattrs()
                 if k in ("missing_value", "_FillValue", "valid_min", "valid_max", "valid_range")}
        expected = ncv[:]
    with h5py.File(path) as f:
        d = f[var]
        dtype = d.dtype.newbyteorder("=")
        byte_order = "big" if d.dtype.byteorder == ">" else "little"
        chunk_shape = d.chunks or d.shape
        filters = d._filters
        compression = {"id": "gzip"} if "gzip" in filters else None
        flt = (({"id": "shuffle", "element_size": dtype.itemsize},) if "shuffle" in filters
               else ())
        missing = missing_from_attrs(attrs, dtype)
        pieces = []
        if d.chunks is None:
            offset = d.id.get_offset()
            raw = path.read_bytes()[offset:offset + d.id.get_storage_size()]
            pieces.append((tuple(slice(0, n) for n in d.shape), raw))
        else:
            for info in (d.id.get_chunk_info(i) for i in range(d.id.get_num_chunks())):
                sl = tuple(slice(o, o + c) for o, c in zip(info.chunk_offset, chunk_shape))
                pieces.append((sl, d.id.read_direct_chunk(info.chunk_offset)[1]))
    assert pieces
    for sl, raw in pieces:
        req = make_request(dtype, chunk_shape, byte_order=byte_order, compression=compression,
                           filters=flt, missing=missing)
        want = expected[sl]
        got = reduce_chunk(raw, req, "select")
        np.testing.assert_array_equal(got.counts == 0, np.ma.getmaskarray(want))
        np.testing.assert_array_equal(got.values[got.counts > 0], want.compressed())
        for op in ("sum", "min", "max", "count"):
            p = reduce_chunk(raw, req, op)
            if want.count() == 0:
                assert p.counts.item() == 0
                continue
            ref = {"sum": want.sum(dtype=sum_dtype(dtype)), "min": want.min(),
                   "max": want.max(), "count": want.count()}[op]
            np.testing.assert_allclose(p.values.item(), ref, rtol=1e-5)
            assert p.counts.item() == want.count()


# ------------------------------------------------------------------------- robustness

def _req(compression=None, filters=(), shape=(256,), dtype=np.float32):
    return make_request(dtype, shape, compression=None if compression is None
                        else {"id": compression}, filters=filters)


@pytest.mark.parametrize("cid", COMPRESSIONS)
def test_corrupt_and_truncated_data(cid):
    x = np.arange(256, dtype=np.float32)
    raw = compress(x.tobytes(), cid)
    req = _req(cid)
    np.testing.assert_array_equal(reduce_chunk(raw, req, "select").values, x)
    for bad in (raw[: len(raw) // 2], raw[:3], b"", b"\xff" * len(raw),
                raw[:8] + bytes(b ^ 0x5A for b in raw[8:])):
        with pytest.raises(DecodeError):
            reduce_chunk(bad, req, "sum")
    # declared shape smaller or larger than the data
    with pytest.raises(DecodeError):
        reduce_chunk(raw, _req(cid, shape=(255,)), "sum")
    with pytest.raises(DecodeError):
        reduce_chunk(raw, _req(cid, shape=(257,)), "sum")


def test_wrong_uncompressed_sizes():
    with pytest.raises(DecodeError, match="needs 1024"):
        reduce_chunk(b"\0" * 1020, _req(), "sum")
    with pytest.raises(DecodeError, match="needs 1024"):
        reduce_chunk(b"\0" * 1025, _req(), "sum")
    with pytest.raises(DecodeError, match="Fletcher-32 checksum missing"):
        reduce_chunk(b"\0\0", _req(filters=({"id": "fletcher32"},)), "sum")


BOMB_BYTES = 64 * 2**20  # what a bomb expands to; the request declares 4 KiB


def _zstd_rle_frame(nblocks: int, content_size: int | None) -> bytes:
    """A zstd frame of RLE blocks (128 KiB each from one byte), optionally lying about its size."""
    if content_size is None:
        out = struct.pack("<IBB", 0xFD2FB528, 0x00, 0x58)
    else:
        out = struct.pack("<IBQ", 0xFD2FB528, 0xE0, content_size)
    for i in range(nblocks):
        header = (i == nblocks - 1) | (1 << 1) | (131072 << 3)
        out += struct.pack("<I", header)[:3] + b"\x07"
    return out


@pytest.fixture(scope="module")
def bombs():
    from numcodecs import LZ4, Blosc, Zstd
    zeros = bytes(BOMB_BYTES)
    return {
        "zlib": zlib.compress(zeros, 9),
        "gzip": gzip.compress(zeros, 9),
        "bz2": bz2.compress(bytes(8 * 2**20), 9),
        "zstd": bytes(Zstd(level=1).encode(zeros)),
        "zstd-stream": _zstd_rle_frame(BOMB_BYTES // 131072, None),
        "zstd-lying": _zstd_rle_frame(BOMB_BYTES // 131072, 4096),
        "blosc": bytes(Blosc(cname="zstd").encode(zeros)),
        "blosc-lying": _lie(bytes(Blosc(cname="lz4").encode(zeros)), 4, 4096),
        "lz4": bytes(LZ4().encode(zeros)),
        "lz4-lying": _lie(bytes(LZ4().encode(zeros)), 0, 4096),
    }


def _lie(raw: bytes, at: int, size: int) -> bytes:
    """``raw`` with the little-endian uint32 decoded-size field at ``at`` set to ``size``."""
    return raw[:at] + struct.pack("<I", size) + raw[at + 4:]


@pytest.mark.parametrize("kind", ["zlib", "gzip", "bz2", "zstd", "zstd-stream", "zstd-lying",
                                  "blosc", "blosc-lying", "lz4", "lz4-lying"])
def test_decompression_bomb_is_refused_without_allocating(bombs, kind):
    cid = kind.split("-")[0]
    req = make_request(np.float32, (1024,), compression={"id": cid})
    tracemalloc.start()
    try:
        with pytest.raises(DecodeError):
            reduce_chunk(bombs[kind], req, "sum")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 * 2**20, f"{kind}: peak {peak} bytes while refusing a bomb"


def test_zstd_declaring_the_wrong_size():
    from numcodecs import Zstd
    raw = bytes(Zstd().encode(bytes(1000)))
    with pytest.raises(DecodeError, match="declares 1000"):
        reduce_chunk(raw, make_request(np.uint8, (2000,), compression={"id": "zstd"}), "sum")
    stream = _zstd_rle_frame(1, None)  # 128 KiB, no content size: numcodecs checks the total
    with pytest.raises(DecodeError):
        reduce_chunk(stream, make_request(np.uint8, (200000,), compression={"id": "zstd"}), "sum")
    p = reduce_chunk(stream, make_request(np.uint8, (131072,), compression={"id": "zstd"}), "sum")
    assert p.values.item() == 7 * 131072


@st.composite
def fuzz_requests(draw):
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    shape = tuple(draw(st.lists(st.integers(1, 8), min_size=1, max_size=3)))
    compression, filters = draw(codecs(dtype.itemsize))
    missing = draw(st.one_of(st.none(), attrs_for(dtype).map(
        lambda a: missing_from_attrs(a, dtype))))
    return make_request(dtype, shape, byte_order=draw(st.sampled_from(["little", "big"])),
                        order=draw(st.sampled_from(["C", "F"])),
                        compression=None if compression is None else {"id": compression},
                        filters=filters, missing=missing)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fuzz_requests(), st.binary(max_size=600), st.sampled_from(OPS), st.data())
def test_fuzz_only_activestorage_errors_escape(req, junk, op, data):
    """Random bytes, or a valid encoding damaged at random, never raise anything else."""
    if data.draw(st.booleans()):
        x = np.zeros(req.shape, req.dtype)
        good = encode(x, req.byte_order, req.order,
                      None if req.compression is None else req.compression["id"], req.filters)
        damaged = bytearray(good)
        for pos in data.draw(st.lists(st.integers(0, max(len(good) - 1, 0)), max_size=4)):
            if damaged:
                damaged[pos] ^= data.draw(st.integers(1, 255))
        cut = data.draw(st.integers(0, len(damaged)))
        junk = bytes(damaged[:cut] if data.draw(st.booleans()) else damaged)
    try:
        p = reduce_chunk(junk, req, op)
    except ActiveStorageError:
        return
    assert isinstance(p, Partial)


def test_select_does_not_alias_the_input_buffer():
    buf = bytearray(np.arange(6, dtype=np.float64).tobytes())
    p = reduce_chunk(buf, make_request(np.float64, (6,)), "select")
    buf[:8] = np.float64(99).tobytes()
    assert p.values[0] == 0 and p.values.flags.writeable


def test_unshuffle_never_writes_into_its_own_input():
    """Two shuffle filters with one scratch: the second unshuffle reads the scratch, so it must
    not also write there."""
    x = np.arange(50, dtype="<u4")
    once = numcodecs.Shuffle(4).encode(x.tobytes())
    twice = numcodecs.Shuffle(4).encode(once)
    req = make_request("<u4", (50,), filters=({"id": "shuffle", "element_size": 4},) * 2)
    scratch = np.zeros(400, np.uint8)
    np.testing.assert_array_equal(decode(twice, req, scratch), x)
    np.testing.assert_array_equal(decode(twice, req, scratch[:100]), x)  # too small: not used


def test_decode_returns_native_order_and_is_zero_copy_when_possible():
    x = np.arange(10, dtype=">i4")
    got = decode(x.tobytes(), make_request(np.int32, (10,), byte_order="big"))
    assert got.dtype == np.dtype("=i4")
    np.testing.assert_array_equal(got, np.arange(10))
    raw = np.arange(10, dtype="<i4").tobytes()
    assert np.shares_memory(decode(memoryview(raw), make_request("<i4", (10,))),
                            np.frombuffer(raw, np.uint8)) or not np.little_endian


# ------------------------------------------------------------------ stored bytes in pieces

class _Pieces(StoredPieces):
    """Stored bytes lent through one buffer that is scribbled over before each next piece (as a
    backend reusing its read buffer would), in pieces of ``step`` bytes."""

    def __init__(self, raw: bytes, step: int) -> None:
        self.raw, self.step = raw, step

    @property
    def nbytes(self) -> int:
        return len(self.raw)

    def pieces(self):
        buf = bytearray(self.step)
        for pos in range(0, len(self.raw), self.step):
            piece = self.raw[pos:pos + self.step]
            buf[:] = b"\xa5" * self.step
            buf[:len(piece)] = piece
            yield memoryview(buf)[:len(piece)]


@PROPS
@given(dtype=st.sampled_from(["<f4", ">f8", "<i2", "u1"]), n=st.integers(0, 3000),
       cid=st.sampled_from(["zlib", "gzip"]), shuffle=st.booleans(),
       step=st.integers(1, 5000), op=st.sampled_from(OPS), seed=st.integers(0, 2**32 - 1))
def test_stored_pieces_decode_as_the_whole_bytes(dtype, n, cid, shuffle, step, op, seed):
    """A streamed pipeline (deflate, with or without shuffle) fed a piece at a time through a
    reused buffer gives the partial the whole stored bytes give, and the oracle's."""
    dt = np.dtype(dtype)
    x = np.random.default_rng(seed).integers(0, 120, n).astype(dt)
    filters = ({"id": "shuffle", "element_size": dt.itemsize},) if shuffle else ()
    raw = encode(x, "big" if dt.byteorder == ">" else "little", "C", cid, filters)
    req = make_request(dt.newbyteorder("="), (n,), compression={"id": cid}, filters=filters,
                       byte_order="big" if dt.byteorder == ">" else "little")
    assert streams(req)
    want = reduce_chunk(raw, req, op)
    got = reduce_chunk(_Pieces(raw, step), req, op, np.zeros(n * dt.itemsize + 8, np.uint8))
    np.testing.assert_array_equal(got.values, want.values)
    np.testing.assert_array_equal(got.counts, want.counts)
    if op == "select":
        np.testing.assert_array_equal(got.values, x)


def test_stored_pieces_truncated_or_corrupt_is_a_decode_error():
    x = np.arange(5000, dtype=np.float32)
    req = make_request(np.float32, x.shape, compression={"id": "zlib"})
    raw = zlib.compress(x.tobytes())
    with pytest.raises(DecodeError, match="truncated"):
        reduce_chunk(_Pieces(raw[:len(raw) // 2], 1000), req, "sum")
    with pytest.raises(DecodeError, match="corrupt"):
        reduce_chunk(_Pieces(raw[:10] + bytes(200) + raw[210:], 64), req, "sum")
    with pytest.raises(DecodeError, match="truncated"):
        reduce_chunk(_Pieces(b"", 64), req, "sum")


def test_only_deflate_with_or_without_shuffle_streams():
    f4 = np.float32
    assert streams(make_request(f4, (4,), compression={"id": "gzip"}))
    assert not streams(make_request(f4, (4,)))
    assert not streams(make_request(f4, (4,), compression={"id": "zstd"}))
    assert not streams(make_request(f4, (4,), compression={"id": "zlib"},
                                    filters=({"id": "fletcher32", "outer": True},)))
    assert not streams(make_request(f4, (4,), compression={"id": "zlib"},
                                    filters=({"id": "shuffle", "element_size": 4},) * 2))


# ------------------------------------------------------------- moments and minmax (#21)

def moments_oracle(x: np.ndarray, mask: np.ndarray, axis: tuple[int, ...], w) -> np.ndarray:
    """(sw, mean, m2, sw2) per output cell in float64, straight from the definitions: missing
    elements have weight 0, empty cells are all 0."""
    xf = np.where(mask, 0.0, x.astype(np.float64))
    wf = np.ones(x.shape) if w is None else np.broadcast_to(w, x.shape)
    we = np.where(mask, 0.0, wf)
    sw = we.sum(axis=axis, keepdims=True)
    mean = np.where(sw > 0, (we * xf).sum(axis=axis, keepdims=True) / np.where(sw > 0, sw, 1), 0)
    m2 = (we * (xf - mean) ** 2).sum(axis=axis, keepdims=True)
    return np.stack([sw, mean, m2, (we * we).sum(axis=axis, keepdims=True)], axis=-1)


def bounded(dtype: np.dtype):
    """Data values whose squares and sums stay well inside float64 (the moments cases)."""
    if dtype.kind == "f":
        return st.floats(-1e6, 1e6, width=dtype.itemsize * 8).map(dtype.type)
    info = np.iinfo(dtype)
    return st.integers(max(int(info.min), -10**6), min(int(info.max), 10**6)).map(dtype.type)


@st.composite
def weights_for(draw, shape: tuple[int, ...]):
    """None, separable ``{axis: 1-D}`` (some axes None or left out) or an N-D array with some
    length-1 (broadcast) dimensions; weights in [0, 10], zeros included."""
    kind = draw(st.sampled_from(["none", "separable", "nd"]))
    w8 = st.floats(0, 10, allow_subnormal=False).map(float)  # w*x of a subnormal w underflows
    if kind == "none":
        return None, None
    if kind == "separable":
        out, full = {}, np.ones(shape)
        for ax in draw(st.sets(st.integers(0, len(shape) - 1))):
            if draw(st.integers(0, 4)) == 0:
                out[ax] = None
                continue
            v = np.array(draw(st.lists(w8, min_size=shape[ax], max_size=shape[ax])), np.float64)
            out[ax] = v
            full = full * v.reshape(tuple(shape[ax] if i == ax else 1 for i in range(len(shape))))
        return out, full
    wshape = tuple(n if draw(st.booleans()) else 1 for n in shape)
    lead = draw(st.integers(0, len(shape)))  # fewer leading dimensions broadcast too
    wshape = wshape[lead:] if draw(st.booleans()) else wshape
    w = draw(hnp.arrays(np.float64, wshape, elements=w8))
    return w, np.broadcast_to(w, shape)


@st.composite
def moment_cases(draw):
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    shape = tuple(draw(st.lists(st.integers(1, 5), min_size=1, max_size=3)))
    data = draw(hnp.arrays(dtype, shape, elements=bounded(dtype)))
    attrs: dict = {}
    if draw(st.booleans()):  # a fill value that the data hits
        attrs["_FillValue"] = data.flat[draw(st.integers(0, data.size - 1))]
    if draw(st.integers(0, 3)) == 0:
        attrs["valid_min"] = draw(bounded(dtype))
    if dtype.kind == "f" and draw(st.integers(0, 3)) == 0:  # NaN fill: NaN*0 must not leak
        attrs["_FillValue"] = dtype.type(np.nan)
        data = data.copy()
        data.flat[draw(st.integers(0, data.size - 1))] = np.nan
    sel = None if draw(st.booleans()) else tuple(draw(slices_for(n)) for n in shape)
    axis = draw(st.one_of(st.none(), st.sets(st.integers(0, len(shape) - 1))))
    return dict(dtype=dtype, shape=shape, attrs=attrs, default_fill=False, data=data, sel=sel,
                axis=None if axis is None else tuple(sorted(axis)),
                byte_order=draw(st.sampled_from(["little", "big"])),
                order=draw(st.sampled_from(["C", "F"])), codec=draw(codecs(dtype.itemsize)))


@pytest.mark.parametrize("compiled", PATHS)
@PROPS
@given(moment_cases(), st.data())
def test_moments_partial_matches_definitions(compiled, case, data):
    """``moments`` through reduce_chunk (every dtype, byte order, layout, codec, strided
    selection, axis set, fill value / valid_min / NaN fill) with unit, separable and N-D
    weights over the selected region: (sw, mean, m2, sw2) as defined, counts as ``count``;
    with the compiled two-pass path for whole chunks and without."""
    with kernel_path(compiled):
        _moments_partial_matches_definitions(case, data)


def _moments_partial_matches_definitions(case, data):
    compression, filters = case["codec"]
    raw = encode(case["data"], case["byte_order"], case["order"], compression, filters)
    missing = missing_from_attrs(case["attrs"], case["dtype"], False)
    x, mask, axis = selected(case)
    weights, full = data.draw(weights_for(x.shape))
    sel = None if case["sel"] is None else tuple(
        slice(*s).indices(n) for s, n in zip(case["sel"], case["shape"]))
    req = make_request(case["dtype"], case["shape"], byte_order=case["byte_order"],
                       order=case["order"], selection=sel, axis=case["axis"],
                       compression=None if compression is None else {"id": compression},
                       filters=filters, missing=missing, size=len(raw), weights=weights)
    note(f"x={x!r}\nmask={mask!r}\nweights={weights!r}")
    p = reduce_chunk(raw, req, "moments")
    want = moments_oracle(x, mask, axis, full)
    counts = (~mask).sum(axis=axis, keepdims=True)
    assert p.values.dtype == np.float64 and p.values.shape == counts.shape + (4,)
    np.testing.assert_array_equal(p.counts, counts)
    scale = float(np.abs(np.where(mask, 0, x.astype(np.float64))).max(initial=0)) + 1
    sw_scale = want[..., 0].max(initial=0) + 1
    np.testing.assert_allclose(p.values[..., 0], want[..., 0], rtol=1e-12, atol=1e-9 * sw_scale)
    np.testing.assert_allclose(p.values[..., 3], want[..., 3], rtol=1e-12, atol=1e-9 * sw_scale)
    np.testing.assert_allclose(p.values[..., 1], want[..., 1], rtol=1e-9, atol=1e-9 * scale)
    np.testing.assert_allclose(p.values[..., 2], want[..., 2], rtol=1e-7,
                               atol=1e-9 * scale * scale * sw_scale)
    empty = counts == 0
    assert not p.values[empty].any()  # the contract: empty cells are all zeros


@PROPS
@given(cases())
def test_minmax_partial_is_min_and_max(case):
    """``minmax`` over the same cases as the other operations (NaN, infinities, extremes):
    exactly the ``min`` and ``max`` partials side by side, in the data's dtype."""
    compression, filters = case["codec"]
    raw = encode(case["data"], case["byte_order"], case["order"], compression, filters)
    missing = missing_from_attrs(case["attrs"], case["dtype"], case["default_fill"])
    sel = None if case["sel"] is None else tuple(
        slice(*s).indices(n) for s, n in zip(case["sel"], case["shape"]))
    req = make_request(case["dtype"], case["shape"], byte_order=case["byte_order"],
                       order=case["order"], selection=sel, axis=case["axis"],
                       compression=None if compression is None else {"id": compression},
                       filters=filters, missing=missing, size=len(raw))
    p = reduce_chunk(raw, req, "minmax")
    x, mask, axis = selected(case)
    assert p.values.dtype == case["dtype"] and p.values.shape[-1] == 2
    for k, op in enumerate(("min", "max")):
        check(Partial(np.ascontiguousarray(p.values[..., k]), p.counts), x, mask, axis, op)


@pytest.mark.parametrize("compiled", PATHS)
def test_moments_keep_every_digit_of_float32_offsets(compiled):
    """float32 1e6 + noise: the naive sum of squares loses every digit; the two-pass partial
    keeps var to 1e-12 of float64 NumPy's (compiled and NumPy paths)."""
    x = (1e6 + np.random.default_rng(5).standard_normal((256, 512))).astype(np.float32)
    with kernel_path(compiled):
        p = reduce_array(x, "moments", (0, 1))
    sw, mean, m2, sw2 = p.values.reshape(4)
    x64 = x.astype(np.float64)
    assert sw == sw2 == x.size
    np.testing.assert_allclose(m2 / sw, np.var(x64), rtol=1e-12)
    with np.errstate(all="ignore"):  # the naive sums in the data's float32
        naive = (np.sum(x * x) - np.sum(x) ** 2 / np.float32(x.size)) / np.float32(x.size)
    assert not abs(naive - np.var(x64)) < 0.5 * np.var(x64)  # the case really is hard


@st.composite
def shifted_cases(draw):
    """float32 offset + noise where the mean of the spread sample that gives the one-pass
    moments their shift (kernel._shift_of) may be far from the data's mean: the sampled
    elements pushed away, the rest of the chunk one value, a trend along an axis."""
    shape = tuple(draw(st.lists(st.integers(1, 40), min_size=1, max_size=3)))
    offset = draw(st.sampled_from([0.0, 1e3, 1e6, -3e7]))
    scale = draw(st.sampled_from([1e-3, 1.0, 1e3]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = offset + scale * rng.standard_normal(shape)
    kind = draw(st.sampled_from(["noise", "sample_away", "constant_rest", "trend"]))
    per = max(2, math.ceil(kernel._SHIFT_SAMPLE ** (1 / len(shape))))
    sampled = tuple(slice(None, None, max(1, n // per)) for n in shape)
    if kind == "sample_away":
        x[sampled] += draw(st.sampled_from([10.0, 1e4, -1e6])) * scale
    elif kind == "constant_rest":
        sample = x[sampled].copy()
        x[...] = offset
        x[sampled] = sample
    elif kind == "trend":
        x += np.arange(shape[0]).reshape((-1,) + (1,) * (len(shape) - 1)) * scale * 1e3
    x = x.astype(np.float32)
    if draw(st.booleans()):  # missing elements, some of them in the sample
        x.flat[rng.random(x.size) < draw(st.sampled_from([0.05, 0.5, 1.0]))] = -999.0
    return x


@PROPS
@given(shifted_cases())
def test_one_pass_moments_keep_every_digit(x):
    """The compiled whole-chunk moments (one shifted pass, or two when the shift is too far
    from the mean) match np.var in float64 to rtol 1e-9, whatever the sample saw."""
    with kernel_path(True):
        p = reduce_array(x, "moments", tuple(range(x.ndim)), Missing(values=(-999.0,)))
    good = x[x != -999.0].astype(np.float64)
    sw, mean, m2, sw2 = p.values.reshape(4)
    assert sw == sw2 == good.size == p.counts.reshape(())
    if not good.size:
        assert not p.values.any()
        return
    tiny = 1e-12 * float(np.abs(good).max())  # a constant chunk: m2 is 0 up to rounding
    np.testing.assert_allclose(mean, good.mean(), rtol=1e-9, atol=tiny)
    np.testing.assert_allclose(m2 / sw, np.var(good), rtol=1e-9, atol=tiny ** 2)


@PROPS
@given(st.lists(st.sampled_from([0.0, 1.0, 1e3, 1e6, -3e7]), min_size=1, max_size=6),
       st.sampled_from([1e-3, 1.0, 1e3]), st.integers(0, 2**32 - 1),
       st.tuples(st.integers(1, 30), st.integers(1, 30)))
def test_per_cell_moments_keep_every_digit(offsets, scale, seed, cell):
    """Moments along the trailing axes (one cell per leading index, each around the previous
    cell's mean): cells with far apart means, missing elements and empty cells still match
    np.var in float64 to rtol 1e-9, cell by cell."""
    rng = np.random.default_rng(seed)
    x = np.array(offsets).reshape(-1, 1, 1) + scale * rng.standard_normal((len(offsets),) + cell)
    x = x.astype(np.float32)
    x[rng.random(x.shape) < 0.2] = -999.0
    if len(offsets) > 2:
        x[1] = -999.0
    with kernel_path(True):
        p = reduce_array(x, "moments", (1, 2), Missing(values=(-999.0,)))
    for i in range(len(offsets)):
        good = x[i][x[i] != -999.0].astype(np.float64)
        sw, mean, m2, _ = p.values[i].reshape(4)
        assert sw == good.size == p.counts[i].reshape(())
        if not good.size:
            assert not p.values[i].any()
            continue
        tiny = 1e-12 * float(np.abs(good).max())
        np.testing.assert_allclose(mean, good.mean(), rtol=1e-9, atol=tiny)
        np.testing.assert_allclose(m2 / sw, np.var(good), rtol=1e-9, atol=tiny ** 2)


def test_one_pass_moments_fall_back_when_the_shift_is_far(monkeypatch):
    """The guard matters: every sampled element missing leaves the shift at 0, far from a mean
    of 1e7; accepting the one pass regardless loses the digits, with the guard the second,
    exact pass runs and keeps them. (A sample of present elements cannot do this: it is part
    of the data, so Σd²/m2 stays below 1 + n/samples.)"""
    if not kernel.fused.COMPILED:
        pytest.skip("activestorage._fused is not built: the one-pass moments cannot run")
    x = (1e7 + np.random.default_rng(3).standard_normal((64, 64, 64))).astype(np.float32)
    per = math.ceil(kernel._SHIFT_SAMPLE ** (1 / 3))
    x[tuple(slice(None, None, 64 // per) for _ in range(3))] = -999.0  # the sample only
    good = x[x != -999.0].astype(np.float64)
    missing = Missing(values=(-999.0,))
    assert kernel._shift_of(x, ([-999.0], False, None, None)) == 0.0

    def var_of() -> float:
        sw, _, m2, _ = reduce_array(x, "moments", (0, 1, 2), missing).values.reshape(4)
        return m2 / sw

    calls = []
    real = kernel.fused.sum_count
    monkeypatch.setattr(kernel.fused, "sum_count",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    np.testing.assert_allclose(var_of(), np.var(good), rtol=1e-9)
    assert len(calls) == 2  # the sample's sum, then the exact pass's
    monkeypatch.setattr(kernel, "_MAX_CONDITION", math.inf)
    assert not abs(var_of() / np.var(good) - 1) < 1e-6


def test_weights_are_checked():
    x = np.ones((2, 3), np.float32)
    with pytest.raises(RequestValidationError, match="axis 1 has 3 selected elements") as e:
        reduce_array(x, "moments", (1,), weights={1: np.ones(4)})
    assert e.value.field == "weights"
    with pytest.raises(RequestValidationError, match=r"does not broadcast .*\[2, 3\]"):
        reduce_array(x, "moments", (1,), weights=np.ones((3, 2)))
    with pytest.raises(RequestValidationError, match="not an axis"):
        reduce_array(x, "moments", (1,), weights={2: np.ones(3)})
    from activestorage.errors import InvalidArgumentError
    for bad in (-1.0, np.nan, np.inf):
        with pytest.raises(InvalidArgumentError, match="finite and not negative"):
            reduce_array(x, "moments", (1,), weights={0: np.array([1.0, bad])})
    with pytest.raises(RequestValidationError, match="takes no weights") as e:
        reduce_array(x, "sum", (1,), weights={0: np.ones(2)})
    assert e.value.field == "weights"


@pytest.mark.parametrize("axis", [(0, 1, 2), (0,), (1,), (2,), (1, 2), (0, 2)])
@pytest.mark.parametrize("weighted", [None, "separable", "nd"])
def test_moments_of_chunks_larger_than_a_block(axis, weighted):
    """Chunks cut into several blocks (along a middle axis, and within the last) give the
    definitions' answer, with NaN-missing elements and weights."""
    rng = np.random.default_rng(11)
    x = (rng.standard_normal((3, 70, 400)) * 50 + 300).astype(np.float32)
    x[rng.random(x.shape) < 0.1] = np.nan
    w = {"separable": {1: rng.random(70), 2: rng.random(400)},
         "nd": rng.random((70, 1))}.get(weighted)
    full = None if w is None else (np.outer(w[1], w[2]) if isinstance(w, dict) else w)
    p = reduce_array(x, "moments", axis, Missing(values=(np.nan,)), w)
    want = moments_oracle(x, np.isnan(x), axis, full)
    np.testing.assert_allclose(p.values, want, rtol=1e-9, atol=1e-9)  # atol: m2 of one element
    y = rng.standard_normal(100_000)  # one long axis, cut within it
    p = reduce_array(y, "moments", (0,), None, {0: np.abs(y)})
    np.testing.assert_allclose(p.values, moments_oracle(y, np.zeros(y.shape, bool), (0,),
                                                        np.abs(y)), rtol=1e-9)


# ------------------------------------------- separable weights: the decomposed moments (#21)

@st.composite
def separable_cases(draw):
    """Data with missing elements, reduced axes and weights that vary along only some of them
    (dict form or an N-D array, possibly varying along kept axes too), zero weights included."""
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    shape = tuple(draw(st.lists(st.integers(0, 6), min_size=2, max_size=4)))
    data = draw(hnp.arrays(dtype, shape, elements=bounded(dtype)))
    missing = None
    if data.size and draw(st.booleans()):
        missing = Missing(values=(data.flat[draw(st.integers(0, data.size - 1))],))
    if dtype.kind == "f" and data.size and draw(st.booleans()):
        data = data.copy()
        data[tuple(draw(st.integers(0, n - 1)) for n in shape)] = np.nan
        missing = Missing(values=(np.nan,))
    axis = tuple(sorted(draw(st.sets(st.integers(0, len(shape) - 1), min_size=1))))
    own = draw(st.sets(st.sampled_from(axis)))  # the weights' own axes W (U: the other ones)
    w8 = st.floats(0, 10, allow_subnormal=False).map(float) | st.just(0.0)
    if draw(st.booleans()):
        w: Any = {ax: np.array(draw(st.lists(w8, min_size=shape[ax], max_size=shape[ax])))
                  for ax in own}
        if not w:
            w = {axis[0]: None}
    else:
        wshape = tuple(n if (i in own or (i not in axis and draw(st.booleans()))) else 1
                       for i, n in enumerate(shape))
        w = draw(hnp.arrays(np.float64, wshape, elements=w8))
    return data, axis, missing, w


@pytest.mark.parametrize("compiled", PATHS)
@PROPS
@given(separable_cases())
def test_separable_moments_equal_the_general_path(compiled, case):
    """Weights constant along some reduced axes: the per-group unweighted moments merged with
    their weights equal the general weighted two-pass moments (and the definitions)."""
    x, axis, missing, w = case
    note(f"shape={x.shape} dtype={x.dtype} axis={axis} missing={missing} w={w}")
    with kernel_path(compiled):
        fast = reduce_array(x, "moments", axis, missing, w)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(kernel, "_separable_moments", lambda *a: None)
            general = reduce_array(x, "moments", axis, missing, w)
    np.testing.assert_array_equal(fast.counts, general.counts)
    assert fast.values.shape == general.values.shape
    scale = np.abs(general.values).max(initial=0.0)  # m2 of equal values: 0 vs. a rounding
    np.testing.assert_allclose(fast.values, general.values, rtol=1e-12, atol=1e-12 * scale)
    mask = (np.zeros(x.shape, bool) if missing is None
            else np.asarray(missing_mask(x, missing), bool))
    wl = kernel._weights_over(x.shape, w)
    full = None if wl is None else np.broadcast_to(wl, x.shape)
    np.testing.assert_allclose(fast.values, moments_oracle(x, mask, axis, full), rtol=1e-9,
                               atol=1e-9 * max(scale, 1.0))


@pytest.mark.parametrize("compiled", PATHS)
@pytest.mark.parametrize("w", [{1: "coslat"}, "nd"], ids=["separable", "nd"])
def test_separable_weights_take_the_decomposed_path(compiled, monkeypatch, w):
    """Cos-lat weights of a mean over (lat, lon): no weighted pass over the elements (the
    general path's _moments is only ever called unweighted), one compiled call for the
    groups when the extension is built; the answer is the definitions'."""
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((4, 18, 36)) + 1e6).astype(np.float32)
    x[rng.random(x.shape) < 0.05] = np.nan
    coslat = np.cos(np.linspace(-1.5, 1.5, 18))
    coslat[2] = 0.0
    weights = {1: coslat} if isinstance(w, dict) else coslat[:, None]
    real_moments, real_cells, calls = kernel._moments, fused.moments_cells, []

    def unweighted_only(x, axis, valid, w, out_shape):
        assert w is None, "the general weighted pass ran"
        return real_moments(x, axis, valid, w, out_shape)

    def cells(*a, **k):
        calls.append(a[1])
        return real_cells(*a, **k)

    monkeypatch.setattr(kernel, "_moments", unweighted_only)
    monkeypatch.setattr(fused, "moments_cells", cells)
    with kernel_path(compiled):
        p = reduce_array(x, "moments", (1, 2), Missing(values=(np.nan,)), weights)
    assert calls == [2]  # called either way; returns None without the extension
    full = np.broadcast_to(coslat[:, None], x.shape)
    want = moments_oracle(x, np.isnan(x), (1, 2), full)
    np.testing.assert_allclose(p.values, want, rtol=1e-9)
    np.testing.assert_array_equal(p.counts, (~np.isnan(x)).sum(axis=(1, 2), keepdims=True))


def test_weights_along_every_reduced_axis_take_the_general_path(monkeypatch):
    """Weights varying along all reduced axes cannot be decomposed: the general pass runs."""
    x = np.arange(24.0).reshape(2, 3, 4)
    seen = []
    real = kernel._moments
    monkeypatch.setattr(kernel, "_moments",
                        lambda *a: seen.append(a[3] is not None) or real(*a))
    p = reduce_array(x, "moments", (1, 2), None, {1: np.ones(3), 2: np.arange(4.0)})
    assert seen == [True]
    np.testing.assert_allclose(p.values, moments_oracle(
        x, np.zeros(x.shape, bool), (1, 2), np.outer(np.ones(3), np.arange(4.0))), rtol=1e-12)
