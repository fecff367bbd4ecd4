"""netCDF-4/HDF5 metadata through h5py: dtype, layout, filter pipeline, missing data, chunk index.

The chunk index is read in one pass (``chunk_iter``), never one HDF5 call per chunk per reduction.
Missing-data rules follow netCDF4-python (``Variable._toma``) so results match what netCDF-4 users
see: ``missing_value``(s) and ``_FillValue`` by equality (NaN means NaN), the netCDF default fill
value when no ``_FillValue`` is set (not for byte types with filling off), and
``valid_range`` (or ``valid_min``/``valid_max``) bounds.
"""

from __future__ import annotations

import logging
import math
import warnings
from operator import floordiv
from typing import Any, Mapping

import numpy as np

from ..errors import FormatError, UnsupportedError, VariableNotFoundError
from ..request import Missing
from .base import Locator, Variable
from .chunk_index import UNWRITTEN, ChunkIndex

log = logging.getLogger(__name__)

#: netCDF default fill values by dtype kind+size (netCDF4.default_fillvals, restated to avoid
#: importing netCDF4 here).
DEFAULT_FILLVALS: dict[str, Any] = {
    "i1": -127, "u1": 255, "i2": -32767, "u2": 65535, "i4": -2147483647, "u4": 4294967295,
    "i8": -9223372036854775806, "u8": 18446744073709551614,
    "f4": 9.969209968386869e36, "f8": 9.969209968386869e36,
}

#: HDF5 filter ids we can undo, and what they become in a ChunkRequest.
H5Z_DEFLATE, H5Z_SHUFFLE, H5Z_FLETCHER32, H5Z_SZIP, H5Z_NBIT, H5Z_SCALEOFFSET = 1, 2, 3, 4, 5, 6
H5Z_BZIP2, H5Z_BLOSC, H5Z_LZ4, H5Z_ZSTD = 307, 32001, 32004, 32015
_COMPRESSORS = {H5Z_DEFLATE: "zlib", H5Z_BZIP2: "bz2", H5Z_BLOSC: "blosc", H5Z_ZSTD: "zstd"}
_FILTER_NAMES = {H5Z_SZIP: "szip", H5Z_NBIT: "nbit", H5Z_SCALEOFFSET: "scaleoffset",
                 H5Z_LZ4: "lz4 (HDF5 framing)"}

#: attributes that are HDF5/netCDF plumbing, not user metadata
_HIDDEN_ATTRS = {"DIMENSION_LIST", "REFERENCE_LIST", "CLASS", "NAME", "_Netcdf4Dimid",
                 "_Netcdf4Coordinates", "_nc3_strict", "_NCProperties"}


# ------------------------------------------------------------------------ missing data

def _safe_cast(value: Any, dtype: np.dtype, name: str) -> np.ndarray | None:
    """``value`` as ``dtype`` if the cast loses nothing (netCDF4-python's ``_check_safecast``)."""
    att = np.asarray(value)
    if att.dtype.kind in "SUO":
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cast = np.asarray(att, dtype)
            same = np.array_equal(att, cast, equal_nan=att.dtype.kind == "f" and dtype.kind == "f")
    except (ValueError, OverflowError, TypeError):
        same = False
    if not same:
        log.warning("attribute %s=%r is not representable as %s; ignored (as netCDF4-python does)",
                    name, value, dtype)
        return None
    return cast


