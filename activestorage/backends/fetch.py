"""The fetch backend: byte-range reads from S3, HTTP or local files, kernel in-process.

With no reduction server the client reads each chunk's bytes and reduces them itself. One pooled
client per backend does the reads (a botocore S3 client, thread-safe, or a ``requests.Session``),
so threads share connections instead of paying a TCP/TLS handshake per chunk. ``reduce_chunks``
coalesces ranges of the same object that are adjacent (or separated by at most ``max_gap`` bytes)
into one GET, which for contiguous HDF5 chunks turns thousands of small requests into a few;
small chunks stored back to back are then reduced stacked, as the POSIX backend does
(:mod:`activestorage.coalesce`).

A deflated chunk alone in its GET (chunks of 1 MiB or more always are) is inflated as its body
arrives, a piece at a time (:class:`kernel.StoredPieces`), so a thread holds one piece and the
decoded chunk, not the compressed chunk as well; a body cut short is read again from the start.
Bodies sent as is are read from the socket straight into the buffer they end up in
(:class:`_Body`), not through the HTTP client's ``read``, which allocates and copies every piece.

Pinned locators (``etag``/``version_id``) are honoured: S3 gets ``IfMatch``/``VersionId``, HTTP an
``If-Match`` header, and a 412 or a differing ETag raises :class:`ObjectChangedError`.
"""

from __future__ import annotations

import functools
import http.client
import io
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Iterator, Mapping, Sequence

import numpy as np

from ..coalesce import reduce_run, runs
from ..errors import ObjectChangedError, StorageError
from ..kernel import Partial, StoredPieces, reduce_chunk, scratch_bytes, streams
from ..request import ChunkRequest
from ..storage import local_path, resolve_s3_options, split_s3_url, url_kind
from .base import InProcessBackend

log = logging.getLogger(__name__)

#: ranges of one object closer than this are read with one GET (the gap is read and dropped).
DEFAULT_MAX_GAP = 64 * 1024
#: never coalesce into a single GET larger than this.
DEFAULT_MAX_RANGE = 64 * 1024 * 1024


@dataclass
class _Group:
    """Requests of one object whose ranges are read by a single GET of ``[start, end)``."""

    url: str
    etag: str | None
    version_id: str | None
    start: int
    end: int
    members: list[int] = field(default_factory=list)


def coalesce(requests: Sequence[ChunkRequest], *, max_gap: int = DEFAULT_MAX_GAP,
             max_range: int = DEFAULT_MAX_RANGE) -> list[_Group]:
    """Group request indices into byte ranges: same object and pin, sorted by offset, merged when
    the next range starts within ``max_gap`` of the current end and the merge stays <= max_range."""
    order = sorted(range(len(requests)),
                   key=lambda i: (requests[i].url or "", requests[i].etag or "",
                                  requests[i].version_id or "", requests[i].offset))
    groups: list[_Group] = []
    for i in order:
        r = requests[i]
        if r.size is None:
            raise StorageError(f"chunk of {r.url} has no size", status=400, store=r.url)
        start, end = r.offset, r.offset + r.size
        g = groups[-1] if groups else None
        if (g is not None and g.url == r.url and g.etag == r.etag and g.version_id == r.version_id
                and start <= g.end + max_gap and max(end, g.end) - g.start <= max_range):
            g.end = max(g.end, end)
            g.members.append(i)
        else:
            groups.append(_Group(r.url or "", r.etag, r.version_id, start, end, [i]))
    return groups


