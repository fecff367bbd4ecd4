"""Layout-v4 chunk indices (``libver="latest"`` files): fixed arrays and version 2 B-trees.

HDF5 1.10+ indexes the chunks of a dataset with no unlimited dimension in a *fixed array* (one
element per chunk of the grid over the maximum shape, in C order), of one with one unlimited
dimension in an *extensible array* (the same order, grown in super blocks of data blocks) and of
one with several in a v2 B-tree keyed by the chunk's grid coordinates. All become the records
the v1 chunk B-tree gives (:meth:`.hdf5_structures.H5File.chunk_records`). Implicit indices (early
allocation, no filters) are left to h5py (:class:`~.hdf5_structures.NativeUnsupported`).
"""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np

from .hdf5_dense import btree_v2_records
from .hdf5_structures import MAX_CHUNKS, _need

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
    """The written chunks of a fixed-array index (one element per cell of the grid over the
    maximum shape ``shape``, C order)."""
    a, n = f.sizeof_addr, f.sizeof_len
    _need(a == 8, "a fixed array with addresses other than 8 bytes")
    head = f.read(address, 8 + n + a + 4)
    _need(head[:4] == b"FAHD" and head[4] == 0, "a bad fixed array header")
    client, esize, page_bits = head[5], head[6], head[7]
    nelmts = f.length(head, 8)
    dblock = f.addr(head, 8 + n)
    grid = tuple(-(-s // c) for s, c in zip(shape, chunk_shape))
    _need(nelmts == math.prod(grid) and nelmts <= MAX_CHUNKS, "a fixed array of another size")
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


def extensible_array_records(f: Any, address: int, shape: tuple[int, ...],
                             maxshape: tuple[int | None, ...], chunk_shape: tuple[int, ...],
                             filtered: bool, chunk_bytes: int) -> np.ndarray:
    """The written chunks of an extensible-array index (one unlimited dimension, the first):
    element ``i`` is the chunk at C-order position ``i`` of the grid over the maximum shape."""
    a, n = f.sizeof_addr, f.sizeof_len
    _need(a == 8, "an extensible array with addresses other than 8 bytes")
    _need(bool(maxshape) and maxshape[0] is None and all(m is not None for m in maxshape[1:]),
          "an extensible array whose unlimited dimension is not the first")
    head = f.read(address, 12 + 6 * n + a + 4)
    _need(head[:4] == b"EAHD" and head[4] == 0, "a bad extensible array header")
    client, esize, max_bits, iblk_elmts, dblk_min, sblk_min_ptrs, page_bits = head[5:12]
    nelmts = f.length(head, 12 + 4 * n)  # the maximum index set: elements past it are unset
    iblock = f.addr(head, 12 + 6 * n)
    _need(client == (1 if filtered else 0), "an extensible array of another client")
    size_len = esize - a - 4 if filtered else 0
    _need((1 <= size_len <= 8) if filtered else esize == a, "an odd extensible array element")
    ok = (0 < max_bits <= 64 and dblk_min and dblk_min & (dblk_min - 1) == 0
          and sblk_min_ptrs and sblk_min_ptrs & (sblk_min_ptrs - 1) == 0
          and nelmts <= MAX_CHUNKS)
    _need(bool(ok), "extensible array parameters out of range")
    rank = len(shape)
    if iblock < 0 or nelmts == 0:
        return np.zeros(0, chunk_records_dtype(rank))
    # super block u holds 2**(u//2) data blocks of 2**((u+1)//2) * dblk_min elements each
    nsblks = 1 + max_bits - (dblk_min.bit_length() - 1)
    _need(nsblks <= 64, "too many extensible array super blocks")
    sblk = []  # (data blocks, elements per data block, first element, first data block)
    start = first_dblk = 0
    for u in range(nsblks):
        nd, ne = 1 << (u // 2), (1 << ((u + 1) // 2)) * dblk_min
        sblk.append((nd, ne, start, first_dblk))
        start += nd * ne
        first_dblk += nd
    iblk_sblks = 2 * (sblk_min_ptrs.bit_length() - 1)
    ndblk_addrs = 2 * (sblk_min_ptrs - 1)
    nsblk_addrs = nsblks - iblk_sblks
    off_size = (max_bits + 7) // 8
    page = 1 << page_bits
    buf = f.read(iblock, 6 + a + iblk_elmts * esize + (ndblk_addrs + nsblk_addrs) * a)
    _need(buf[:4] == b"EAIB", "a bad extensible array index block")
    pos = 6 + a
    parts = [buf[pos:pos + iblk_elmts * esize]]
    pos += iblk_elmts * esize
    dblk_addrs = [f.addr(buf, pos + i * a) for i in range(ndblk_addrs)]
    pos += ndblk_addrs * a
    sblk_addrs = [f.addr(buf, pos + i * a) for i in range(nsblk_addrs)]
    undefined = b"\xff" * esize
    remaining = max(0, nelmts - iblk_elmts)
    for u, (nd, ne, _first, first_dblk) in enumerate(sblk):
        if remaining <= 0:
            break
        npages = ne // page if ne > page else 0
        if u < iblk_sblks:
            addrs, bitmap = dblk_addrs[first_dblk:first_dblk + nd], None
        else:
            saddr = sblk_addrs[u - iblk_sblks]
            if saddr < 0:
                addrs, bitmap = [-1] * nd, None
            else:
                # sized as whole bytes per data block, but the bits run on across blocks
                nbitmap = nd * ((npages + 7) // 8)
                sbuf = f.read(saddr, 6 + a + off_size + nbitmap + nd * a)
                _need(sbuf[:4] == b"EASB", "a bad extensible array super block")
                spos = 6 + a + off_size
                bitmap = sbuf[spos:spos + nbitmap]
                spos += nbitmap
                addrs = [f.addr(sbuf, spos + i * a) for i in range(nd)]
        for d, daddr in enumerate(addrs):
            if remaining <= 0:
                break
            count = min(ne, remaining)
            if daddr < 0:
                parts.append(undefined * count)
            elif not npages:
                dbuf = f.read(daddr, 6 + a + off_size + count * esize)
                _need(dbuf[:4] == b"EADB", "a bad extensible array data block")
                parts.append(dbuf[6 + a + off_size:])
            else:  # paged: pages after the block's prefix and checksum, each with a checksum
                ppos = daddr + 6 + a + off_size + 4
                left = count
                for p in range(npages):
                    if left <= 0:
                        break
                    pc = min(page, left)
                    bit = d * npages + p
                    if bitmap is not None and bitmap[bit // 8] & (0x80 >> (bit % 8)):
                        parts.append(f.read(ppos, pc * esize))
                    else:
                        parts.append(undefined * pc)
                    ppos += page * esize + 4
                    left -= pc
            remaining -= count
    elements = b"".join(parts)[:nelmts * esize]
    _need(len(elements) == nelmts * esize, "a short extensible array")
    raw = np.frombuffer(elements, np.uint8).reshape(nelmts, esize)
    addresses = raw[:, :8].copy().view("<u8").reshape(-1)
    if filtered:
        size_bytes = np.zeros((nelmts, 8), np.uint8)
        size_bytes[:, :size_len] = raw[:, 8:8 + size_len]
        sizes = size_bytes.view("<u8").reshape(-1)
        masks = raw[:, 8 + size_len:12 + size_len].copy().view("<u4").reshape(-1)
    else:
        sizes, masks = np.uint32(chunk_bytes), np.uint32(0)
    trailing = tuple(-(-int(m) // c) for m, c in zip(maxshape[1:], chunk_shape[1:]))
    per_row = math.prod(trailing)
    _need(per_row > 0, "an empty extensible array grid")
    idx = np.arange(nelmts, dtype=np.uint64)
    coords = np.empty((nelmts, rank), np.uint64)
    coords[:, 0] = idx // np.uint64(per_row)
    if rank > 1:
        rest = np.unravel_index((idx % np.uint64(per_row)).astype(np.intp), trailing)
        for k, r in enumerate(rest):
            coords[:, k + 1] = r
    return _records(addresses, sizes, masks, coords, chunk_shape)