def missing_from_attrs(attrs: Mapping[str, Any], dtype: np.dtype,
                       fill_enabled: bool = True) -> tuple[Missing, Any]:
    """The netCDF4-python missing-data rules for ``attrs``; returns (Missing, fill value).

    ``fill_enabled`` is False when the variable was written with filling off (HDF5 fill time
    "never"); then byte variables get no default fill value. The fill value returned is what
    unwritten chunks hold.
    """
    dtype = np.dtype(dtype).newbyteorder("=")
    if dtype.kind not in "iuf":
        return Missing(), None
    key = dtype.str[1:]
    values: list[Any] = []
    mv = _safe_cast(attrs["missing_value"], dtype, "missing_value") if "missing_value" in attrs else None
    if mv is not None:
        values.extend(dtype.type(v) for v in np.atleast_1d(mv))
    fill = None
    fv = _safe_cast(attrs["_FillValue"], dtype, "_FillValue") if "_FillValue" in attrs else None
    if fv is not None and fv.size >= 1:
        fill = dtype.type(np.atleast_1d(fv)[0])
        values.append(fill)
    elif key in DEFAULT_FILLVALS and (fill_enabled or key not in ("u1", "i1")):
        # (netCDF has no default fill value for other types, e.g. float16)
        fill = dtype.type(DEFAULT_FILLVALS[key])
        values.append(fill)
    vmin = vmax = None
    vr = _safe_cast(attrs["valid_range"], dtype, "valid_range") if "valid_range" in attrs else None
    if vr is not None and vr.size == 2:
        vmin, vmax = dtype.type(vr.flat[0]), dtype.type(vr.flat[1])
    else:
        if "valid_min" in attrs:
            v = _safe_cast(attrs["valid_min"], dtype, "valid_min")
            vmin = None if v is None else dtype.type(np.atleast_1d(v)[0])
        if "valid_max" in attrs:
            v = _safe_cast(attrs["valid_max"], dtype, "valid_max")
            vmax = None if v is None else dtype.type(np.atleast_1d(v)[0])
    # de-duplicate while keeping order (NaN never equals itself, so compare by repr)
    seen: set[str] = set()
    unique = []
    for v in values:
        k = repr(v)
        if k not in seen:
            seen.add(k)
            unique.append(v)
    return Missing(values=tuple(unique), valid_min=vmin, valid_max=vmax), fill


def packing_from_attrs(attrs: Mapping[str, Any]) -> tuple[Any, Any]:
    """(scale_factor, add_offset) as numpy scalars, or None where absent."""
    def one(name: str) -> Any:
        if name not in attrs:
            return None
        v = np.asarray(attrs[name])
        if v.dtype.kind not in "iuf" or v.size != 1:
            return None
        return v.reshape(())[()]
    return one("scale_factor"), one("add_offset")


# ----------------------------------------------------------------------------- h5py

def _pipeline(dcpl: Any, itemsize: int, where: str) -> list[tuple[int, dict[str, Any]]]:
    """The dataset's filters in write order as (hdf5 filter id, request dict)."""
    out = []
    for i in range(dcpl.get_nfilters()):
        code, _flags, _values, _name = dcpl.get_filter(i)[:4]
        if code in _COMPRESSORS:
            out.append((code, {"id": _COMPRESSORS[code]}))
        elif code == H5Z_SHUFFLE:
            out.append((code, {"id": "shuffle", "element_size": itemsize}))
        elif code == H5Z_FLETCHER32:
            out.append((code, {"id": "fletcher32"}))
        else:
            name = _FILTER_NAMES.get(code, f"HDF5 filter {code}")
            raise UnsupportedError(f"{where}: the {name} filter is not supported; supported are "
                                   "deflate/zlib, shuffle, fletcher32, bzip2, blosc and zstd")
    return out


def _codecs(pipeline: list[tuple[int, dict[str, Any]]], skip_mask: int,
            where: str) -> tuple[dict[str, Any] | None, tuple[dict[str, Any], ...]]:
    """Map a write-order pipeline (minus filters skipped by ``skip_mask``) to compression+filters."""
    compression = None
    filters: list[dict[str, Any]] = []
    for i, (_code, spec) in enumerate(pipeline):
        if skip_mask & (1 << i):
            continue
        if spec["id"] in ("zlib", "bz2", "blosc", "zstd"):
            if compression is not None:
                raise UnsupportedError(f"{where}: two compressors in one pipeline are not supported")
            compression = spec
        elif spec["id"] == "fletcher32" and compression is not None:
            filters.append({"id": "fletcher32", "outer": True})
        elif compression is not None:
            raise UnsupportedError(f"{where}: a {spec['id']} filter after compression is not supported")
        else:
            filters.append(spec)
    return compression, tuple(filters)


