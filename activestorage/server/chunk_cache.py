"""The server's chunk cache: the raw bytes of upstream ranges, kept for the next request that
reads them (cf-python collapses a variable several times: mean, then max, then min).

What is kept: the stored (still compressed) bytes of one range, so any operation, selection or
missing-data rule reuses them. Keyed by a digest of (caller, store kind, object URL, version id,
offset, size); each entry remembers the ETag the store sent with the bytes.

Who may read an entry (see docs/server/security.md for the threat model):

* the caller part of the key is an HMAC-SHA256 of the access key and secret under a random key
  made when the process starts (never stored, never logged): an entry is only ever found by the
  very credentials that fetched it, and a dump of the cache (or its disk directory) cannot be
  linked back to, or used to test guesses of, a secret. Anonymous callers share only anonymous
  entries;
* with ``revalidate`` (the default) a request about to be answered from the cache first sends one
  HEAD per object with the caller's credentials: the store authorises it as it would the GET, and
  its ETag must equal the entry's (an object overwritten since, or a grant revoked since, is seen
  at once; any failure falls back to the GET, whose error is the one reported). Entries without a
  strong ETag are then never kept. Without ``revalidate``, entries are served until they are
  ``ttl`` seconds old, as the reference Reductionist does.

Bounds: ``max_bytes`` in memory (least recently used out first), ``ttl`` seconds of age, at most
``request_bytes`` added by one request (a huge batch cannot flush everything else), and an optional
disk tier (:class:`DiskTier`) bounded in bytes and age, written atomically.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import secrets
import struct
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge

from .upstream import Target

log = logging.getLogger("activestorage.server.chunk_cache")

ANONYMOUS = "anonymous"


def strong_etag(etag: str | None) -> str | None:
    """The ETag without quotes, or None for none or a weak one (``W/``: equal meaning, not
    necessarily equal bytes, so useless for byte ranges)."""
    if not etag:
        return None
    etag = etag.strip()
    if etag.startswith("W/"):
        return None
    return etag.strip('"') or None


@dataclass(slots=True)
class Entry:
    """One cached range: its bytes, the store's ETag for them, and when they were stored."""

    data: bytes | memoryview
    etag: str | None
    stored: float


def _owned(data: Any) -> Any:
    """``data`` itself when nobody can change it and it is the whole of its buffer (a body as
    :mod:`activestorage.stores.aio_http` returns it); else a copy as ``bytes``."""
    if isinstance(data, memoryview) and data.readonly and data.c_contiguous \
            and data.nbytes == getattr(data.obj, "nbytes", -1):
        return data
    return bytes(data)


