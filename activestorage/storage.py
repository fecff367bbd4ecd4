"""Open a dataset URL (local path, ``s3://``, ``http(s)://``) as a seekable file for metadata reads.

HDF5 metadata is many small reads scattered over the file; over a network each one would be a round
trip. :func:`open_url` puts an LRU block cache (fsspec's ``BlockCache``) in front of the byte
store that reads the URL (:mod:`activestorage.stores`, the same stores the backends read chunks
through, with the same options and typed errors) so h5py/h5netcdf read the superblock, object headers and chunk B-trees in a few large range GETs, and
counts what that costs (:class:`StorageStats`: bytes, requests, seconds).

S3 settings follow s3fs (``key``, ``secret``, ``token``, ``anon``, ``endpoint_url``,
``client_kwargs={"endpoint_url": ..., "region_name": ...}``) with the AWS environment variables
(``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``,
``AWS_REGION``/``AWS_DEFAULT_REGION``) as defaults, resolved explicitly by
:func:`resolve_s3_options` so the fetch and server backends agree on endpoint and credentials.
"""

from __future__ import annotations

import base64
import io
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from .errors import StorageError
from .stores.urls import local_path, resolve_s3_options, split_s3_url, url_kind  # noqa: F401

log = logging.getLogger(__name__)

#: block size of the metadata cache. Measured on netCDF-4 files (requests / bytes to open a
#: variable and list its chunk index): with 1600 64-KiB chunks, 16 KiB blocks: 34 / 544 KiB,
#: 64 KiB: 29 / 1.8 MiB, 512 KiB: 28 / 14 MiB. The request count is set by how many chunk B-tree
#: nodes are scattered through the file, the bytes by the block size, so blocks are small; 64 KiB
#: still covers a typical file's header metadata (superblock, object headers) in one GET.
DEFAULT_BLOCK_SIZE = 64 * 1024
#: blocks kept in the LRU cache (bounds memory at DEFAULT_BLOCK_SIZE * DEFAULT_MAX_BLOCKS = 16 MiB).
DEFAULT_MAX_BLOCKS = 256

DEFAULT_AWS_ENDPOINT = "https://s3.amazonaws.com"


def s3_credentials(options: Mapping[str, Any]) -> tuple[str, str] | None:
    """(access key, secret) for resolved options; botocore's chain (profiles, config files) when
    none were given; None for anonymous access."""
    if options.get("anon"):
        return None
    if options.get("key") and options.get("secret"):
        return str(options["key"]), str(options["secret"])
    try:
        import botocore.session

        creds = botocore.session.Session(profile=options.get("profile")).get_credentials()
    except Exception as exc:  # noqa: BLE001 - a broken profile must not crash, just be anonymous
        log.debug("no AWS credentials from botocore: %s", exc)
        return None
    if creds is None or not creds.access_key:
        return None
    return creds.access_key, creds.secret_key


def s3_endpoint(options: Mapping[str, Any]) -> str:
    """The S3 endpoint URL for resolved options (AWS's regional endpoint when none is set)."""
    if options.get("endpoint_url"):
        return str(options["endpoint_url"]).rstrip("/")
    region = (options.get("client_kwargs") or {}).get("region_name")
    return f"https://s3.{region}.amazonaws.com" if region else DEFAULT_AWS_ENDPOINT


def s3_filesystem(options: Mapping[str, Any]) -> Any:
    """An ``s3fs.S3FileSystem`` for resolved options."""
    import s3fs

    kwargs = {k: v for k, v in options.items() if v is not None}
    if not kwargs.get("anon"):
        kwargs.pop("anon", None)
    return s3fs.S3FileSystem(**kwargs)


# ------------------------------------------------------------------------ counting file

@dataclass
class StorageStats:
    """What reading through a :class:`CountingFile` cost: bytes and requests to the store, and
    the seconds spent waiting for them."""

    bytes_read: int = 0
    requests: int = 0
    seconds: float = 0.0


