"""HTTP(S) resources: ranged GETs through one pooled ``requests.Session``.

``storage_options``: ``headers`` and ``username``/``password`` (basic auth). GETs are retried by
urllib3 (``Retry``) on 429/502/503/504; a pin is sent as ``If-Match`` and a 412 or a differing ETag
is :class:`ObjectChangedError`. A server that ignores ``Range`` (200) is read only up to the end of
the range asked for.

:class:`AsyncHTTPStore` is the async face the reduction server reads S3 and HTTP stores through
(its HTTP/1.1 client, :mod:`.aio_http`, receives bodies straight into the buffer returned).
"""

from __future__ import annotations

import asyncio
import functools
import io
import re
import socket
import threading
from collections import OrderedDict
from typing import Any, Callable, Mapping

from ..errors import StorageError
from ._body import Consumer, _Body, _http_body_error, _quote_etag, _read_body, _Transient
from .aio_http import Check, HTTPError, Pool, Response, system_resolve
from .base import Account, ObjectInfo, RemoteStore, changed, same_etag, status_error
from .urls import public_name


class HTTPStore(RemoteStore):
    """Ranged reads of ``http(s)://`` URLs. ``pool_size``: connections kept per host."""

    kind = "http"

    def __init__(self, storage_options: Mapping[str, Any] | None = None, *, pool_size: int = 16,
                 timeout: float = 30.0, retries: int = 3, verify: bool | str = True,
                 account: Account | None = None) -> None:
        super().__init__(timeout=timeout, retries=retries, account=account)
        self.storage_options = dict(storage_options or {})
        self.pool_size = pool_size
        self.verify = verify
        self._lock = threading.Lock()
        self._session: Any = None

    def session(self) -> Any:
        """The ``requests.Session``, made on first use."""
        with self._lock:
            if self._session is None:
                import requests
                from requests.adapters import HTTPAdapter
                from urllib3.util.retry import Retry

                s = requests.Session()
                retry = Retry(total=self.retries, backoff_factor=0.2,
                              status_forcelist=(429, 502, 503, 504), allowed_methods=["GET"])
                adapter = HTTPAdapter(pool_connections=4, pool_maxsize=self.pool_size,
                                      max_retries=retry)
                s.mount("http://", adapter)
                s.mount("https://", adapter)
                s.verify = self.verify
                s.headers.update(self.storage_options.get("headers") or {})
                user = self.storage_options.get("username")
                if user is not None:
                    s.auth = (user, self.storage_options.get("password") or "")
                self._session = s
            return self._session

    def _get(self, url: str, start: int, end: int, etag: str | None, version_id: str | None,
             consume: Consumer | None) -> Any:
        import requests
        import urllib3

        name = public_name(url)
        headers = {"Range": f"bytes={start}-{end - 1}"}
        if etag:
            headers["If-Match"] = _quote_etag(etag)
        try:
            with self.session().get(url, headers=headers, stream=True,
                                    timeout=self.timeout) as resp:
                if resp.status_code not in (200, 206):
                    raise status_error(name, resp.status_code, reason=resp.reason,
                                       causes=[f"HTTP {resp.status_code}"])
                if not same_etag(etag, resp.headers.get("ETag")):
                    raise changed(name)
                try:
                    if resp.status_code == 206:
                        return (consume or _read_body)(_Body(
                            functools.partial(resp.raw.read, decode_content=True), end - start,
                            resp.raw, functools.partial(_http_body_error, name, self.timeout)))
                    # 200: the server ignored Range; read (bounded) up to the end of our range.
                    data = resp.raw.read(end, decode_content=True)[start:end]
                    return data if consume is None else consume(
                        _Body(io.BytesIO(data).read, end - start))
                except urllib3.exceptions.ReadTimeoutError as exc:
                    raise StorageError(f"reading {name} timed out after {self.timeout}s",
                                       status=504, store=name, causes=[str(exc)]) from exc
                except (urllib3.exceptions.HTTPError, OSError) as exc:
                    raise _Transient(f"reading {name}: body cut short: {exc}", status=502,
                                     store=name, causes=[f"{type(exc).__name__}: {exc}"]) from exc
        except requests.RequestException as exc:
            raise self._request_error(exc, name) from exc

    def _request_error(self, exc: Exception, name: str) -> StorageError:
        """A ``requests`` failure reading ``name`` as the typed error: 504 for a timeout."""
        import requests

        if isinstance(exc, requests.Timeout):
            return StorageError(f"reading {name} timed out after {self.timeout}s", status=504,
                                store=name, causes=[str(exc)])
        return StorageError(f"reading {name} failed: {exc}", status=502, store=name,
                            causes=[str(exc)])

    def read_object(self, url: str) -> bytes:
        import requests

        name = public_name(url)
        try:
            resp = self.session().get(url, timeout=self.timeout)
        except requests.RequestException as exc:
            raise self._request_error(exc, name) from exc
        if resp.status_code != 200:
            raise status_error(name, resp.status_code, reason=resp.reason,
                               causes=[f"HTTP {resp.status_code}"])
        self._account(bytes_read=len(resp.content), bytes_received=len(resp.content), requests=1)
        return resp.content

    def head(self, url: str) -> ObjectInfo:
        """Size and ETag from a HEAD; where HEAD is refused or says no size (a presigned GET URL
        signs GET only), from a GET of the first byte (its ``Content-Range`` total)."""
        import requests

        name = public_name(url)
        try:
            resp = self.session().head(url, timeout=self.timeout, allow_redirects=True)
            if resp.status_code != 200 or not resp.headers.get("Content-Length", "").isdigit():
                with self.session().get(url, headers={"Range": "bytes=0-0"}, stream=True,
                                        timeout=self.timeout) as got:
                    if got.status_code not in (200, 206):
                        raise status_error(name, got.status_code, reason=got.reason)
                    total = got.headers.get("Content-Range", "").rpartition("/")[2]
                    length = got.headers.get("Content-Length", "")
                    size = (total if got.status_code == 206 else length)
                    if not size.isdigit():
                        raise StorageError(
                            f"{name}: the server does not report the object's size "
                            "(Content-Length), so it cannot be range-read", status=502, store=name)
                    return ObjectInfo(int(size), got.headers.get("ETag"))
            return ObjectInfo(int(resp.headers["Content-Length"]), resp.headers.get("ETag"))
        except requests.RequestException as exc:
            raise self._request_error(exc, name) from exc

    def close(self) -> None:
        with self._lock:
            s, self._session = self._session, None
        if s is not None:
            s.close()


