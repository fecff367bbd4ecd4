"""The HDF5 file structures netCDF-4 metadata lives in, decoded with ``struct`` and NumPy.

A small reader of the on-disk format (the HDF5 File Format Specification, version 3): superblocks
v0-v3, object headers v1/v2 with continuation blocks, the messages a netCDF variable needs
(dataspace, datatype, fill value, layout, filter pipeline, attributes, links, symbol tables),
version 1 B-trees (group nodes and chunk indices), local and global heaps, and for dense storage
fractal heaps with version 2 B-trees. Everything is read through one ``pread(offset, size)``
function, so local files and remote block-cached objects work alike.

Whatever this module does not decode raises :class:`NativeUnsupported`; callers then fall back to
h5py, so results never depend on how much of the format is covered here. Every count and size read
from the file is bounded before it is used: a corrupt file raises :class:`NativeUnsupported` (or
:class:`~activestorage.errors.FormatError`), never loops or allocates without bound.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

__all__ = ["H5File", "Message", "NativeUnsupported", "ObjectHeader"]

#: the HDF5 signature and where a superblock may start (after a user block)
MAGIC = b"\x89HDF\r\n\x1a\n"

#: structures larger than this (bytes) or with more entries than this are treated as corrupt
_MAX_BLOCK = 1 << 26
_MAX_COUNT = 1 << 22
#: object header continuation blocks followed per header, B-tree depth, link nesting
_MAX_CONTINUATIONS = 4096
_MAX_DEPTH = 64
#: chunk index entries decoded natively; larger indices (and corrupt counts) are left to h5py,
#: so a damaged count never makes this reader allocate more than a few hundred MB
MAX_CHUNKS = 1 << 24

# message types
MSG_NIL, MSG_DATASPACE, MSG_LINK_INFO, MSG_DATATYPE, MSG_FILL_OLD, MSG_FILL = 0, 1, 2, 3, 4, 5
MSG_LINK, MSG_LAYOUT, MSG_FILTERS, MSG_ATTRIBUTE = 6, 8, 11, 12
MSG_CONTINUATION, MSG_SYMBOL_TABLE, MSG_ATTRIBUTE_INFO = 16, 17, 21


class NativeUnsupported(Exception):
    """A structure this reader does not decode (or a corrupt one): use h5py instead."""


def _need(cond: bool, what: str) -> None:
    if not cond:
        raise NativeUnsupported(what)


class Message:
    """One object header message: its type, flags, body and creation order (v2 headers).
    (Plain classes, not dataclasses: building a dataclass costs a fresh process ~1 ms.)"""

    __slots__ = ("data", "flags", "order", "type")

    def __init__(self, mtype: int, flags: int, data: bytes, order: int = -1) -> None:
        self.type, self.flags, self.data, self.order = mtype, flags, data, order


class ObjectHeader:
    """An object's header messages in file order, and whether attribute order is tracked."""

    __slots__ = ("address", "attr_order_tracked", "messages")

    def __init__(self, address: int, attr_order_tracked: bool = False) -> None:
        self.address = address
        self.messages: list[Message] = []
        self.attr_order_tracked = attr_order_tracked

    def first(self, mtype: int) -> Message | None:
        for m in self.messages:
            if m.type == mtype:
                return m
        return None

    def all(self, mtype: int) -> list[Message]:
        return [m for m in self.messages if m.type == mtype]


