"""The numeric kernel: one chunk's bytes + a :class:`ChunkRequest` -> a :class:`Partial`.

NumPy/numcodecs with no I/O, shared by the SDK's local backends and the reduction server, so
every number this project produces goes through the code tested here. Steps: decode (checksum,
decompress with a hard bound on the output size, unfilter; deflate is streamed straight into the
caller's scratch buffer, unshuffling on the way), interpret dtype and byte order, reshape in C or
F order, select, find missing elements, reduce along the requested axes keeping dimensions. Sums
and counts take the one-pass path of :mod:`activestorage.fused` where it is built and applies
(missing test and addition in a single read of the data), NumPy otherwise. The ``moments``
partial (``(sw, mean, m2, sw2)`` per output element, optionally weighted) is computed in two
passes in float64 (the mean, then the squared deviations from it, corrected by their own sum):
compiled for unweighted whole blocks (usually as one pass around a sampled shift, see
:func:`_full_moments`), NumPy in cache-sized blocks otherwise; weights that do not vary along
some reduced axes (separable) are applied to per-group unweighted moments instead of to every
element (see :func:`_separable_moments`); ``minmax`` is
``(min, max)`` side by side.

Only :class:`~activestorage.errors.ActiveStorageError` subclasses leave this module for bad bytes:
corrupt, truncated or oversized data is a :class:`DecodeError`, never a codec's own exception and
never an allocation larger than the request's declared (decoded) size.
"""

from __future__ import annotations

import bz2
import functools
import math
import struct
import zlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from . import fused
from . import operations as _operations
from .errors import DecodeError, InvalidArgumentError, RequestValidationError, UnsupportedError
from .request import NATIVE_BYTE_ORDER, ChunkRequest, Missing, as_dtype_value

__all__ = ["Partial", "StoredPieces", "decode", "streams", "reduce_chunk", "reduce_array",
           "missing_mask", "sum_dtype", "OPERATIONS"]

#: the per-chunk reductions (the wire's operations; see :mod:`activestorage.operations`)
OPERATIONS = _operations.WIRE_OPERATIONS

_INT64 = np.dtype(np.int64)
_UINT64 = np.dtype(np.uint64)
#: decoded sizes above this cannot be allocated anyway; refuse them before asking a codec.
_MAX_DECODED = 2**62


@dataclass(slots=True)
class Partial:
    """A chunk's contribution: ``values`` and ``counts`` of non-missing elements behind each value.

    Both have the selection's shape with the reduced axes kept as length 1 (``keepdims``); for
    ``select`` ``values`` is the selected data and ``counts`` is 1 where an element is present and 0
    where it is missing. Where ``counts`` is 0, ``min``/``max`` values are undefined. ``sum``
    values are in :func:`sum_dtype` of the request dtype, ``counts`` are int64. Both are to be
    read, not written: uniform counts may be a read-only broadcast of one number.
    """

    values: np.ndarray
    counts: np.ndarray


def sum_dtype(dtype: np.dtype) -> np.dtype:
    """The accumulator NumPy's ``sum`` uses for ``dtype`` (int64/uint64 for integers)."""
    kind = dtype.kind
    if kind == "i":
        return _INT64
    if kind == "u":
        return _UINT64
    return np.dtype(dtype)


# --------------------------------------------------------------------------- decoding

def _nbytes(buf: Any) -> int:
    if isinstance(buf, (bytes, bytearray)):
        return len(buf)
    if isinstance(buf, np.ndarray):
        return buf.nbytes
    return memoryview(buf).nbytes


try:  # ISA-L inflates the same streams 1.5-2x faster than zlib (and releases the GIL)
    from isal import igzip_lib as _igzip
    from isal import isal_zlib as _inflate_lib
except ImportError:  # pragma: no cover - isal is a dependency, but zlib is always there
    _igzip = None
    _inflate_lib = zlib
_INFLATE_ERRORS = (zlib.error, getattr(_inflate_lib, "error", zlib.error))
#: streamed inflate: compressed bytes fed, and decoded bytes taken, this many at a time
_IN_PIECE = 64 * 1024
_OUT_PIECE = 256 * 1024


def _bounded_inflate(raw: Any, expected: int, wbits: int, what: str) -> bytes:
    """Inflate at most ``expected + 1`` bytes: a stream that yields more is a bomb, one that ends
    early is truncated; either way nothing beyond the declared size is ever allocated."""
    d = _inflate_lib.decompressobj(wbits)
    try:
        out = d.decompress(raw, expected + 1)
    except _INFLATE_ERRORS as exc:
        raise DecodeError(f"{what} data is corrupt: {exc}") from exc
    if len(out) > expected or d.unconsumed_tail:
        raise DecodeError(f"{what} data expands beyond the declared {expected} bytes")
    if not d.eof:
        raise DecodeError(f"{what} data is truncated: the stream ends after {len(out)} of "
                          f"{expected} bytes")
    return out


class StoredPieces(ABC):
    """Stored (compressed) bytes a backend hands over a piece at a time instead of whole.

    A streamed inflate (see :func:`streams`) consumes each piece before asking for the next, so
    a backend reading a file can lend one small buffer over and over: memory per chunk is then
    the decoded chunk alone, not the decoded chunk plus its whole compressed form.
    """

    @property
    @abstractmethod
    def nbytes(self) -> int:
        """Total stored bytes."""

    @abstractmethod
    def pieces(self) -> Iterator[Any]:
        """The stored bytes in order; each piece may be overwritten once the next is asked for."""


def _pieces(raw: Any) -> Iterator[Any]:
    if isinstance(raw, StoredPieces):
        yield from raw.pieces()
        return
    mv = memoryview(raw).cast("B")
    for i in range(0, mv.nbytes, _IN_PIECE):
        yield mv[i:i + _IN_PIECE]