# ------------------------------------------------------------------------------ async face

_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
_S3_CODE = re.compile(rb"<Code>([^<]{1,100})</Code>")
_S3_MESSAGE = re.compile(rb"<Message>([^<]{1,300})</Message>")
#: bytes of an error answer's body read (for S3's ``<Code>`` and ``<Message>``)
ERROR_BODY = 4096


class AsyncHTTPStore:
    """The async face of HTTP range reads (S3 is HTTP with signed headers: :func:`.s3.sign_s3`),
    for the reduction server's event loop.

    Connections (:mod:`.aio_http`: bodies are received straight into the buffer returned) are
    pooled per (store, identity, host), so they are reused but never shared across credentials;
    at most ``max_concurrency`` reads at once; one deadline (``read_timeout``) for a whole read,
    connecting within ``connect_timeout``. ``resolver()`` makes the resolver each new connection
    asks (the server's allow-list pins addresses there: ``resolve(host, port, family)`` returning
    aiohttp-style ``{"host", "family"}`` dicts); an exception of ``refused`` from it is a 403.
    Every answer is verified before its body is read (status, ETag, ``Content-Range``) and
    bodies are read bounded. Errors go through the one :func:`~.base.status_error` (a missing
    object is ``not_found``: the server's API says 400).
    """

    def __init__(self, *, max_concurrency: int = 64, connect_timeout: float = 5.0,
                 read_timeout: float = 30.0, max_clients: int = 64,
                 resolver: Callable[[], Any] | None = None, not_found: int = 400,
                 refused: tuple[type[BaseException], ...] = (), ssl: Any = True) -> None:
        self._sem = asyncio.Semaphore(max_concurrency)
        self._max_concurrency = max_concurrency
        self._connect_timeout = min(connect_timeout, read_timeout)
        self._read_timeout = read_timeout
        self._pools: OrderedDict[tuple[str, ...], Pool] = OrderedDict()
        self._max_clients = max_clients
        self._resolver = resolver
        self.not_found = not_found
        self._refused = refused
        # True: the system's CAs; an ``ssl.SSLContext`` for a CA bundle
        self._ssl = ssl if not isinstance(ssl, bool) else None

    def _pool(self, key: tuple[str, ...]) -> Pool:
        pool = self._pools.get(key)
        if pool is None:
            pool = Pool(self._resolve, ssl=self._ssl, connect_timeout=self._connect_timeout,
                        max_idle=self._max_concurrency)
            self._pools[key] = pool
            while len(self._pools) > self._max_clients:
                self._pools.popitem(last=False)[1].close()
        else:
            self._pools.move_to_end(key)
        return pool

    async def _resolve(self, host: str, port: int) -> list[tuple[int, str]]:
        """The addresses a new connection may dial (every one asks the resolver given)."""
        if self._resolver is None:
            return await system_resolve(host, port)
        found = await self._resolver().resolve(host, port, socket.AF_UNSPEC)
        return [(int(a["family"]), str(a["host"])) for a in found]

    @staticmethod
    def headers(rng: str | None, etag: str | None) -> dict[str, str]:
        """The headers of a range GET (before signing): identity encoding, Range, If-Match."""
        headers: dict[str, str] = {"Accept-Encoding": "identity"}
        if rng:
            headers["Range"] = rng
        if etag:
            headers["If-Match"] = etag if etag.startswith(('"', "W/")) else f'"{etag}"'
        return headers

    async def _send(self, method: str, url: Any, headers: dict[str, str], ident: str,
                    store: str, check: Check) -> Response:
        """One request of ``url`` (a yarl URL, as the allow-list parsed it) under the
        concurrency bound and the one deadline."""
        scheme = url.scheme.lower()
        host = url.raw_host or ""
        port = url.port
        target = url.raw_path_qs or "/"
        async with self._sem:
            async with asyncio.timeout(self._read_timeout):
                pool = self._pool((store, ident, scheme, host, str(port)))
                return await pool.request(method, scheme, host, port, target, headers, check)

    async def read_range(self, url: Any, offset: int, size: int | None, *, max_bytes: int,
                         name: str, store: str, headers: dict[str, str], etag: str | None = None,
                         ident: str = "", s3: bool = False,
                         meta: dict[str, Any] | None = None) -> memoryview:
        """``size`` bytes at ``offset`` of ``url`` (to the end when None, at most ``max_bytes``),
        with ``headers`` as built by :meth:`headers` (and signed); ``name``/``store`` for errors.
        ``meta``, when given, receives the answer's ``"etag"`` (None when the store sent none).
        The bytes come back as a read-only view of the one buffer they were received into.

        A ranged read must come back 206 with exactly the ``Content-Range`` asked for (or 200
        with exactly the whole object, when the whole object was asked for); anything else is a
        502 naming the store. At most the requested size (plus one byte, to detect an overlong
        body) is ever read."""
        rng = headers.get("Range")
        limit = size if size is not None else max_bytes

        def check(resp: Response) -> int:
            """Runs when the headers are in, before any of the body is read."""
            if resp.status not in (200, 206):
                return ERROR_BODY
            if not same_etag(etag, resp.headers.get("etag")):
                raise changed(name, [f"ETag {resp.headers.get('etag')} != {etag}"], store=store)
            _check_range(name, store, resp.status, resp.headers, offset, size)
            length = resp.headers.get("content-length", "")
            if size is None and length.isdigit() and int(length) > max_bytes:
                raise _too_large(name, store, max_bytes)
            return limit

        try:
            resp = await self._send("GET", url, headers, ident, store, check)
        except TimeoutError:
            raise StorageError(f"timed out reading {name} from store {store}",
                               status=504, store=store, causes=["timeout"]) from None
        except self._refused as exc:  # an address the resolver refused
            raise StorageError(str(exc), status=403, store=store) from None
        except (HTTPError, OSError, ValueError) as exc:
            raise _unreachable(name, store, exc) from None
        if resp.status not in (200, 206):
            body = bytes(resp.body)
            code, msg = (_S3_CODE.search(body), _S3_MESSAGE.search(body))
            raise status_error(
                name, resp.status, store=store, s3=s3, not_found=self.not_found,
                code=code.group(1).decode("utf-8", "replace") if code else "",
                message=msg.group(1).decode("utf-8", "replace") if msg else "",
                reason=resp.reason or "", rng=rng, total=_total_size(resp.headers))
        if meta is not None:
            meta["etag"] = resp.headers.get("etag")
        data = resp.body
        if size is None:
            if resp.overflow:
                raise _too_large(name, store, max_bytes)
            return data
        if resp.overflow:
            raise StorageError(f"store {store} sent more than the {size} bytes asked "
                               f"for ({rng}) of {name}", status=502, store=store)
        if len(data) < size:
            total = _total_size(resp.headers)
            if total is not None and offset + size > total:
                raise StorageError(f"range {rng} is past the end of {name} ({total} bytes)",
                                   status=400, store=store)
            raise StorageError(f"short read from store {store}: got {len(data)} of "
                               f"{size} bytes of {name}", status=502, store=store)
        return data

    async def head_etag(self, url: Any, *, headers: dict[str, str], store: str,
                        ident: str = "") -> tuple[int, str | None]:
        """(HTTP status, ETag) of a HEAD of ``url`` with ``headers`` (signed for HEAD): a cheap
        authorised look at an object, for the server's chunk cache. Transport failures and
        timeouts are a status of 0; the caller then falls back to a GET, whose errors are the
        ones reported."""
        try:
            resp = await self._send("HEAD", url, headers, ident, store, lambda r: 0)
        except (TimeoutError, HTTPError, OSError, ValueError):
            return 0, None
        return resp.status, resp.headers.get("etag")

    async def aclose(self) -> None:
        pools = list(self._pools.values())
        self._pools.clear()
        for p in pools:
            p.close()