def _read_attrs(ds: Any) -> dict[str, Any]:
    out = {}
    for k in ds.attrs:
        if k in _HIDDEN_ATTRS:
            continue
        try:
            v = ds.attrs[k]
        except (OSError, TypeError):  # unreadable attribute types: skip, they carry no numbers we use
            continue
        if isinstance(v, bytes):
            v = v.decode("utf-8", "replace")
        out[k] = v
    return out


def _dimension_names(ds: Any) -> tuple[str, ...]:
    """netCDF dimension names: the dimension scale attached to each axis.

    A coordinate variable (``lat(lat)``) *is* the dimension scale of its first axis and has none
    attached there; its own name is that dimension's name, as netCDF4 reports it.
    """
    try:
        own = ds.name.rsplit("/", 1)[-1]
        is_scale = bool(getattr(ds, "is_scale", False))  # h5py >= 3: H5DSis_scale
        names = []
        for axis, dim in enumerate(ds.dims):
            if len(dim):
                names.append(dim[0].name.rsplit("/", 1)[-1])
            elif axis == 0 and is_scale:
                names.append(own)
            else:
                names.append(dim.label)
        return tuple(names)
    except Exception:  # noqa: BLE001 - dimension scales are optional decoration
        return ()


def list_variables(h5file: Any) -> list[str]:
    """Names of the numeric datasets in an open h5py file (netCDF variables), groups as paths."""
    import h5py

    names: list[str] = []

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset) and obj.dtype.kind in "iuf":
            label = obj.attrs.get("NAME", b"")
            if isinstance(label, bytes) and label.startswith(b"This is a netCDF dimension but not"):
                return  # a bare netCDF dimension, not a variable
            names.append(name)
    h5file.visititems(visit)
    return names


#: a dense index is used while its arrays hold at most this many grid cells per written chunk
#: (plus a fixed allowance); sparser grids keep a dict, whose size follows the written chunks
_DENSE_CELLS_PER_CHUNK, _DENSE_ALLOWANCE = 8, 1 << 16


