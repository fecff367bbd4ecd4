"""Decoders of the HDF5 object header messages a netCDF variable needs: datatype, dataspace,
attribute, fill value and filter pipeline (see :mod:`.hdf5_native`, which builds the Variable).
Anything outside what netCDF-4 and h5py write raises
:class:`~.hdf5_structures.NativeUnsupported`."""

from __future__ import annotations

from typing import Any

import numpy as np

from .hdf5_structures import (
    MSG_FILL,
    MSG_FILL_OLD,
    MSG_FILTERS,
    H5File,
    NativeUnsupported,
    ObjectHeader,
    _need,
    unpack,
)

__all__ = ["attribute", "dataspace", "datatype", "fill_message", "filter_codes", "fixed_string",
           "max_shape"]

#: HDF5 fill time "never" (H5D_FILL_TIME_NEVER), and the default when no message says otherwise
_FILL_TIME_NEVER, _FILL_TIME_IFSET = 1, 2
#: IEEE layouts (bit offset, precision, exponent location, exponent size, mantissa location,
#: mantissa size, bias) by float size: other float layouts are left to h5py
_IEEE = {2: (0, 16, 10, 5, 0, 10, 15), 4: (0, 32, 23, 8, 0, 23, 127),
         8: (0, 64, 52, 11, 0, 52, 1023)}
_MAX_RANK = 32


def datatype(b: bytes) -> tuple[int, Any]:
    """(class, detail) of a datatype message: a NumPy dtype for numbers, ``("S", size, pad)`` for
    fixed-length strings, ``("vlen-str",)`` / ``("vlen", base)`` for variable-length data,
    ``("ref", size)`` for object references; other classes give (class, None)."""
    cls, _version = b[0] & 0x0F, b[0] >> 4
    bits = b[1] | (b[2] << 8) | (b[3] << 16)
    size = unpack("<I", b, 4)[0]
    if cls == 0:
        offset, precision = unpack("<HH", b, 8)
        _need(size in (1, 2, 4, 8) and offset == 0 and precision == 8 * size, "an odd integer type")
        return cls, np.dtype(f"{'>' if bits & 1 else '<'}{'i' if bits & 8 else 'u'}{size}")
    if cls == 1:
        props = unpack("<HHBBBBI", b, 8)
        _need(size in _IEEE and props == _IEEE[size] and not bits & 0x40
              and (bits >> 8) & 0xFF == 8 * size - 1, "a non-IEEE float type")
        return cls, np.dtype(f"{'>' if bits & 1 else '<'}f{size}")
    if cls == 3:
        return cls, ("S", size, bits & 0x0F)
    if cls == 9:
        if bits & 0x0F == 1:
            return cls, ("vlen-str",)
        return cls, ("vlen", datatype(b[8:]))
    if cls == 7:
        return cls, ("ref", bits & 0x0F)
    return cls, None


def dataspace(f: H5File, b: bytes) -> tuple[int, ...] | None:
    """The shape of a dataspace message (None for a null dataspace)."""
    version, rank = b[0], b[1]
    _need(rank <= _MAX_RANK, "a dataspace of too many dimensions")
    if version == 1:
        pos, kind = 8, (1 if rank else 0)
    elif version == 2:
        pos, kind = 4, b[3]
    else:
        raise NativeUnsupported(f"dataspace version {version}")
    if kind == 2:
        return None
    if kind == 0:
        return ()
    n = f.sizeof_len
    _need(len(b) >= pos + rank * n, "a truncated dataspace")
    return tuple(f.length(b, pos + i * n) for i in range(rank))


def max_shape(f: H5File, b: bytes) -> tuple[int | None, ...] | None:
    """The maximum shape of a simple dataspace message (None per unlimited dimension); None
    when the message records none (then it is the shape)."""
    version, rank, flags = b[0], b[1], b[2]
    if not flags & 1 or rank == 0:
        return None
    pos = (8 if version == 1 else 4) + rank * f.sizeof_len
    n = f.sizeof_len
    _need(len(b) >= pos + rank * n, "a truncated dataspace")
    unlimited = (1 << (8 * n)) - 1
    return tuple(None if v == unlimited else v
                 for v in (f.length(b, pos + i * n) for i in range(rank)))


def attribute(b: bytes) -> tuple[str, bytes, bytes, bytes]:
    """(name, datatype, dataspace, data) of an attribute message."""
    version = b[0]
    nlen, tlen, slen = unpack("<HHH", b, 2)
    if version == 1:
        pos, pad = 8, (lambda n: (n + 7) & ~7)
    elif version in (2, 3):
        _need(not b[1] & 3, "an attribute with a shared datatype or dataspace")
        pos, pad = (8 if version == 2 else 9), (lambda n: n)
    else:
        raise NativeUnsupported(f"attribute message version {version}")
    name = b[pos:pos + nlen].split(b"\0", 1)[0].decode("utf-8")
    pos += pad(nlen)
    tb = b[pos:pos + tlen]
    pos += pad(tlen)
    sb = b[pos:pos + slen]
    pos += pad(slen)
    return name, tb, sb, b[pos:]


def fixed_string(raw: bytes, pad: int) -> bytes:
    """A fixed-length string element as HDF5 converts it for NumPy: up to the first NUL, trailing
    spaces dropped when space-padded."""
    raw = raw.split(b"\0", 1)[0]
    return raw.rstrip(b" ") if pad == 2 else raw


def fill_message(oh: ObjectHeader, dtype: np.dtype) -> tuple[int, Any]:
    """(fill time, HDF5 fill value as h5py's ``Dataset.fillvalue`` gives it: 0 if unset)."""
    value = b""
    fill_time = _FILL_TIME_IFSET
    new = oh.first(MSG_FILL)
    if new is not None:
        b = new.data
        version = b[0]
        if version in (1, 2):
            fill_time = b[2]
            defined = b[3]
            if version == 1 or defined:
                size = unpack("<I", b, 4)[0]
                value = b[8:8 + size]
        elif version == 3:
            flags = b[1]
            fill_time = (flags >> 2) & 3
            if flags & 0x20:
                size = unpack("<I", b, 2)[0]
                value = b[6:6 + size]
        else:
            raise NativeUnsupported(f"fill value message version {version}")
    else:
        old = oh.first(MSG_FILL_OLD)
        if old is not None:
            size = unpack("<I", old.data, 0)[0]
            value = old.data[4:4 + size]
    if not value:
        return fill_time, 0
    _need(len(value) == dtype.itemsize, "a fill value of another size than the dataset's type")
    return fill_time, np.frombuffer(value, dtype, count=1)[0]

def filter_codes(oh: ObjectHeader) -> list[int]:
    """The filter ids of a dataset's pipeline, in write order."""
    m = oh.first(MSG_FILTERS)
    if m is None:
        return []
    b = m.data
    version, n = b[0], b[1]
    _need(n <= 32, "too many filters")
    codes = []
    if version == 1:
        pos = 8
        for _ in range(n):
            code, nlen, _flags, nvals = unpack("<HHHH", b, pos)
            pos += 8 + ((nlen + 7) & ~7) + 4 * nvals + (4 if nvals % 2 else 0)
            codes.append(code)
    elif version == 2:
        pos = 2
        for _ in range(n):
            code = unpack("<H", b, pos)[0]
            pos += 2
            nlen = 0
            if code >= 256:
                nlen = unpack("<H", b, pos)[0]
                pos += 2
            _flags, nvals = unpack("<HH", b, pos)
            pos += 4 + nlen + 4 * nvals
            codes.append(code)
    else:
        raise NativeUnsupported(f"filter pipeline version {version}")
    return codes