class CacheMetrics:
    """Hits, misses, evictions and bytes of a cache, in the server's registry."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        r = registry if registry is not None else CollectorRegistry()
        self.hits = Counter("activestorage_chunk_cache_hits", "ranges answered from the chunk "
                            "cache", ["tier"], registry=r)
        self.misses = Counter("activestorage_chunk_cache_misses",
                              "ranges looked up in the chunk cache and read upstream", registry=r)
        self.evictions = Counter("activestorage_chunk_cache_evictions",
                                 "entries dropped from the chunk cache", ["tier", "reason"],
                                 registry=r)
        self.stored = Counter("activestorage_chunk_cache_stored_bytes",
                              "bytes added to the chunk cache", ["tier"], registry=r)
        self.refused = Counter("activestorage_chunk_cache_refused",
                               "ranges not added to the chunk cache", ["reason"], registry=r)
        self.revalidations = Counter("activestorage_chunk_cache_revalidations",
                                     "authorised HEADs sent to check cached objects", ["result"],
                                     registry=r)
        self.bytes = Gauge("activestorage_chunk_cache_bytes", "bytes held by the chunk cache",
                           ["tier"], registry=r)
        self.entries = Gauge("activestorage_chunk_cache_entries", "entries in the chunk cache",
                             ["tier"], registry=r)


class MemoryTier:
    """A byte-bounded LRU of :class:`Entry` with an age limit (thread-safe)."""

    def __init__(self, max_bytes: int, ttl: float, metrics: CacheMetrics,
                 clock: Callable[[], float]) -> None:
        self.max_bytes = max_bytes
        self.ttl = ttl
        self.used = 0
        self._m = metrics
        self._clock = clock
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        self._lock = threading.Lock()
        # read when scraped: nothing to update per entry
        metrics.bytes.labels("memory").set_function(lambda: self.used)
        metrics.entries.labels("memory").set_function(lambda: len(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> Entry | None:
        with self._lock:
            e = self._entries.get(key)
            if e is None:
                return None
            if self._clock() - e.stored > self.ttl:
                self._drop(key, "age")
                return None
            self._entries.move_to_end(key)
            return e

    def put(self, key: str, entry: Entry) -> bool:
        """Keep ``entry`` (replacing any under ``key``), evicting the least recently used."""
        n = len(entry.data)
        if n > self.max_bytes:
            return False
        with self._lock:
            if key in self._entries:
                self._drop(key, "replaced")
            while self.used + n > self.max_bytes and self._entries:
                self._drop(next(iter(self._entries)), "size")
            self._entries[key] = entry
            self.used += n
        return True

    def discard(self, key: str, reason: str) -> None:
        with self._lock:
            if key in self._entries:
                self._drop(key, reason)

    def _drop(self, key: str, reason: str) -> None:
        e = self._entries.pop(key)
        self.used -= len(e.data)
        self._m.evictions.labels("memory", reason).inc()


_MAGIC = b"ASC1"


class DiskTier:
    """Entries as files in a directory, bounded in bytes and age (thread-safe; call from worker
    threads: it does file I/O).

    A file is ``<a|u>-<digest>.chunk``: ``a`` for anonymous entries, ``u`` for a caller's. Files
    are written to a temporary name and renamed into place (readers never see half a file). At
    start, leftover temporary files and every ``u-`` file are deleted: their keys came from the
    previous process's random HMAC key, so nothing could reach them again (a caller's entries do
    not survive a restart: surviving would need a key kept on disk beside the entries). Anonymous
    entries survive within their age. Several worker processes may share a directory; each bounds
    what it indexed, and a file another removed is a miss.
    """

    def __init__(self, directory: str | os.PathLike[str], max_bytes: int, ttl: float,
                 metrics: CacheMetrics, clock: Callable[[], float] = time.time) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.max_bytes = max_bytes
        self.ttl = ttl
        self.used = 0
        self._m = metrics
        self._clock = clock
        self._lock = threading.Lock()
        self._index: OrderedDict[str, tuple[int, float]] = OrderedDict()  # name -> size, stored
        metrics.bytes.labels("disk").set_function(lambda: self.used)
        metrics.entries.labels("disk").set_function(lambda: len(self._index))
        self._scan()

    def _scan(self) -> None:
        found = []
        for p in self.dir.iterdir():
            if p.name.endswith(".tmp") or p.name.startswith("u-"):
                p.unlink(missing_ok=True)
            elif p.name.startswith("a-") and p.name.endswith(".chunk"):
                st = p.stat()
                found.append((st.st_mtime, p.name, st.st_size))
        now = self._clock()
        for mtime, name, size in sorted(found):
            if now - mtime > self.ttl:
                (self.dir / name).unlink(missing_ok=True)
                continue
            self._index[name] = (size, mtime)
            self.used += size
        with self._lock:
            self._evict(0)

    @staticmethod
    def name(key: str, anonymous: bool) -> str:
        return f"{'a' if anonymous else 'u'}-{key}.chunk"

    def get(self, name: str) -> Entry | None:
        with self._lock:
            meta = self._index.get(name)
            if meta is None:
                return None
            if self._clock() - meta[1] > self.ttl:
                self._drop(name, "age")
                return None
            self._index.move_to_end(name)
        try:
            blob = (self.dir / name).read_bytes()
        except OSError:
            with self._lock:
                if name in self._index:
                    self._drop(name, "missing")
            return None
        if blob[:4] != _MAGIC or len(blob) < 6:
            with self._lock:
                self._drop(name, "corrupt")
            return None
        (n,) = struct.unpack_from("<H", blob, 4)
        etag = blob[6:6 + n].decode("ascii", "replace") or None
        return Entry(blob[6 + n:], etag, meta[1])

    def put(self, name: str, entry: Entry) -> bool:
        etag = (entry.etag or "").encode("ascii", "replace")[:1024]
        size = 6 + len(etag) + len(entry.data)
        if size > self.max_bytes:
            return False
        tmp = self.dir / f".{name}.{os.getpid()}.{threading.get_ident()}.tmp"
        try:
            with open(tmp, "wb") as f:
                f.write(_MAGIC + struct.pack("<H", len(etag)) + etag)
                f.write(entry.data)
            os.replace(tmp, self.dir / name)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            log.warning("chunk cache: could not write to %s (%s)", self.dir, type(exc).__name__)
            return False
        with self._lock:
            if name in self._index:
                self.used -= self._index.pop(name)[0]
            self._evict(size)
            self._index[name] = (size, entry.stored)
            self.used += size
        return True

    def discard(self, name: str, reason: str) -> None:
        with self._lock:
            if name in self._index:
                self._drop(name, reason)

    def _evict(self, room: int) -> None:
        while self._index and self.used + room > self.max_bytes:
            self._drop(next(iter(self._index)), "size")

    def _drop(self, name: str, reason: str) -> None:
        size, _ = self._index.pop(name)
        self.used -= size
        (self.dir / name).unlink(missing_ok=True)
        self._m.evictions.labels("disk", reason).inc()


class ChunkCache:
    """Memory (and optionally disk) cache of raw upstream ranges; :meth:`session` gives each
    request its view (its own HEAD results and its own allowance of bytes to add).

    ``max_bytes`` 0 with no ``disk_dir``: off (every lookup is a plain miss, nothing counted)."""

    def __init__(self, *, max_bytes: int = 256 << 20, ttl: float = 3600.0,
                 request_bytes: int = 128 << 20, revalidate: bool = True,
                 disk_dir: str | os.PathLike[str] | None = None, disk_bytes: int = 4 << 30,
                 registry: CollectorRegistry | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.metrics = CacheMetrics(registry)
        self.revalidate = revalidate
        self.request_bytes = request_bytes
        self.memory = MemoryTier(max_bytes, ttl, self.metrics, clock) if max_bytes > 0 else None
        self.disk = (DiskTier(disk_dir, disk_bytes, ttl, self.metrics, clock)
                     if disk_dir and disk_bytes > 0 else None)
        self._clock = clock
        self._hmac_key = secrets.token_bytes(32)  # per process; never stored or logged

    @property
    def enabled(self) -> bool:
        return self.memory is not None or self.disk is not None

    def caller(self, auth: tuple[str, str] | None) -> str:
        """The caller part of a key: an HMAC of the credentials, or ``anonymous``."""
        if auth is None:
            return ANONYMOUS
        msg = auth[0].encode("utf-8") + b"\0" + auth[1].encode("utf-8")
        return hmac.new(self._hmac_key, msg, hashlib.sha256).hexdigest()

    def key(self, target: Target, offset: int, size: int | None,
            caller: str | None = None) -> str:
        """The digest naming one range of one object for one caller (``caller``: its
        :meth:`caller` tag, when already known)."""
        parts = (caller or self.caller(target.auth), target.kind, target.url,
                 target.version_id or "", str(offset), "" if size is None else str(size))
        return hashlib.sha256("\0".join(parts).encode("utf-8")).hexdigest()

    def get(self, key: str, anonymous: bool) -> tuple[Entry, str] | None:
        """The entry under ``key`` and the tier it came from (a disk hit is copied to memory).
        Blocking when there is a disk tier: call it from a worker thread then."""
        if self.memory is not None:
            e = self.memory.get(key)
            if e is not None:
                return e, "memory"
        if self.disk is not None:
            e = self.disk.get(DiskTier.name(key, anonymous))
            if e is not None:
                if self.memory is not None:
                    self.memory.put(key, e)
                return e, "disk"
        return None

    def put(self, key: str, anonymous: bool, entry: Entry) -> list[str]:
        """Keep ``entry`` in every tier (blocking with a disk tier); the tiers that kept it."""
        kept = []
        if self.memory is not None and self.memory.put(key, entry):
            kept.append("memory")
        if self.disk is not None and self.disk.put(DiskTier.name(key, anonymous), entry):
            kept.append("disk")
        return kept

    def discard(self, key: str, anonymous: bool, reason: str) -> None:
        if self.memory is not None:
            self.memory.discard(key, reason)
        if self.disk is not None:
            self.disk.discard(DiskTier.name(key, anonymous), reason)

    def session(self, etag_of: Callable[[Target], Awaitable[str | None]]) -> "CacheSession":
        """One request's view; ``etag_of(target)`` is the authorised HEAD (see the module doc)."""
        return CacheSession(self, etag_of)


