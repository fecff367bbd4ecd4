"""netCDF-3 (classic, 64-bit offset and CDF-5) files: parse the header into :class:`Variable`s.

The netCDF-3 header is a small big-endian structure at the start of the file (dimensions, global
attributes, then each variable's dimensions, attributes, type, size and start offset), so we parse
it ourselves from one or a few reads. Data is never compressed:

* a *fixed* variable is stored contiguously at ``begin`` -- one chunk (split into equal slabs along
  its first axis when it is larger than ``max_chunk_bytes``, so no one read is unbounded);
* a *record* variable has one slab per record: record ``i`` of a variable is at
  ``begin + i * recsize``, where ``recsize`` sums the (padded) per-record sizes of all record
  variables. Its chunk shape is ``(1, *rest)``.

Missing data follows the CF/netCDF rules of :mod:`.cf` (``missing_from_attrs`` with filling on:
a netCDF-3 file opened for reading reports fill mode).
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from ..errors import FormatError, UnsupportedError, VariableNotFoundError
from .base import Locator, Variable
from .cf import missing_from_attrs, packing_from_attrs
from .choose import Candidate

#: nc_type -> numpy dtype (big-endian on disk); 2 is NC_CHAR.
NC_TYPES: dict[int, str] = {1: "i1", 2: "S1", 3: ">i2", 4: ">i4", 5: ">f4", 6: ">f8",
                            7: "u1", 8: ">u2", 9: ">u4", 10: ">i8", 11: ">u8"}
_NC_DIMENSION, _NC_VARIABLE, _NC_ATTRIBUTE = 0x0A, 0x0B, 0x0C
STREAMING = 0xFFFFFFFF

#: fixed variables larger than this are split into equal slabs along the first axis.
DEFAULT_MAX_CHUNK_BYTES = 64 * 2**20
#: refuse headers larger than this (a corrupt count must not make us read the whole file).
MAX_HEADER_BYTES = 64 * 2**20


@dataclass
class Nc3Var:
    """One variable as the header describes it."""

    name: str
    dimids: tuple[int, ...]
    attrs: dict[str, Any]
    nc_type: int
    vsize: int
    begin: int


@dataclass
class Nc3Header:
    """The parsed header of a netCDF-3 file."""

    version: int  # 1 classic, 2 64-bit offset, 5 CDF-5 (64-bit data)
    numrecs: int  # STREAMING when the writer did not record it
    dims: list[tuple[str, int]]  # (name, length); length 0 is the record dimension
    attrs: dict[str, Any]
    variables: list[Nc3Var] = field(default_factory=list)
    header_size: int = 0

    @property
    def format(self) -> str:
        return {1: "NETCDF3_CLASSIC", 2: "NETCDF3_64BIT_OFFSET", 5: "NETCDF3_64BIT_DATA"}[self.version]

    def is_record(self, var: Nc3Var) -> bool:
        return bool(var.dimids) and self.dims[var.dimids[0]][1] == 0

    def record_vars(self) -> list[Nc3Var]:
        return [v for v in self.variables if self.is_record(v)]

    def record_count(self, file_size: int) -> int:
        """``numrecs``, or for a STREAMING file as many whole records as the file holds."""
        if self.numrecs != STREAMING:
            return self.numrecs
        rec, recsize = self.record_vars(), self.recsize()
        if not rec or not recsize:
            return 0
        return max(0, (file_size - min(v.begin for v in rec)) // recsize)

    def recsize(self) -> int:
        """Bytes between successive records of a record variable."""
        rec = self.record_vars()
        if len(rec) == 1:
            # a lone record variable is not padded (the netCDF spec's special case)
            v = rec[0]
            return math.prod(self.dims[d][1] for d in v.dimids[1:]) * _dtype(v).itemsize
        return sum(v.vsize for v in rec)


class _NeedMore(Exception):
    """The buffer ended inside the header: read a longer prefix and parse again."""


class _Reader:
    """Big-endian cursor over the header bytes."""

    def __init__(self, buf: bytes, version: int, complete: bool, where: str) -> None:
        self.buf, self.pos, self.version = buf, 0, version
        self.complete, self.where = complete, where

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.buf):
            if self.complete or n > MAX_HEADER_BYTES:
                raise FormatError(
                    f"{self.where}: netCDF-3 header is truncated or corrupt (needs {n} bytes at "
                    f"offset {self.pos}, the file has {len(self.buf)})")
            raise _NeedMore
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out

    def u32(self) -> int:
        return struct.unpack(">I", self.take(4))[0]

    def u64(self) -> int:
        return struct.unpack(">Q", self.take(8))[0]

    def count(self) -> int:
        """``nelems``/NON_NEG: 4 bytes, 8 in CDF-5."""
        return self.u64() if self.version == 5 else self.u32()

    def offset(self) -> int:
        return self.u32() if self.version == 1 else self.u64()

    def name(self) -> str:
        n = self.count()
        raw = self.take(n)
        self.take(-n % 4)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise FormatError(f"{self.where}: a name in the netCDF-3 header is not UTF-8") from exc

    def values(self, nc_type: int, n: int, what: str) -> Any:
        if nc_type not in NC_TYPES:
            raise FormatError(f"{self.where}: {what} has unknown netCDF type {nc_type}")
        dt = np.dtype(NC_TYPES[nc_type])
        raw = self.take(n * dt.itemsize)
        self.take(-(n * dt.itemsize) % 4)
        if nc_type == 2:
            return raw.rstrip(b"\0").decode("utf-8", errors="replace")
        arr = np.frombuffer(raw, dt).astype(dt.newbyteorder("="))
        return arr[0] if n == 1 else arr

    def attr_list(self, what: str) -> dict[str, Any]:
        tag, n = self.u32(), self.count()
        if tag == 0 and n == 0:
            return {}
        if tag != _NC_ATTRIBUTE:
            raise FormatError(f"{self.where}: bad attribute list tag {tag:#x} ({what})")
        out: dict[str, Any] = {}
        for _ in range(n):
            name = self.name()
            nc_type, nelems = self.u32(), self.count()
            out[name] = self.values(nc_type, nelems, f"attribute {what}:{name}")
        return out


def parse_header(buf: bytes, where: str = "file", *, complete: bool = True) -> Nc3Header:
    """Parse a netCDF-3 header from the first bytes of a file.

    Raises :class:`FormatError` naming ``where`` if it is not netCDF-3 or is corrupt; raises
    ``_NeedMore`` if ``complete`` is False and ``buf`` ends inside the header.
    """
    if len(buf) < 4 or buf[:3] != b"CDF" or buf[3] not in (1, 2, 5):
        raise FormatError(f"{where} is not a netCDF-3 file (it starts with {bytes(buf[:4])!r})")
    r = _Reader(buf, buf[3], complete, where)
    r.take(4)
    numrecs = r.count()
    if r.version == 5 and numrecs == 2**64 - 1:
        numrecs = STREAMING

    tag, ndims = r.u32(), r.count()
    dims: list[tuple[str, int]] = []
    if not (tag == 0 and ndims == 0):
        if tag != _NC_DIMENSION:
            raise FormatError(f"{where}: bad dimension list tag {tag:#x}")
        for _ in range(ndims):
            dims.append((r.name(), r.count()))
    hdr = Nc3Header(version=r.version, numrecs=numrecs, dims=dims, attrs=r.attr_list("global"))

    tag, nvars = r.u32(), r.count()
    if not (tag == 0 and nvars == 0):
        if tag != _NC_VARIABLE:
            raise FormatError(f"{where}: bad variable list tag {tag:#x}")
        for _ in range(nvars):
            name = r.name()
            ndim = r.count()
            if ndim > 1024:
                raise FormatError(f"{where}: variable {name!r} claims {ndim} dimensions")
            dimids = tuple(r.count() for _ in range(ndim))
            for d in dimids:
                if d >= len(dims):
                    raise FormatError(f"{where}: variable {name!r} uses undefined dimension id {d}")
            if any(dims[d][1] == 0 for d in dimids[1:]):
                raise FormatError(f"{where}: variable {name!r} uses the record dimension "
                                  "other than first")
            attrs = r.attr_list(name)
            nc_type, vsize, begin = r.u32(), r.count(), r.offset()
            if nc_type not in NC_TYPES:
                raise FormatError(f"{where}: variable {name!r} has unknown netCDF type {nc_type}")
            hdr.variables.append(Nc3Var(name, dimids, attrs, nc_type, vsize, begin))
    hdr.header_size = r.pos
    return hdr


def read_header(f: Any, where: str, size: int) -> Nc3Header:
    """Read and parse the header from the binary file object ``f`` of ``size`` bytes."""
    n = min(size, 64 * 1024)
    while True:
        f.seek(0)
        buf = f.read(n)
        try:
            return parse_header(buf, where, complete=len(buf) >= size or n >= MAX_HEADER_BYTES)
        except _NeedMore:
            n = min(size, n * 4, MAX_HEADER_BYTES)


# ----------------------------------------------------------------------------- Variables

def _dtype(var: Nc3Var) -> np.dtype:
    return np.dtype(NC_TYPES[var.nc_type])


def _missing(attrs: Mapping[str, Any], dtype: np.dtype) -> tuple[Any, Any]:
    # netCDF-3 has no per-variable no-fill flag on disk; opened for reading it reports fill on.
    return missing_from_attrs(attrs, dtype, True)


def _slab_rows(nrows: int, row_bytes: int, limit: int) -> int:
    """Rows per slab: the largest divisor of ``nrows`` whose slab fits in ``limit`` bytes."""
    if nrows * row_bytes <= limit or nrows <= 1:
        return max(nrows, 1)
    best = 1
    for k in range(1, math.isqrt(nrows) + 1):
        if nrows % k == 0:
            for d in (k, nrows // k):
                if d * row_bytes <= limit and d > best:
                    best = d
    return best


def variable_from_header(hdr: Nc3Header, ncvar: str, url: str, file_size: int, *,
                         etag: str | None = None, version_id: str | None = None,
                         max_chunk_bytes: int | None = None) -> Variable:
    """Build the :class:`Variable` (metadata and chunk locators) of ``ncvar``."""

    byname = {v.name: v for v in hdr.variables}
    if ncvar not in byname:
        raise VariableNotFoundError(
            f"{url} has no variable {ncvar!r}; variables: {', '.join(byname) or 'none'}")
    var = byname[ncvar]
    if var.nc_type == 2:
        raise UnsupportedError(f"{url}: variable {ncvar!r} is of type char; only numeric "
                               "variables can be reduced")
    if max_chunk_bytes is None:
        max_chunk_bytes = int(os.environ.get("ACTIVESTORAGE_MAX_CHUNK_BYTES", DEFAULT_MAX_CHUNK_BYTES))
    stored = _dtype(var)
    dtype = stored.newbyteorder("=")
    itemsize = dtype.itemsize
    rest = tuple(hdr.dims[d][1] for d in var.dimids[1:])
    chunks: dict[tuple[int, ...], Locator] = {}

    def locator(offset: int, size: int, what: str) -> Locator:
        if offset + size > file_size:
            raise FormatError(f"{url}: variable {ncvar!r} {what} (bytes {offset}-{offset + size}) "
                              f"ends past the end of the file ({file_size} bytes); truncated file?")
        return Locator(url, offset, size, etag=etag, version_id=version_id)

    if hdr.is_record(var):
        recsize = hdr.recsize()
        numrecs = hdr.record_count(file_size)
        shape = (numrecs, *rest)
        chunk_shape = (1, *rest)
        nbytes = math.prod(rest) * itemsize
        if recsize < nbytes:
            raise FormatError(f"{url}: corrupt header: record size {recsize} is smaller than one "
                              f"record of {ncvar!r} ({nbytes} bytes)")
        if numrecs and var.begin + (numrecs - 1) * recsize + nbytes > file_size:
            raise FormatError(f"{url}: variable {ncvar!r} record {numrecs - 1} ends past the end "
                              f"of the file ({file_size} bytes); truncated file?")
        for i in range(numrecs):
            chunks[(i,) + (0,) * len(rest)] = locator(var.begin + i * recsize, nbytes, f"record {i}")
    else:
        shape = tuple(hdr.dims[d][1] for d in var.dimids)
        if not shape:
            chunk_shape: tuple[int, ...] = ()
            chunks[()] = locator(var.begin, itemsize, "data")
        else:
            row = math.prod(shape[1:]) * itemsize
            if var.begin + shape[0] * row > file_size:
                raise FormatError(f"{url}: variable {ncvar!r} data (bytes {var.begin}-"
                                  f"{var.begin + shape[0] * row}) ends past the end of the file "
                                  f"({file_size} bytes); truncated file?")
            k = _slab_rows(shape[0], row, max_chunk_bytes)
            chunk_shape = (k, *shape[1:])
            if math.prod(shape):
                for i in range(shape[0] // k):
                    chunks[(i,) + (0,) * (len(shape) - 1)] = locator(
                        var.begin + i * k * row, k * row, "data" if k == shape[0] else f"slab {i}")
    missing, fill = _missing(var.attrs, dtype)
    scale, offset = packing_from_attrs(var.attrs)
    return Variable(
        name=ncvar, source=url, dtype=dtype, shape=shape, chunk_shape=chunk_shape, chunks=chunks,
        byte_order="big",
        order="C", compression=None, filters=(), missing=missing, fill_value=fill,
        scale_factor=scale, add_offset=offset, attrs=dict(var.attrs),
        dimensions=tuple(hdr.dims[d][0] for d in var.dimids), format=hdr.format.lower())


def _read(path_or_url: str, storage_options: Mapping[str, Any] | None
          ) -> tuple[Nc3Header, str, int, Any]:
    """(header, url, file size, the open file: its etag, version_id and stats)."""
    from ..stores.fileobj import open_url

    url = os.fspath(path_or_url)
    if url.startswith("file://"):
        url = url[len("file://"):]
    with open_url(url, storage_options) as f:
        size = int(f.size)
        return read_header(f, url, size), url, size, f


def open_netcdf3(path_or_url: str, ncvar: str, storage_options: Mapping[str, Any] | None = None,
                 *, max_chunk_bytes: int | None = None) -> Variable:
    """Open ``ncvar`` of a netCDF-3 file (local path, ``s3://`` or ``http(s)://`` URL).

    Remote locators are pinned to the object's ETag/version id as seen when the header was read.
    """
    hdr, url, size, f = _read(path_or_url, storage_options)
    var = variable_from_header(hdr, ncvar, url, size, etag=getattr(f, "etag", None),
                               version_id=getattr(f, "version_id", None),
                               max_chunk_bytes=max_chunk_bytes)
    stats = getattr(f, "stats", None)
    if stats is not None:
        var.metadata_bytes, var.metadata_requests = stats.bytes_read, stats.requests
    return var


def list_variables(path_or_url: str, storage_options: Mapping[str, Any] | None = None
                   ) -> dict[str, dict[str, Any]]:
    """``{name: {"dimensions", "shape", "dtype"}}`` for every variable of a netCDF-3 file."""
    hdr, _url, size, _f = _read(path_or_url, storage_options)
    out = {}
    for v in hdr.variables:
        shape = [hdr.dims[d][1] for d in v.dimids]
        if hdr.is_record(v):
            shape[0] = hdr.record_count(size)
        out[v.name] = {"dimensions": [hdr.dims[d][0] for d in v.dimids], "shape": shape,
                       "dtype": _dtype(v).newbyteorder("=").name if v.nc_type != 2 else "char"}
    return out


# --------------------------------------------------------------------------- the reader

#: the magic numbers of the classic, 64-bit offset and 64-bit data (CDF-5) formats
NETCDF3_MAGICS = (b"CDF\x01", b"CDF\x02", b"CDF\x05")


class Netcdf3Reader:
    """netCDF-3 files (classic, 64-bit offset, CDF-5), local or remote; the header is parsed here,
    so the reader opens the dataset itself (``file`` is not needed)."""

    name = "netcdf3"
    title = "netCDF-3"

    def can_open(self, head: bytes, url: str) -> bool:
        return head[:4] in NETCDF3_MAGICS

    def open(self, source: str, ncvar: str, storage_options: Mapping[str, Any] | None = None, *,
             file: Any = None) -> Variable:
        return open_netcdf3(source, ncvar, storage_options=storage_options)

    def list_variables(self, source: str, storage_options: Mapping[str, Any] | None = None, *,
                       file: Any = None) -> list[Candidate]:
        hdr, _url, _size, _f = _read(source, storage_options)
        return [Candidate(v.name, tuple(hdr.dims[d][0] for d in v.dimids), v.attrs,
                          dtype=_dtype(v).newbyteorder("=").name if v.nc_type != 2 else "char")
                for v in hdr.variables]
