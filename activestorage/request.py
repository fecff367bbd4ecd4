"""The chunk-reduction request: one model for the wire and for in-process calls.

A :class:`ChunkRequest` describes completely how to turn a byte range of an object into a reduced
partial result: where the bytes are, how they are encoded (compression, filters, dtype, byte order),
how they are laid out (shape, C/F order), which part of them is wanted (selection), what counts as
missing, and which axes to reduce. The reduction server builds one from a Reductionist v1/v2 JSON
body with :meth:`ChunkRequest.from_wire` (validating every field and naming the one at fault); the
SDK builds them directly (trusted, no validation cost on the hot path) and the server backend sends
them with :meth:`ChunkRequest.to_wire`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np

from .errors import RequestValidationError
from .operations import WIRE_OPERATIONS as OPERATIONS  # noqa: F401 - the wire's, from the table

#: dtypes the Reductionist API names; we accept the small integers too (a superset).
WIRE_DTYPES = ("int8", "uint8", "int16", "uint16", "int32", "int64", "uint32", "uint64",
               "float32", "float64")

#: compression ids accepted on the wire, mapped to numcodecs codec ids.
COMPRESSION_IDS = ("gzip", "zlib", "zstd", "blosc", "blosc2", "lz4", "bz2", "bzip2")
#: filter ids accepted on the wire.
FILTER_IDS = ("shuffle", "shuffle_simd", "fletcher32")

MISSING_KEYS = ("missing_value", "missing_values", "valid_min", "valid_max", "valid_range")

NATIVE_BYTE_ORDER = "little" if np.little_endian else "big"


@dataclass(frozen=True, slots=True)
class Missing:
    """What counts as missing data, the way netCDF-4 readers decide it.

    ``values``: elements equal to any of these are missing (``_FillValue``, ``missing_value``s,
    default fill values); NaN in it means NaN elements are missing. ``valid_min``/``valid_max``:
    elements outside are missing. All values are in the stored (packed) units and should be of the
    variable's dtype; the kernel converts them as netCDF4-python does (``numpy.array(v, dtype)``)
    and ignores one that fits no value of the dtype. netCDF4-python's attribute rules (valid_range
    wins over valid_min/valid_max; an attribute that does not cast exactly is ignored; default
    fill values) are for the format reader that builds this.
    """

    values: tuple[Any, ...] = ()
    valid_min: Any = None
    valid_max: Any = None

    def is_empty(self) -> bool:
        return not self.values and self.valid_min is None and self.valid_max is None

    def to_wire(self, dtype: Any = None) -> dict[str, Any]:
        """The Reductionist ``missing`` object (empty when nothing can be missing).

        With ``dtype`` each value is first converted as the kernel converts it
        (:func:`as_dtype_value`): one that cannot stand for any ``dtype`` value is left out (the
        kernel would ignore it), and integer dtypes get JSON integers, never ``-1.0`` (which the
        reference server refuses). ``valid_range`` needs ``low < high``; equal or crossed bounds
        go as ``valid_min`` + ``valid_max``, as do several keys at once: our documented extension.
        """
        def conv(v: Any) -> Any:
            if dtype is None:
                return _py(v)
            c = as_dtype_value(v, np.dtype(dtype))
            return None if c is None else c.item()

        out: dict[str, Any] = {}
        vals = [w for w in map(conv, self.values) if w is not None]
        if len(vals) == 1:
            out["missing_value"] = vals[0]
        elif vals:
            out["missing_values"] = vals
        lo = None if self.valid_min is None else conv(self.valid_min)
        hi = None if self.valid_max is None else conv(self.valid_max)
        if lo is not None and hi is not None and lo < hi:
            out["valid_range"] = [lo, hi]
        else:  # one bound, or a range of one value / none that valid_range cannot say
            if lo is not None:
                out["valid_min"] = lo
            if hi is not None:
                out["valid_max"] = hi
        return out


def as_dtype_value(v: Any, dtype: np.dtype) -> Any:
    """``v`` as a ``dtype`` scalar, the way netCDF4-python converts attributes
    (``numpy.array(v, dtype)``); None when ``v`` cannot stand for any ``dtype`` value.

    Floats round to the nearest ``dtype`` value (so a Python float ``_FillValue`` matches float32
    data); a finite value that overflows to infinity, and for integer dtypes a non-integral,
    non-finite or out-of-range value, is ignored. Attribute-level checks (netCDF4-python ignores
    attributes that do not cast exactly) belong to the format reader that builds the Missing.
    """
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            a = np.asarray(v)
            if a.shape != () or a.dtype.kind not in "biuf":
                return None
            if a.dtype.kind == "b":  # True == 1, as in the lru_cache key
                a = np.asarray(int(a))
            if dtype.kind in "iu":
                if a.dtype.kind == "f":
                    if not np.isfinite(a) or a != np.floor(a):
                        return None
                    a = int(a)
                info = np.iinfo(dtype)
                if not info.min <= int(a) <= info.max:
                    return None
                return dtype.type(int(a))
            c = a.astype(dtype)
            if np.isinf(c) and np.isfinite(a):
                return None
            return c[()]
    except (OverflowError, ValueError, TypeError):
        return None


class ChunkRequest(NamedTuple):
    """One chunk reduction: the bytes ``[offset, offset+size)`` of ``url`` and what to do with them.

    ``shape``/``selection``/``axis`` are always concrete after construction through
    :meth:`from_wire` (or :func:`make_request`): ``shape`` is the chunk's shape, ``selection`` one
    ``(start, stop, step)`` per axis as :meth:`slice.indices` gives it (so with a negative step a
    ``stop`` of -1 means "through index 0", not "up to the last element"), ``axis`` the sorted axes
    reduced (None: all axes). ``compression`` and each of ``filters`` are numcodecs-style dicts
    (``{"id": "zlib"}``, ``{"id": "shuffle", "element_size": 4}``); a Fletcher-32 filter with
    ``"outer": True`` checks the stored (compressed) bytes, as HDF5 writes it, otherwise it is
    undone after decompression like the other filters. ``size`` is the stored size in bytes.

    A named tuple (immutable, hashable when its dicts are not involved): planning builds one per
    chunk, and a tuple is built about ten times faster than a frozen dataclass.
    """

    dtype: np.dtype
    shape: tuple[int, ...]
    offset: int = 0
    size: int | None = None
    url: str | None = None
    byte_order: str = NATIVE_BYTE_ORDER
    order: str = "C"
    selection: tuple[tuple[int, int, int], ...] | None = None
    axis: tuple[int, ...] | None = None
    compression: Mapping[str, Any] | None = None
    filters: tuple[Mapping[str, Any], ...] = ()
    missing: Missing | None = None
    #: extension: pin the object to this ETag / version id (ignored by other servers).
    etag: str | None = None
    version_id: str | None = None
    #: weights of a ``moments`` reduction over the chunk's SELECTED region (None: unit weights):
    #: ``{axis: 1-D float64 array}`` (separable; one weight per selected element of that axis,
    #: an axis left out has unit weights) or one float64 array broadcastable to the selected
    #: region (N-D). In-process only here; the wire form is the server extension's.
    weights: Any = None

    # ------------------------------------------------------------------ derived
    @property
    def stored_dtype(self) -> np.dtype:
        """The dtype with the request's byte order."""
        return self.dtype.newbyteorder("<" if self.byte_order == "little" else ">")

    @property
    def reduce_axes(self) -> tuple[int, ...]:
        return tuple(range(len(self.shape))) if self.axis is None else self.axis

    @property
    def nbytes(self) -> int:
        """Decoded size of the chunk in bytes."""
        return math.prod(self.shape) * self.dtype.itemsize

    def selection_slices(self) -> tuple[slice, ...] | None:
        """The selection as Python slices, selecting exactly ``range(start, stop, step)``.

        (With a negative step, :meth:`slice.indices` uses -1 for "before index 0", which a slice
        would read as "the last element".)
        """
        if self.selection is None:
            return None
        return tuple(slice(a, None if b < 0 else b, c) if a >= 0 else slice(0, 0, c)
                     for a, b, c in self.selection)

    def with_(self, **changes: Any) -> "ChunkRequest":
        return self._replace(**changes)

    # -------------------------------------------------------------------- wire
    def to_wire(self, memo: dict[Any, Any] | None = None) -> dict[str, Any]:
        """The Reductionist JSON body fields (without source/bucket/object/url routing fields).

        ``memo``: a dict the caller keeps while it builds many bodies (a batch's), remembering
        the wire form of each ``missing`` object with its dtype (the chunks of one variable share
        one: converting it is most of a body's cost)."""
        body: dict[str, Any] = {
            "dtype": self.dtype.name,
            "byte_order": self.byte_order,
            "offset": int(self.offset),
            "shape": [int(n) for n in self.shape],
            "order": self.order,
        }
        if self.size is not None:
            body["size"] = int(self.size)
        if self.selection is not None:
            # On the wire -1 would mean "the last element": say "before index 0" with
            # -(n + 1) instead, which a Python slice reads the same way.
            body["selection"] = [[int(a) if a >= 0 else -int(n) - 1,
                                  int(b) if b >= 0 else -int(n) - 1, int(c)]
                                 for (a, b, c), n in zip(self.selection, self.shape)]
        if self.axis is not None:
            body["axis"] = [int(a) for a in self.axis]
        if self.compression is not None:
            body["compression"] = dict(self.compression)
        if self.filters:
            body["filters"] = [dict(f) for f in self.filters]
        if self.missing is not None and not self.missing.is_empty():
            seen = None if memo is None else memo.get(id(self.missing))
            if seen is not None and seen[0] is self.missing and seen[1] == self.dtype:
                missing = dict(seen[2])
            else:
                missing = self.missing.to_wire(self.dtype)
                if memo is not None:  # the object is held: its id is not reused meanwhile
                    memo[id(self.missing)] = (self.missing, self.dtype, missing)
                    missing = dict(missing)
            if missing:  # empty when no value fits the dtype (the kernel ignores those too)
                body["missing"] = missing
        if self.etag:
            body["etag"] = self.etag
        if self.version_id:
            body["version_id"] = self.version_id
        return body

    @classmethod
    def from_wire(cls, body: Any, *, max_elements: int | None = None) -> "ChunkRequest":
        """Validate a Reductionist JSON body; raise :class:`RequestValidationError` naming the field.

        Routing fields (``source``/``bucket``/``object``, ``interface_type``/``url``) are validated
        by the server; this covers the numeric description. ``max_elements`` bounds ``shape`` (or
        the element count implied by ``size``). A selection is exactly Python's
        ``slice(start, end, stride)`` per axis (ends past the axis are clamped; only stride 0 is
        refused). Without compression ``size`` must be the data's size plus 4 bytes per
        Fletcher-32 filter. Missing values must be representable in ``dtype`` (integers only for
        integer dtypes; floats are rounded to ``dtype`` and must stay finite) and a
        ``valid_range`` must have low < high. Several ``missing`` keys at once are accepted (our
        extension).
        """
        if not isinstance(body, Mapping):
            raise RequestValidationError("body", "request body must be a JSON object")
        dtype = _parse_dtype(body.get("dtype"))
        byte_order = body.get("byte_order")
        if byte_order is None:
            byte_order = NATIVE_BYTE_ORDER
        elif byte_order not in ("little", "big"):
            raise RequestValidationError("byte_order", "must be 'little' or 'big'")
        offset = _opt_int(body, "offset", 0, minimum=0)
        size = _opt_int(body, "size", None, minimum=1)
        order = body.get("order", "C")
        if order is None:
            order = "C"
        if order not in ("C", "F"):
            raise RequestValidationError("order", "must be 'C' or 'F'")

        shape_raw = body.get("shape")
        if shape_raw is None:
            if body.get("selection") is not None:
                raise RequestValidationError("selection", "requires shape")
            if body.get("axis") is not None:
                raise RequestValidationError("axis", "requires shape")
            shape = None
        else:
            shape = _int_list(shape_raw, "shape", minimum=1)
            if not shape:
                raise RequestValidationError("shape", "must have at least one dimension")
            _check_elements(math.prod(shape), dtype, max_elements)

        compression = _parse_compression(body.get("compression"))
        filters = _parse_filters(body.get("filters"), dtype)
        # Without compression the stored bytes are the data plus 4 per Fletcher-32 checksum.
        checksums = 4 * sum(1 for f in filters if f["id"] == "fletcher32")
        if size is not None and compression is None:
            data_size = size - checksums
            if data_size <= 0 or data_size % dtype.itemsize:
                extra = f" plus {checksums} checksum bytes" if checksums else ""
                raise RequestValidationError(
                    "size", f"{size} is not a multiple of the {dtype.name} element size "
                    f"{dtype.itemsize}{extra}")
        if shape is None:
            if size is None:
                raise RequestValidationError(
                    "size", "is required when shape is not given (the whole object is read but its "
                    "element count must be known to validate it); or give shape")
            if compression is not None:
                raise RequestValidationError("shape", "is required with compression")
            shape = ((size - checksums) // dtype.itemsize,)
            _check_elements(shape[0], dtype, max_elements, field="size")
        elif (size is not None and compression is None
              and size != math.prod(shape) * dtype.itemsize + checksums):
            raise RequestValidationError(
                "size", f"{size} bytes do not match shape {list(shape)} of {dtype.name} "
                f"({math.prod(shape) * dtype.itemsize + checksums} bytes)")

        selection = None
        if body.get("selection") is not None:
            selection = _parse_selection(body["selection"], shape)
        axis = None
        if body.get("axis") is not None:
            axis = _parse_axis(body["axis"], len(shape))
        missing = _parse_missing(body.get("missing"), dtype)
        etag = body.get("etag")
        version_id = body.get("version_id")
        for name, val in (("etag", etag), ("version_id", version_id)):
            if val is not None and not isinstance(val, str):
                raise RequestValidationError(name, "must be a string")
        return cls(dtype=dtype, shape=tuple(shape), offset=offset, size=size,
                   byte_order=byte_order, order=order, selection=selection, axis=axis,
                   compression=compression, filters=filters, missing=missing,
                   etag=etag, version_id=version_id)


# ---------------------------------------------------------------------- helpers

def make_request(dtype: Any, shape: Sequence[int], **kwargs: Any) -> ChunkRequest:
    """Build a trusted request in-process (numpy dtype in any form, axis normalised)."""
    dt = np.dtype(dtype)
    byte_order = kwargs.pop("byte_order", None)
    if byte_order is None:
        byte_order = {"<": "little", ">": "big"}.get(dt.byteorder, NATIVE_BYTE_ORDER)
    axis = kwargs.pop("axis", None)
    if axis is not None:
        axis = tuple(sorted(int(a) % len(shape) for a in np.atleast_1d(axis)))
    return ChunkRequest(dtype=dt.newbyteorder("="), shape=tuple(int(n) for n in shape),
                        byte_order=byte_order, axis=axis, **kwargs)


def _check_elements(n: int, dtype: np.dtype, max_elements: int | None,
                    field: str = "shape") -> None:
    """Bound the decoded size: by the server's element limit, and always to what fits in memory."""
    if max_elements is not None and n > max_elements:
        raise RequestValidationError(
            field, f"{n} elements exceed this server's limit of {max_elements}")
    if n * dtype.itemsize > 2**62:
        raise RequestValidationError(field, f"{n} elements of {dtype.name} are too large")


def _py(v: Any) -> Any:
    """A JSON-able Python scalar from a numpy scalar."""
    if isinstance(v, np.generic):
        return v.item()
    return v


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _parse_dtype(v: Any) -> np.dtype:
    if v is None:
        raise RequestValidationError("dtype", "is required")
    if not isinstance(v, str) or v not in WIRE_DTYPES:
        raise RequestValidationError("dtype", f"must be one of {', '.join(WIRE_DTYPES)}; got {v!r}")
    return np.dtype(v)


def _opt_int(body: Mapping[str, Any], name: str, default: Any, *, minimum: int) -> Any:
    v = body.get(name)
    if v is None:
        return default
    if not _is_int(v):
        raise RequestValidationError(name, f"must be an integer; got {v!r}")
    if v < minimum:
        raise RequestValidationError(name, f"must be >= {minimum}; got {v}")
    if v > 2**63 - 1:
        raise RequestValidationError(name, "is too large")
    return int(v)


def _int_list(v: Any, name: str, *, minimum: int) -> tuple[int, ...]:
    if not isinstance(v, (list, tuple)):
        raise RequestValidationError(name, "must be a list of integers")
    if len(v) > 32:
        raise RequestValidationError(name, "has more than 32 dimensions")
    out = []
    for i, n in enumerate(v):
        if not _is_int(n):
            raise RequestValidationError(f"{name}[{i}]", f"must be an integer; got {n!r}")
        if n < minimum:
            raise RequestValidationError(f"{name}[{i}]", f"must be >= {minimum}; got {n}")
        if n > 2**62:
            raise RequestValidationError(f"{name}[{i}]", "is too large")
        out.append(int(n))
    return tuple(out)


def _parse_selection(v: Any, shape: tuple[int, ...]) -> tuple[tuple[int, int, int], ...]:
    if not isinstance(v, (list, tuple)):
        raise RequestValidationError("selection", "must be a list of [start, end, stride] lists")
    if len(v) != len(shape):
        raise RequestValidationError(
            "selection", f"has {len(v)} entries but shape has {len(shape)} dimensions")
    out = []
    for i, (s, n) in enumerate(zip(v, shape)):
        where = f"selection[{i}]"
        if not isinstance(s, (list, tuple)) or len(s) != 3:
            raise RequestValidationError(where, "must be [start, end, stride]")
        start, stop, step = s
        if not _is_int(step):
            raise RequestValidationError(where, f"stride must be an integer; got {step!r}")
        if step == 0:
            raise RequestValidationError(where, "stride must not be zero")
        for what, x in (("start", start), ("end", stop)):
            if x is not None and not _is_int(x):
                raise RequestValidationError(where, f"{what} must be an integer; got {x!r}")
        # Exactly Python's slice(start, end, stride) on this axis: negative values count from
        # the end and values past either end are clamped (the reference server's behaviour).
        # Normalised to concrete indices (start, stop, step) with stop exclusive.
        a, b, c = slice(start, stop, step).indices(n)
        out.append((a, b, c))
    return tuple(out)


def _parse_axis(v: Any, ndim: int) -> tuple[int, ...]:
    items = [v] if _is_int(v) else v
    if not isinstance(items, (list, tuple)):
        raise RequestValidationError("axis", "must be an integer or a list of integers")
    out = []
    for a in items:
        if not _is_int(a):
            raise RequestValidationError("axis", f"must contain integers; got {a!r}")
        if not -ndim <= a < ndim:
            raise RequestValidationError("axis", f"{a} is out of range for {ndim} dimensions")
        out.append(int(a) % ndim)
    if len(set(out)) != len(out):
        raise RequestValidationError("axis", "contains duplicate axes")
    return tuple(sorted(out))


def _parse_compression(v: Any) -> dict[str, Any] | None:
    if v is None:
        return None
    if not isinstance(v, Mapping) or "id" not in v:
        raise RequestValidationError("compression", 'must be an object like {"id": "zlib"}')
    cid = v["id"]
    if cid not in COMPRESSION_IDS:
        raise RequestValidationError(
            "compression", f"unsupported id {cid!r}; supported: {', '.join(COMPRESSION_IDS)}")
    return dict(v)


def _parse_filters(v: Any, dtype: np.dtype) -> tuple[dict[str, Any], ...]:
    if v is None:
        return ()
    if not isinstance(v, (list, tuple)):
        raise RequestValidationError("filters", "must be a list of filter objects")
    if len(v) > 16:
        raise RequestValidationError("filters", "has more than 16 entries")
    out = []
    for i, f in enumerate(v):
        where = f"filters[{i}]"
        if not isinstance(f, Mapping) or "id" not in f:
            raise RequestValidationError(where, 'must be an object like {"id": "shuffle", ...}')
        fid = f["id"]
        if fid not in FILTER_IDS:
            raise RequestValidationError(
                where, f"unsupported id {fid!r}; supported: {', '.join(FILTER_IDS)}")
        if fid in ("shuffle", "shuffle_simd"):
            es = f.get("element_size", dtype.itemsize)
            if not _is_int(es) or not 1 <= es <= 64:
                raise RequestValidationError(where, "element_size must be an integer from 1 to 64")
            out.append({"id": "shuffle", "element_size": int(es)})
        else:
            outer = f.get("outer", False)
            if not isinstance(outer, bool):
                raise RequestValidationError(where, "outer must be true or false")
            out.append({"id": fid, "outer": True} if outer else {"id": fid})
    return tuple(out)


def _representable(x: Any, dtype: np.dtype, where: str) -> Any:
    """Check that a wire number fits ``dtype`` and return it as a numpy scalar of that dtype."""
    if isinstance(x, bool) or not isinstance(x, (int, float, np.number)):
        raise RequestValidationError(where, f"must be a number; got {x!r}")
    if dtype.kind in "iu":
        if isinstance(x, (float, np.floating)):
            # As the reference server: an integer dtype takes only integers; a number written
            # with a decimal point or exponent (-1.0, 1e3) is a float, even when whole.
            raise RequestValidationError(
                where, f"{x!r} is not representable as {dtype.name} (a number with a decimal "
                "point or exponent is a float; integer dtypes need an integer)")
        info = np.iinfo(dtype)
        if not info.min <= x <= info.max:
            raise RequestValidationError(where, f"{x!r} is not representable as {dtype.name}")
        return dtype.type(x)
    # float dtypes: NaN and infinities are legitimate values; finite values must fit the range
    # (they are rounded to the nearest representable value, as the reference server does).
    try:
        fx = float(x)
    except OverflowError:
        raise RequestValidationError(where, f"{x!r} is not representable as {dtype.name}") from None
    with np.errstate(over="ignore"):
        cast = dtype.type(fx)
    if math.isfinite(fx) and not np.isfinite(cast):
        raise RequestValidationError(where, f"{x!r} is not representable as {dtype.name}")
    return cast


def _parse_missing(v: Any, dtype: np.dtype) -> Missing | None:
    if v is None:
        return None
    if not isinstance(v, Mapping):
        raise RequestValidationError("missing", "must be an object")
    keys = [k for k in v if k in MISSING_KEYS]
    unknown = [k for k in v if k not in MISSING_KEYS]
    if unknown:
        raise RequestValidationError(
            "missing", f"unknown key {unknown[0]!r}; expected one of {', '.join(MISSING_KEYS)}")
    if not keys:
        raise RequestValidationError("missing", f"must have one of {', '.join(MISSING_KEYS)}")
    values: list[Any] = []
    vmin = vmax = None
    if "missing_value" in v:
        values.append(_representable(v["missing_value"], dtype, "missing.missing_value"))
    if "missing_values" in v:
        mv = v["missing_values"]
        if not isinstance(mv, (list, tuple)) or not mv:
            raise RequestValidationError("missing.missing_values", "must be a non-empty list")
        if len(mv) > 1024:
            raise RequestValidationError("missing.missing_values", "has more than 1024 values")
        values.extend(_representable(x, dtype, f"missing.missing_values[{i}]")
                      for i, x in enumerate(mv))
    if "valid_range" in v:
        if "valid_min" in v or "valid_max" in v:
            raise RequestValidationError("missing", "give valid_range or valid_min/valid_max, not both")
        vr = v["valid_range"]
        if not isinstance(vr, (list, tuple)) or len(vr) != 2:
            raise RequestValidationError("missing.valid_range", "must be [min, max]")
        vmin = _representable(vr[0], dtype, "missing.valid_range[0]")
        vmax = _representable(vr[1], dtype, "missing.valid_range[1]")
        if not vmin < vmax and not (np.isnan(vmin) or np.isnan(vmax)):  # NaN: refused below
            raise RequestValidationError(
                "missing.valid_range", f"low end {_py(vmin)!r} must be strictly below the high "
                f"end {_py(vmax)!r} (for a single valid value give valid_min and valid_max)")
    if "valid_min" in v:
        vmin = _representable(v["valid_min"], dtype, "missing.valid_min")
    if "valid_max" in v:
        vmax = _representable(v["valid_max"], dtype, "missing.valid_max")
    for name, x in (("valid_min", vmin), ("valid_max", vmax)):
        if x is not None and isinstance(x, np.floating) and np.isnan(x):
            raise RequestValidationError(f"missing.{name}", "must not be NaN")
    return Missing(values=tuple(values), valid_min=vmin, valid_max=vmax)