def _inflate_into(raw: Any, out: np.ndarray, gzip_ok: bool, what: str,
                  element_size: int = 1) -> np.ndarray:
    """Inflate ``raw`` (bytes-like or :class:`StoredPieces`) into ``out`` (uint8, exactly the
    declared decoded size) a piece at a time, undoing HDF5's byte shuffle of ``element_size`` on
    the way when it is above 1.

    Neither the whole decoded stream nor the whole shuffled one is ever held apart from ``out``:
    memory per chunk is ``out`` plus two small pieces. Bombs and truncation as in
    :func:`_bounded_inflate`.
    """
    expected = out.size
    feed = _pieces(raw)
    data: Any = next(feed, b"")
    if gzip_ok and len(data) < 2:  # the gzip magic may straddle tiny pieces
        head = bytes(data)
        while len(head) < 2 and (more := next(feed, None)) is not None:
            head += bytes(more)
        data = head
    flag = (_igzip.DECOMP_GZIP if gzip_ok and bytes(memoryview(data).cast("B")[:2]) == b"\x1f\x8b"
            else _igzip.DECOMP_ZLIB)
    d = _igzip.IgzipDecompressor(flag=flag)
    n = expected // element_size if element_size > 1 else 0
    whole = n * element_size if n > 1 else 0  # HDF5 leaves a single element unshuffled
    planes = out[:whole].reshape(n, element_size) if whole else None
    pos = 0
    try:
        while True:
            piece = d.decompress(data, min(_OUT_PIECE, expected - pos + 1))
            end = pos + len(piece)
            if end > expected:
                raise DecodeError(f"{what} data expands beyond the declared {expected} bytes")
            a = np.frombuffer(piece, np.uint8)
            while pos < end:  # plane by plane: byte k of element i was stored at k * n + i
                if pos >= whole:
                    out[pos:end] = a[-(end - pos):]
                    pos = end
                else:
                    k, i = divmod(pos, n)
                    m = min(end, (k + 1) * n) - pos
                    planes[i:i + m, k] = a[len(a) - (end - pos):][:m]  # type: ignore[index]
                    pos += m
            if d.eof:
                break
            data = next(feed, None) if d.needs_input else b""
            if data is None:
                raise DecodeError(f"{what} data is truncated: the stream ends after {pos} of "
                                  f"{expected} bytes")
    except (_igzip.IsalError, EOFError, ValueError) as exc:
        raise DecodeError(f"{what} data is corrupt: {exc}") from exc
    if pos != expected:
        raise DecodeError(f"{what} data is truncated: the stream ends after {pos} of "
                          f"{expected} bytes")
    return out


def _bz2(raw: Any, expected: int) -> np.ndarray:
    """bzip2 decoded piece by piece straight into the declared size (never more memory than
    that plus one piece: ``decompress`` with a large ``max_length`` would grow and copy)."""
    d = bz2.BZ2Decompressor()
    out = np.empty(expected, np.uint8)
    pos = 0
    data: Any = raw
    try:
        while True:
            piece = d.decompress(data, min(_OUT_PIECE, expected - pos + 1))
            data = b""
            end = pos + len(piece)
            if end > expected:
                raise DecodeError(f"bzip2 data expands beyond the declared {expected} bytes")
            out[pos:end] = np.frombuffer(piece, np.uint8)
            pos = end
            if d.eof or (d.needs_input and not piece):
                break
    except (OSError, ValueError, EOFError) as exc:
        raise DecodeError(f"bzip2 data is corrupt: {exc}") from exc
    if not d.eof:
        raise DecodeError(f"bzip2 data is truncated: the stream ends after {pos} of "
                          f"{expected} bytes")
    if pos != expected:
        raise DecodeError(f"bzip2 data is truncated: the stream ends after {pos} of "
                          f"{expected} bytes")
    return out


_BLOSC_HEADER = struct.Struct("<BBBBIII")


def _blosc(raw: Any, expected: int, cid: str) -> Any:
    """Blosc (1) buffers; the 16-byte header declares the sizes, checked before decoding."""
    mv = memoryview(raw).cast("B")
    if mv.nbytes < _BLOSC_HEADER.size:
        raise DecodeError(f"blosc data is truncated: {mv.nbytes} bytes is shorter than its header")
    version, _vlz, _flags, _typesize, nbytes, _blocksize, cbytes = _BLOSC_HEADER.unpack_from(mv)
    if version not in (1, 2, 3, 4, 5):
        raise DecodeError(f"{cid} data is corrupt: unknown format version {version}")
    if version > 2:
        # c-blosc2 chunk format; numcodecs' c-blosc 1 cannot read it.
        try:
            import blosc2  # type: ignore[import-not-found]
        except ImportError:
            raise UnsupportedError(
                f"{cid} data is in the Blosc2 chunk format (version {version}), which needs the "
                "'blosc2' package (pip install blosc2)") from None
        if nbytes > expected:
            raise DecodeError(f"{cid} data expands beyond the declared {expected} bytes")
        try:
            return blosc2.decompress(bytes(mv))
        except Exception as exc:  # noqa: BLE001 - blosc2 raises assorted errors on junk
            raise DecodeError(f"{cid} data is corrupt: {exc}") from exc
    if nbytes > expected:
        raise DecodeError(f"{cid} data declares {nbytes} bytes, beyond the declared {expected}")
    if not _BLOSC_HEADER.size <= cbytes <= mv.nbytes:
        raise DecodeError(f"{cid} data is truncated or corrupt: its header declares {cbytes} "
                          f"compressed bytes but {mv.nbytes} are stored")
    from numcodecs import blosc

    try:
        return blosc.decompress(mv[:cbytes])
    except Exception as exc:  # noqa: BLE001 - numcodecs raises RuntimeError on junk
        raise DecodeError(f"{cid} data is corrupt: {exc}") from exc


_ZSTD_MAGIC = 0xFD2FB528


def _zstd_frame_sizes(mv: memoryview) -> list[int | None]:
    """The declared content size of each zstd frame in ``mv`` (None where a frame omits it).

    Walks frame and block headers only; raises DecodeError on a malformed layout.
    """
    sizes: list[int | None] = []
    pos, end = 0, mv.nbytes
    while pos < end:
        if end - pos < 5:
            raise DecodeError("zstd data is truncated inside a frame header")
        magic = int.from_bytes(mv[pos:pos + 4], "little")
        if 0x184D2A50 <= magic <= 0x184D2A5F:  # skippable frame
            if end - pos < 8:
                raise DecodeError("zstd data is truncated inside a frame header")
            length = int.from_bytes(mv[pos + 4:pos + 8], "little")
            pos += 8 + length
            continue
        if magic != _ZSTD_MAGIC:
            raise DecodeError("zstd data is corrupt: bad frame magic number")
        fhd = mv[pos + 4]
        fcs_flag, single, checksum, dict_flag = fhd >> 6, (fhd >> 5) & 1, (fhd >> 2) & 1, fhd & 3
        pos += 5 + (0 if single else 1) + (0, 1, 2, 4)[dict_flag]
        fcs_len = (1 if single else 0, 2, 4, 8)[fcs_flag]
        if pos + fcs_len > end:
            raise DecodeError("zstd data is truncated inside a frame header")
        size: int | None = None
        if fcs_len:
            size = int.from_bytes(mv[pos:pos + fcs_len], "little") + (256 if fcs_len == 2 else 0)
        pos += fcs_len
        while True:
            if pos + 3 > end:
                raise DecodeError("zstd data is truncated inside a block header")
            header = int.from_bytes(mv[pos:pos + 3], "little")
            last, btype, bsize = header & 1, (header >> 1) & 3, header >> 3
            if btype == 3:
                raise DecodeError("zstd data is corrupt: reserved block type")
            pos += 3 + (1 if btype == 1 else bsize)
            if last:
                break
        pos += 4 * checksum
        if pos > end:
            raise DecodeError("zstd data is truncated inside a block")
        sizes.append(size)
    return sizes


