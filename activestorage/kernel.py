"""The numeric kernel: one chunk's bytes + a :class:`ChunkRequest` -> a :class:`Partial`.

Pure NumPy/numcodecs with no I/O, shared by the SDK's local backends and the reduction server, so
every number this project produces goes through the code tested here. Steps: decode (checksum,
decompress with a hard bound on the output size, unfilter), interpret dtype and byte order, reshape
in C or F order, select, find missing elements, reduce along the requested axes keeping dimensions.
"""

from __future__ import annotations

import bz2
import math
import zlib
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from .errors import DecodeError, RequestValidationError, UnsupportedError
from .request import ChunkRequest, Missing

__all__ = ["Partial", "decode", "reduce_chunk", "reduce_array", "sum_dtype", "OPERATIONS"]

OPERATIONS = ("count", "min", "max", "sum", "select")


@dataclass(slots=True)
class Partial:
    """A chunk's contribution: ``values`` and ``counts`` of non-missing elements behind each value.

    Both have the selection's shape with the reduced axes kept as length 1 (``keepdims``); for
    ``select`` ``values`` is the selected data and ``counts`` is 1 where an element is present and 0
    where it is missing. Where ``counts`` is 0, ``min``/``max`` values are undefined.
    """

    values: np.ndarray
    counts: np.ndarray


def sum_dtype(dtype: np.dtype) -> np.dtype:
    """The accumulator NumPy's ``sum`` uses for ``dtype`` (int64/uint64 for integers)."""
    if dtype.kind == "i":
        return np.dtype(np.int64)
    if dtype.kind == "u":
        return np.dtype(np.uint64)
    return np.dtype(dtype)


# --------------------------------------------------------------------------- decoding

def _bounded_inflate(raw: Any, expected: int, wbits: int, what: str) -> bytes:
    d = zlib.decompressobj(wbits)
    try:
        out = d.decompress(raw, expected + 1)
    except zlib.error as exc:
        raise DecodeError(f"{what} data is corrupt: {exc}") from exc
    if len(out) > expected or d.unconsumed_tail:
        raise DecodeError(f"{what} data expands beyond the declared {expected} bytes")
    return out


def _decompress(raw: Any, comp: Mapping[str, Any], expected: int) -> Any:
    """Undo ``comp``; never produce more than ``expected`` bytes (a decompression bomb is refused)."""
    cid = comp["id"]
    if cid == "zlib":
        return _bounded_inflate(raw, expected, zlib.MAX_WBITS, "zlib")
    if cid == "gzip":
        # Reductionist clients send HDF5 deflate (zlib-wrapped) as "gzip" too: accept either header.
        return _bounded_inflate(raw, expected, zlib.MAX_WBITS | 32, "gzip")
    if cid in ("bz2", "bzip2"):
        d = bz2.BZ2Decompressor()
        try:
            out = d.decompress(bytes(raw), expected + 1)
        except (OSError, ValueError) as exc:
            raise DecodeError(f"bzip2 data is corrupt: {exc}") from exc
        if len(out) > expected:
            raise DecodeError(f"bzip2 data expands beyond the declared {expected} bytes")
        return out
    if cid in ("blosc", "blosc2"):
        from numcodecs import blosc

        try:
            nbytes, _cbytes, _blocksize = blosc.cbuffer_sizes(raw)
        except Exception as exc:  # noqa: BLE001 - numcodecs raises bare errors on junk
            raise DecodeError(f"blosc data is corrupt: {exc}") from exc
        if nbytes > expected:
            raise DecodeError(f"blosc data expands beyond the declared {expected} bytes")
        try:
            return blosc.decompress(raw)
        except Exception as exc:  # noqa: BLE001
            raise DecodeError(f"blosc data is corrupt: {exc}") from exc
    if cid == "zstd":
        from numcodecs import Zstd

        out = np.empty(expected, np.uint8)
        try:
            Zstd().decode(raw, out=out)
        except Exception as exc:  # noqa: BLE001
            raise DecodeError(f"zstd data is corrupt or expands beyond {expected} bytes: {exc}") from exc
        return out
    if cid == "lz4":
        from numcodecs import LZ4

        header = bytes(memoryview(raw)[:4])
        if len(header) < 4 or int.from_bytes(header, "little") > expected:
            raise DecodeError(f"lz4 data is corrupt or expands beyond {expected} bytes")
        try:
            return LZ4().decode(raw)
        except Exception as exc:  # noqa: BLE001
            raise DecodeError(f"lz4 data is corrupt: {exc}") from exc
    raise UnsupportedError(f"compression {cid!r} is not supported")


def _check_fletcher32(buf: Any, where: str) -> memoryview:
    """Verify and strip an HDF5 Fletcher-32 checksum (the last 4 bytes)."""
    from numcodecs import Fletcher32

    try:
        return memoryview(Fletcher32().decode(buf)).cast("B")
    except Exception as exc:  # noqa: BLE001 - numcodecs raises RuntimeError on mismatch
        raise DecodeError(f"Fletcher-32 checksum failed ({where}): {exc}") from exc


