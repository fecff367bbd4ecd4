"""What the h5py reader (:mod:`.hdf5`) and the native one (:mod:`.hdf5_native`) share: the HDF5
filters we undo and how a filter pipeline maps onto a chunk request, the attributes that are
HDF5/netCDF plumbing, stored dtypes, and when a chunk index is kept dense."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import UnsupportedError

#: HDF5 filter ids we can undo, and what they become in a ChunkRequest.
H5Z_DEFLATE, H5Z_SHUFFLE, H5Z_FLETCHER32, H5Z_SZIP, H5Z_NBIT, H5Z_SCALEOFFSET = 1, 2, 3, 4, 5, 6
H5Z_BZIP2, H5Z_BLOSC, H5Z_LZ4, H5Z_ZSTD = 307, 32001, 32004, 32015
_COMPRESSORS = {H5Z_DEFLATE: "zlib", H5Z_BZIP2: "bz2", H5Z_BLOSC: "blosc", H5Z_ZSTD: "zstd"}
_FILTER_NAMES = {H5Z_SZIP: "szip", H5Z_NBIT: "nbit", H5Z_SCALEOFFSET: "scaleoffset",
                 H5Z_LZ4: "lz4 (HDF5 framing)"}

#: attributes that are HDF5/netCDF plumbing, not user metadata
_HIDDEN_ATTRS = {"DIMENSION_LIST", "REFERENCE_LIST", "CLASS", "NAME", "_Netcdf4Dimid",
                 "_Netcdf4Coordinates", "_nc3_strict", "_NCProperties"}


def pipeline_from_codes(codes: list[int], itemsize: int, where: str
                        ) -> list[tuple[int, dict[str, Any]]]:
    """A dataset's filters (HDF5 filter ids in write order) as (hdf5 filter id, request dict);
    :class:`UnsupportedError` naming a filter we cannot undo."""
    out = []
    for code in codes:
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


def stored_dtype(dtype: Any, where: str) -> tuple[str, np.dtype]:
    """(byte order as stored, native dtype) of an HDF5 dataset's dtype (h5py's or pyfive's);
    :class:`UnsupportedError` for anything but integers and floats."""
    dtype = np.dtype(dtype)
    if dtype.kind not in "iuf":
        raise UnsupportedError(f"{where} has dtype {dtype}; only integer and float variables "
                               "can be reduced")
    big = dtype.byteorder == ">" or (dtype.byteorder == "=" and not np.little_endian)
    return "big" if big else "little", dtype.newbyteorder("=")


#: a dense index is used while its arrays hold at most this many grid cells per written chunk
#: (plus a fixed allowance); sparser grids keep a dict, whose size follows the written chunks
_DENSE_CELLS_PER_CHUNK, _DENSE_ALLOWANCE = 8, 1 << 16