def _zstd(raw: Any, expected: int) -> np.ndarray:
    """zstd frames, decoded into a buffer of exactly ``expected`` bytes (no larger output exists)."""
    from numcodecs import Zstd

    mv = memoryview(raw).cast("B")
    sizes = _zstd_frame_sizes(mv)
    if not sizes:
        raise DecodeError("zstd data is empty")
    if all(s is not None for s in sizes):
        total = sum(sizes)  # type: ignore[arg-type]
        if total != expected:
            raise DecodeError(f"zstd data declares {total} bytes but the chunk needs {expected}")
    elif sizes[0] is not None:
        # numcodecs would trust the first frame's size and not check the total; nobody writes this.
        raise UnsupportedError("zstd data mixes frames with and without a recorded content size")
    out = np.empty(expected, np.uint8)
    try:
        Zstd().decode(mv, out=out)  # bounded by out; checks sizes of streamed frames
    except Exception as exc:  # noqa: BLE001 - numcodecs raises RuntimeError/ValueError on junk
        raise DecodeError(f"zstd data is corrupt or does not decode to {expected} bytes: "
                          f"{exc}") from exc
    return out


def _lz4(raw: Any, expected: int) -> Any:
    """numcodecs' LZ4 framing: a 4-byte little-endian decoded size, then one LZ4 block."""
    from numcodecs import LZ4

    mv = memoryview(raw).cast("B")
    if mv.nbytes < 4:
        raise DecodeError("lz4 data is truncated: shorter than its 4-byte size header")
    declared = int.from_bytes(mv[:4], "little")
    if declared != expected:
        raise DecodeError(f"lz4 data declares {declared} bytes but the chunk needs {expected}")
    try:
        return LZ4().decode(mv)
    except Exception as exc:  # noqa: BLE001 - numcodecs raises RuntimeError on junk
        raise DecodeError(f"lz4 data is corrupt: {exc}") from exc


def _decompress(raw: Any, comp: Mapping[str, Any], expected: int) -> Any:
    """Undo ``comp``; never produce more than ``expected`` bytes (a decompression bomb is refused)."""
    cid = comp.get("id")
    if cid == "zlib":
        return _bounded_inflate(raw, expected, zlib.MAX_WBITS, "zlib")
    if cid == "gzip":
        # Reductionist clients send HDF5 deflate (zlib-wrapped) as "gzip" too: accept either header.
        return _bounded_inflate(raw, expected, zlib.MAX_WBITS | 32, "gzip")
    if cid in ("bz2", "bzip2"):
        return _bz2(raw, expected)
    if cid in ("blosc", "blosc2"):
        return _blosc(raw, expected, cid)
    if cid == "zstd":
        return _zstd(raw, expected)
    if cid == "lz4":
        return _lz4(raw, expected)
    raise UnsupportedError(f"compression {cid!r} is not supported")


def _check_fletcher32(buf: Any, where: str) -> memoryview:
    """Verify and strip an HDF5 Fletcher-32 checksum (the last 4 bytes, little-endian)."""
    from numcodecs import Fletcher32

    n = _nbytes(buf)
    if n < 4:
        raise DecodeError(f"Fletcher-32 checksum missing ({where}): only {n} bytes")
    try:
        return memoryview(Fletcher32().decode(buf)).cast("B")
    except Exception as exc:  # noqa: BLE001 - numcodecs raises RuntimeError on mismatch
        raise DecodeError(f"Fletcher-32 checksum failed ({where}): {exc}") from exc


def _unshuffle(buf: Any, element_size: int, scratch: np.ndarray | None = None) -> Any:
    """Undo HDF5's byte shuffle: bytes of each element were grouped by position.

    As in HDF5 (H5Zshuffle.c), trailing bytes that do not make a whole element were copied as they
    are, and a buffer of fewer than two elements was left alone. The result goes into
    ``scratch`` when it is large enough and not ``buf`` itself.
    """
    n = _nbytes(buf) // element_size if element_size > 1 else 0
    if n <= 1:
        return buf
    a = np.frombuffer(buf, np.uint8)
    whole = n * element_size
    if scratch is not None and scratch.size >= a.size and not np.may_share_memory(a, scratch):
        out = scratch[:a.size]  # memory already touched and in cache: no page faults
    else:
        out = np.empty(a.size, np.uint8)
    elements = out[:whole].reshape(n, element_size)
    # One contiguous plane per byte position: ~10x faster than one transposing copy, and
    # numpy releases the GIL for each, so decoding threads run in parallel.
    for k in range(element_size):
        elements[:, k] = a[k * n:(k + 1) * n]
    if whole < a.size:
        out[whole:] = a[whole:]
    return out


def _streamed(compression: Mapping[str, Any] | None,
              inner: Sequence[Mapping[str, Any]]) -> bool:
    """The common HDF5 case, deflate with or without shuffle and nothing else."""
    if _igzip is None or (compression or {}).get("id") not in ("zlib", "gzip") or len(inner) > 1:
        return False
    return not inner or inner[0].get("id") in ("shuffle", "shuffle_simd")


def streams(req: ChunkRequest) -> bool:
    """Whether :func:`decode` inflates ``req``'s stored bytes a piece at a time, so a backend may
    pass them as :class:`StoredPieces` rather than read them whole."""
    return _streamed(req.compression, req.filters)


def _stream_inflate(raw: Any, req: ChunkRequest, inner: list[Mapping[str, Any]], expected: int,
                    scratch: np.ndarray | None) -> np.ndarray | None:
    """A :func:`_streamed` pipeline inflated straight into ``scratch`` (or a fresh buffer) and
    unshuffled on the way; None for any other pipeline."""
    if not _streamed(req.compression, inner):
        return None
    cid = req.compression["id"]  # type: ignore[index]
    es = int(inner[0].get("element_size", req.dtype.itemsize)) if inner else 1
    if scratch is not None and scratch.size >= expected and (
            isinstance(raw, StoredPieces)
            or not np.may_share_memory(np.frombuffer(raw, np.uint8), scratch)):
        out = scratch[:expected]  # memory already touched and in cache: no page faults
    else:
        out = np.empty(expected, np.uint8)
    return _inflate_into(raw, out, cid == "gzip", cid, es)