class CountingFile(io.RawIOBase):
    """A read-only seekable file over a store, counting store reads in :attr:`stats`.

    Remote files count each range GET the block cache makes (plus the one HEAD request that finds
    the object's size and ETag); local files count each ``read`` call. :attr:`etag` and
    :attr:`version_id` are the object's, when the store reports them, so locators can be pinned.
    """

    def __init__(self, url: str, inner: Any, *, size: int, etag: str | None = None,
                 version_id: str | None = None, stats: StorageStats | None = None,
                 count_reads: bool = False) -> None:
        super().__init__()
        self.url = url
        self.name = url
        self._inner = inner
        self.size = size
        self.etag = etag
        self.version_id = version_id
        self.stats = stats or StorageStats()
        self._count_reads = count_reads
        self._lock = threading.Lock()

    def _account(self, nbytes: int, seconds: float) -> None:
        with self._lock:
            self.stats.bytes_read += nbytes
            self.stats.requests += 1
            self.stats.seconds += seconds

    def wrap_fetcher(self, fetcher: Callable[[int, int], Any]) -> Callable[[int, int], bytes]:
        """A fetcher that counts what the store's reads cost (the store raises typed errors)."""
        def fetch(start: int, end: int) -> bytes:
            t0 = time.perf_counter()
            data = bytes(fetcher(start, end))  # blocks are small; callers expect bytes
            self._account(len(data), time.perf_counter() - t0)
            return data
        return fetch

    # io interface
    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = 0) -> int:
        return self._inner.seek(pos, whence)

    def tell(self) -> int:
        return self._inner.tell()

    def readinto(self, b: Any) -> int:
        t0 = time.perf_counter()
        mv = memoryview(b).cast("B")
        data = self._inner.read(len(mv))
        n = len(data)
        mv[:n] = data
        if self._count_reads:
            self._account(n, time.perf_counter() - t0)
        return n

    def read(self, n: int = -1) -> bytes:
        t0 = time.perf_counter()
        data = self._inner.read(n)
        if self._count_reads:
            self._account(len(data), time.perf_counter() - t0)
        return data

    def close(self) -> None:
        if not self.closed:
            try:
                self._inner.close()
            finally:
                super().close()


def open_url(url: str, storage_options: Mapping[str, Any] | None = None, *,
             block_size: int = DEFAULT_BLOCK_SIZE, max_blocks: int = DEFAULT_MAX_BLOCKS,
             timeout: float = 30.0, env: Mapping[str, str] | None = None) -> CountingFile:
    """Open ``url`` for reading with a block cache sized for HDF5 metadata; see the module doc.

    Raises :class:`~activestorage.errors.StorageError` (naming the URL) when the object cannot be
    opened: missing bucket/object (status 404), refused credentials (401), unreachable store (502).
    """
    kind = url_kind(url)
    if kind == "file":
        path = local_path(url)
        try:
            f = open(path, "rb")  # noqa: SIM115 - closed by CountingFile.close
        except OSError as exc:
            raise StorageError(f"cannot open {path}: {exc.strerror or exc}", status=404,
                               store=path) from exc
        return CountingFile(path, f, size=os.fstat(f.fileno()).st_size, count_reads=True)

    from fsspec.caching import BlockCache

    from .stores import open_store

    stats = StorageStats()
    t0 = time.perf_counter()
    # retries as s3fs had them for metadata (3 attempts); config_kwargs may say otherwise
    store = open_store(url, storage_options, timeout=timeout, retries=2, env=env)
    try:
        info = store.head(url)  # size, ETag and version id, with a clean 404
    except BaseException:
        store.close()
        raise
    stats.requests += 1  # the HEAD that found size and ETag
    stats.seconds += time.perf_counter() - t0
    cf = CountingFile(url, None, size=info.size,
                      etag=info.etag.strip('"') if info.etag else None,
                      version_id=info.version_id, stats=stats)
    # fsspec's LRU block cache over the store's range reads: HDF5 metadata (superblock, object
    # headers, chunk B-trees) comes in a few block-sized GETs
    def read(start: int, end: int) -> Any:  # the cache asks for whole blocks, even the last
        return store.read_range(url, start, min(end, info.size))

    cache = BlockCache(block_size, cf.wrap_fetcher(read), info.size, maxblocks=max_blocks)
    cf._inner = _CachedFile(cache, info.size, store)
    return cf


class _CachedFile:
    """A seekable read-only file over a block cache (fsspec's cache interface: ``_fetch``)."""

    def __init__(self, cache: Any, size: int, store: Any) -> None:
        self._cache, self._size, self._store, self._pos = cache, size, store, 0

    def seek(self, pos: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._size}[whence]
        if base + pos < 0:
            raise ValueError("negative seek position")
        self._pos = base + pos
        return self._pos

    def tell(self) -> int:
        return self._pos

    def read(self, n: int = -1) -> bytes:
        end = self._size if n is None or n < 0 else min(self._size, self._pos + n)
        if end <= self._pos:
            return b""
        data = self._cache._fetch(self._pos, end)
        self._pos += len(data)
        return data

    def close(self) -> None:
        self._store.close()


