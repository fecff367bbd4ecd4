"""Responses that stream their result buffers and hold the memory budget until written.

A result (a 256 MiB selection, a batch of them) is sent from the arrays it lives in, a piece at a
time, with no whole-body copy: the v2 CBOR map is written as its small header, the raw bytes of
the values, then its small tail (:func:`v2_parts`, byte-for-byte what ``cbor2.dumps`` of the same
map gives). The request's reservation in the memory budget is released only when the last byte
has been handed to the connection or the client has gone; a client that stops reading is cut by
the connection's write deadline (:mod:`.protocol`), so a stalled reader cannot hold memory for
longer than that. After a large response the allocator's free pages go back to the OS.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any, Callable, Iterable, Sequence

import cbor2
import numpy as np
from starlette.responses import Response

from ..memory import release_free_memory

#: bytes handed to the connection per ASGI message (the transport buffers at most about this
#: much beyond its high-water mark per stalled client)
PIECE = 1 << 20
#: responses whose reservation is at least this large give freed memory back afterwards
TRIM_AFTER_BYTES = 32 << 20

Part = bytes | memoryview


def cbor_head(major: int, n: int) -> bytes:
    """The CBOR initial bytes of an item of ``major`` type with argument ``n``."""
    m = major << 5
    if n < 24:
        return bytes((m | n,))
    if n < 1 << 8:
        return bytes((m | 24, n))
    if n < 1 << 16:
        return bytes((m | 25,)) + struct.pack(">H", n)
    if n < 1 << 32:
        return bytes((m | 26,)) + struct.pack(">I", n)
    return bytes((m | 27,)) + struct.pack(">Q", n)


#: CBOR encodings of the short strings answers repeat (map keys, dtype names, byte orders)
_STRINGS: dict[str, bytes] = {}


def _cbor_str(v: str) -> bytes:
    enc = _STRINGS.get(v)
    if enc is None:
        enc = cbor2.dumps(v)
        if len(v) <= 32 and len(_STRINGS) < 256:
            _STRINGS[v] = enc
    return enc


def _cbor_value(v: Any) -> bytes:
    """``cbor2.dumps(v)``, byte for byte, with the small values of an answer written directly."""
    t = type(v)
    if t is str:
        return _cbor_str(v)
    if t is list and len(v) < 24 and all(type(n) is int and 0 <= n < 24 for n in v):
        return bytes((0x80 | len(v), *v))  # a shape: a short array of small integers
    if isinstance(v, np.ndarray) and v.dtype.kind in "iu":
        return cbor_uint_array(v)
    return cbor2.dumps(v)


def cbor_map_parts(m: dict[str, Any], raw_key: str = "bytes") -> list[Part]:
    """``m`` as CBOR pieces; ``m[raw_key]`` (an ndarray) is emitted as a byte string straight
    from its memory instead of being copied into the encoding; any other integer ndarray (the
    counts) as a CBOR array of its elements, encoded by NumPy (:func:`cbor_uint_array`)."""
    out: list[Part] = [cbor_head(5, len(m))]
    for k, v in m.items():
        out.append(_cbor_str(k) if type(k) is str else cbor2.dumps(k))
        if k == raw_key and isinstance(v, np.ndarray):
            flat = np.ascontiguousarray(v).reshape(-1).view(np.uint8)
            out.append(cbor_head(2, flat.nbytes))
            out.append(memoryview(flat))
        else:
            out.append(_cbor_value(v))
    return out


#: CBOR's unsigned integer encodings: (exclusive upper bound, initial byte, argument bytes)
_UINT_CLASSES = ((24, None, 0), (1 << 8, 0x18, 1), (1 << 16, 0x19, 2), (1 << 32, 0x1A, 4),
                 (None, 0x1B, 8))


def cbor_uint_array(a: np.ndarray) -> bytes:
    """The CBOR array of the non-negative integers ``a`` (flattened in C order), byte for byte
    what ``cbor2.dumps(a.ravel().tolist())`` gives, without a Python int per element (an axis
    reduction has one count per result element: 64,800 for a 180 x 360 field)."""
    v = np.asarray(a).reshape(-1)
    if v.size <= 64:  # a few counts (a whole chunk's one): cheaper through Python ints
        ints = v.tolist()
        if ints and min(ints) < 0:
            raise ValueError("counts are never negative")
        return cbor2.dumps(ints)
    if v.min() < 0:
        raise ValueError("counts are never negative")
    v = v.astype(np.uint64, copy=False)
    head = cbor_head(4, v.size)
    if not v.size or v.max() < 24:  # the usual case for small chunks: one byte each
        return head + v.astype(np.uint8).tobytes()
    lo, hi = int(v.min()), int(v.max())
    low = 0
    for high, first, n in _UINT_CLASSES:
        if first is not None and lo >= low and (high is None or hi < high):
            # every element in one class (the usual case): one strided fill, no scatter
            rows = np.empty((v.size, 1 + n), np.uint8)
            rows[:, 0] = first
            rows[:, 1:] = v.astype(">u8").view(np.uint8).reshape(-1, 8)[:, 8 - n:]
            return head + rows.tobytes()
        low = high or 0
    sizes = np.ones(v.size, np.int64)
    classes = []
    low = 0
    for high, first, n in _UINT_CLASSES:
        sel = (v >= low) if high is None else (v >= low) & (v < high)
        sizes[sel] = 1 + n
        classes.append((sel, first, n))
        low = high or 0
    starts = np.cumsum(sizes) - sizes
    out = np.empty(int(sizes.sum()), np.uint8)
    for sel, first, n in classes:
        if not sel.any():
            continue
        pos, x = starts[sel], v[sel]
        if first is None:
            out[pos] = x.astype(np.uint8)
            continue
        out[pos] = first
        be = x.astype(">u8").view(np.uint8).reshape(-1, 8)[:, 8 - n:]  # big-endian argument
        out[pos[:, None] + np.arange(1, n + 1)] = be
    return head + out.tobytes()


def nbytes_of(parts: Iterable[Part]) -> int:
    n = 0
    for p in parts:  # a loop, not sum() over a generator: an answer has a dozen small parts
        n += p.nbytes if type(p) is memoryview else len(p)
    return n


class BudgetedResponse(Response):
    """A response of pre-encoded ``parts``, written piece by piece; ``release`` runs once the
    body has been written, the client has gone, or the write failed."""

    def __init__(self, parts: Sequence[Part], *, media_type: str,
                 headers: dict[str, str] | None = None,
                 release: Callable[[], None] | None = None, held: int = 0) -> None:
        self.parts = list(parts)
        # the length among the given headers: where Starlette would put it, without the
        # MutableHeaders rewrite of setting it afterwards
        length = {"content-length": str(nbytes_of(self.parts))}
        super().__init__(b"", headers={**headers, **length} if headers else length,
                         media_type=media_type)
        self._release = release
        self._held = held

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if int(self.headers["content-length"]) <= PIECE:  # the hot path: one small message
            try:
                body = b"".join(self.parts)
                self.parts = []
                await send({"type": "http.response.start", "status": self.status_code,
                            "headers": self.raw_headers})
                await send({"type": "http.response.body", "body": body, "more_body": False})
            finally:
                self.release()
            return
        gone = asyncio.Event()

        async def watch() -> None:  # the request body has been read: next comes a disconnect
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        watcher = asyncio.get_running_loop().create_task(watch())
        try:
            await send({"type": "http.response.start", "status": self.status_code,
                        "headers": self.raw_headers})
            parts, self.parts = self.parts, []
            while parts and not gone.is_set():
                part = memoryview(parts.pop(0)).cast("B")
                for i in range(0, len(part), PIECE):
                    if gone.is_set():
                        break
                    await send({"type": "http.response.body", "body": bytes(part[i:i + PIECE]),
                                "more_body": True})
                del part
            if not gone.is_set():
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            watcher.cancel()
            self.parts = []
            self.release()
            if self._held >= TRIM_AFTER_BYTES:
                await asyncio.get_running_loop().run_in_executor(None, release_free_memory)

    def release(self) -> None:
        """Give the reservation back (once)."""
        release, self._release = self._release, None
        if release is not None:
            release()