class CacheSession:
    """One request's use of the cache: lookups (revalidated once per object) and additions
    (at most ``request_bytes`` in all)."""

    def __init__(self, cache: ChunkCache,
                 etag_of: Callable[[Target], Awaitable[str | None]]) -> None:
        self.cache = cache
        self.room = cache.request_bytes
        self._etag_of = etag_of
        self._heads: dict[Target, asyncio.Future[str | None]] = {}
        self._callers: dict[tuple[str, str] | None, str] = {}
        self._disk = cache.disk is not None

    def _key(self, target: Target, offset: int, size: int | None) -> str:
        tag = self._callers.get(target.auth)
        if tag is None:
            tag = self._callers[target.auth] = self.cache.caller(target.auth)
        return self.cache.key(target, offset, size, tag)

    async def _current(self, target: Target) -> str | None:
        """The object's ETag now, by one HEAD per object per request (shared by its ranges)."""
        fut = self._heads.get(target)
        if fut is None:
            fut = asyncio.get_running_loop().create_future()
            self._heads[target] = fut
            etag = None
            try:
                etag = strong_etag(await self._etag_of(target))
            except Exception:  # noqa: BLE001 - any failure: do not use the cache, GET instead
                pass
            finally:  # cancelled too: the other ranges of the object must not wait forever
                fut.set_result(etag)
            self.cache.metrics.revalidations.labels("etag" if etag else "failed").inc()
        return await asyncio.shield(fut)

    async def _blocking(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)``: here with memory only, in a worker thread when a disk tier may be
        touched."""
        if not self._disk:
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    async def get(self, target: Target, offset: int, size: int | None) -> bytes | None:
        """The cached bytes of this range, when the caller may have them and they are current;
        None (a miss) otherwise."""
        return (await self.get_many([(target, offset, size)]))[0]

    async def get_many(self, ranges: Sequence[tuple[Target, int, int | None]]
                       ) -> list[bytes | None]:
        """:meth:`get` of each ``(target, offset, size)``, with one HEAD per object (a batch's
        lookups in one pass: no task per range)."""
        c = self.cache
        if not c.enabled or not ranges:
            return [None] * len(ranges)
        keys = [self._key(t, o, n) for t, o, n in ranges]
        found = await self._blocking(
            lambda: [c.get(k, t.auth is None) for k, (t, _o, _n) in zip(keys, ranges)])
        for j, ((t, _o, _n), f) in enumerate(zip(ranges, found)):
            if f is not None and t.etag and f[0].etag != strong_etag(t.etag):
                found[j] = None  # pinned to another version: the GET decides (409 or bytes)
        now: dict[Target, str | None] = {}
        if c.revalidate:
            now = dict.fromkeys(t for (t, _o, _n), f in zip(ranges, found) if f is not None)
            now = dict(zip(now, await asyncio.gather(*(self._current(t) for t in now))))
        out: list[bytes | None] = []
        stale: list[tuple[str, bool]] = []
        hits = {"memory": 0, "disk": 0}
        for (t, _o, _n), key, f in zip(ranges, keys, found):
            if f is None:
                out.append(None)
                continue
            entry, tier = f
            if c.revalidate and now[t] != entry.etag:
                if now[t] is not None:  # the object changed: the entry is of no more use
                    stale.append((key, t.auth is None))
                out.append(None)
                continue
            hits[tier] += 1
            out.append(entry.data)
        if stale:
            await self._blocking(lambda: [c.discard(k, anon, "changed") for k, anon in stale])
        for tier, n in hits.items():
            if n:
                c.metrics.hits.labels(tier).inc(n)
        misses = len(out) - sum(hits.values())
        if misses:
            c.metrics.misses.inc(misses)
        return out

    async def put(self, target: Target, offset: int, size: int | None, data: bytes,
                  etag: str | None) -> None:
        """Offer the bytes a GET of this range brought (with the ETag the store sent)."""
        await self.put_many(target, [(offset, size, data)], etag)

    async def put_many(self, target: Target, ranges: Sequence[tuple[int, int | None, Any]],
                       etag: str | None) -> None:
        """Offer ``(offset, size, bytes)`` ranges of one object that one GET brought (with the
        ETag the store sent), as far as the request's allowance goes: a read-only body the
        upstream client received is kept as it is; a slice is copied (it must not keep a whole
        coalesced read alive)."""
        c = self.cache
        if not c.enabled or not ranges:
            return
        etag = strong_etag(etag)
        if c.revalidate and etag is None:
            c.metrics.refused.labels("no_etag").inc(len(ranges))
            return
        now, anon = c._clock(), target.auth is None
        todo = []
        for offset, size, data in ranges:
            if len(data) > self.room:
                c.metrics.refused.labels("request_bound").inc()
                continue
            self.room -= len(data)
            todo.append((self._key(target, offset, size), data))

        def store() -> None:
            kept = {"memory": 0, "disk": 0}
            refused = 0
            for key, data in todo:
                tiers = c.put(key, anon, Entry(_owned(data), etag, now))
                for t in tiers:
                    kept[t] += len(data)
                refused += not tiers
            for t, n in kept.items():
                if n:
                    c.metrics.stored.labels(t).inc(n)
            if refused:
                c.metrics.refused.labels("too_large").inc(refused)
        await self._blocking(store)