def http_options(storage_options: Mapping[str, Any] | None, timeout: float) -> dict[str, Any]:
    """fsspec HTTP options from ``storage_options``: ``headers``, ``username``/``password``
    (Basic auth) and aiohttp ``client_kwargs``; S3-only keys (the same options may be shared with
    s3:// datasets) are ignored."""
    import aiohttp

    opts = dict(storage_options or {})
    client_kwargs = {k: v for k, v in (opts.get("client_kwargs") or {}).items()
                     if k not in ("endpoint_url", "region_name", "verify")}
    client_kwargs.setdefault("timeout", aiohttp.ClientTimeout(total=None, connect=timeout,
                                                              sock_read=timeout))
    out: dict[str, Any] = {"client_kwargs": client_kwargs}
    headers = dict(opts.get("headers") or {})
    if opts.get("username") is not None:
        token = f"{opts['username']}:{opts.get('password') or ''}".encode()
        headers.setdefault("Authorization", "Basic " + base64.b64encode(token).decode())
    if headers:
        out["headers"] = headers
    return out


# ------------------------------------------------------- PyActiveStorage's chunk functions

def read_block(open_file: Any, offset: int, size: int) -> bytes:
    """``size`` bytes at ``offset`` of an open file, leaving its position as it was."""
    place = open_file.tell()
    try:
        open_file.seek(offset)
        return open_file.read(size)
    finally:
        open_file.seek(place)


def filter_pipeline(chunk: Any, compression: Any, filters: Any) -> Any:
    """Undo numcodecs ``compression`` then ``filters`` (in reverse write order) on ``chunk``."""
    if compression is not None:
        chunk = compression.decode(chunk)
    for f in reversed(list(filters or [])):
        chunk = f.decode(chunk)
    return chunk


def mask_missing(data: Any, missing: Any) -> Any:
    """``data`` masked by PyActiveStorage's ``(fill_value, missing_value, valid_min,
    valid_max)`` tuple, with the kernel's missing-data rules."""
    from .compat import mask_missing as _mask

    return _mask(data, missing)


def _read_chunk_bytes(rfile: Any, offset: int, size: int) -> bytes:
    """A chunk's stored bytes from a local path, an http(s)/s3 URL or a pyfive dataset."""
    from .formats.objects import is_pyfive_dataset, locate

    options = None
    if is_pyfive_dataset(rfile):
        from .formats.objects import _pyfive_location

        rfile, options = _pyfive_location(rfile)
    else:
        rfile, options = locate(rfile, None, None)
    with open_url(os.fspath(rfile), options) as f:
        return read_block(f, int(offset), int(size))


def reduce_chunk(rfile: Any, offset: int, size: int, compression: Any, filters: Any,
                 missing: Any, dtype: Any, shape: Any, order: str, chunk_selection: Any,
                 axis: Any, method: Any = None,
                 option_disable_chunk_cache: bool = False) -> tuple[Any, Any]:
    """Read, decode, select, mask and reduce one chunk here (PyActiveStorage's signature).

    ``rfile``: a local path, an http(s)/s3 URL or a pyfive dataset; ``method``: a NumPy
    function (``np.ma.min`` ...) or its name, None for plain data. Returns ``(values, counts)``
    with the reduced axes kept as length 1, or ``(masked data, None)``.
    ``option_disable_chunk_cache`` is accepted for the peer's signature (nothing is cached here).
    """
    from .compat import chunk_request, reduce_bytes

    raw = _read_chunk_bytes(rfile, offset, size)
    req = chunk_request(0, len(raw), compression, filters, missing, dtype, shape, order,
                        chunk_selection, axis, method=method)
    return reduce_bytes(raw, req, method)


def reduce_opens3_chunk(fh: Any, offset: int, size: int, compression: Any, filters: Any,
                        missing: Any, dtype: Any, shape: Any, order: str, chunk_selection: Any,
                        axis: Any, method: Any = None) -> tuple[Any, Any]:
    """:func:`reduce_chunk` for a chunk read from an already open file object ``fh``."""
    from .compat import chunk_request, reduce_bytes

    fh.seek(int(offset))
    raw = fh.read(int(size))
    req = chunk_request(0, len(raw), compression, filters, missing, dtype, shape, order,
                        chunk_selection, axis, method=method)
    return reduce_bytes(raw, req, method)