class H5File:
    """An HDF5 file read through ``pread``: its superblock, and decoders for what it points at."""

    def __init__(self, pread: Callable[[int, int], bytes], size: int | None = None) -> None:
        self._pread = pread
        self.size = size
        head = self.read(0, 96, exact=False)
        _need(head[:8] == MAGIC, "no HDF5 signature at offset 0 (user blocks are left to h5py)")
        version = head[8]
        if version in (0, 1):
            self._superblock_v01(head, version)
        elif version in (2, 3):
            self._superblock_v23(head)
        else:
            raise NativeUnsupported(f"superblock version {version}")
        self._headers: dict[int, ObjectHeader] = {}

    # ------------------------------------------------------------------ raw reads

    def read(self, offset: int, size: int, exact: bool = True) -> bytes:
        """``size`` bytes at ``offset`` (fewer at the end of the file unless ``exact``)."""
        _need(0 <= offset and 0 <= size <= _MAX_BLOCK, f"read of {size} bytes at {offset}")
        if self.size is not None and offset + size > self.size:
            _need(not exact, f"read past the end of the file at {offset}+{size}")
            size = max(0, self.size - offset)
        data = self._pread(offset, size)
        if exact:
            _need(len(data) == size, f"short read at {offset}: {len(data)} of {size} bytes")
        return data

    def addr(self, buf: bytes, pos: int) -> int:
        """An address (``size of offsets`` bytes); -1 for the undefined address."""
        n = self.sizeof_addr
        v = int.from_bytes(buf[pos:pos + n], "little")
        return -1 if v == self._undef else v

    def length(self, buf: bytes, pos: int) -> int:
        return int.from_bytes(buf[pos:pos + self.sizeof_len], "little")

    # ------------------------------------------------------------------ superblock

    def _sizes(self, sizeof_addr: int, sizeof_len: int) -> None:
        _need(sizeof_addr in (2, 4, 8) and sizeof_len in (2, 4, 8), "odd address/length sizes")
        self.sizeof_addr, self.sizeof_len = sizeof_addr, sizeof_len
        self._undef = (1 << (8 * sizeof_addr)) - 1

    def _superblock_v01(self, head: bytes, version: int) -> None:
        _need(len(head) >= 24, "truncated superblock")
        self._sizes(head[13], head[14])
        pos = 24 + (4 if version == 1 else 0)
        a = self.sizeof_addr
        buf = head if len(head) >= pos + 4 * a + 2 * a + 24 else self.read(0, pos + 6 * a + 24)
        base = self.addr(buf, pos)
        _need(base == 0, "a base address other than 0")
        entry = pos + 4 * a  # the root group's symbol table entry
        self.root = self.addr(buf, entry + a)
        self.superblock_version = version

    def _superblock_v23(self, head: bytes) -> None:
        _need(len(head) >= 12, "truncated superblock")
        self._sizes(head[9], head[10])
        a = self.sizeof_addr
        pos = 12
        base = self.addr(head, pos)
        _need(base == 0, "a base address other than 0")
        self.root = self.addr(head, pos + 3 * a)
        self.superblock_version = head[8]

    # ------------------------------------------------------------------ object headers

    def header(self, address: int) -> ObjectHeader:
        """The object header at ``address`` (cached: scales are visited more than once)."""
        oh = self._headers.get(address)
        if oh is None:
            _need(address >= 0, "undefined object header address")
            first = self.read(address, 512, exact=False)
            _need(len(first) >= 16, "truncated object header")
            if first[:4] == b"OHDR":
                oh = self._header_v2(address, first)
            elif first[0] == 1:
                oh = self._header_v1(address, first)
            else:
                raise NativeUnsupported(f"object header at {address}: unknown version")
            self._headers[address] = oh
        return oh

    def _header_v1(self, address: int, first: bytes) -> ObjectHeader:
        nmsgs, _refs, size = struct.unpack_from("<HII", first, 2)
        _need(nmsgs <= _MAX_COUNT, "too many header messages")
        oh = ObjectHeader(address)
        blocks = [(address + 16, size)]
        done: set[int] = set()
        while blocks and len(oh.messages) < nmsgs:
            start, length = blocks.pop(0)
            _need(start not in done and len(done) < _MAX_CONTINUATIONS, "a header continuation loop")
            done.add(start)
            buf = (first[16:16 + length] if start == address + 16 and 16 + length <= len(first)
                   else self.read(start, length))
            pos = 0
            while pos + 8 <= len(buf) and len(oh.messages) < nmsgs:
                mtype, msize, mflags = struct.unpack_from("<HHB", buf, pos)
                body = buf[pos + 8:pos + 8 + msize]
                _need(len(body) == msize, "a header message runs past its block")
                pos += 8 + msize
                self._add_message(oh, blocks, mtype, mflags, body, -1)
        return oh

    def _header_v2(self, address: int, first: bytes) -> ObjectHeader:
        _need(first[4] == 2, "object header v2 with an unknown version")
        flags = first[5]
        pos = 6
        if flags & 0x20:
            pos += 16  # times
        if flags & 0x10:
            pos += 4  # attribute phase change values
        width = 1 << (flags & 3)
        size = int.from_bytes(first[pos:pos + width], "little")
        pos += width
        oh = ObjectHeader(address, attr_order_tracked=bool(flags & 0x04))
        total = pos + size + 4
        buf = first[:total] if total <= len(first) else self.read(address, total)
        _check_sum(buf, "object header")
        blocks: list[tuple[int, int]] = []
        self._messages_v2(oh, buf, pos, pos + size, flags, blocks)
        done = {address}
        while blocks:
            start, length = blocks.pop(0)
            _need(start not in done and len(done) < _MAX_CONTINUATIONS, "a header continuation loop")
            done.add(start)
            cbuf = self.read(start, length)
            _need(cbuf[:4] == b"OCHK", "a continuation block without its signature")
            _check_sum(cbuf, "object header continuation")
            self._messages_v2(oh, cbuf, 4, length - 4, flags, blocks)
        return oh

    def _messages_v2(self, oh: ObjectHeader, buf: bytes, pos: int, end: int, flags: int,
                     blocks: list[tuple[int, int]]) -> None:
        hsize = 6 if flags & 0x04 else 4
        while pos + hsize <= end:
            mtype, msize, mflags = struct.unpack_from("<BHB", buf, pos)
            order = struct.unpack_from("<H", buf, pos + 4)[0] if flags & 0x04 else -1
            body = buf[pos + hsize:pos + hsize + msize]
            _need(pos + hsize + msize <= end, "a header message runs past its block")
            pos += hsize + msize
            self._add_message(oh, blocks, mtype, mflags, body, order)

    def _add_message(self, oh: ObjectHeader, blocks: list[tuple[int, int]], mtype: int,
                     mflags: int, body: bytes, order: int) -> None:
        if mtype == MSG_NIL:
            return
        if mtype == MSG_CONTINUATION:
            start, length = self.addr(body, 0), self.length(body, self.sizeof_addr)
            _need(start >= 0 and 0 < length <= _MAX_BLOCK, "a bad header continuation")
            blocks.append((start, length))
            return
        if mflags & 0x02 and mtype in (MSG_DATASPACE, MSG_DATATYPE, MSG_FILL, MSG_FILL_OLD,
                                       MSG_FILTERS, MSG_ATTRIBUTE, MSG_LAYOUT):
            raise NativeUnsupported(f"a shared header message (type {mtype})")
        oh.messages.append(Message(mtype, mflags, body, order))

    # ------------------------------------------------------------------ groups

    def link_info(self, oh: ObjectHeader) -> tuple[int, int]:
        """(fractal heap, name index B-tree) addresses of a group's dense links; -1 if none."""
        return self._dense_storage(oh, MSG_LINK_INFO, "link info", 8)  # max creation index

    def attribute_info(self, oh: ObjectHeader) -> tuple[int, int]:
        """(fractal heap, name index B-tree) addresses of an object's dense attributes; -1 if none."""
        return self._dense_storage(oh, MSG_ATTRIBUTE_INFO, "attribute info", 2)  # max index

    def _dense_storage(self, oh: ObjectHeader, mtype: int, what: str,
                       tracked: int) -> tuple[int, int]:
        """The two addresses of a link/attribute info message, which differ only in the width
        (``tracked`` bytes) of the field present when creation order is tracked (flag bit 0)."""
        info = oh.first(mtype)
        if info is None:
            return -1, -1
        _need(len(info.data) >= 2 and info.data[0] == 0, f"{what} version")
        pos = 2 + (tracked if info.data[1] & 1 else 0)
        return self.addr(info.data, pos), self.addr(info.data, pos + self.sizeof_addr)

    def decode_link(self, b: bytes) -> tuple[str, int | None]:
        _need(len(b) >= 3 and b[0] == 1, "link message version")
        flags = b[1]
        pos = 2
        ltype = 0
        if flags & 0x08:
            ltype = b[pos]
            pos += 1
        if flags & 0x04:
            pos += 8
        if flags & 0x10:
            pos += 1
        width = 1 << (flags & 3)
        nlen = int.from_bytes(b[pos:pos + width], "little")
        pos += width
        name = b[pos:pos + nlen]
        _need(len(name) == nlen, "truncated link name")
        pos += nlen
        if ltype == 0:
            return name.decode("utf-8", "surrogateescape"), self.addr(b, pos)
        return name.decode("utf-8", "surrogateescape"), None

    def symbol_table(self, stab: Message, out: dict[str, int | None]) -> None:
        """Add the links of a symbol-table group (superblock v0/v1 files) to ``out``."""
        btree = self.addr(stab.data, 0)
        heap = self.addr(stab.data, self.sizeof_addr)
        names = self._local_heap(heap)
        for node in self._btree_v1_leaves(btree, 0):
            for child in node:
                snod = self.read(child, 8, exact=False)
                _need(snod[:4] == b"SNOD" and snod[4] == 1, "a bad symbol table node")
                count = struct.unpack_from("<H", snod, 6)[0]
                esize = 2 * self.sizeof_addr + 24
                buf = self.read(child + 8, count * esize)
                for i in range(count):
                    p = i * esize
                    noff = int.from_bytes(buf[p:p + self.sizeof_addr], "little")
                    target = self.addr(buf, p + self.sizeof_addr)
                    cache = struct.unpack_from("<I", buf, p + 2 * self.sizeof_addr)[0]
                    end = names.find(b"\0", noff)
                    _need(0 <= noff < len(names) and end >= 0, "a bad link name offset")
                    name = names[noff:end].decode("utf-8", "surrogateescape")
                    out[name] = None if cache == 2 else target  # 2: a soft link

    def _local_heap(self, address: int) -> bytes:
        head = self.read(address, 8 + 2 * self.sizeof_len + self.sizeof_addr)
        _need(head[:4] == b"HEAP" and head[4] == 0, "a bad local heap")
        size = self.length(head, 8)
        data = self.addr(head, 8 + 2 * self.sizeof_len)
        return self.read(data, size)

    # ------------------------------------------------------------------ version 1 B-trees

    def _btree_v1_leaves(self, address: int, node_type: int, key_size: int = 0
                         ) -> Iterator[list[int]]:
        """The child addresses of each leaf of a v1 B-tree (type 0: groups), depth first."""
        a = self.sizeof_addr
        if node_type == 0:
            key_size = self.sizeof_len
        stack = [(address, _MAX_DEPTH)]
        visited: set[int] = set()
        while stack:
            node, budget = stack.pop()
            _need(budget > 0 and node not in visited and len(visited) < _MAX_COUNT,
                  "a B-tree loop, or one too deep or too large")
            visited.add(node)
            head = self.read(node, 8 + 2 * a)
            _need(head[:4] == b"TREE" and head[4] == node_type, "a bad B-tree node")
            level, used = head[5], struct.unpack_from("<H", head, 6)[0]
            stride = key_size + a
            buf = self.read(node + 8 + 2 * a, used * stride + key_size)
            children = [self.addr(buf, key_size + i * stride) for i in range(used)]
            if level == 0:
                yield children
            else:
                stack.extend((c, budget - 1) for c in reversed(children))

    def chunk_records(self, address: int, rank: int) -> np.ndarray:
        """Every chunk of a layout-v3 chunked dataset from its v1 B-tree (type 1): a structured
        array with ``size``, ``mask``, ``offsets`` (rank+1 element offsets) and ``address``."""
        a = self.sizeof_addr
        _need(a == 8, "chunk B-trees with addresses other than 8 bytes")
        rec = np.dtype([("size", "<u4"), ("mask", "<u4"), ("offsets", "<u8", (rank + 1,)),
                        ("address", "<u8")])
        key_size = 8 + 8 * (rank + 1)
        parts = []
        stack = [(address, _MAX_DEPTH)]
        visited: set[int] = set()
        total = 0
        while stack:
            node, budget = stack.pop()
            _need(budget > 0 and node not in visited and len(visited) < _MAX_COUNT,
                  "a chunk B-tree loop, or one too deep or too large")
            visited.add(node)
            head = self.read(node, 8 + 2 * a)
            _need(head[:4] == b"TREE" and head[4] == 1, "a bad chunk B-tree node")
            level, used = head[5], struct.unpack_from("<H", head, 6)[0]
            buf = self.read(node + 8 + 2 * a, used * rec.itemsize + key_size)
            entries = np.frombuffer(buf, rec, count=used)
            total += used
            _need(total <= MAX_CHUNKS, "too many chunks")
            if level == 0:
                parts.append(entries)
            else:
                stack.extend((int(c), budget - 1) for c in entries["address"][::-1])
        if not parts:
            return np.zeros(0, rec)
        return np.concatenate(parts)

    # ------------------------------------------------------------------ global heap

    def global_heap_object(self, collection: int, index: int) -> bytes:
        """Object ``index`` of the global heap collection at ``collection`` (vlen data)."""
        objs = self._gcol_cache.get(collection) if hasattr(self, "_gcol_cache") else None
        if objs is None:
            if not hasattr(self, "_gcol_cache"):
                self._gcol_cache: dict[int, dict[int, bytes]] = {}
            head = self.read(collection, 8 + self.sizeof_len)
            _need(head[:4] == b"GCOL" and head[4] == 1, "a bad global heap collection")
            size = self.length(head, 8)
            buf = self.read(collection, size)
            objs = {}
            pos = 8 + self.sizeof_len
            hsize = 8 + self.sizeof_len
            while pos + hsize <= size:
                idx = struct.unpack_from("<H", buf, pos)[0]
                osize = self.length(buf, pos + 8)
                if idx == 0:
                    break  # free space: the rest of the collection
                data = buf[pos + hsize:pos + hsize + osize]
                _need(len(data) == osize, "a global heap object runs past its collection")
                objs[idx] = data
                pos += hsize + ((osize + 7) & ~7)
            self._gcol_cache[collection] = objs
        _need(index in objs, "a missing global heap object")
        return objs[index]


