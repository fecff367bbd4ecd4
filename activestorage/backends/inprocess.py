"""The in-process backend: read chunk bytes through a byte store, run the kernel here.

Bytes come from :mod:`activestorage.stores` (local files, S3, HTTP); this module only plans the
reads and reduces what they return. Two read plans, chosen by the backend's configuration:

- *thread buffers* (``posix``, local files): each run of chunks is read on the calling thread into
  a buffer that thread keeps (:meth:`LocalStore.read_into`, one copy into memory hot in cache), so
  RSS is threads x the largest read whatever the file's size; deflated chunks are read a piece at
  a time as they inflate; with ``use_mmap`` uncompressed chunks are reduced from a map of the file.
- *merged GETs* (``fetch``, any store): ranges of one object that are adjacent or within
  ``max_gap`` are read by one GET (:func:`~activestorage.stores.merge_ranges`), the GETs run on
  this backend's thread pool, and a deflated chunk alone in its GET is inflated as its body
  arrives.

Either way a read is cut into reductions the same way (:func:`_spans`: small chunks stored back
to back reduced stacked, :mod:`activestorage.coalesce`; ``select`` results get bytes of their
own) and reduced by one function (:func:`_reduce_span`). What stays two is only where the bytes
are read and into what memory: a local read is a ``pread`` (microseconds), so it runs on the
calling thread into that thread's kept buffer, and merging ranges across gaps would only read
bytes nobody needs; a remote read is a round trip (milliseconds), so nearby ranges share a GET and
GETs overlap on a pool, each into memory of its own. Running local reads through the merged plan
costs a pool hand-off and a fresh buffer per read, and ~1 us of planning per chunk (a
``RangeGroup`` per run) on the path where the whole per-chunk budget is ~2.5 us.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Hashable, Mapping, Sequence

import numpy as np

from ..coalesce import reduce_run, runs
from ..errors import StorageError
from ..kernel import Partial, reduce_chunk, scratch_bytes, streams
from ..request import ChunkRequest
from ..stores import DEFAULT_MAX_GAP, ByteStore, RangeGroup, merge_ranges, url_kind
from ..stores._body import _Body, _BodyPieces
from ..stores.local import LocalStore
from .base import InProcessBackend


class StoreBackend(InProcessBackend):
    """Reduce chunks in-process on bytes read through byte stores.

    ``thread_buffers``: read local runs into per-thread buffers on the calling thread (the
    ``posix`` plan) instead of merged GETs on a pool (the ``fetch`` plan). ``use_mmap``: see
    :class:`~activestorage.stores.local.LocalStore`. The rest configures remote stores and the
    pool: ``storage_options`` (s3fs-style), ``max_threads``, ``timeout``, ``verify``, ``retries``,
    ``coalesce``/``max_gap`` (merging of nearby ranges).
    """

    def __init__(self, storage_options: Mapping[str, Any] | None = None, *,
                 thread_buffers: bool = False, use_mmap: bool | None = False,
                 max_threads: int | None = None, timeout: float = 30.0,
                 verify: bool | str | None = None, coalesce: bool = True,
                 max_gap: int = DEFAULT_MAX_GAP, retries: int = 3,
                 env: Mapping[str, str] | None = None) -> None:
        super().__init__()
        env = os.environ if env is None else env
        self.storage_options = dict(storage_options or {})
        self.thread_buffers = thread_buffers
        self.max_threads = int(max_threads or env.get("ACTIVESTORAGE_THREADS") or 8)
        # reads run on the caller's threads (a call with one GET) and on this backend's own pool
        # (calls with several): keep a connection for each, or urllib3 discards them noisily
        self._pool_size = 2 * self.max_threads
        self.timeout = timeout
        self.verify = True if verify is None else verify
        self.coalesce = coalesce
        self.max_gap = max_gap
        self.retries = retries
        self._env = env
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._local = threading.local()  # each thread's read and decode buffers, kept
        # a file named by the caller that is missing is their mistake (400); one a manifest
        # names, read by fetch, is not found (404)
        self.files = LocalStore(use_mmap, missing_status=400 if thread_buffers else 404,
                                account=self._account)
        self._stores: dict[str, ByteStore] = {"file": self.files}

    # ------------------------------------------------------------------- stores
    def store(self, url: str) -> ByteStore:
        """The store reading ``url``, made on first use and kept (pooled connections)."""
        kind = url_kind(url)
        kind = "http" if kind == "https" else kind
        store = self._stores.get(kind)
        if store is None:
            with self._lock:
                store = self._stores.get(kind)
                if store is None:
                    store = self._make_store(kind)
                    self._stores[kind] = store
        return store

    def _make_store(self, kind: str) -> ByteStore:
        if kind == "s3":
            from ..stores.s3 import S3Store

            return S3Store(self.storage_options, pool_size=self._pool_size,
                           timeout=self.timeout, retries=self.retries, verify=self.verify,
                           env=self._env, account=self._account)
        from ..stores.http import HTTPStore

        return HTTPStore(self.storage_options, pool_size=self._pool_size, timeout=self.timeout,
                         retries=self.retries, verify=self.verify, account=self._account)

    def read_range(self, url: str, start: int, end: int, *, etag: str | None = None,
                   version_id: str | None = None, consume: Any = None) -> Any:
        """The bytes ``[start, end)`` of ``url`` through its store (see
        :meth:`ByteStore.read_range`)."""
        return self.store(url).read_range(url, start, end, etag=etag, version_id=version_id,
                                          consume=consume)

    def _buffer(self, name: str, size: int) -> bytearray:
        """This thread's reusable buffer ``name`` ("read", "piece" or "scratch"), at least ``size``
        bytes (memory already touched and in cache; one of each per thread, so RSS stays bounded)."""
        buf = getattr(self._local, name, None)
        if buf is None or len(buf) < size:
            # grow by a quarter at least: compressed sizes vary a little from batch to batch
            buf = bytearray(size if buf is None else max(size, len(buf) * 5 // 4))
            setattr(self._local, name, buf)
        return buf

    # ------------------------------------------------------------------ reducing
    def reduce_chunk(self, request: ChunkRequest, operation: str) -> Partial:
        if not self.thread_buffers and (request.url is None or request.size is None):
            raise StorageError("chunk request has no url/size", status=400)
        return self._reduce([request], operation, None)[0]  # type: ignore[return-value]

    def _reduce(self, requests: Sequence[ChunkRequest], operation: str,
                slots: Sequence[Hashable] | None) -> list[Partial | None]:
        if self.thread_buffers:
            return self._reduce_in_thread(requests, operation, slots)
        return self._reduce_merged(requests, operation, slots)

    def _reduce_in_thread(self, requests: Sequence[ChunkRequest], operation: str,
                          slots: Sequence[Hashable] | None) -> list[Partial | None]:
        """The thread-buffer plan: runs of local chunks read on this thread into its buffers."""
        from ..stores import local

        files = self.files
        out: list[Partial | None] = []
        own = operation == "select"  # selections keep their bytes: no shared buffer
        spans = _spans(requests, operation)
        sizes = [sum(q.size for q in requests[a:b]) for a, b in spans]  # type: ignore[misc]
        # decoded chunks (codecs undone) go to this thread's scratch buffer, not fresh memory
        decoded = scratch_bytes(requests)
        # Stored bytes that are decoded anyway are read into this thread's buffer: the copy is
        # small next to inflating them, and mapping them would add the page cache's large folios
        # around each range to RSS. Deflated chunks are read a piece at a time as they inflate,
        # so the buffer is one piece, not one compressed chunk. With the map, uncompressed chunks
        # are reduced from it, no copy.
        map_ok = not own and not decoded and files.mapping()
        streamed = [not own and b - a == 1 and streams(requests[a]) for a, b in spans]
        whole = [size for size, st in zip(sizes, streamed) if not st]
        buf = None if own or map_ok or not whole else self._buffer("read", max(whole))
        work = np.frombuffer(self._buffer("scratch", decoded), np.uint8) if decoded else None
        for (a, b), size, st in zip(spans, sizes, streamed):
            r = requests[a]
            raw: Any
            if st:
                raw = files.pieces(r.url, r.offset, size,  # type: ignore[arg-type]
                                   self._buffer("piece", local.STREAM_PIECE))
            else:
                raw = files.read_into(r.url, r.offset, size, buf, map_ok)  # type: ignore[arg-type]
            try:
                out.extend(_reduce_span(raw, requests, a, b, operation, slots, work))
            finally:
                files.release(r.url, raw, r.offset, size)  # type: ignore[arg-type]
            del raw
        self._account(bytes_read=sum(sizes), requests=len(spans))
        return out

    def _reduce_merged(self, requests: Sequence[ChunkRequest], operation: str,
                       slots: Sequence[Hashable] | None) -> list[Partial | None]:
        """The merged-GET plan: nearby ranges of one object read by one GET, GETs in parallel."""
        if not requests:
            return []
        if not self.coalesce:
            groups = [RangeGroup(r.url or "", r.etag, r.version_id, r.offset,
                                 r.offset + (r.size or 0), [i]) for i, r in enumerate(requests)]
        else:
            groups = merge_ranges(requests, max_gap=self.max_gap)
        out: list[Partial | None] = [None] * len(requests)

        def run(g: RangeGroup) -> None:
            store = self.store(g.url)
            if len(g.members) == 1 and operation != "select" and g.end > g.start \
                    and store.kind != "file" and streams(requests[g.members[0]]):
                req = requests[g.members[0]]

                def inflate(body: _Body) -> Partial:
                    pieces = _BodyPieces(body, g.url, g.start)
                    partial = reduce_chunk(pieces, req, operation)
                    pieces.finish()  # so the whole body is checked, however soon inflating ended
                    return partial
                out[g.members[0]] = store.read_range(g.url, g.start, g.end, etag=g.etag,
                                                     version_id=g.version_id, consume=inflate)
                return
            raw = store.read_range(g.url, g.start, g.end, etag=g.etag, version_id=g.version_id)
            view = memoryview(raw)
            members = g.members  # sorted by offset
            reqs = [requests[i] for i in members]
            group_slots = None if slots is None else [slots[i] for i in members]
            # one buffer for the group's decoded chunks instead of fresh memory for each
            decoded = scratch_bytes(reqs)
            scratch = np.empty(decoded, np.uint8) if decoded and len(reqs) > 1 else None
            for a, b in _spans(reqs, operation):  # small back-to-back chunks reduced stacked
                lo = reqs[a].offset - g.start
                hi = reqs[b - 1].offset + (reqs[b - 1].size or 0) - g.start
                parts = _reduce_span(view[lo:hi], reqs, a, b, operation, group_slots, scratch)
                for i, p in zip(members[a:b], parts):
                    out[i] = p

        if len(groups) == 1 or self.max_threads <= 1:
            for g in groups:
                run(g)
        else:
            for fut in [self._executor().submit(run, g) for g in groups]:
                fut.result()
        return out

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.max_threads, thread_name_prefix="as-fetch")
            return self._pool

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
            stores = list(self._stores.values())
            self._stores = {"file": self.files}
        if pool is not None:
            pool.shutdown(wait=True)
        for store in stores:
            store.close()


def _spans(reqs: Sequence[ChunkRequest], operation: str) -> list[tuple[int, int]]:
    """How both plans cut the chunks of a read into reductions: ``(a, b)`` index spans, a run of
    small chunks stored back to back as one (:func:`~activestorage.coalesce.runs`), each chunk on
    its own for ``select`` (selections keep their bytes)."""
    if operation == "select":
        return [(i, i + 1) for i in range(len(reqs))]
    return runs(reqs)


def _reduce_span(raw: Any, reqs: Sequence[ChunkRequest], a: int, b: int, operation: str,
                 slots: Sequence[Hashable] | None, scratch: Any) -> list[Partial | None]:
    """The partials of ``reqs[a:b]``, whose stored bytes are ``raw`` back to back: one chunk by
    the kernel (decoding into ``scratch``), a run stacked (:func:`~activestorage.coalesce.reduce_run`,
    ``slots`` saying which partials it may fold)."""
    if b - a == 1:
        return [reduce_chunk(raw, reqs[a], operation, scratch)]
    return reduce_run(raw, reqs[a:b], operation, None if slots is None else slots[a:b])

