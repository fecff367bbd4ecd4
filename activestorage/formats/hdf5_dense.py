"""Dense HDF5 link and attribute storage: a fractal heap indexed by a version 2 B-tree.

A group with many links or an object with many attributes (more than 8 by default) keeps them as
messages in a fractal heap, found through a v2 B-tree keyed by name hash. :func:`dense_records`
walks the B-tree and returns each message's bytes; :mod:`.hdf5_structures` decodes them like
messages of an object header. Heaps with I/O filters and "huge" objects (stored outside the heap)
are left to h5py (:class:`~.hdf5_structures.NativeUnsupported`).
"""

from __future__ import annotations

import bisect
import struct
from typing import Any

from .hdf5_structures import (
    _MAX_BLOCK,
    _MAX_COUNT,
    _MAX_DEPTH,
    NativeUnsupported,
    _need,
)

__all__ = ["btree_v2_records", "dense_records"]

#: v2 B-tree record types: links by name hash, attributes by name hash
BT2_LINK_NAME, BT2_ATTR_NAME = 5, 8


def _enc_size(n: int) -> int:
    """Bytes HDF5 uses to encode counts up to ``n`` (H5VM_limit_enc_size)."""
    return (max(n, 1).bit_length() - 1) // 8 + 1


def dense_records(f: Any, heap_addr: int, btree_addr: int) -> list[tuple[bytes, int]]:
    """Every message stored in a dense link or attribute index: (message bytes, creation order;
    -1 when the B-tree does not record it)."""
    heap = _FractalHeap(f, heap_addr)
    out = []
    for rec, btype in btree_v2_records(f, btree_addr):
        if btype == BT2_LINK_NAME:
            heap_id, order = rec[4:4 + heap.id_len], -1
        elif btype == BT2_ATTR_NAME:
            heap_id = rec[:8]
            order = struct.unpack_from("<I", rec, 9)[0]
        else:
            raise NativeUnsupported(f"v2 B-tree of record type {btype}")
        out.append((heap.get(heap_id), order))
    return out


def btree_v2_records(f: Any, address: int) -> list[tuple[bytes, int]]:
    """Every record of the v2 B-tree at ``address``: (record bytes, record type)."""
    head = f.read(address, 22 + f.sizeof_addr + f.sizeof_len)
    _need(head[:4] == b"BTHD" and head[4] == 0, "a bad v2 B-tree header")
    btype = head[5]
    node_size, rec_size, depth = struct.unpack_from("<IHH", head, 6)
    _need(0 < rec_size and 10 + rec_size <= node_size <= _MAX_BLOCK and depth <= _MAX_DEPTH,
          "v2 B-tree parameters out of range")
    root = f.addr(head, 16)
    root_nrec = struct.unpack_from("<H", head, 16 + f.sizeof_addr)[0]
    # per-depth sizes of the child pointers' record counts (as HDF5 derives them)
    max_leaf = (node_size - 10) // rec_size
    nrec_size = _enc_size(max_leaf)
    cum = [max_leaf]
    cum_size = [0]
    for d in range(1, depth + 1):
        ptr = f.sizeof_addr + nrec_size + cum_size[d - 1]
        max_int = (node_size - 10 - ptr) // (rec_size + ptr)
        _need(max_int > 0, "v2 B-tree nodes too small")
        cum.append((max_int + 1) * cum[d - 1] + max_int)
        cum_size.append(_enc_size(cum[d]))
    out: list[tuple[bytes, int]] = []
    if root < 0 or root_nrec == 0:
        return out
    stack = [(root, root_nrec, depth)]
    visited: set[int] = set()
    while stack:
        node, nrec, d = stack.pop()
        _need(node not in visited, "a v2 B-tree loop")
        visited.add(node)
        _need(len(out) + nrec <= _MAX_COUNT, "too many v2 B-tree records")
        if d == 0:
            buf = f.read(node, 6 + nrec * rec_size)
            _need(buf[:4] == b"BTLF", "a bad v2 B-tree leaf")
            out.extend((buf[6 + i * rec_size:6 + (i + 1) * rec_size], btype) for i in range(nrec))
            continue
        ptr = f.sizeof_addr + nrec_size + (cum_size[d - 1] if d > 1 else 0)
        buf = f.read(node, 6 + nrec * rec_size + (nrec + 1) * ptr)
        _need(buf[:4] == b"BTIN", "a bad v2 B-tree internal node")
        out.extend((buf[6 + i * rec_size:6 + (i + 1) * rec_size], btype) for i in range(nrec))
        pos = 6 + nrec * rec_size
        for _ in range(nrec + 1):
            child = f.addr(buf, pos)
            cn = int.from_bytes(buf[pos + f.sizeof_addr:pos + f.sizeof_addr + nrec_size], "little")
            _need(child >= 0, "an undefined v2 B-tree child")
            stack.append((child, cn, d - 1))
            pos += ptr
    return out