def _undo_codecs(raw: Any, req: ChunkRequest, expected: int,
                 scratch: np.ndarray | None = None) -> Any:
    """Checksum, decompression and filters of ``req`` undone, in that order."""
    buf = raw
    filters = req.filters
    inner = []
    for f in filters:
        if f.get("id") == "fletcher32" and f.get("outer"):
            # HDF5 runs Fletcher-32 last on write, so it covers the stored (compressed) bytes.
            buf = _check_fletcher32(buf, "stored bytes")
        else:
            inner.append(f)
    if req.compression is not None:
        streamed = _stream_inflate(buf, req, inner, expected, scratch)
        if streamed is not None:
            return streamed
        extra = 4 * sum(1 for f in inner if f.get("id") == "fletcher32")
        buf = _decompress(buf, req.compression, expected + extra)
    for f in reversed(inner):
        fid = f.get("id")
        if fid in ("shuffle", "shuffle_simd"):
            es = f.get("element_size", req.dtype.itemsize)
            buf = _unshuffle(buf, int(es), scratch)
        elif fid == "fletcher32":
            buf = _check_fletcher32(buf, "decoded bytes")
        else:
            raise UnsupportedError(f"filter {fid!r} is not supported")
    return buf


def scratch_bytes(requests: Iterable[ChunkRequest]) -> int:
    """Size of a :func:`decode` scratch buffer that fits any of ``requests`` (0: none has codecs,
    so none would use one)."""
    return max((r.nbytes for r in requests if r.compression is not None or r.filters), default=0)


def decode(raw: Any, req: ChunkRequest, scratch: np.ndarray | None = None) -> np.ndarray:
    """Decode ``raw`` (the stored bytes) into a 1-D array of the request's dtype in native order.

    Order: an outer Fletcher-32 checksum (HDF5 puts it after compression) is verified on the stored
    bytes; compression is undone; the other filters are undone in reverse write order. The result
    may be a read-only view of ``raw``, or a view of ``scratch`` (a reusable uint8 buffer a caller
    keeps per thread, so decoding does not fault in fresh memory for every chunk). ``raw`` may be
    :class:`StoredPieces` where :func:`streams` says so.
    """
    dtype = req.dtype
    if dtype.kind not in "iuf":
        raise UnsupportedError(f"dtype {dtype} is not supported (integers and floats only)")
    expected = math.prod(req.shape) * dtype.itemsize
    buf = raw
    if req.filters or req.compression is not None:
        if expected > _MAX_DECODED:
            raise DecodeError(f"shape {list(req.shape)} is too large to decode")
        buf = _undo_codecs(raw, req, expected, scratch)
    nbytes = _nbytes(buf)
    if nbytes != expected:
        raise DecodeError(
            f"chunk decodes to {nbytes} bytes but shape {list(req.shape)} of {dtype.name} "
            f"needs {expected}")
    if req.byte_order == NATIVE_BYTE_ORDER or dtype.itemsize == 1:
        return np.frombuffer(buf, dtype)
    return np.frombuffer(buf, dtype.newbyteorder()).byteswap().view(dtype)


# ---------------------------------------------------------------------- missing data

@dataclass(frozen=True, slots=True)
class _Mask:
    """A :class:`Missing` resolved against one dtype: what :func:`missing_mask` compares with."""

    values: tuple[Any, ...]
    nan: bool
    vmin: Any
    vmax: Any


#: moved to :mod:`activestorage.request` (the SDK's wire encoding converts values the same way)
_as_dtype = as_dtype_value


def _resolve(missing: Missing, dtype: np.dtype) -> _Mask | None:
    values = []
    nan = False
    for v in missing.values:
        c = _as_dtype(v, dtype)
        if c is None:
            continue
        if dtype.kind == "f" and np.isnan(c):
            nan = True
        elif c not in values:
            values.append(c)
    vmin = None if missing.valid_min is None else _as_dtype(missing.valid_min, dtype)
    vmax = None if missing.valid_max is None else _as_dtype(missing.valid_max, dtype)
    if not values and not nan and vmin is None and vmax is None:
        return None
    return _Mask(tuple(values), nan, vmin, vmax)


@functools.lru_cache(maxsize=256)
def _resolve_cached(missing: Missing, dtype: np.dtype) -> _Mask | None:
    return _resolve(missing, dtype)


def _resolved(missing: Missing | None, dtype: np.dtype) -> _Mask | None:
    """``missing`` converted to ``dtype`` values (None when nothing of that dtype can be missing)."""
    if missing is None or missing.is_empty():
        return None
    try:
        return _resolve_cached(missing, dtype)
    except TypeError:  # unhashable values: resolve without the cache
        return _resolve(missing, dtype)


def _mask_of(x: np.ndarray, m: _Mask) -> np.ndarray:
    bad: np.ndarray | None = None
    if len(m.values) > 8:
        bad = np.asarray(np.isin(x, np.array(m.values, x.dtype)))
    else:
        for v in m.values:
            bad = np.asarray(x == v) if bad is None else np.logical_or(bad, x == v, out=bad)
    for test in ((np.isnan(x) if m.nan else None),
                 (None if m.vmin is None else x < m.vmin),
                 (None if m.vmax is None else x > m.vmax)):
        if test is not None:  # np.asarray: comparisons on 0-d arrays give scalars, not arrays
            bad = np.asarray(test) if bad is None else np.logical_or(bad, test, out=bad)
    assert bad is not None  # a resolved _Mask always tests something
    return bad


def missing_mask(x: np.ndarray, missing: Missing | None) -> np.ndarray | None:
    """Boolean array, True where ``x`` is missing; None when nothing can be missing.

    The rules of netCDF4-python's masking: elements equal to one of ``missing.values`` (a NaN
    value: NaN elements), below ``valid_min`` or above ``valid_max`` are missing, each value first
    converted to ``x.dtype`` (see :func:`_as_dtype`). NaN elements are never outside a valid range.
    """
    m = _resolved(missing, x.dtype)
    return None if m is None else _mask_of(x, m)


def _spec_of(m: _Mask | None) -> tuple[Any, ...]:
    """A resolved mask as the arguments of :mod:`activestorage.fused`'s functions."""
    return () if m is None else (m.values, m.nan, m.vmin, m.vmax)


