"""netCDF-4/HDF5 variables without h5py: the same :class:`Variable` :mod:`.hdf5` builds, read natively.

``import h5py`` costs a fresh process 20-30 ms (more on a loaded machine), a quarter of its first
``Active(...).mean``. The metadata a netCDF-4 variable needs (dtype, shape, layout, chunk index,
filters, fill value, attributes, dimension scales) is a few small structures: the file's
structures are decoded by :mod:`.hdf5_structures` (with :mod:`.hdf5_dense` for dense links and
attributes and :mod:`.hdf5_v4index` for layout-v4 chunk indices), the messages by
:mod:`.hdf5_messages`, all through one ``pread(offset, size)`` function; this module puts them
together as h5py's path does.

Anything not covered (user blocks, shared messages, HDF5 2.0's layout v5, compound or enum
attributes, corrupt structures, ...) raises :class:`NativeUnsupported`; :class:`~.hdf5.Hdf5Reader`
then asks h5py, so results never depend on this module's coverage. Errors the user should see
(unsupported dtypes and filters, a missing variable) are also left to the h5py path, which words
them.
"""

from __future__ import annotations

import logging
import math
import os
import struct
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ..errors import UnsupportedError
from .base import Locator, Variable
from .cf import missing_from_attrs, packing_from_attrs
from .choose import Candidate
from .chunk_index import UNWRITTEN, ChunkIndex
from .hdf5_common import (
    _DENSE_ALLOWANCE,
    _DENSE_CELLS_PER_CHUNK,
    _HIDDEN_ATTRS,
    _codecs,
    pipeline_from_codes,
    stored_dtype,
)
from .hdf5_messages import (
    _FILL_TIME_NEVER,
    attribute,
    dataspace,
    datatype,
    fill_message,
    filter_codes,
    fixed_string,
    max_shape,
)
from .hdf5_structures import (
    MSG_ATTRIBUTE,
    MSG_DATASPACE,
    MSG_DATATYPE,
    MSG_LAYOUT,
    MSG_LINK,
    MSG_SYMBOL_TABLE,
    H5File,
    NativeUnsupported,
    ObjectHeader,
    _need,
    unpack,
)

__all__ = ["NativeUnsupported", "list_native", "native_file", "open_native"]

log = logging.getLogger(__name__)

#: the external data files message: such a dataset's bytes are not in this file
_MSG_EXTERNAL = 7

#: the exceptions that mean "a structure this reader misread": fall back, never surface
_DECODE_ERRORS = (NativeUnsupported, struct.error, IndexError, KeyError, ValueError,
                  OverflowError, UnicodeDecodeError, TypeError)