class _FractalHeap:
    """The managed and tiny objects of a fractal heap, by heap ID."""

    def __init__(self, f: Any, address: int) -> None:
        a, n = f.sizeof_addr, f.sizeof_len
        head = f.read(address, 14 + 12 * n + 3 * a + 8, exact=False)
        _need(head[:4] == b"FRHP" and head[4] == 0, "a bad fractal heap header")
        self.f = f
        self.id_len, filters_len, self.flags, max_man = struct.unpack_from("<HHBI", head, 5)
        _need(filters_len == 0, "a fractal heap with I/O filters")
        pos = 14 + n + a + n + a + 8 * n  # up to the table width
        self.width = struct.unpack_from("<H", head, pos)[0]
        pos += 2
        self.start = f.length(head, pos)
        self.max_direct = f.length(head, pos + n)
        pos += 2 * n
        max_heap_bits, _start_rows = struct.unpack_from("<HH", head, pos)
        pos += 4
        self.root = f.addr(head, pos)
        self.root_rows = struct.unpack_from("<H", head, pos + a)[0]
        ok = (self.width > 0 and self.width & (self.width - 1) == 0 and self.start > 0
              and self.start & (self.start - 1) == 0 and self.max_direct >= self.start
              and self.max_direct & (self.max_direct - 1) == 0 and 0 < max_heap_bits <= 64)
        _need(ok, "fractal heap parameters out of range")
        self.off_size = (max_heap_bits + 7) // 8
        self.len_size = min((self.max_direct.bit_length() - 1 + 7) // 8, _enc_size(max_man))
        self.max_direct_rows = (self.max_direct.bit_length() - self.start.bit_length()) + 2
        self._blocks: list[tuple[int, int, int]] | None = None  # (heap offset, size, address)
        self._indirects: set[int] = set()
        self._starts: list[int] = []
        self._data: dict[int, bytes] = {}

    def _row_size(self, row: int) -> int:
        return self.start if row == 0 else self.start << (row - 1)

    def _index(self) -> None:
        """Find every direct block: (heap offset, size, address), sorted by offset."""
        blocks: list[tuple[int, int, int]] = []
        if self.root >= 0:
            if self.root_rows == 0:
                blocks.append((0, self.start, self.root))
            else:
                self._indirect(self.root, self.root_rows, 0, blocks, _MAX_DEPTH)
        blocks.sort()
        self._blocks = blocks
        self._starts = [b[0] for b in blocks]

    def _indirect(self, address: int, nrows: int, offset: int, blocks: list[tuple[int, int, int]],
                  budget: int) -> None:
        _need(budget > 0 and 0 < nrows <= 64 and address not in self._indirects,
              "a fractal heap loop, or one too deep")
        self._indirects.add(address)
        a = self.f.sizeof_addr
        ndirect = min(nrows, self.max_direct_rows) * self.width
        nentries = nrows * self.width
        _need(nentries <= _MAX_COUNT, "a fractal heap indirect block too large")
        buf = self.f.read(address, 5 + a + self.off_size + nentries * a)
        _need(buf[:4] == b"FHIB", "a bad fractal heap indirect block")
        pos = 5 + a + self.off_size
        for i in range(nentries):
            row = i // self.width
            size = self._row_size(row)
            child = self.f.addr(buf, pos + i * a)
            if child >= 0:
                if i < ndirect:
                    blocks.append((offset, size, child))
                else:
                    child_rows = (size.bit_length() - 1) - (self.start * self.width).bit_length() + 2
                    self._indirect(child, child_rows, offset, blocks, budget - 1)
                _need(len(blocks) <= _MAX_COUNT, "too many fractal heap blocks")
            offset += size

    def get(self, heap_id: bytes) -> bytes:
        _need(len(heap_id) >= 1, "an empty heap ID")
        kind = (heap_id[0] >> 4) & 3
        if kind == 2:  # tiny: the object is in the ID
            n = (heap_id[0] & 0x0F) + 1
            _need(1 + n <= len(heap_id), "a bad tiny heap object")
            return heap_id[1:1 + n]
        _need(kind == 0, "a huge fractal heap object")
        off = int.from_bytes(heap_id[1:1 + self.off_size], "little")
        n = int.from_bytes(heap_id[1 + self.off_size:1 + self.off_size + self.len_size], "little")
        if self._blocks is None:
            self._index()
        i = bisect.bisect_right(self._starts, off) - 1
        _need(i >= 0, "a heap object outside every block")
        start, size, address = self._blocks[i]  # type: ignore[index]
        _need(off + n <= start + size, "a heap object past its block")
        data = self._data.get(address)
        if data is None:
            data = self.f.read(address, size)
            _need(data[:4] == b"FHDB", "a bad fractal heap direct block")
            self._data[address] = data
        return data[off - start:off - start + n]