class FetchBackend(InProcessBackend):
    """Read chunk bytes with range GETs through one pooled client; reduce them in-process.

    ``storage_options``: s3fs-style S3 options (see :func:`~activestorage.storage.resolve_s3_options`;
    for HTTP, ``headers`` and ``username``/``password`` are used). ``max_threads``: connection pool
    size and the concurrency of ``reduce_chunks`` (default ``ACTIVESTORAGE_THREADS`` or 8).
    ``timeout``: connect and read timeout in seconds for every request. ``verify``: TLS verification
    (bool or CA bundle path). ``coalesce``: merge nearby ranges in ``reduce_chunks``.
    """

    name = "fetch"

    def __init__(self, storage_options: Mapping[str, Any] | None = None, *,
                 max_threads: int | None = None, timeout: float = 30.0,
                 verify: bool | str | None = None, coalesce: bool = True,
                 max_gap: int = DEFAULT_MAX_GAP, retries: int = 3,
                 env: Mapping[str, str] | None = None) -> None:
        super().__init__()
        env = os.environ if env is None else env
        self.storage_options = dict(storage_options or {})
        self.max_threads = int(max_threads or env.get("ACTIVESTORAGE_THREADS") or 8)
        #: Active's thread count when the caller gives none (I/O bound: more than the cores)
        self.default_threads = self.max_threads
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
        self._s3: Any = None
        self._http: Any = None
        self._pool: ThreadPoolExecutor | None = None

    # ------------------------------------------------------------------ clients
    def _s3_client(self) -> Any:
        with self._lock:
            if self._s3 is None:
                import botocore.session
                from botocore import UNSIGNED
                from botocore.config import Config

                opts = resolve_s3_options(self.storage_options, self._env)
                client_kwargs = dict(opts.get("client_kwargs") or {})
                config = Config(
                    max_pool_connections=self._pool_size, connect_timeout=self.timeout,
                    read_timeout=self.timeout,
                    retries={"max_attempts": self.retries + 1, "mode": "standard"},
                    signature_version=UNSIGNED if opts.get("anon") else None,
                    s3={"addressing_style": "path"} if opts.get("endpoint_url") else None)
                session = botocore.session.Session(profile=opts.get("profile"))
                self._s3 = session.create_client(
                    "s3", endpoint_url=opts.get("endpoint_url"),
                    region_name=client_kwargs.get("region_name") or "us-east-1",
                    aws_access_key_id=opts.get("key"), aws_secret_access_key=opts.get("secret"),
                    aws_session_token=opts.get("token"),
                    verify=client_kwargs.get("verify", self.verify), config=config)
            return self._s3

    def _http_session(self) -> Any:
        with self._lock:
            if self._http is None:
                import requests
                from requests.adapters import HTTPAdapter
                from urllib3.util.retry import Retry

                s = requests.Session()
                retry = Retry(total=self.retries, backoff_factor=0.2,
                              status_forcelist=(429, 502, 503, 504), allowed_methods=["GET"])
                adapter = HTTPAdapter(pool_connections=4, pool_maxsize=self._pool_size,
                                      max_retries=retry)
                s.mount("http://", adapter)
                s.mount("https://", adapter)
                s.verify = self.verify
                s.headers.update(self.storage_options.get("headers") or {})
                user = self.storage_options.get("username")
                if user is not None:
                    s.auth = (user, self.storage_options.get("password") or "")
                self._http = s
            return self._http

    # ------------------------------------------------------------------- reading
    def read_range(self, url: str, start: int, end: int, *, etag: str | None = None,
                   version_id: str | None = None, consume: Consumer | None = None) -> Any:
        """The bytes ``[start, end)`` of ``url`` (a bytes-like object); raises StorageError
        naming the object.

        With ``consume`` (S3 and HTTP only) the body is not collected: ``consume(body)`` is
        called with the open :class:`_Body` and its result returned. It must check the length
        itself (:class:`_BodyPieces` does); a body failing part-way raises ``_Transient`` out of
        ``body.readinto`` and the range is read again.
        """
        if end <= start and consume is None:
            return b""
        kind = url_kind(url)
        if kind == "file":
            data = self._read_file(url, start, end)
            self._check_length(data, url, start, end)
            self._account(bytes_read=len(data), requests=1)
            return data
        attempt = 0
        while True:  # a body cut short is retried: range reads are idempotent
            try:
                if kind == "s3":
                    data = self._read_s3(url, start, end, etag, version_id, consume)
                else:
                    data = self._read_http(url, start, end, etag, consume)
                if consume is None:
                    self._check_length(data, url, start, end)
            except _Transient as exc:
                self._account(requests=1)
                if attempt >= self.retries:
                    raise StorageError(str(exc), status=exc.status, store=url,
                                       causes=exc.causes) from exc
                attempt += 1
                log.info("%s; retry %d/%d", exc, attempt, self.retries)
                time.sleep(0.05 * 2 ** attempt)
                continue
            n = end - start if consume is not None else len(data)
            self._account(bytes_read=n, bytes_received=n, requests=1)
            return data

    @staticmethod
    def _check_length(data: bytes, url: str, start: int, end: int) -> None:
        if len(data) != end - start:
            raise _short(url, start, end, len(data))

    def _read_file(self, url: str, start: int, end: int) -> Any:
        path = local_path(url)
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as exc:
            raise StorageError(f"cannot open {path}: {exc.strerror}", status=404,
                               store=path) from exc
        try:
            buf = bytearray(end - start)
            mv, pos = memoryview(buf), 0
            while pos < len(buf):
                got = os.preadv(fd, [mv[pos:]], start + pos)
                if not got:
                    return mv[:pos]
                pos += got
            return buf
        finally:
            os.close(fd)

    def _read_s3(self, url: str, start: int, end: int, etag: str | None,
                 version_id: str | None, consume: Consumer | None = None) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        bucket, key = split_s3_url(url)
        kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key, "Range": f"bytes={start}-{end - 1}"}
        if etag:
            kwargs["IfMatch"] = _quote_etag(etag)
        if version_id:
            kwargs["VersionId"] = version_id
        try:
            resp = self._s3_client().get_object(**kwargs)
            body = resp["Body"]
            got = (resp.get("ETag") or "").strip('"')
            if etag and got and got != etag.strip('"'):  # before any of the body is used
                body.close()
                raise ObjectChangedError(f"object changed since manifest was written: {url}",
                                         status=409, store=url)

            def cut(exc: BaseException) -> Exception:  # reset/cut body: urllib3 or botocore
                return _Transient(f"reading {url}: body cut short: {exc}", status=502,
                                  store=url, causes=[f"{type(exc).__name__}: {exc}"])

            def read(k: int) -> bytes:
                try:
                    return body.read(k)
                except Exception as exc:  # noqa: BLE001
                    raise cut(exc) from exc
            try:
                got_body = _Body(read, end - start, getattr(body, "_raw_stream", None), cut)
                data = (consume or _read_body)(got_body)
            finally:
                body.close()
        except ClientError as exc:
            raise _s3_error(exc, url) from exc
        except BotoCoreError as exc:
            timeout = "timeout" in type(exc).__name__.lower()
            raise StorageError(f"reading {url}: {exc}", status=504 if timeout else 502,
                               store=url, causes=[str(exc)]) from exc
        return data

    def _read_http(self, url: str, start: int, end: int, etag: str | None,
                   consume: Consumer | None = None) -> Any:
        import requests
        import urllib3

        headers = {"Range": f"bytes={start}-{end - 1}"}
        if etag:
            headers["If-Match"] = _quote_etag(etag)
        try:
            with self._http_session().get(url, headers=headers, stream=True,
                                          timeout=self.timeout) as resp:
                if resp.status_code == 412:
                    raise ObjectChangedError(f"object changed since manifest was written: {url}",
                                             status=409, store=url)
                if resp.status_code not in (200, 206):
                    status = {404: 404, 401: 401, 403: 401}.get(resp.status_code, 502)
                    raise StorageError(f"reading {url}: HTTP {resp.status_code} {resp.reason}",
                                       status=status, store=url,
                                       causes=[f"HTTP {resp.status_code}"])
                got = (resp.headers.get("ETag") or "").strip('"').removeprefix("W/").strip('"')
                if etag and got and got != etag.strip('"'):
                    raise ObjectChangedError(f"object changed since manifest was written: {url}",
                                             status=409, store=url)
                try:
                    if resp.status_code == 206:
                        return (consume or _read_body)(_Body(
                            functools.partial(resp.raw.read, decode_content=True), end - start,
                            resp.raw, functools.partial(_http_body_error, url, self.timeout)))
                    # 200: the server ignored Range; read (bounded) up to the end of our range.
                    data = resp.raw.read(end, decode_content=True)[start:end]
                    return data if consume is None else consume(
                        _Body(io.BytesIO(data).read, end - start))
                except urllib3.exceptions.ReadTimeoutError as exc:
                    raise StorageError(f"reading {url} timed out after {self.timeout}s",
                                       status=504, store=url, causes=[str(exc)]) from exc
                except (urllib3.exceptions.HTTPError, OSError) as exc:
                    raise _Transient(f"reading {url}: body cut short: {exc}", status=502,
                                     store=url, causes=[f"{type(exc).__name__}: {exc}"]) from exc
        except requests.Timeout as exc:
            raise StorageError(f"reading {url} timed out after {self.timeout}s", status=504,
                               store=url, causes=[str(exc)]) from exc
        except requests.RequestException as exc:
            raise StorageError(f"reading {url} failed: {exc}", status=502, store=url,
                               causes=[str(exc)]) from exc

    # ------------------------------------------------------------------ reducing
    def reduce_chunk(self, request: ChunkRequest, operation: str) -> Partial:
        if request.url is None or request.size is None:
            raise StorageError("chunk request has no url/size", status=400)
        return self._reduce([request], operation, None)[0]  # type: ignore[return-value]

    def _reduce(self, requests: Sequence[ChunkRequest], operation: str,
                slots: Sequence[Hashable] | None) -> list[Partial | None]:
        if not requests:
            return []
        if not self.coalesce:
            groups = [_Group(r.url or "", r.etag, r.version_id, r.offset,
                             r.offset + (r.size or 0), [i]) for i, r in enumerate(requests)]
        else:
            groups = coalesce(requests, max_gap=self.max_gap)
        out: list[Partial | None] = [None] * len(requests)

        def run(g: _Group) -> None:
            if len(g.members) == 1 and operation != "select" and g.end > g.start \
                    and url_kind(g.url) != "file" and streams(requests[g.members[0]]):
                req = requests[g.members[0]]

                def inflate(body: _Body) -> Partial:
                    pieces = _BodyPieces(body, g.url, g.start)
                    partial = reduce_chunk(pieces, req, operation)
                    pieces.finish()  # so the whole body is checked, however soon inflating ended
                    return partial
                out[g.members[0]] = self.read_range(g.url, g.start, g.end, etag=g.etag,
                                                    version_id=g.version_id, consume=inflate)
                return
            raw = self.read_range(g.url, g.start, g.end, etag=g.etag, version_id=g.version_id)
            view = memoryview(raw)
            reqs = [requests[i] for i in g.members]  # sorted by offset
            spans = ([(j, j + 1) for j in range(len(reqs))] if operation == "select"
                     else runs(reqs))
            # one buffer for the group's decoded chunks instead of fresh memory for each
            decoded = scratch_bytes(reqs)
            scratch = np.empty(decoded, np.uint8) if decoded and len(reqs) > 1 else None
            for a, b in spans:  # small back-to-back chunks are reduced stacked
                lo = reqs[a].offset - g.start
                hi = reqs[b - 1].offset + (reqs[b - 1].size or 0) - g.start
                if b - a == 1:
                    out[g.members[a]] = reduce_chunk(view[lo:hi], reqs[a], operation, scratch)
                    continue
                members = g.members[a:b]
                parts = reduce_run(view[lo:hi], reqs[a:b], operation,
                                   None if slots is None else [slots[i] for i in members])
                for i, p in zip(members, parts):
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
            http, self._http = self._http, None
            s3, self._s3 = self._s3, None
        if pool is not None:
            pool.shutdown(wait=True)
        if http is not None:
            http.close()
        if s3 is not None:
            s3.close()