def _unshuffle(buf: Any, element_size: int) -> np.ndarray:
    """Undo HDF5's byte shuffle; trailing bytes that don't fill an element stay as they are
    (netCDF-C puts a Fletcher-32 checksum before the shuffle, so the tail is 4 bytes)."""
    a = np.frombuffer(buf, np.uint8)
    n = a.size // element_size if element_size > 1 else 0
    if n == 0:
        return a
    body = a[:n * element_size].reshape(element_size, n).T.reshape(-1)
    if n * element_size == a.size:
        return body
    return np.concatenate([body, a[n * element_size:]])


def decode(raw: Any, req: ChunkRequest) -> np.ndarray:
    """Decode ``raw`` (the stored bytes) into a 1-D array of the request's dtype in native order.

    Order: an outer Fletcher-32 checksum (HDF5 puts it after compression) is verified on the stored
    bytes; compression is undone; the filters are undone in reverse write order.
    """
    expected = req.nbytes
    buf: Any = raw
    filters = list(req.filters)
    outer = [f for f in filters if f.get("id") == "fletcher32" and f.get("outer")]
    if outer:
        buf = _check_fletcher32(buf, "stored bytes")
        filters = [f for f in filters if f not in outer]
    inner_checks = sum(1 for f in filters if f.get("id") == "fletcher32")
    if req.compression is not None:
        buf = _decompress(buf, req.compression, expected + 4 * inner_checks)
    for f in reversed(filters):
        fid = f.get("id")
        if fid in ("shuffle", "shuffle_simd"):
            buf = _unshuffle(buf, int(f.get("element_size", req.dtype.itemsize)))
        elif fid == "fletcher32":
            buf = _check_fletcher32(buf, "decoded bytes")
        else:
            raise UnsupportedError(f"filter {fid!r} is not supported")
    nbytes = memoryview(buf).nbytes if not isinstance(buf, np.ndarray) else buf.nbytes
    if nbytes != expected:
        raise DecodeError(
            f"chunk decodes to {nbytes} bytes but shape {list(req.shape)} of {req.dtype.name} "
            f"needs {expected}")
    arr = np.frombuffer(buf, dtype=req.stored_dtype)
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return arr


# -------------------------------------------------------------------------- reduction

def missing_mask(x: np.ndarray, missing: Missing | None) -> np.ndarray | None:
    """Boolean array, True where ``x`` is missing; None when nothing can be missing."""
    if missing is None or missing.is_empty():
        return None
    bad = np.zeros(x.shape, dtype=bool)
    for v in missing.values:
        if isinstance(v, (float, np.floating)) and np.isnan(v):
            if x.dtype.kind == "f":
                bad |= np.isnan(x)
        else:
            bad |= x == v
    if missing.valid_min is not None:
        bad |= x < missing.valid_min
    if missing.valid_max is not None:
        bad |= x > missing.valid_max
    return bad


def reduce_array(x: np.ndarray, operation: str, axis: tuple[int, ...],
                 missing: Missing | None = None) -> Partial:
    """Reduce an already decoded and selected array (the part of the kernel with no bytes)."""
    bad = missing_mask(x, missing)
    if operation == "select":
        counts = (np.ones(x.shape, np.int64) if bad is None else (~bad).astype(np.int64))
        return Partial(np.ascontiguousarray(x), counts)
    if operation not in OPERATIONS:
        raise RequestValidationError("operation", f"unknown operation {operation!r}")

    full = len(axis) == x.ndim
    out_shape = tuple(1 if i in axis else n for i, n in enumerate(x.shape))
    if bad is None:
        count_value = math.prod(x.shape[i] for i in axis)
        counts = np.full(out_shape, count_value, dtype=np.int64)
        valid = None
    else:
        valid = ~bad
        counts = np.count_nonzero(valid, axis=axis, keepdims=True).astype(np.int64, copy=False)
        if valid.all():
            valid = None

    if operation == "count":
        return Partial(counts.copy(), counts)
    if operation == "sum":
        acc = sum_dtype(x.dtype)
        if valid is None:
            if full and x.flags.c_contiguous:
                v = np.add.reduce(x.reshape(-1), dtype=acc).reshape(out_shape)
            else:
                v = np.add.reduce(x, axis=axis, dtype=acc, keepdims=True)
        else:
            v = np.add.reduce(x, axis=axis, dtype=acc, keepdims=True, where=valid)
        return Partial(np.asarray(v, dtype=acc), counts)

    # min / max
    ufunc = np.minimum if operation == "min" else np.maximum
    if x.dtype.kind == "f":
        initial = np.inf if operation == "min" else -np.inf
    else:
        info = np.iinfo(x.dtype)
        initial = info.max if operation == "min" else info.min
    if valid is None and x.size:
        if full and x.flags.c_contiguous:
            v = ufunc.reduce(x.reshape(-1)).reshape(out_shape)
        else:
            v = ufunc.reduce(x, axis=axis, keepdims=True)
    else:
        v = ufunc.reduce(x, axis=axis, keepdims=True, initial=initial,
                         where=True if valid is None else valid)
    return Partial(np.asarray(v, dtype=x.dtype), counts)


def reduce_chunk(raw: Any, req: ChunkRequest, operation: str) -> Partial:
    """Decode, shape, select, mask and reduce one chunk; the single entry point for every backend."""
    flat = decode(raw, req)
    x = flat.reshape(req.shape, order=req.order)
    sl = req.selection_slices()
    if sl is not None:
        x = x[sl]
    return reduce_array(x, operation, req.reduce_axes, req.missing)
