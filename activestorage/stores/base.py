"""The byte-store interface: read byte ranges of objects, one way for every kind of store.

A :class:`ByteStore` reads ``[start, end)`` of an object (a local file, an S3 object, an HTTP
resource) as a bytes-like object, optionally pinned to an ETag or version (a mismatch is
:class:`~activestorage.errors.ObjectChangedError`). :func:`merge_ranges` is the one range merger
(nearby ranges of one object read by one GET); :func:`status_error` the one translation of a
store's HTTP status into the typed errors. Remote stores share the retry of bodies cut short
(:class:`RemoteStore`).
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Sequence

from ..errors import ObjectChangedError, StorageError, UnsupportedError
from ._body import Consumer, _short, _Transient
from .urls import public_name

log = logging.getLogger(__name__)

#: ranges of one object closer than this are read with one GET (the gap is read and dropped).
DEFAULT_MAX_GAP = 64 * 1024
#: never merge into a single GET larger than this.
DEFAULT_MAX_RANGE = 64 * 1024 * 1024

#: ``account(bytes_read=, bytes_received=, requests=)``: where a store reports what it cost
Account = Callable[..., None]


def _no_account(**_: int) -> None:
    pass


@dataclass(frozen=True)
class ObjectInfo:
    """What a store says about an object: its size, and its ETag and version where it has them
    (so locators can be pinned)."""

    size: int
    etag: str | None = None
    version_id: str | None = None


@dataclass
class RangeGroup:
    """Ranges of one object (and pin) read by a single GET of ``[start, end)``; ``members`` are
    the indices of the ranges in the order of their offsets."""

    url: str
    etag: str | None
    version_id: str | None
    start: int
    end: int
    members: list[int] = field(default_factory=list)


def merge_spans(keys: Sequence[Hashable], starts: Sequence[int], ends: Sequence[int], *,
                max_gap: int = DEFAULT_MAX_GAP,
                max_range: int = DEFAULT_MAX_RANGE) -> list[tuple[Hashable, list[int], int, int]]:
    """The one range merger: ``(key, members, start, end)`` per GET, where ranges ``i`` of one
    ``keys[i]`` (an object and its pin) sorted by start are merged while the next starts within
    ``max_gap`` of the current end and the merge stays <= ``max_range``; ``members`` are indices
    in order of their starts.

    Hand-written rather than ``fsspec.utils.merge_offset_ranges``: callers need which ranges each
    GET serves (fsspec returns only the merged spans, and its ``max_block`` does not bound a
    single range that is larger), and the pin is part of the key.
    """
    by_key: dict[Hashable, list[int]] = {}
    for i, k in enumerate(keys):
        by_key.setdefault(k, []).append(i)
    out: list[tuple[Hashable, list[int], int, int]] = []
    for k, idx in by_key.items():
        idx.sort(key=starts.__getitem__)
        run: list[int] = []
        start = end = 0
        for i in idx:
            o, e = starts[i], ends[i]
            if run and o <= end + max_gap and max(e, end) - start <= max_range:
                run.append(i)
                if e > end:
                    end = e
                continue
            if run:
                out.append((k, run, start, end))
            run, start, end = [i], o, e
        if run:
            out.append((k, run, start, end))
    return out


def merge_ranges(requests: Sequence[Any], *, max_gap: int = DEFAULT_MAX_GAP,
                 max_range: int = DEFAULT_MAX_RANGE) -> list[RangeGroup]:
    """:func:`merge_spans` over chunk requests (objects with ``url``, ``etag``, ``version_id``,
    ``offset``, ``size``): one :class:`RangeGroup` per GET."""
    starts = [r.offset for r in requests]
    ends = []
    for r in requests:
        if r.size is None:
            raise StorageError(f"chunk of {r.url} has no size", status=400, store=r.url)
        ends.append(r.offset + r.size)
    keys = [(r.url or "", r.etag, r.version_id) for r in requests]
    return [RangeGroup(k[0], k[1], k[2], start, end, members)  # type: ignore[index]
            for k, members, start, end in merge_spans(keys, starts, ends, max_gap=max_gap,
                                                      max_range=max_range)]


def changed(url: str, causes: list[str] | None = None, *,
            store: str | None = None) -> ObjectChangedError:
    """The error for a pinned read whose object no longer matches its pin."""
    return ObjectChangedError(f"object changed since manifest was written: {url}", status=409,
                              store=store or url, causes=causes)


def status_error(name: str, http_status: int | None, *, store: str | None = None,
                 code: str = "", message: str = "", reason: str = "", s3: bool = False,
                 not_found: int = 404, rng: str | None = None, total: int | None = None,
                 causes: list[str] | None = None) -> StorageError:
    """The one translation of a store's answer ``http_status`` (with S3's error ``code`` and
    ``message`` where it sent them) into a typed error naming the object ``name`` (and the
    ``store``, where given, as the error's store).

    412 -> ObjectChangedError (409); 404 -> ``not_found`` (the SDK says 404; the server's API
    says 400); 401/403 -> 401 (credentials); 416 -> 400 (the range is past the end); 504 -> 504;
    anything else -> 502 (the store failed, not the caller). The store's own words (S3's
    ``AccessDenied: Access Denied``) are in the message, where clients look for them.
    """
    detail = ": ".join(x for x in (code, message) if x)
    words = detail or f"HTTP {http_status} {reason or ''}".rstrip()
    if not detail and http_status == 403 and s3:  # S3's bare 403 (no error body)
        words = f"Access Denied ({words})"
    if causes is None:
        causes = [f"store answered HTTP {http_status}"
                  + (f": {' - '.join(x for x in (code, message) if x)}" if detail else "")]
    where = f"{name} (store {store})" if store else name
    store = store or name
    if http_status == 412:
        return changed(name, causes, store=store)
    if http_status == 416:
        extra = f", object has {total} bytes" if total is not None else ""
        return StorageError(f"range {rng} is past the end of {where}{extra}", status=400,
                            store=store, causes=causes)
    if http_status == 404:
        what = "bucket" if "Bucket" in code else "object"
        return StorageError(f"{what} not found: {where}: {words}", status=not_found,
                            store=store, causes=causes)
    if http_status in (401, 403):
        return StorageError(f"store refused the credentials for {where}: {words}", status=401,
                            store=store, causes=causes)
    if http_status == 504:
        return StorageError(f"store timed out serving {where}", status=504, store=store,
                            causes=causes)
    tail = f": {detail}" if detail else ""
    return StorageError(f"store failed to serve {where} (HTTP {http_status}){tail}", status=502,
                        store=store, causes=causes)


def same_etag(want: str | None, got: str | None) -> bool:
    """Whether a store's ETag ``got`` matches the pin ``want`` (quotes and W/ ignored; a store
    that reports none cannot be checked here: it was asked with If-Match already)."""
    if not want or not got:
        return True
    return got.strip('"').removeprefix("W/").strip('"') == want.strip('"')


class ByteStore(ABC):
    """Reads byte ranges of objects. Thread-safe; ``close`` releases files and connections."""

    #: "file", "s3" or "http"
    kind: str = "store"

    def __init__(self, account: Account | None = None) -> None:
        self._account = account or _no_account

    @abstractmethod
    def read_range(self, url: str, start: int, end: int, *, etag: str | None = None,
                   version_id: str | None = None, consume: Consumer | None = None) -> Any:
        """The bytes ``[start, end)`` of ``url`` (a bytes-like object); raises StorageError
        naming the object, ObjectChangedError where a pin does not match.

        With ``consume`` the body is not collected: ``consume(body)`` gets the open
        :class:`~activestorage.stores._body._Body` and its result is returned (remote stores)."""

    def read_ranges(self, requests: Sequence[Any], *, max_gap: int = DEFAULT_MAX_GAP,
                    max_range: int = DEFAULT_MAX_RANGE) -> list[Any]:
        """The bytes of each range (objects with ``url``/``offset``/``size`` and pins), in the
        order given, read with one GET per :func:`merge_ranges` group."""
        out: list[Any] = [None] * len(requests)
        for g in merge_ranges(requests, max_gap=max_gap, max_range=max_range):
            view = memoryview(self.read_range(g.url, g.start, g.end, etag=g.etag,
                                              version_id=g.version_id))
            for i in g.members:
                r = requests[i]
                out[i] = view[r.offset - g.start:r.offset - g.start + r.size]
        return out

    @abstractmethod
    def head(self, url: str) -> ObjectInfo:
        """The object's size, ETag and version (one request to a remote store)."""

    def size(self, url: str) -> int:
        """The object's size in bytes."""
        return self.head(url).size

    def read_object(self, url: str) -> Any:
        """The whole object (a metadata document, say); stores that can, read it with one GET."""
        return self.read_range(url, 0, self.head(url).size)

    def find(self, url: str) -> dict[str, ObjectInfo]:
        """Every object under the prefix (directory) ``url``, recursively: ``{url: info}``."""
        raise UnsupportedError(f"{public_name(url)}: a {self.kind} store cannot be listed")

    def list_dir(self, url: str) -> list[str]:
        """The names of the objects and prefixes (directories) directly under ``url``."""
        raise UnsupportedError(f"{public_name(url)}: a {self.kind} store cannot be listed")

    def close(self) -> None:
        """Release files, sessions and connections."""

    def __enter__(self) -> "ByteStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RemoteStore(ByteStore):
    """A store over the network: a range read that fails part-way (reset, body cut short) is read
    again, up to ``retries`` times, with backoff; each attempt counts as a request."""

    def __init__(self, *, timeout: float = 30.0, retries: int = 3,
                 account: Account | None = None) -> None:
        super().__init__(account)
        self.timeout = timeout
        self.retries = retries

    @abstractmethod
    def _get(self, url: str, start: int, end: int, etag: str | None, version_id: str | None,
             consume: Consumer | None) -> Any:
        """One ranged GET (raises ``_Transient`` where reading it again may succeed)."""

    def read_range(self, url: str, start: int, end: int, *, etag: str | None = None,
                   version_id: str | None = None, consume: Consumer | None = None) -> Any:
        if end <= start and consume is None:
            return b""
        attempt = 0
        while True:  # a body cut short is read again: range reads are idempotent
            try:
                data = self._get(url, start, end, etag, version_id, consume)
                if consume is None and len(data) != end - start:
                    raise _short(public_name(url), start, end, len(data))
            except _Transient as exc:
                self._account(requests=1)
                if attempt >= self.retries:
                    raise StorageError(str(exc), status=exc.status, store=exc.store,
                                       causes=exc.causes) from exc
                attempt += 1
                log.info("%s; retry %d/%d", exc, attempt, self.retries)
                time.sleep(0.05 * 2 ** attempt)
                continue
            n = end - start if consume is not None else len(data)
            self._account(bytes_read=n, bytes_received=n, requests=1)
            return data