def native_file(file: Any = None, path: str | None = None) -> H5File:
    """An :class:`H5File` reading ``path`` (os.pread) or an open binary ``file`` (seek + read)."""
    if path is not None:
        fd = os.open(path, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            f = H5File(lambda offset, n: os.pread(fd, n, offset), size)
            f.close = lambda: os.close(fd)  # type: ignore[attr-defined]
            return f
        except BaseException:
            os.close(fd)
            raise

    def pread(offset: int, n: int) -> bytes:
        file.seek(offset)
        return file.read(n)
    f = H5File(pread, getattr(file, "size", None))
    f.close = lambda: None  # type: ignore[attr-defined]
    return f


class _Reader:
    """One open file: decodes objects and keeps what several variables share (paths, headers)."""

    def __init__(self, f: H5File, url: str) -> None:
        self.f = f
        self.url = url
        self._links: dict[int, dict[str, int | None]] = {}
        self._names: dict[int, str] | None = None

    # ------------------------------------------------------------------ groups and paths

    def links(self, address: int) -> dict[str, int | None]:
        out = self._links.get(address)
        if out is None:
            oh = self.f.header(address)
            out = {}
            stab = oh.first(MSG_SYMBOL_TABLE)
            if stab is not None:
                self.f.symbol_table(stab, out)
            else:
                for m in oh.all(MSG_LINK):
                    name, target = self.f.decode_link(m.data)
                    out[name] = target
                heap, index = self.f.link_info(oh)
                if heap >= 0:
                    from .hdf5_dense import dense_records

                    for raw, _order in dense_records(self.f, heap, index):
                        name, target = self.f.decode_link(raw)
                        out[name] = target
            self._links[address] = out
        return out

    def is_group(self, oh: ObjectHeader) -> bool:
        return oh.first(MSG_LAYOUT) is None and oh.first(MSG_DATATYPE) is None

    def resolve(self, path: str) -> tuple[int, list[int]] | None:
        """(object address, addresses of the groups on the way) of ``path``; None if absent."""
        here = self.f.root
        groups = [here]
        parts = [p for p in path.split("/") if p]
        _need(bool(parts) and "." not in parts and ".." not in parts, "an odd variable path")
        for i, part in enumerate(parts):
            links = self.links(here)
            if part not in links:
                return None
            target = links[part]
            _need(target is not None, "a soft or external link on the path")
            here = target  # type: ignore[assignment]
            if i < len(parts) - 1:
                groups.append(here)
        return here, groups

    def walk(self) -> list[tuple[str, int, list[int]]]:
        """Every object once, as h5py's ``visititems`` visits them (links in byte-wise name
        order, a group's members right after it): (path, address, groups on the way)."""
        out: list[tuple[str, int, list[int]]] = []
        seen = {self.f.root}

        def members(group: int) -> Any:
            return iter(sorted(self.links(group).items(), key=lambda kv: kv[0].encode()))
        stack: list[tuple[str, list[int], Any]] = [("", [self.f.root], members(self.f.root))]
        while stack:
            prefix, groups, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                stack.pop()
                continue
            name, target = nxt
            if target is None or target in seen:
                continue
            seen.add(target)
            out.append((prefix + name, target, groups))
            _need(len(out) <= 1 << 20 and len(stack) < 64, "too many or too deep objects")
            if self.is_group(self.f.header(target)):
                stack.append((prefix + name + "/", groups + [target], members(target)))
        return out

    def name_of(self, address: int, groups: list[int]) -> str:
        """The last path component of the object at ``address`` (a dimension scale), as h5py
        names a dereferenced object: a link of the variable's group or an ancestor, else the
        first path of a whole-file walk."""
        for group in reversed(groups):
            for name, target in self.links(group).items():
                if target == address:
                    return name
        if self._names is None:
            self._names = {}
            for path, target, _groups in self.walk():
                self._names.setdefault(target, path)
        name = self._names.get(address)
        _need(name is not None, "a dimension scale no path leads to")
        return name.rsplit("/", 1)[-1]  # type: ignore[union-attr]

    # ------------------------------------------------------------------ attributes

    def raw_attributes(self, oh: ObjectHeader) -> list[tuple[str, bytes, bytes, bytes]]:
        """(name, datatype, dataspace, data) of every attribute, in h5py's iteration order
        (creation order when the object tracks it, else name order)."""
        found: list[tuple[int, tuple[str, bytes, bytes, bytes]]] = []
        for m in oh.all(MSG_ATTRIBUTE):
            found.append((m.order, attribute(m.data)))
        heap, index = self.f.attribute_info(oh)
        if heap >= 0:
            from .hdf5_dense import dense_records

            for raw, order in dense_records(self.f, heap, index):
                found.append((order, attribute(raw)))
        if oh.attr_order_tracked:
            found.sort(key=lambda t: t[0])
        else:
            found.sort(key=lambda t: t[1][0].encode())
        return [a for _o, a in found]

    def attr_value(self, tb: bytes, sb: bytes, data: bytes) -> Any:
        """An attribute's value as h5py returns it (NumPy scalar or array, bytes, str)."""
        shape = dataspace(self.f, sb)
        _need(shape is not None, "an empty (null) attribute")
        n = math.prod(shape)  # type: ignore[arg-type]
        _need(n <= 1 << 24, "an attribute too large")
        cls, detail = datatype(tb)
        if isinstance(detail, np.dtype):
            _need(len(data) >= n * detail.itemsize, "a truncated attribute")
            arr = np.frombuffer(data, detail, count=n).reshape(shape).copy()
            return arr[()] if shape == () else arr
        if cls == 3:
            _, size, pad = detail
            _need(size > 0 and len(data) >= n * size, "a truncated string attribute")
            items = [fixed_string(data[i * size:(i + 1) * size], pad) for i in range(n)]
            arr = np.array(items, dtype=f"S{size}").reshape(shape)
            return arr[()] if shape == () else arr
        if cls == 9 and detail[0] == "vlen-str":
            items = [b.decode("utf-8", "surrogateescape") for b in self._vlen(data, n, 1)]
            if shape == ():
                return items[0]
            arr = np.empty(n, dtype=object)
            arr[:] = items
            return arr.reshape(shape)
        raise NativeUnsupported(f"an attribute of datatype class {cls}")

    def _vlen(self, data: bytes, n: int, itemsize: int) -> list[bytes]:
        """The ``n`` variable-length elements stored in the global heap for ``data``."""
        a = self.f.sizeof_addr
        esize = 4 + a + 4
        _need(len(data) >= n * esize, "truncated variable-length data")
        out = []
        for i in range(n):
            p = i * esize
            count = unpack("<I", data, p)[0]
            coll = self.f.addr(data, p + 4)
            index = unpack("<I", data, p + 4 + a)[0]
            if count == 0 or coll <= 0:
                out.append(b"")
                continue
            obj = self.f.global_heap_object(coll, index)
            _need(len(obj) >= count * itemsize, "a short global heap object")
            out.append(obj[:count * itemsize])
        return out

    def attributes(self, oh: ObjectHeader) -> dict[str, Any]:
        """The user attributes (plumbing left out, bytes decoded), as :func:`.hdf5._read_attrs`."""
        out = {}
        for name, tb, sb, data in self.raw_attributes(oh):
            if name in _HIDDEN_ATTRS:
                continue
            v = self.attr_value(tb, sb, data)
            if isinstance(v, bytes):
                v = v.decode("utf-8", "replace")
            out[name] = v
        return out

    def dimension_names(self, own: str, oh: ObjectHeader, rank: int, groups: list[int]
                        ) -> tuple[str, ...]:
        """netCDF dimension names, as :func:`.hdf5._dimension_names` derives them."""
        raw = {name: (tb, sb, data) for name, tb, sb, data in self.raw_attributes(oh)
               if name in ("CLASS", "DIMENSION_LIST", "DIMENSION_LABELS")}
        labels: list[str] = [""] * rank
        if "DIMENSION_LABELS" in raw:  # as h5py's DimensionProxy.label reads them
            value = self.attr_value(*raw["DIMENSION_LABELS"])
            _need(isinstance(value, np.ndarray) and value.ndim == 1, "odd dimension labels")
            for axis, label in enumerate(value.tolist()[:rank]):
                if isinstance(label, bytes):
                    try:
                        label = label.decode("utf-8")
                    except UnicodeDecodeError:
                        raise NativeUnsupported("a dimension label that is not UTF-8") from None
                labels[axis] = label
        is_scale = False
        if "CLASS" in raw:
            cls = self.attr_value(*raw["CLASS"])
            is_scale = isinstance(cls, bytes) and cls == b"DIMENSION_SCALE"
        refs: list[list[int]] = [[] for _ in range(rank)]
        if "DIMENSION_LIST" in raw:
            tb, sb, data = raw["DIMENSION_LIST"]
            shape = dataspace(self.f, sb)
            cls, detail = datatype(tb)
            _need(cls == 9 and detail[0] == "vlen" and detail[1][0] == 7 and shape == (rank,),
                  "an odd DIMENSION_LIST")
            a = self.f.sizeof_addr
            for axis, blob in enumerate(self._vlen(data, rank, a)):
                refs[axis] = [self.f.addr(blob, i * a) for i in range(len(blob) // a)]
        names = []
        for axis in range(rank):
            if refs[axis]:
                names.append(self.name_of(refs[axis][0], groups))
            elif axis == 0 and is_scale:
                names.append(own)
            else:
                names.append(labels[axis])
        return tuple(names)

    # ------------------------------------------------------------------ datasets

    def dataset_type(self, oh: ObjectHeader) -> tuple[int, Any]:
        m = oh.first(MSG_DATATYPE)
        _need(m is not None, "a dataset without a datatype")
        return datatype(m.data)  # type: ignore[union-attr]

    def variable(self, ncvar: str) -> Variable | None:
        """The :class:`Variable` ``ncvar``; None when the file has no such dataset."""
        found = self.resolve(ncvar)
        if found is None:
            return None
        address, groups = found
        oh = self.f.header(address)
        if self.is_group(oh) or oh.first(MSG_LAYOUT) is None:
            return None
        url = self.url
        where = f"{url}: variable {ncvar!r}"
        cls, dtype = self.dataset_type(oh)
        _need(cls in (0, 1), "a dataset that is not numeric")
        try:
            byte_order, native = stored_dtype(dtype, where)
        except UnsupportedError as exc:
            raise NativeUnsupported(str(exc)) from None
        space = oh.first(MSG_DATASPACE)
        _need(space is not None, "a dataset without a dataspace")
        shape = dataspace(self.f, space.data)  # type: ignore[union-attr]
        _need(shape is not None, "a null dataspace")
        shape = tuple(shape)  # type: ignore[arg-type]
        _need(oh.first(_MSG_EXTERNAL) is None, "external storage")
        attrs = self.attributes(oh)
        fill_time, h5fill = fill_message(oh, dtype)
        missing, fill = missing_from_attrs(attrs, native, fill_time != _FILL_TIME_NEVER)
        fill_value = fill if "_FillValue" in attrs else native.type(h5fill)
        scale, offset = packing_from_attrs(attrs)
        layout = oh.first(MSG_LAYOUT).data  # type: ignore[union-attr]
        version, lclass = layout[0], layout[1]
        _need(version in (3, 4), f"layout message version {version}")
        chunks: Mapping[tuple[int, ...], Locator] = {}
        try:
            if lclass == 2:
                codes = filter_codes(oh)
                maxshape = max_shape(self.f, space.data) or shape  # type: ignore[union-attr]
                chunk_shape, records = self._chunked(layout, shape, maxshape, native.itemsize,
                                                     bool(codes))
                pipeline = pipeline_from_codes(codes, native.itemsize, where)
                compression, filters = _codecs(pipeline, 0, where)
                chunks = _chunk_index(records, url, shape, chunk_shape, pipeline, where)
            elif lclass == 1:
                chunk_shape = shape
                compression, filters = None, ()
                off = self.f.addr(layout, 2)
                if off >= 0:
                    size = self.f.length(layout, 2 + self.f.sizeof_addr)
                    chunks = {tuple(0 for _ in shape): Locator(url, off, size)}
            else:
                raise NativeUnsupported("compact or virtual layout")
        except UnsupportedError as exc:
            raise NativeUnsupported(str(exc)) from None
        own = ncvar.rstrip("/").rsplit("/", 1)[-1]
        return Variable(
            name=ncvar, source=url, dtype=native, shape=shape, chunk_shape=chunk_shape,
            chunks=chunks, byte_order=byte_order, order="C", compression=compression,
            filters=filters, missing=missing, fill_value=fill_value, scale_factor=scale,
            add_offset=offset, attrs=attrs,
            dimensions=self.dimension_names(own, oh, len(shape), groups), format="hdf5")

    def _chunked(self, layout: bytes, shape: tuple[int, ...], maxshape: tuple[int | None, ...],
                 itemsize: int, filtered: bool) -> tuple[tuple[int, ...], np.ndarray]:
        """(chunk shape, chunk records) of a chunked layout (v3: a v1 B-tree; v4: a single
        chunk, a fixed or extensible array or a v2 B-tree)."""
        f = self.f
        rank = len(shape)
        if layout[0] == 3:
            ndims = layout[2]
            _need(ndims == rank + 1, "a chunked layout of another rank than its dataspace")
            btree = f.addr(layout, 3)
            pos = 3 + f.sizeof_addr
            dims = unpack(f"<{ndims}I", layout, pos)
            _need(dims[-1] == itemsize and all(dims[:-1]), "an odd chunk shape")
            chunk_shape = tuple(int(d) for d in dims[:-1])
            if btree < 0:
                return chunk_shape, _no_records(rank)
            return chunk_shape, f.chunk_records(btree, rank)
        flags, ndims, width = layout[2], layout[3], layout[4]
        _need(ndims == rank + 1 and 1 <= width <= 8, "an odd layout-v4 chunk shape")
        pos = 5
        dims = [int.from_bytes(layout[pos + i * width:pos + (i + 1) * width], "little")
                for i in range(ndims)]
        pos += ndims * width
        _need(dims[-1] == itemsize and all(dims[:-1]), "an odd chunk shape")
        chunk_shape = tuple(dims[:-1])
        index_type = layout[pos]
        pos += 1
        _need(not flags & 1, "partial edge chunks stored unfiltered")
        chunk_bytes = math.prod(chunk_shape) * itemsize
        if index_type in (3, 4, 5):
            from .hdf5_v4index import (
                btree_v2_chunk_records,
                extensible_array_records,
                fixed_array_records,
            )

            if index_type == 3:
                address = f.addr(layout, pos + 1)  # after the page bits
                if address < 0:
                    return chunk_shape, _no_records(rank)
                _need(None not in maxshape, "a fixed array over an unlimited dimension")
                return chunk_shape, fixed_array_records(f, address, maxshape,  # type: ignore[arg-type]
                                                        chunk_shape, filtered, chunk_bytes)
            if index_type == 4:
                address = f.addr(layout, pos + 5)  # after five creation parameters
                if address < 0:
                    return chunk_shape, _no_records(rank)
                return chunk_shape, extensible_array_records(f, address, shape, maxshape,
                                                             chunk_shape, filtered, chunk_bytes)
            address = f.addr(layout, pos + 6)  # after node size, split and merge percentages
            if address < 0:
                return chunk_shape, _no_records(rank)
            return chunk_shape, btree_v2_chunk_records(f, address, chunk_shape, filtered,
                                                       chunk_bytes)
        _need(index_type == 1, f"layout-v4 chunk index type {index_type}")
        size, mask = chunk_bytes, 0
        if flags & 2:
            size, mask = f.length(layout, pos), unpack("<I", layout, pos + f.sizeof_len)[0]
            pos += f.sizeof_len + 4
        address = f.addr(layout, pos)
        records = _no_records(rank)
        if address >= 0:
            records = np.zeros(1, records.dtype)
            records["size"], records["mask"], records["address"] = size, mask, address
        return chunk_shape, records

    def candidates(self) -> list[Candidate]:
        """Every numeric dataset that is a netCDF variable, as :meth:`.hdf5.Hdf5Reader.list_variables`."""
        out = []
        for path, address, groups in self.walk():
            oh = self.f.header(address)
            if self.is_group(oh) or oh.first(MSG_LAYOUT) is None:
                continue
            cls, dtype = self.dataset_type(oh)
            _need(cls not in (2, 4, 8), "a time, bitfield or enum dataset")
            if cls not in (0, 1):
                continue
            raw = {name: (tb, sb, data) for name, tb, sb, data in self.raw_attributes(oh)}
            if "NAME" in raw:
                label = self.attr_value(*raw["NAME"])
                label = label.tobytes() if hasattr(label, "tobytes") else label
                if isinstance(label, bytes) and label.startswith(b"This is a netCDF dimension but not"):
                    continue
            space = oh.first(MSG_DATASPACE)
            _need(space is not None, "a dataset without a dataspace")
            shape = dataspace(self.f, space.data)  # type: ignore[union-attr]
            rank = len(shape) if shape is not None else 0
            out.append(Candidate(path, self.dimension_names(path.rsplit("/", 1)[-1], oh, rank,
                                                            groups),
                                 self.attributes(oh), dtype=dtype.newbyteorder("=").name))
        return out


def _no_records(rank: int) -> np.ndarray:
    return np.zeros(0, np.dtype([("size", "<u4"), ("mask", "<u4"), ("offsets", "<u8", (rank + 1,)),
                                 ("address", "<u8")]))


def _chunk_index(records: np.ndarray, url: str, shape: tuple[int, ...],
                 chunk_shape: tuple[int, ...], pipeline: list[tuple[int, dict[str, Any]]],
                 where: str) -> Mapping[tuple[int, ...], Locator]:
    """The chunk index :func:`.hdf5._chunk_index` builds, from the B-tree's records at once."""
    rank = len(shape)
    grid = tuple(-(-n // c) for n, c in zip(shape, chunk_shape))
    ncells = math.prod(grid)
    nwritten = len(records)
    dense = ncells <= _DENSE_CELLS_PER_CHUNK * nwritten + _DENSE_ALLOWANCE
    coords = (records["offsets"][:, :rank] // np.asarray(chunk_shape, dtype=np.uint64)).astype(
        np.int64) if nwritten else np.zeros((0, rank), np.int64)
    masks = records["mask"]
    special: dict[tuple[int, ...], Locator] = {}
    overrides: dict[int, tuple[Any, Any]] = {}
    if dense:
        inside = np.all(coords < np.asarray(grid, dtype=np.int64), axis=1) if rank else \
            np.ones(nwritten, bool)
        if not inside.all():
            log.debug("%s: %d chunks lie outside the grid %s; ignored", where,
                      int((~inside).sum()), grid)
        offsets = np.full(grid, UNWRITTEN, dtype=np.int64)
        sizes = np.zeros(grid, dtype=np.uint32)
        where_in = tuple(coords[inside].T)
        offsets[where_in] = records["address"][inside].astype(np.int64)
        sizes[where_in] = records["size"][inside]
        rows = np.flatnonzero(inside & (masks != 0))
    else:
        rows = np.arange(nwritten)
    for i in rows.tolist():
        key = tuple(coords[i].tolist())
        off, size, mask = int(records["address"][i]), int(records["size"][i]), int(masks[i])
        if mask:
            if mask not in overrides:
                overrides[mask] = _codecs(pipeline, mask, where)
            comp, filt = overrides[mask]
            special[key] = Locator(url, off, size, compression=comp, filters=filt,
                                   no_compression=comp is None)
        else:
            special[key] = Locator(url, off, size)
    if not dense:
        return special
    return ChunkIndex(url, offsets, sizes, exceptions=special)


def _guard(call: Callable[[], Any]) -> Any:
    """Run ``call``, turning a misread structure into :class:`NativeUnsupported`."""
    try:
        return call()
    except NativeUnsupported:
        raise
    except _DECODE_ERRORS as exc:
        raise NativeUnsupported(f"{type(exc).__name__}: {exc}") from exc


def open_native(f: H5File, url: str, ncvar: str) -> Variable | None:
    """``ncvar`` of the file ``f`` as a :class:`Variable` (None when it has no such dataset);
    :class:`NativeUnsupported` for anything this reader leaves to h5py."""
    return _guard(lambda: _Reader(f, url).variable(ncvar))


def list_native(f: H5File, url: str) -> list[Candidate]:
    """The netCDF variables of ``f`` (see :meth:`.hdf5.Hdf5Reader.list_variables`)."""
    return _guard(lambda: _Reader(f, url).candidates())
