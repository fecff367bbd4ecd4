"""netCDF-4/HDF5 metadata through h5py: dtype, layout, filter pipeline, missing data, chunk index.

The chunk index is read in one pass (``chunk_iter``), never one HDF5 call per chunk per reduction.
Missing data and packing follow the CF/netCDF rules of :mod:`.cf`, with HDF5's fill time deciding
whether byte variables get the netCDF default fill value.
"""

from __future__ import annotations

import logging
import math
from operator import floordiv
from typing import Any, Mapping

import numpy as np

from ..errors import FormatError, UnsupportedError, VariableNotFoundError
from .base import Locator, Variable
from .cf import missing_from_attrs, packing_from_attrs
from .choose import Candidate
from .chunk_index import UNWRITTEN, ChunkIndex, pin_locators
from .hdf5_common import (_COMPRESSORS, _DENSE_ALLOWANCE, _DENSE_CELLS_PER_CHUNK,  # noqa: F401
                          _FILTER_NAMES, _HIDDEN_ATTRS, H5Z_BLOSC, H5Z_BZIP2, H5Z_DEFLATE,
                          H5Z_FLETCHER32, H5Z_LZ4, H5Z_NBIT, H5Z_SCALEOFFSET, H5Z_SHUFFLE,
                          H5Z_SZIP, H5Z_ZSTD, _codecs, pipeline_from_codes, stored_dtype)

log = logging.getLogger(__name__)

def _pipeline(dcpl: Any, itemsize: int, where: str) -> list[tuple[int, dict[str, Any]]]:
    """The dataset's filters in write order as (hdf5 filter id, request dict)."""
    codes = [dcpl.get_filter(i)[0] for i in range(dcpl.get_nfilters())]
    return pipeline_from_codes(codes, itemsize, where)


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
            label = label.tobytes() if hasattr(label, "tobytes") else label
            if isinstance(label, bytes) and label.startswith(b"This is a netCDF dimension but not"):
                return  # a bare netCDF dimension, not a variable
            names.append(name)
    h5file.visititems(visit)
    return names


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
    byte_order, native = stored_dtype(ds.dtype, where)
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


# --------------------------------------------------------------------------- the reader

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
#: HDF5 allows a user block before the superblock; the superblock then sits at one of these.
HDF5_OFFSETS = (0, 512, 1024, 2048)


def _local(url: str) -> str | None:
    """The path of a local ``url`` (plain or ``file://``), None for a remote one."""
    if "://" not in url:
        return url
    return url[len("file://"):] if url.startswith("file://") else None


def _needs_file(url: str) -> FormatError:
    return FormatError(f"{url}: a remote HDF5 file is read through an open file object; open it "
                       "with activestorage.formats.open_variable (the registry passes file=)")


def _native(source: str | None, file: Any, url: str, call: Any) -> Any:
    """``call(h5file)`` on the native reader (:mod:`.hdf5_native`) over the local path ``source``
    or the open ``file``; None when it leaves the file to h5py (logged at debug level)."""
    from .hdf5_native import NativeUnsupported, native_file

    try:
        h5 = native_file(file=file) if source is None else native_file(path=source)
    except (NativeUnsupported, OSError) as exc:
        log.debug("%s: read by h5py (%s)", url, exc)
        return None
    try:
        return call(h5)
    except NativeUnsupported as exc:
        log.debug("%s: read by h5py (%s)", url, exc)
        return None
    finally:
        h5.close()


class Hdf5Reader:
    """netCDF-4/HDF5 files, local or remote (through the open file object the registry passes as
    ``file``, each chunk then pinned to the object version the index was read from; this module
    does not open remote objects itself).

    The metadata is read by :mod:`.hdf5_native` (no ``import h5py``, 20-30 ms of a fresh
    process's first call); whatever it does not cover, and every error, goes to h5py.
    """

    name = "hdf5"
    title = "netCDF-4/HDF5"

    def can_open(self, head: bytes, url: str) -> bool:
        return any(head[off:off + 8] == HDF5_MAGIC for off in HDF5_OFFSETS)

    def open(self, source: str, ncvar: str, storage_options: Mapping[str, Any] | None = None, *,
             file: Any = None) -> Variable:
        from .hdf5_native import open_native

        path = _local(source)
        if path is not None:
            var = _native(path, None, path, lambda h5: open_native(h5, path, ncvar))
            return var if var is not None else open_hdf5(path, ncvar)
        if file is None:
            raise _needs_file(source)
        var = _native(None, file, source, lambda h5: open_native(h5, source, ncvar))
        if var is None:
            var = open_hdf5(file, ncvar, url=source)
        etag, version = getattr(file, "etag", None), getattr(file, "version_id", None)
        if etag or version:  # pin every chunk to the object version the index came from
            var.chunks = pin_locators(var.chunks, etag, version)
        stats = getattr(file, "stats", None)
        if stats is not None:
            var.metadata_bytes = stats.bytes_read
            var.metadata_requests = stats.requests
        return var

    def list_variables(self, source: str, storage_options: Mapping[str, Any] | None = None, *,
                       file: Any = None) -> list[Candidate]:
        from .hdf5_native import list_native

        if file is None:
            path = _local(source)
            if path is None:
                raise _needs_file(source)
            with open(path, "rb") as f:
                return self.list_variables(source, storage_options, file=f)
        found = _native(None, file, source, lambda h5: list_native(h5, source))
        return found if found is not None else list_with_h5py(file, source)


def list_with_h5py(file: Any, source: str) -> list[Candidate]:
    """:meth:`Hdf5Reader.list_variables` of an open binary ``file`` through h5py."""
    import h5py

    try:
        h5 = h5py.File(file, "r")
    except OSError as exc:
        raise FormatError(f"{source}: cannot read the HDF5 metadata ({exc})") from exc
    with h5:
        return [Candidate(n, _dimension_names(h5[n]), _read_attrs(h5[n]),
                          dtype=h5[n].dtype.newbyteorder("=").name)
                for n in list_variables(h5)]