def lookup3(data: bytes, initval: int = 0) -> int:
    """Bob Jenkins' lookup3 ``hashlittle`` (HDF5's metadata checksum)."""
    M = 0xFFFFFFFF

    def rot(x: int, k: int) -> int:
        return ((x << k) | (x >> (32 - k))) & M

    n = len(data)
    a = b = c = (0xDEADBEEF + n + initval) & M
    pos = 0
    while n > 12:
        x0, x1, x2 = struct.unpack_from("<III", data, pos)
        a = (a + x0) & M
        b = (b + x1) & M
        c = (c + x2) & M
        a = (a - c) & M; a ^= rot(c, 4); c = (c + b) & M
        b = (b - a) & M; b ^= rot(a, 6); a = (a + c) & M
        c = (c - b) & M; c ^= rot(b, 8); b = (b + a) & M
        a = (a - c) & M; a ^= rot(c, 16); c = (c + b) & M
        b = (b - a) & M; b ^= rot(a, 19); a = (a + c) & M
        c = (c - b) & M; c ^= rot(b, 4); b = (b + a) & M
        pos += 12
        n -= 12
    if n == 0:
        return c
    tail = data[pos:] + b"\0" * (12 - n)
    x0, x1, x2 = struct.unpack_from("<III", tail)
    a = (a + x0) & M
    b = (b + x1) & M
    c = (c + x2) & M
    c ^= b; c = (c - rot(b, 14)) & M
    a ^= c; a = (a - rot(c, 11)) & M
    b ^= a; b = (b - rot(a, 25)) & M
    c ^= b; c = (c - rot(b, 16)) & M
    a ^= c; a = (a - rot(c, 4)) & M
    b ^= a; b = (b - rot(a, 14)) & M
    c ^= b; c = (c - rot(b, 24)) & M
    return c


def _check_sum(buf: bytes, what: str) -> None:
    """Verify the trailing lookup3 checksum of a v2 structure (small ones: cheap)."""
    _need(len(buf) >= 4, f"truncated {what}")
    want = struct.unpack_from("<I", buf, len(buf) - 4)[0]
    if lookup3(buf[:-4]) != want:
        raise NativeUnsupported(f"{what}: checksum mismatch")


def unpack(fmt: str, buf: bytes, pos: int = 0) -> tuple[Any, ...]:
    """``struct.unpack_from`` raising :class:`NativeUnsupported` on a short buffer."""
    try:
        return struct.unpack_from(fmt, buf, pos)
    except struct.error as exc:
        raise NativeUnsupported(f"truncated structure ({exc})") from exc