class _Transient(StorageError):
    """A read that failed part-way (reset, body cut short): worth retrying."""


def _short(url: str, start: int, end: int, got: int) -> _Transient:
    return _Transient(f"short read from {url}: wanted bytes {start}-{end - 1}, got {got} bytes "
                      "(body cut short, or the object was truncated or replaced)", status=502,
                      store=url)


#: ``consume(body)``: does something with a response body while it is open
Consumer = Callable[["_Body"], Any]


#: bodies the HTTP client must hand over itself (decoded, or with no socket reader to reach) are
#: read this many bytes at a time into the buffer they end up in: the client holds each piece
#: about twice (what it read and the copy it returns), so smaller pieces hold less; 256 KiB ones
#: took ~30 % longer over loopback.
BODY_PIECE = 512 * 1024
#: deflated bodies are handed to the inflater this many bytes at a time (inflating, not reading,
#: sets the pace there)
STREAM_PIECE = 256 * 1024


def _socket_reader(raw: Any) -> http.client.HTTPResponse | None:
    """The ``http.client`` response under a urllib3 one (``requests``' ``resp.raw``, botocore's
    ``Body._raw_stream``) when its body arrives as sent (no Content-Encoding to undo) and none
    of it has been read yet; else None."""
    fp = getattr(raw, "_fp", None)
    headers = getattr(raw, "headers", None)
    if not isinstance(fp, http.client.HTTPResponse) or headers is None or fp.isclosed():
        return None
    if headers.get("Content-Encoding", "identity").strip().lower() not in ("", "identity"):
        return None
    if getattr(raw, "_fp_bytes_read", 1) != 0 or len(getattr(raw, "_decoded_buffer", ())):
        return None
    return fp


