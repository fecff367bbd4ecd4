"""HTTP(S) resources: ranged GETs through one pooled ``requests.Session``.

``storage_options``: ``headers`` and ``username``/``password`` (basic auth). GETs are retried by
urllib3 (``Retry``) on 429/502/503/504; a pin is sent as ``If-Match`` and a 412 or a differing ETag
is :class:`ObjectChangedError`. A server that ignores ``Range`` (200) is read only up to the end of
the range asked for.

:class:`AsyncHTTPStore` is the async face (aiohttp) the reduction server reads S3 and HTTP stores
through.
"""

from __future__ import annotations

import asyncio
import functools
import io
import re
import threading
from collections import OrderedDict
from typing import Any, Callable, Mapping

import aiohttp

from ..errors import StorageError
from ._body import Consumer, _Body, _http_body_error, _quote_etag, _read_body, _Transient
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


class AsyncHTTPStore:
    """The async face of HTTP range reads (S3 is HTTP with signed headers: :func:`.s3.sign_s3`),
    for the reduction server's event loop.

    Pooled ``aiohttp.ClientSession``s keyed by (store, identity), so connections are reused but
    never shared across credentials; at most ``max_concurrency`` reads at once; one deadline
    (``read_timeout``) for a whole read. ``resolver()`` makes each connector's resolver (the
    server's allow-list pins addresses there). Every answer is verified before its body is read
    (status, ETag, ``Content-Range``) and bodies are read bounded. Errors go through the one
    :func:`~.base.status_error` (a missing object is ``not_found``: the server's API says 400).
    """

    def __init__(self, *, max_concurrency: int = 64, connect_timeout: float = 5.0,
                 read_timeout: float = 30.0, max_clients: int = 64,
                 resolver: Callable[[], Any] | None = None, not_found: int = 400,
                 refused: tuple[type[BaseException], ...] = (), ssl: Any = True) -> None:
        self._sem = asyncio.Semaphore(max_concurrency)
        self._max_concurrency = max_concurrency
        # One deadline for a whole read, as documented: connecting and every byte of the answer
        # within ``read_timeout`` (a store dripping a byte now and then cannot stretch it).
        self._timeout = aiohttp.ClientTimeout(total=read_timeout,
                                              connect=min(connect_timeout, read_timeout),
                                              sock_connect=min(connect_timeout, read_timeout),
                                              sock_read=read_timeout)
        self._clients: OrderedDict[tuple[str, str], aiohttp.ClientSession] = OrderedDict()
        self._max_clients = max_clients
        self._resolver = resolver
        self.not_found = not_found
        self._refused = refused
        self._ssl = ssl  # True: the system's CAs; an ``ssl.SSLContext`` for a CA bundle

    def _client(self, store: str, ident: str) -> aiohttp.ClientSession:
        key = (store, ident)
        client = self._clients.get(key)
        if client is None or client.closed:
            # no DNS cache of aiohttp's own: every new connection asks the resolver given
            resolver = self._resolver() if self._resolver is not None else None
            conn = aiohttp.TCPConnector(limit=self._max_concurrency, use_dns_cache=False,
                                        resolver=resolver, ssl=self._ssl)
            client = aiohttp.ClientSession(connector=conn, timeout=self._timeout,
                                           auto_decompress=False, trust_env=False,
                                           skip_auto_headers=("User-Agent",))
            self._clients[key] = client
            while len(self._clients) > self._max_clients:
                _, old = self._clients.popitem(last=False)
                asyncio.get_running_loop().create_task(old.close())
        else:
            self._clients.move_to_end(key)
        return client

    @staticmethod
    def headers(rng: str | None, etag: str | None) -> dict[str, str]:
        """The headers of a range GET (before signing): identity encoding, Range, If-Match."""
        headers: dict[str, str] = {"Accept-Encoding": "identity"}
        if rng:
            headers["Range"] = rng
        if etag:
            headers["If-Match"] = etag if etag.startswith(('"', "W/")) else f'"{etag}"'
        return headers

    async def read_range(self, url: Any, offset: int, size: int | None, *, max_bytes: int,
                         name: str, store: str, headers: dict[str, str], etag: str | None = None,
                         ident: str = "", s3: bool = False,
                         meta: dict[str, Any] | None = None) -> bytes:
        """``size`` bytes at ``offset`` of ``url`` (to the end when None, at most ``max_bytes``),
        with ``headers`` as built by :meth:`headers` (and signed); ``name``/``store`` for errors.
        ``meta``, when given, receives the answer's ``"etag"`` (None when the store sent none).

        A ranged read must come back 206 with exactly the ``Content-Range`` asked for (or 200
        with exactly the whole object, when the whole object was asked for); anything else is a
        502 naming the store. At most the requested size (plus one byte, to detect an overlong
        body) is ever read."""
        rng = headers.get("Range")
        limit = size if size is not None else max_bytes
        try:
            async with self._sem:
                async with self._client(store, ident).get(url, headers=headers,
                                                          allow_redirects=False) as resp:
                    if resp.status not in (200, 206):
                        body = await _read_bounded(resp, 4096)
                        code, msg = (_S3_CODE.search(body), _S3_MESSAGE.search(body))
                        raise status_error(
                            name, resp.status, store=store, s3=s3, not_found=self.not_found,
                            code=code.group(1).decode("utf-8", "replace") if code else "",
                            message=msg.group(1).decode("utf-8", "replace") if msg else "",
                            reason=resp.reason or "", rng=rng, total=_total_size(resp))
                    if not same_etag(etag, resp.headers.get("etag")):
                        raise changed(name, [f"ETag {resp.headers.get('etag')} != {etag}"],
                                      store=store)
                    _check_range(name, store, resp, offset, size)
                    if meta is not None:
                        meta["etag"] = resp.headers.get("etag")
                    data = await _read_bounded(resp, limit + 1)
                    total = _total_size(resp)
        except asyncio.TimeoutError:
            raise StorageError(f"timed out reading {name} from store {store}",
                               status=504, store=store, causes=["timeout"]) from None
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, self._refused):  # an address the resolver refused
                raise StorageError(str(exc.os_error), status=403, store=store) from None
            raise _unreachable(name, store, exc) from None
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            raise _unreachable(name, store, exc) from None
        if size is None:
            if len(data) > max_bytes:
                raise StorageError(
                    f"{name} is larger than this server's limit of {max_bytes} bytes; "
                    "give size", status=413, store=store)
            return data
        if len(data) > size:
            raise StorageError(f"store {store} sent more than the {size} bytes asked "
                               f"for ({rng}) of {name}", status=502, store=store)
        if len(data) < size:
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
            async with self._sem:
                async with self._client(store, ident).head(url, headers=headers,
                                                           allow_redirects=False) as resp:
                    return resp.status, resp.headers.get("etag")
        except (asyncio.TimeoutError, aiohttp.ClientError, OSError, ValueError):
            return 0, None

    async def aclose(self) -> None:
        clients = list(self._clients.values())
        self._clients.clear()
        for c in clients:
            await c.close()