def _too_large(name: str, store: str, max_bytes: int) -> StorageError:
    return StorageError(f"{name} is larger than this server's limit of {max_bytes} bytes; "
                        "give size", status=413, store=store)


def _unreachable(name: str, store: str, exc: BaseException) -> StorageError:
    return StorageError(f"could not read {name}: store {store} is unreachable or failed "
                        f"({type(exc).__name__})", status=502, store=store,
                        causes=[str(exc) or type(exc).__name__])


def _check_range(name: str, store: str, status: int, headers: Mapping[str, str], offset: int,
                 size: int | None) -> None:
    """502 unless the answer is the range asked for (see :meth:`AsyncHTTPStore.read_range`)."""
    ranged = size is not None or offset > 0
    got = headers.get("content-range")
    length = headers.get("content-length")
    if status == 200:
        if not ranged:
            return
        # 200 = the whole object: acceptable only when exactly the whole object was asked for
        if offset == 0 and size is not None and length is not None and length.isdigit() \
                and int(length) == size:
            return
        why = f"answered 200 with the whole object ({length or 'unknown'} bytes)"
    else:
        m = _CONTENT_RANGE.fullmatch((got or "").strip())
        if m is not None:
            start, end = int(m.group(1)), int(m.group(2))
            total = int(m.group(3)) if m.group(3) != "*" else None
            want_end = offset + size - 1 if size is not None else end
            if total is not None:  # a range past the end is clamped (then: 400 below)
                want_end = min(want_end, total - 1)
            elif size is None:
                want_end = -1  # an open range needs the object's size to be checked
            if start == offset and end == want_end and (
                    length is None or not length.isdigit() or int(length) == end - start + 1):
                return
        why = f"answered 206 with Content-Range {got!r}"
    asked = f"bytes={offset}-" + (str(offset + size - 1) if size is not None else "")
    raise StorageError(f"store {store} did not honour the range {asked} of {name}: it {why}",
                       status=502, store=store,
                       causes=[f"store answered HTTP {status} with Content-Range {got!r}"])


def _total_size(headers: Mapping[str, str]) -> int | None:
    m = _CONTENT_RANGE.search(headers.get("content-range", ""))
    if m and m.group(3) != "*":
        return int(m.group(3))
    return None
