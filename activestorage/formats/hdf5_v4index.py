"""Layout-v4 chunk indices (``libver="latest"`` files): fixed arrays and version 2 B-trees.

HDF5 1.10+ indexes the chunks of a dataset with no unlimited dimension in a *fixed array* (one
element per chunk of the grid, in C order) and of one with several unlimited dimensions in a v2
B-tree keyed by the chunk's grid coordinates. Both become the same records the v1 chunk B-tree
gives (:meth:`.hdf5_structures.H5File.chunk_records`). Extensible arrays (one unlimited
dimension) and implicit indices are left to h5py (:class:`~.hdf5_structures.NativeUnsupported`).
"""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np

from .hdf5_dense import btree_v2_records
from .hdf5_structures import _MAX_COUNT, _need

__all__ = ["btree_v2_chunk_records", "chunk_records_dtype", "fixed_array_records"]


def chunk_records_dtype(rank: int) -> np.dtype:
    """size, filter mask, element offsets (rank + 1) and address of each chunk."""
    return np.dtype([("size", "<u4"), ("mask", "<u4"), ("offsets", "<u8", (rank + 1,)),
                     ("address", "<u8")])


def _records(addresses: np.ndarray, sizes: Any, masks: Any, coords: np.ndarray,
             chunk_shape: tuple[int, ...]) -> np.ndarray:
    keep = addresses != np.uint64((1 << 64) - 1)
    rank = len(chunk_shape)
    out = np.zeros(int(keep.sum()), chunk_records_dtype(rank))
    out["address"] = addresses[keep]
    out["size"] = np.broadcast_to(sizes, addresses.shape)[keep]
    out["mask"] = np.broadcast_to(masks, addresses.shape)[keep]
    out["offsets"][:, :rank] = coords[keep] * np.asarray(chunk_shape, np.uint64)
    return out


def fixed_array_records(f: Any, address: int, shape: tuple[int, ...],
                        chunk_shape: tuple[int, ...], filtered: bool,
                        chunk_bytes: int) -> np.ndarray:
    """The written chunks of a fixed-array index (one element per grid cell, C order)."""
    a, n = f.sizeof_addr, f.sizeof_len
    _need(a == 8, "a fixed array with addresses other than 8 bytes")
    head = f.read(address, 8 + n + a + 4)
    _need(head[:4] == b"FAHD" and head[4] == 0, "a bad fixed array header")
    client, esize, page_bits = head[5], head[6], head[7]
    nelmts = f.length(head, 8)
    dblock = f.addr(head, 8 + n)
    grid = tuple(-(-s // c) for s, c in zip(shape, chunk_shape))
    _need(nelmts == math.prod(grid) and nelmts <= _MAX_COUNT * 16, "a fixed array of another size")
    _need(client == (1 if filtered else 0), "a fixed array of another client")
    if filtered:
        size_len = esize - a - 4
        _need(1 <= size_len <= 8, "an odd fixed array element")
    else:
        _need(esize == a, "an odd fixed array element")
    if dblock < 0 or nelmts == 0:
        return np.zeros(0, chunk_records_dtype(len(shape)))
    prefix = 6 + a
    page = 1 << page_bits
    if nelmts <= page:
        buf = f.read(dblock, prefix + nelmts * esize)
        _need(buf[:4] == b"FADB", "a bad fixed array data block")
        elements = buf[prefix:]
    else:  # paged: a bitmap of initialised pages, then each page with its own checksum
        npages = -(-nelmts // page)
        nbitmap = -(-npages // 8)
        head = f.read(dblock, prefix + nbitmap)
        _need(head[:4] == b"FADB", "a bad fixed array data block")
        bitmap = head[prefix:]
        parts = []
        pos = dblock + prefix + nbitmap + 4
        for p in range(npages):
            count = min(page, nelmts - p * page)
            if bitmap[p // 8] & (0x80 >> (p % 8)):
                parts.append(f.read(pos, count * esize))
            else:
                parts.append(b"\xff" * (count * esize))  # an uninitialised page: no chunks
            pos += count * esize + 4
        elements = b"".join(parts)
    raw = np.frombuffer(elements, np.uint8, count=nelmts * esize).reshape(nelmts, esize)
    addresses = raw[:, :8].copy().view("<u8").reshape(-1)
    if filtered:
        size_bytes = np.zeros((nelmts, 8), np.uint8)
        size_bytes[:, :size_len] = raw[:, 8:8 + size_len]
        sizes = size_bytes.view("<u8").reshape(-1)
        _need(bool((sizes[addresses != np.uint64((1 << 64) - 1)] < (1 << 32)).all()),
              "a chunk of 4 GiB or more")
        masks = raw[:, 8 + size_len:12 + size_len].copy().view("<u4").reshape(-1)
    else:
        sizes, masks = np.uint32(chunk_bytes), np.uint32(0)
    coords = np.stack(np.unravel_index(np.arange(nelmts), grid), axis=1).astype(np.uint64) \
        if grid else np.zeros((nelmts, 0), np.uint64)
    return _records(addresses, sizes, masks, coords, chunk_shape)


def btree_v2_chunk_records(f: Any, address: int, chunk_shape: tuple[int, ...], filtered: bool,
                           chunk_bytes: int) -> np.ndarray:
    """The written chunks of a v2 B-tree index (record types 10 and 11: scaled coordinates)."""
    rank = len(chunk_shape)
    recs = btree_v2_records(f, address)
    out = np.zeros(len(recs), chunk_records_dtype(rank))
    a = f.sizeof_addr
    for i, (rec, btype) in enumerate(recs):
        _need(btype == (11 if filtered else 10), f"a chunk B-tree of record type {btype}")
        addr = f.addr(rec, 0)
        _need(addr >= 0, "an undefined chunk address")
        if filtered:
            size_len = len(rec) - a - 4 - 8 * rank
            _need(1 <= size_len <= 8, "an odd chunk record")
            size = int.from_bytes(rec[a:a + size_len], "little")
            mask = struct.unpack_from("<I", rec, a + size_len)[0]
            pos = a + size_len + 4
        else:
            _need(len(rec) == a + 8 * rank, "an odd chunk record")
            size, mask, pos = chunk_bytes, 0, a
        _need(size < (1 << 32), "a chunk of 4 GiB or more")
        scaled = struct.unpack_from(f"<{rank}Q", rec, pos)
        out[i]["address"], out[i]["size"], out[i]["mask"] = addr, size, mask
        out[i]["offsets"][:rank] = [s * c for s, c in zip(scaled, chunk_shape)]
    return out