def _fused(x: np.ndarray, m: _Mask | None, want_sum: bool) -> tuple[Any, int] | None:
    """One-pass ``(sum, count)`` of the elements of ``x`` not missing (None: no fast path)."""
    return fused.sum_count(x, *_spec_of(m), want_sum=want_sum)


def _full_partial(x: np.ndarray, operation: str, m: _Mask | None,
                  out_shape: tuple[int, ...]) -> Partial | None:
    """``sum``/``count`` of every element of ``x`` in one pass, shaped ``out_shape`` (all 1s);
    None when there is no fast path."""
    got = _fused(x, m, operation == "sum")
    if got is None:
        return None
    total, n = got
    counts = _filled(out_shape, n, _INT64)
    if operation == "count":
        return Partial(counts.copy(), counts)
    with np.errstate(over="ignore"):  # a float64 sum beyond float32's range is inf, as in NumPy
        return Partial(_filled(out_shape, total, sum_dtype(x.dtype)), counts)


# -------------------------------------------------------------------------- reduction

def _check_axis(axis: tuple[int, ...], ndim: int) -> None:
    distinct = set(axis)
    if len(distinct) != len(axis) or (distinct and (min(distinct) < 0 or max(distinct) >= ndim)):
        raise RequestValidationError(
            "axis", f"{list(axis)} is not a set of distinct axes of a {ndim}-d array")


def reduce_array(x: np.ndarray, operation: str, axis: tuple[int, ...],
                 missing: Missing | None = None, weights: Any = None) -> Partial:
    """Reduce an already decoded and selected array (the part of the kernel with no bytes).

    ``axis`` lists the (non-negative) axes reduced; missing elements (see :func:`missing_mask`) are
    left out of every result and of the counts. ``weights`` (``moments`` only; see
    :attr:`ChunkRequest.weights <activestorage.request.ChunkRequest.weights>`) are over ``x``;
    a missing element's weight is dropped, as ``np.ma.average`` does.
    """
    op = _operations.OPERATIONS.get(operation)
    if op is None or op.partial != operation:
        raise RequestValidationError("operation", f"unknown operation {operation!r}; expected "
                                     f"one of {', '.join(_operations.WIRE_OPERATIONS)}")
    if weights is not None and operation != "moments":
        raise RequestValidationError("weights", f"operation {operation!r} takes no weights "
                                     "(only moments does)")
    axis = tuple(axis)
    _check_axis(axis, x.ndim)
    m = _resolved(missing, x.dtype)
    # every kept axis of length 1 (one time step of a (1, lat, lon) chunk): a whole reduction
    whole = len(axis) == x.ndim or all(n == 1 for i, n in enumerate(x.shape) if i not in axis)
    if operation in ("sum", "count"):
        p = (_full_partial(x, operation, m, (1,) * x.ndim) if whole
             else _axis_partial(x, operation, axis, m))
        if p is not None:
            return p
    elif operation == "moments" and weights is None:
        p = (_full_moments(x, m) if whole
             else _trailing_moments(x, axis, m) if axis else None)
        if p is not None:
            return p
    elif operation == "moments":
        p = _separable_moments(x, axis, missing, m, _weights_over(x.shape, weights))
        if p is not None:
            return p
    bad = None
    if m is not None:
        # one read-only pass usually shows nothing is missing: no mask to build and test
        known = _fused(x, m, want_sum=False)
        if known is None or known[1] < x.size:
            bad = _mask_of(x, m)
            if known is None and not bad.any():
                bad = None
    if operation == "select":
        counts = (np.ones(x.shape, np.int64) if bad is None
                  else np.logical_not(bad).astype(np.int64))
        # a copy: x may be a view of the caller's (possibly reused or memory-mapped) buffer
        return Partial(np.array(x, order="C"), counts)

    out_shape = tuple(1 if i in axis else n for i, n in enumerate(x.shape))
    if bad is None:
        valid = None
        counts = _uniform_counts(out_shape, math.prod(x.shape[i] for i in axis))
    else:
        valid = np.logical_not(bad)
        if len(axis) == x.ndim:  # a plain count is ~10x faster than one along axes
            counts = _filled(out_shape, np.count_nonzero(valid), _INT64)
        else:
            counts = np.add.reduce(valid, axis=axis, dtype=_INT64, keepdims=True)

    if operation == "count":
        return Partial(np.array(counts), counts)
    if operation == "moments":
        return Partial(_moments(x, axis, valid, _weights_over(x.shape, weights), out_shape),
                       counts)
    if operation == "minmax":
        return Partial(_minmax(x, axis, valid, out_shape), counts)
    if operation == "sum":
        acc = sum_dtype(x.dtype)
        if valid is None:
            v = np.add.reduce(x, axis=axis, dtype=acc, keepdims=True)
        else:
            v = np.add.reduce(x, axis=axis, dtype=acc, keepdims=True, where=valid)
        return Partial(np.asarray(v, dtype=acc).reshape(out_shape), counts)

    # min, max and any other operation the table reduces with a ufunc
    ufunc = op.ufunc
    if ufunc is None:
        raise UnsupportedError(f"operation {operation!r} has no per-chunk reduction (a ufunc)")
    # min/max keep the dtype; a ufunc with an identity (a product ...) accumulates like a sum
    adt = x.dtype if ufunc.identity is None else op.accumulator_dtype(x.dtype)
    if valid is None and x.size:
        v = ufunc.reduce(x, axis=axis, keepdims=True, dtype=adt)
    else:  # an empty reduced axis or masked elements: start from the identity-like bound
        v = ufunc.reduce(x, axis=axis, keepdims=True, initial=op.initial(x.dtype), dtype=adt,
                         where=True if valid is None else valid)
    return Partial(np.asarray(v, dtype=adt).reshape(out_shape), counts)


_F8 = np.dtype(np.float64)