def _unreachable(name: str, store: str, exc: BaseException) -> StorageError:
    return StorageError(f"could not read {name}: store {store} is unreachable or failed "
                        f"({type(exc).__name__})", status=502, store=store,
                        causes=[str(exc) or type(exc).__name__])


def _check_range(name: str, store: str, resp: aiohttp.ClientResponse, offset: int,
                 size: int | None) -> None:
    """502 unless the answer is the range asked for (see :meth:`AsyncHTTPStore.read_range`)."""
    ranged = size is not None or offset > 0
    got = resp.headers.get("content-range")
    length = resp.headers.get("content-length")
    if resp.status == 200:
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
                       causes=[f"store answered HTTP {resp.status} with Content-Range {got!r}"])


async def _read_bounded(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """Read at most ``limit`` bytes of the body; stop early instead of buffering a huge object."""
    length = resp.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) <= limit:
        return await resp.read()
    parts: list[bytes] = []
    n = 0
    async for part in resp.content.iter_any():
        parts.append(part)
        n += len(part)
        if n >= limit:
            break
    return b"".join(parts)


def _total_size(resp: aiohttp.ClientResponse) -> int | None:
    m = _CONTENT_RANGE.search(resp.headers.get("content-range", ""))
    if m and m.group(3) != "*":
        return int(m.group(3))
    return None