def _chunk_index(dsid: Any, url: str, shape: tuple[int, ...], chunk_shape: tuple[int, ...],
                 pipeline: list[tuple[int, dict[str, Any]]],
                 where: str) -> Mapping[tuple[int, ...], Locator]:
    """The chunk index of a chunked dataset in one pass over HDF5's chunk B-tree.

    A :class:`ChunkIndex` (12 bytes a chunk) unless the grid is mostly unwritten; chunks that
    skipped filters (a non-zero filter mask) become exceptions carrying their own codecs.
    """
    grid = tuple(-(-n // c) for n, c in zip(shape, chunk_shape))
    ncells = math.prod(grid)
    nwritten = dsid.get_num_chunks()
    dense = ncells <= _DENSE_CELLS_PER_CHUNK * nwritten + _DENSE_ALLOWANCE
    offsets = np.full(grid if dense else 0, UNWRITTEN, dtype=np.int64)
    sizes = np.zeros(grid if dense else 0, dtype=np.uint32)  # HDF5 chunks are < 4 GiB
    offset_at, size_at = memoryview(offsets), memoryview(sizes)  # fast scalar stores
    overrides: dict[int, tuple[Any, Any]] = {}
    special: dict[tuple[int, ...], Locator] = {}  # exceptions, or every chunk when sparse

    def add(info: Any) -> None:
        coords = tuple(map(floordiv, info.chunk_offset, chunk_shape))
        if dense:
            try:
                offset_at[coords] = info.byte_offset
            except IndexError:  # left outside the grid by a shrinking resize: never read
                log.debug("%s: chunk %s lies outside the grid %s; ignored", where, coords, grid)
                return
            size_at[coords] = info.size
        mask = info.filter_mask
        if mask:
            if mask not in overrides:
                overrides[mask] = _codecs(pipeline, mask, where)
            comp, filt = overrides[mask]
            special[coords] = Locator(url, int(info.byte_offset), int(info.size),
                                      compression=comp, filters=filt, no_compression=comp is None)
        elif not dense:
            special[coords] = Locator(url, int(info.byte_offset), int(info.size))

    if hasattr(dsid, "chunk_iter"):
        dsid.chunk_iter(add)
    else:  # older HDF5: one call per chunk, still only once per open
        for i in range(nwritten):
            add(dsid.get_chunk_info(i))
    if not dense:
        return special
    return ChunkIndex(url, offsets, sizes, exceptions=special)


def variable_from_dataset(ds: Any, url: str, name: str | None = None) -> Variable:
    """Build a :class:`Variable` from an open ``h5py.Dataset``; locators point into ``url``."""
    import h5py

    name = name or ds.name.lstrip("/")
    where = f"{url}: variable {name!r}"
    dtype = ds.dtype
    if dtype.kind not in "iuf":
        raise UnsupportedError(f"{where} has dtype {dtype}; only integer and float variables "
                               "can be reduced")
    byte_order = "big" if dtype.byteorder == ">" or (dtype.byteorder == "=" and not np.little_endian) \
        else "little"
    native = dtype.newbyteorder("=")
    shape = tuple(int(n) for n in ds.shape)
    dsid = ds.id
    dcpl = dsid.get_create_plist()
    layout = dcpl.get_layout()
    attrs = _read_attrs(ds)
    fill_enabled = dcpl.get_fill_time() != h5py.h5d.FILL_TIME_NEVER
    missing, fill = missing_from_attrs(attrs, native, fill_enabled)
    h5fill = ds.fillvalue
    fill_value = fill if "_FillValue" in attrs or h5fill is None else native.type(h5fill)
    scale, offset = packing_from_attrs(attrs)
    chunks: Mapping[tuple[int, ...], Locator] = {}

    if layout == h5py.h5d.CHUNKED:
        chunk_shape = tuple(int(n) for n in ds.chunks)
        pipeline = _pipeline(dcpl, native.itemsize, where)
        compression, filters = _codecs(pipeline, 0, where)
        chunks = _chunk_index(dsid, url, shape, chunk_shape, pipeline, where)
    elif layout == h5py.h5d.CONTIGUOUS:
        chunk_shape = shape
        compression, filters = None, ()
        off = dsid.get_offset()
        if off is not None:  # one chunk (scalar: a one-element chunk); a tiny dict is enough
            size = int(dsid.get_storage_size())
            chunks = {tuple(0 for _ in shape): Locator(url, int(off), size)}
    else:
        raise UnsupportedError(f"{where} uses the HDF5 compact or virtual layout, whose bytes "
                               "cannot be read by offset; only chunked and contiguous are supported")

    return Variable(
        name=name, source=url, dtype=native, shape=shape, chunk_shape=chunk_shape, chunks=chunks,
        byte_order=byte_order, order="C", compression=compression, filters=filters,
        missing=missing, fill_value=fill_value, scale_factor=scale, add_offset=offset,
        attrs=attrs, dimensions=_dimension_names(ds), format="hdf5")


def open_hdf5(source: Any, ncvar: str, url: str | None = None) -> Variable:
    """Open ``ncvar`` of a netCDF-4/HDF5 file (a path or a seekable binary file object).

    ``url`` is what locators should point at (defaults to ``source`` when it is a path).
    """
    import h5py

    url = url if url is not None else str(source)
    try:
        f = h5py.File(source, "r")
    except FileNotFoundError as exc:
        raise FormatError(f"{url}: no such file") from exc
    except OSError as exc:
        raise FormatError(f"{url} is not a netCDF-4/HDF5 file ({exc})") from exc
    with f:
        if ncvar not in f or not isinstance(f[ncvar], h5py.Dataset):
            available = ", ".join(list_variables(f)) or "none"
            raise VariableNotFoundError(
                f"{url} has no variable {ncvar!r}; variables: {available}")
        return variable_from_dataset(f[ncvar], url, ncvar)