def _weights_over(shape: tuple[int, ...], weights: Any) -> np.ndarray | None:
    """``weights`` (separable dict or N-D array) as one float64 array broadcastable to
    ``shape``, checked: right lengths, finite and not negative. None: unit weights."""
    if weights is None:
        return None
    ndim = len(shape)
    if isinstance(weights, Mapping):
        w: np.ndarray | None = None
        for ax, wa in weights.items():
            if wa is None:
                continue
            ax = int(ax)
            if not 0 <= ax < ndim:
                raise RequestValidationError("weights", f"axis {ax} is not an axis of a "
                                             f"{ndim}-d chunk")
            wa = np.asarray(wa, _F8)
            if wa.shape != (shape[ax],):
                raise RequestValidationError(
                    "weights", f"axis {ax} has {shape[ax]} selected elements but its weights "
                    f"have shape {list(wa.shape)}")
            _check_weights(wa, f"axis {ax}")
            wa = wa.reshape(tuple(shape[ax] if i == ax else 1 for i in range(ndim)))
            w = wa if w is None else w * wa
        return w
    w = np.asarray(weights, _F8)
    try:
        ok = w.ndim <= ndim and np.broadcast_shapes(w.shape, shape) == tuple(shape)
    except ValueError:
        ok = False
    if not ok:
        raise RequestValidationError("weights", f"shape {list(w.shape)} does not broadcast to "
                                     f"the selected region's shape {list(shape)}")
    _check_weights(w, "N-D")
    return w


def _check_weights(w: np.ndarray, what: str) -> None:
    if w.size and not (np.isfinite(w).all() and w.min() >= 0):
        raise InvalidArgumentError(f"weights ({what}) must be finite and not negative; "
                                   f"got {w[~(np.isfinite(w) & (w >= 0))].flat[0]!r}")


#: elements per block of the moments passes: float64 temporaries of this size stay in cache
#: and are reused, where whole-chunk ones would be fresh memory faulted in for every chunk
_BLOCK = 1 << 16