def _http_body_error(url: str, timeout: float, exc: BaseException) -> Exception:
    """What a failure reading an HTTP body straight from its socket becomes: a stall is the
    store's timeout (504), anything else a body cut short (read again)."""
    if isinstance(exc, TimeoutError):
        return StorageError(f"reading {url} timed out after {timeout}s", status=504, store=url,
                            causes=[str(exc)])
    return _Transient(f"reading {url}: body cut short: {exc}", status=502, store=url,
                      causes=[f"{type(exc).__name__}: {exc}"])


class _Body:
    """An open response body; ``n`` is the length of the range asked for.

    :meth:`readinto` fills the caller's buffer. Where the body arrives as sent and the HTTP
    client's ``http.client`` response can be reached (:func:`_socket_reader`), it is read
    straight from the socket into that buffer: the client's own ``read`` allocates every piece
    and copies it (twice on Python 3.11), which with 8 threads held megabytes more. ``error``
    turns a failure of such a read into the caller's exception; errors of ``read`` are the
    caller's already.
    """

    def __init__(self, read: Callable[[int], bytes], n: int, raw: Any = None,
                 error: Callable[[BaseException], Exception] | None = None) -> None:
        self.n = n
        self._read = read
        self._raw = raw
        self._fp = _socket_reader(raw) if error is not None else None
        self._error = error

    def readinto(self, mv: memoryview) -> int:
        """Up to ``len(mv)`` bytes into ``mv``; 0 once the body has ended."""
        if self._fp is None:
            piece = self._read(min(len(mv), BODY_PIECE))
            mv[:len(piece)] = piece
            return len(piece)
        try:
            return self._fp.readinto(mv)
        except (OSError, ValueError, http.client.HTTPException) as exc:
            raise self._error(exc) from exc  # type: ignore[misc]

    def finish(self) -> None:
        """Call once the range has been read: one byte more is asked for, so a body cut short
        of a longer declared length is an error, as reading it whole would make it (anything
        past the range is ignored); a body read from its socket to its end gives its
        connection back for reuse, as the client's own reads do."""
        if self._fp is None:
            self._read(1)
            return
        fp = self._fp
        if not fp.isclosed() and not self.readinto(memoryview(bytearray(1))) and fp.length:
            raise self._error(http.client.IncompleteRead(b"", fp.length))  # type: ignore[misc]
        if fp.isclosed():
            release = getattr(self._raw, "release_conn", None)
            if release is not None:
                release()