def _blocks(shape: tuple[int, ...]) -> list[tuple[slice, ...]]:
    """``shape`` cut into blocks of about :data:`_BLOCK` elements (index tuples of slices)."""
    ndim = len(shape)
    inner = 1
    for b in range(ndim - 1, -1, -1):
        if inner * shape[b] > _BLOCK:
            step = max(1, _BLOCK // inner)
            tail = (slice(None),) * (ndim - b - 1)
            return [tuple(slice(k, k + 1) for k in outer) + (slice(a, a + step),) + tail
                    for outer in np.ndindex(*shape[:b]) for a in range(0, shape[b], step)]
        inner *= shape[b]
    return [(slice(None),) * ndim]


def _moments(x: np.ndarray, axis: tuple[int, ...], valid: np.ndarray | None,
             w: np.ndarray | None, out_shape: tuple[int, ...]) -> np.ndarray:
    """Per output element ``(sw, mean, m2, sw2)`` over ``axis`` in float64, two passes: the
    (weighted) mean first, then the (weighted) squared deviations from it, which keeps every
    digit the one-pass sum of squares loses. Missing elements have weight 0; where nothing has
    weight every field is 0. Block by block (see :data:`_BLOCK`): with the mean fixed, the
    second pass's sums simply add up over blocks."""
    blocks = _blocks(x.shape)
    reduced = set(axis)
    outs = [tuple(slice(0, 1) if i in reduced else b for i, b in enumerate(bi)) for bi in blocks]
    wfull = None if w is None else np.broadcast_to(w, x.shape)

    def weights_of(bi: tuple[slice, ...]) -> np.ndarray:
        wb = wfull[bi]  # type: ignore[index]
        return wb if valid is None else np.where(valid[bi], wb, 0.0)

    def where_of(bi: tuple[slice, ...]) -> Any:
        return True if valid is None else valid[bi]

    zeros = functools.partial(np.zeros, out_shape, _F8)
    if w is None:
        if valid is None:
            sw = np.full(out_shape, math.prod(x.shape[i] for i in axis), _F8)
        else:
            sw = np.add.reduce(valid, axis=axis, dtype=_F8, keepdims=True)
        got = _fused(x, None, True) if valid is None and len(axis) == x.ndim else None
        if got is not None:  # one compiled pass, accumulated in float64
            s = np.full(out_shape, got[0], _F8)
        else:
            s = np.add.reduce(x, axis=axis, dtype=_F8, keepdims=True,
                              where=True if valid is None else valid)
        sw2 = sw
    else:
        sw, s, sw2 = zeros(), zeros(), zeros()
        if valid is None:  # the weights' sums from the (small, broadcast) weights alone
            w = np.asarray(w, _F8).reshape((1,) * (x.ndim - np.ndim(w)) + np.shape(w))
            own = tuple(i for i in axis if w.shape[i] != 1)  # an empty axis is its own too
            times = math.prod(x.shape[i] for i in axis if w.shape[i] == 1)
            sw[...] = np.add.reduce(w, axis=own, keepdims=True) * times
            sw2[...] = np.add.reduce(w * w, axis=own, keepdims=True) * times
        for bi, oi in zip(blocks, outs):
            wb = weights_of(bi)
            if valid is not None:
                sw[oi] += np.add.reduce(wb, axis=axis, keepdims=True)
                sw2[oi] += np.add.reduce(np.square(wb), axis=axis, keepdims=True)
            s[oi] += np.add.reduce(np.multiply(wb, x[bi], dtype=_F8), axis=axis, keepdims=True,
                                   where=where_of(bi))  # where: NaN*0 is NaN
    mean = np.divide(s, sw, out=zeros(), where=sw > 0)
    # the corrected two-pass algorithm (Chan, Golub & LeVeque): the deviations' own sum
    # removes what rounding left in the first pass's mean, from m2 and from the mean
    c, m2 = zeros(), zeros()
    for bi, oi in zip(blocks, outs):
        d = np.subtract(x[bi], mean[oi], dtype=_F8)
        wd = d if w is None else np.multiply(d, weights_of(bi))
        where = where_of(bi)
        c[oi] += np.add.reduce(wd, axis=axis, keepdims=True, where=where)
        np.multiply(d, wd, out=d)
        m2[oi] += np.add.reduce(d, axis=axis, keepdims=True, where=where)
    shift = np.divide(c, sw, out=zeros(), where=sw > 0)
    mean += shift
    m2 -= c * shift
    np.maximum(m2, 0.0, out=m2)  # the correction never makes a sum of squares negative
    out = np.empty(out_shape + (4,), _F8)
    out[..., 0] = sw
    out[..., 1] = mean
    out[..., 2] = m2
    out[..., 3] = sw2
    return out


#: elements (about) of the spread sample whose mean is the shift of :func:`_full_moments`
_SHIFT_SAMPLE = 256
#: largest Σd²/m2 (d = x - shift) :func:`_full_moments` accepts from its one pass: the error of
#: m2 = Σd² - (Σd)²/n is at most about 3·γ·Σd² (γ: the relative error of the float64 sums), so
#: at most 3·γ·4 of m2, against about γ for a pass around the exact mean
_MAX_CONDITION = 4.0


def _shift_of(x: np.ndarray, spec: tuple[Any, ...]) -> float:
    """A cheap estimate of the mean of the elements of ``x`` not missing: the mean of a
    strided sample of about :data:`_SHIFT_SAMPLE` of them, spread over every axis (so a trend
    along any axis is seen), read in place. 0 when the sample has nothing."""
    per = max(2, math.ceil(_SHIFT_SAMPLE ** (1 / x.ndim)))
    sample = x[tuple(slice(None, None, max(1, n // per)) for n in x.shape)]
    got = fused.sum_count(sample, *spec, want_sum=True)
    if got is None or not got[1]:
        return 0.0
    shift = float(got[0]) / got[1]
    return shift if math.isfinite(shift) else 0.0


def _full_moments(x: np.ndarray, m: _Mask | None) -> Partial | None:
    """Unweighted moments of every element of ``x`` in compiled passes and no mask (None: no
    fast path): :func:`_moments_of` as a partial."""
    if x.dtype.kind != "f" and x.dtype.itemsize == 8:
        return None  # 64-bit integer sums wrap in the compiled pass; NumPy's float64 does not
    got = _moments_of(x, _spec_of(m))
    if got is None:
        return None
    n, mean, m2 = got
    out_shape = (1,) * x.ndim
    values = np.array([float(n), mean, m2, float(n)]).reshape(out_shape + (4,))
    return Partial(values, _filled(out_shape, n, _INT64))


def _moments_of(x: np.ndarray, spec: tuple[Any, ...],
                shift: float | None = None) -> tuple[int, float, float] | None:
    """``(count, mean, m2)`` of the elements of ``x`` not missing (``spec`` as
    :func:`_spec_of`), in compiled passes; None when they do not apply. All 0 when none is.

    Usually one pass: Σd and Σd² of d = x - K in float64, K the mean of a small spread sample
    (:func:`_shift_of`) or the given ``shift`` (a neighbouring cell's mean), and m2 = Σd² - (Σd)²/n. That is the corrected two-pass formula with K
    in place of the computed mean; it keeps every digit while K is close to the mean compared
    with the spread (Σd²/m2 = 1 + n(mean - K)²/m2 small; a sample of present elements is part
    of the data, so the ratio stays below 1 + n/samples however the data lie). When it exceeds
    :data:`_MAX_CONDITION` (adversarial data: a sample far from the mean, or a constant chunk
    whose m2 is all rounding), or anything is not finite, the two exact passes run instead:
    the masked sum and count, then the deviations from their mean."""
    if x.size:
        if shift is None or not math.isfinite(shift):
            shift = _shift_of(x, spec)
        dev = fused.deviations(x, shift, *spec)
        if dev is None:
            return None
        c, q, n = dev
        if not n:
            return 0, 0.0, 0.0
        m2 = q - c * (c / n)
        if math.isfinite(q) and math.isfinite(c) and q <= _MAX_CONDITION * m2 or q == 0.0:
            return n, shift + c / n, max(m2, 0.0)
    got = fused.sum_count(x, *spec, want_sum=True)
    if got is None:
        return None
    total, n = got
    if not n:
        return 0, 0.0, 0.0
    mean = float(total) / n
    dev = fused.deviations(x, mean, *spec)
    if dev is None:
        return None
    c, m2, _ = dev
    shift = c / n  # the corrected two-pass algorithm, as _moments
    return n, mean + shift, max(m2 - c * shift, 0.0)


#: most output cells :func:`_trailing_moments` reduces one by one (beyond, NumPy's passes win)
_MAX_CELLS = 1024


def _trailing_moments(x: np.ndarray, axis: tuple[int, ...], m: _Mask | None) -> Partial | None:
    """Unweighted moments along the trailing axes (a per-time-step statistic of a
    (time, lat, lon) chunk): :func:`_moments_of` of each cell's block around the previous
    cell's mean (time steps of a field differ less than its points; if not, the guard there
    takes the exact passes), the first around a sample's (None: no fast path)."""
    k = x.ndim - len(axis)
    if axis != tuple(range(k, x.ndim)) or not fused.COMPILED:
        return None
    if x.dtype.kind != "f" and x.dtype.itemsize == 8:
        return None  # as _full_moments
    kept = x.shape[:k]
    if math.prod(kept) > _MAX_CELLS:
        return None
    spec = _spec_of(m)
    out_shape = kept + (1,) * len(axis)
    values = np.empty(out_shape + (4,), _F8)
    counts = np.empty(out_shape, _INT64)
    cells = values.reshape(-1, 4)
    flat = counts.reshape(-1)
    shift = None
    for i, idx in enumerate(np.ndindex(*kept)):
        got = _moments_of(x[idx], spec, shift)
        if got is None:
            return None
        n, mean, m2 = got
        if n:
            shift = mean
        cells[i] = (n, mean, m2, n)
        flat[i] = n
    return Partial(values, counts)


def _separable_moments(x: np.ndarray, axis: tuple[int, ...], missing: Missing | None,
                       m: _Mask | None, w: np.ndarray | None) -> Partial | None:
    """Weighted moments over ``axis`` when the weights ``w`` (from :func:`_weights_over`) are
    constant along some reduced axes U (cos-lat weights of a mean over lat and lon: U = lon);
    None when they vary along every reduced axis (the general :func:`_moments` path then).

    The unweighted moments ``(n_g, mean_g, m2_g)`` of every group g (one per element of the
    other axes) are first reduced over U, dropping missing elements: in one compiled call
    (:func:`activestorage.fused.moments_cells`) when U are the trailing axes, else by
    :func:`reduce_array`'s unweighted path; the groups are then merged exactly, each with its weight w_g:
    ``sw = Σ w_g n_g``, ``mean = Σ w_g n_g mean_g / sw``, ``m2 = Σ w_g (m2_g + n_g (mean_g -
    mean)²)``, ``sw2 = Σ w_g² n_g`` (Chan et al.'s pairwise merge with weighted groups). Per
    element the work is then that of an unweighted reduction; the weights touch only the
    groups.
    """
    if w is None:
        return None
    w = w.reshape((1,) * (x.ndim - w.ndim) + w.shape)
    # U: reduced axes along which the weights do not vary (length 1 in w); W: the other ones
    flat = tuple(i for i in axis if w.shape[i] == 1)
    if not flat:
        return None
    own = tuple(i for i in axis if w.shape[i] != 1)
    nkept = x.ndim - len(flat)
    got = (fused.moments_cells(x, nkept, *_spec_of(m)) if flat == tuple(range(nkept, x.ndim))
           else None)
    if got is not None:
        cells, gcounts = got
        g_shape = x.shape[:nkept] + (1,) * len(flat)
        gv = cells.reshape(g_shape + (3,))
        gcounts = gcounts.reshape(g_shape)
    else:  # unweighted: (n, mean, m2, n) per group
        g = reduce_array(x, "moments", flat, missing)
        gv, gcounts = g.values, g.counts
    n = gv[..., 0]
    mean_g = gv[..., 1]
    m2_g = gv[..., 2]
    out_shape = tuple(1 if i in axis else k for i, k in enumerate(x.shape))
    counts = (np.add.reduce(gcounts, axis=own, dtype=_INT64, keepdims=True) if own
              else np.array(gcounts, _INT64)).reshape(out_shape)
    wn = np.multiply(w, n)  # each group's weight times its count (0 for an empty group)
    if not own:  # one group per output element: its own mean and scaled m2, exactly
        out = np.empty(out_shape + (4,), _F8)
        out[..., 0] = wn
        out[..., 1] = np.where(wn > 0, mean_g, 0.0)
        out[..., 2] = np.where(wn > 0, w * m2_g, 0.0)
        out[..., 3] = wn * w
        return Partial(out, counts)
    sw = np.add.reduce(wn, axis=own, keepdims=True) if own else wn
    sw2 = np.add.reduce(wn * w, axis=own, keepdims=True) if own else wn * w
    zeros = functools.partial(np.zeros, sw.shape, _F8)
    positive = sw > 0
    s = np.add.reduce(wn * mean_g, axis=own, keepdims=True) if own else wn * mean_g
    mean = np.divide(s, sw, out=zeros(), where=positive)
    # the deviations of the groups' means from the merged mean, corrected by their own
    # (weighted) sum as the two-pass path does
    d = mean_g - mean
    wd = wn * d
    c = np.add.reduce(wd, axis=own, keepdims=True) if own else wd
    m2 = np.add.reduce(w * m2_g + wd * d, axis=own, keepdims=True) if own else w * m2_g + wd * d
    shift = np.divide(c, sw, out=zeros(), where=positive)
    mean = mean + shift
    m2 = np.where(positive, np.maximum(m2 - c * shift, 0.0), 0.0)
    out = np.empty(out_shape + (4,), _F8)
    out[..., 0] = sw.reshape(out_shape)
    out[..., 1] = mean.reshape(out_shape)
    out[..., 2] = m2.reshape(out_shape)
    out[..., 3] = sw2.reshape(out_shape)
    return Partial(out, counts)


def _minmax(x: np.ndarray, axis: tuple[int, ...], valid: np.ndarray | None,
            out_shape: tuple[int, ...]) -> np.ndarray:
    """Per output element ``(min, max)`` over ``axis`` in ``x``'s dtype (undefined where nothing
    is present: the dtype's far bounds)."""
    out = np.empty(out_shape + (2,), x.dtype)
    for k, ufunc in enumerate((np.minimum, np.maximum)):
        if valid is None and x.size:
            v = ufunc.reduce(x, axis=axis, keepdims=True)
        else:
            v = ufunc.reduce(x, axis=axis, keepdims=True,
                             initial=_operations.initial(ufunc, x.dtype),
                             where=True if valid is None else valid)
        out[..., k] = v
    return out


def _uniform_counts(shape: tuple[int, ...], n: int) -> np.ndarray:
    """Counts that are ``n`` everywhere: a read-only broadcast of one number when large (no
    fresh memory to fault in and fill per chunk), a small array otherwise (broadcast_to costs
    a few microseconds)."""
    if math.prod(shape) > 4096:
        return np.broadcast_to(_INT64.type(n), shape)
    return _filled(shape, n, _INT64)


def _filled(shape: tuple[int, ...], value: Any, dtype: np.dtype) -> np.ndarray:
    out = np.empty(shape, dtype)
    out.fill(value)  # cheaper than np.full for the tiny arrays of a full reduction
    return out


def _axis_partial(x: np.ndarray, operation: str, axis: tuple[int, ...],
                  m: _Mask | None) -> Partial | None:
    """``sum``/``count`` along ``axis`` (not all axes) in one pass (None: no fast path)."""
    got = fused.sum_count_along(x, axis, *_spec_of(m), want_sum=operation == "sum")
    if got is None:
        return None
    sums, miss = got
    out_shape = tuple(1 if i in axis else n for i, n in enumerate(x.shape))
    behind = math.prod(x.shape[i] for i in axis)
    counts = (_uniform_counts(out_shape, behind) if miss is None  # in place: no second array
              else np.subtract(behind, miss, out=miss).reshape(out_shape))
    if operation == "count":
        return Partial(np.array(counts), counts)
    return Partial(sums.reshape(out_shape), counts)


def _reduce_all(flat: np.ndarray, operation: str, ndim: int) -> Partial:
    """Fast path: every element of a contiguous chunk, nothing missing."""
    out_shape = (1,) * ndim
    counts = _filled(out_shape, flat.size, _INT64)
    if operation == "sum":
        p = _full_partial(flat, "sum", None, out_shape)
        if p is not None:
            return p
        acc = sum_dtype(flat.dtype)
        return Partial(_filled(out_shape, np.add.reduce(flat, dtype=acc), acc), counts)
    if operation == "count":
        return Partial(counts.copy(), counts)
    v = (np.minimum if operation == "min" else np.maximum).reduce(flat)
    return Partial(_filled(out_shape, v, flat.dtype), counts)


def reduce_chunk(raw: Any, req: ChunkRequest, operation: str,
                 scratch: np.ndarray | None = None) -> Partial:
    """Decode, shape, select, mask and reduce one chunk; the single entry point for every backend.

    ``scratch``: see :func:`decode`; the partial returned never refers to it (nor to ``raw``).
    """
    flat = decode(raw, req, scratch)
    shape = req.shape
    missing = req.missing
    if (req.selection is None and (missing is None or missing.is_empty()) and flat.size
            and operation in ("sum", "min", "max", "count")
            and (req.axis is None or len(req.axis) == len(shape) and _full(req.axis))):
        return _reduce_all(flat, operation, len(shape))
    x = flat.reshape(shape, order=req.order)
    sl = req.selection_slices()
    if sl is not None:
        x = x[sl]
    return reduce_array(x, operation, req.reduce_axes, req.missing, req.weights)


def _full(axis: tuple[int, ...]) -> bool:
    return sorted(axis) == list(range(len(axis)))