def _read_body(body: _Body) -> Any:
    """The range's bytes, read into one buffer: a body that ends early gives fewer bytes, never
    more; the body is then checked against its declared length (:meth:`_Body.finish`)."""
    n = body.n
    buf = bytearray(n)
    mv, pos = memoryview(buf), 0
    while pos < n:
        got = body.readinto(mv[pos:])
        if not got:
            return mv[:pos]
        pos += got
    body.finish()
    return buf


class _BodyPieces(StoredPieces):
    """A range body handed to the inflater a piece at a time, as it arrives, each read into the
    same buffer; one that ends early raises ``_Transient`` (the range is read again), as a
    short whole read does."""

    def __init__(self, body: _Body, url: str, start: int) -> None:
        self._body, self._n, self._url, self._start = body, body.n, url, start
        self._buf = memoryview(bytearray(min(STREAM_PIECE, body.n)))
        self._pos = 0
        self._checked = False

    @property
    def nbytes(self) -> int:
        return self._n

    def _next(self) -> memoryview:
        got = self._body.readinto(self._buf[:self._n - self._pos])
        if not got:
            raise _short(self._url, self._start, self._start + self._n, self._pos)
        self._pos += got
        return self._buf[:got]

    def pieces(self) -> Iterator[Any]:
        while self._pos < self._n:
            yield self._next()
        self.finish()

    def finish(self) -> None:
        """Read what the consumer left of the body (nothing, unless its stream ended early)
        and check it against its declared length, as when a body is read whole."""
        if self._checked:
            return
        while self._pos < self._n:
            self._next()
        self._checked = True
        self._body.finish()


def _quote_etag(etag: str) -> str:
    return etag if etag.startswith('"') else f'"{etag}"'


def _s3_error(exc: Any, url: str) -> StorageError:
    err = exc.response.get("Error", {}) if isinstance(exc.response, dict) else {}
    code = str(err.get("Code", ""))
    msg = str(err.get("Message", "")) or str(exc)
    http = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") if isinstance(
        exc.response, dict) else None
    if code in ("PreconditionFailed", "412") or http == 412:
        return ObjectChangedError(f"object changed since manifest was written: {url}",
                                  status=409, store=url, causes=[f"{code}: {msg}"])
    if code in ("NoSuchKey", "NoSuchBucket", "NoSuchVersion", "404") or http == 404:
        status, what = 404, "not found"
    elif code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403") or http in (
            401, 403):
        status, what = 401, "access denied (check the access key and secret)"
    else:
        status, what = 502, "failed"
    return StorageError(f"reading {url}: {what}: {code} {msg}".rstrip(), status=status, store=url,
                        causes=[f"{code}: {msg}"])
