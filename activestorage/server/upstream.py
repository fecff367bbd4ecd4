"""Byte-range reads from S3 and HTTP(S) stores, with the caller's credentials, as typed errors.

One :class:`Upstream` per server process holds pooled ``aiohttp.ClientSession``s keyed by (store,
credentials) so connections are reused but never shared across identities. (aiohttp rather than
httpx: on this 2-core machine httpx's pool managed ~110 range GETs/s at 64 concurrent 64 KiB
requests, aiohttp ~1300/s; it is already installed as a dependency of s3fs/aiobotocore.) S3 requests are signed
with botocore's SigV4 signer using the access key / secret the caller sent as HTTP Basic auth
(anonymous when none); HTTP stores get the Basic credentials passed through. Every failure becomes a
:class:`~activestorage.errors.StorageError` whose ``status`` is the one the API reports and whose
message names the store and the object. Credentials are never logged or put in messages.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterable
from urllib.parse import quote, unquote_to_bytes, urlsplit

import aiohttp
from yarl import URL

from ..errors import ObjectChangedError, RequestValidationError, StorageError
from .allowlist import (METADATA_HOSTS, AllowList, PinnedResolver, RefusedAddress, allow_list,
                        encode_url, parse_url)

__all__ = ["METADATA_HOSTS", "Target", "Upstream", "check_allowed", "parse_basic_auth", "s3_url"]

log = logging.getLogger("activestorage.server.upstream")

_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
_S3_CODE = re.compile(rb"<Code>([^<]{1,100})</Code>")
_S3_MESSAGE = re.compile(rb"<Message>([^<]{1,300})</Message>")


@dataclass(frozen=True)
class Target:
    """An object to read: ``kind`` is ``"s3"`` or ``"http"``; ``auth`` is (user, password) or None."""

    kind: str
    url: str
    auth: tuple[str, str] | None = None
    etag: str | None = None
    version_id: str | None = None

    @property
    def store(self) -> str:
        """``scheme://host:port`` of the store, for messages."""
        p = urlsplit(self.url)
        return f"{p.scheme}://{p.netloc.rpartition('@')[2]}"

    @property
    def name(self) -> str:
        """``store/path`` without credentials or query, for messages."""
        p = urlsplit(self.url)
        return f"{self.store}{p.path}"

    def __repr__(self) -> str:  # never show the secret
        return f"Target({self.kind}, {self.name})"


#: characters a query string may hold as they are (``%`` too: escapes already there are kept).
_QUERY_SAFE = "!$&'()*+,;=:@/?%~[]"


def _control_chars(text: str) -> bool:
    return any(ord(c) < 0x20 or ord(c) == 0x7F for c in text)


def canonical_url(url: str, field: str = "url") -> str:
    """The object URL as sent upstream: its path percent-encoded the one canonical way.

    Clients send v2 URLs unencoded, built from a path (``.../bucket/shape-[10, 10]-x.bin``): any
    character S3 allows in a key may appear, spaces, brackets, commas and quotes included. The URL
    is read as a URL whose illegal characters were not escaped: ``%`` followed by two hex digits is
    an escape (so an already-encoded URL, as our SDK sends, names the same object as the raw one),
    a lone ``%`` is a literal percent sign, ``?`` starts the query and ``#`` a fragment (write them
    as ``%3F``/``%23`` in a key). The path is decoded and re-encoded keeping only unreserved
    characters and ``/`` (the encoding S3 signs, and one that every HTTP server decodes); the
    query keeps its escapes and only characters illegal there are escaped. Only control
    characters are refused.
    """
    if _control_chars(url):
        raise RequestValidationError(field, "must not contain control characters")
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise RequestValidationError(field, "must be an http:// or https:// URL with a host")
    slash = [i for i in (rest.find(c) for c in "/?#") if i >= 0]
    cut = min(slash) if slash else len(rest)
    host, rest = rest[:cut], rest[cut:]
    rest, _, _fragment = rest.partition("#")  # never sent to a server
    path, q, query = rest.partition("?")
    path = quote(unquote_to_bytes(path), safe="/") or "/"
    query = quote(query, safe=_QUERY_SAFE) if q else ""
    return f"{scheme}://{host}{path}{q}{query}"


def s3_url(source: str, bucket: str, key: str) -> str:
    """The path-style object URL for a v1 ``source``/``bucket``/``object``.

    ``object`` is a raw S3 key: every character of it is itself (``%20`` is three characters),
    so all but unreserved ones and ``/`` are percent-encoded, as :func:`canonical_url` encodes."""
    return f"{source.rstrip('/')}/{quote(bucket, safe='')}/{quote(key.lstrip('/'), safe='/')}"


def check_allowed(url: str, allow: Iterable[str], field: str = "url") -> None:
    """Raise 400 for a malformed or ambiguous URL, 403 unless the allow-list covers its host.

    Names are checked here; the addresses they resolve to are checked when connecting (see
    :mod:`.allowlist`). ``*`` never covers loopback, private, link-local or metadata addresses.
    """
    allow_list(tuple(allow)).check_url(url, field)


def parse_basic_auth(header: str | None) -> tuple[str, str] | None:
    """(user, password) from an ``Authorization: Basic`` header, None when absent."""
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        raise StorageError("Authorization must be HTTP Basic (access key:secret key)", status=401)
    try:
        user, sep, pwd = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")
    except (ValueError, UnicodeDecodeError):
        raise StorageError("Authorization header is not valid HTTP Basic", status=401) from None
    if not sep:
        raise StorageError("Authorization header is not valid HTTP Basic", status=401)
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in user + pwd):
        raise StorageError("Authorization: HTTP Basic user and password must not contain "
                           "control characters", status=401)
    return user, pwd


class Upstream:
    """Pooled, bounded, signed range reads. Create in the server's event loop; ``aclose`` at exit."""

    def __init__(self, *, max_concurrency: int = 64, connect_timeout: float = 5.0,
                 read_timeout: float = 30.0, region: str = "us-east-1",
                 max_clients: int = 64,
                 allow: Iterable[str] | AllowList = ("127.0.0.1", "localhost", "::1")) -> None:
        self._sem = asyncio.Semaphore(max_concurrency)
        self._max_concurrency = max_concurrency
        # One deadline for a whole read, as documented: connecting and every byte of the answer
        # within ``read_timeout`` (a store dripping a byte now and then cannot stretch it).
        self._timeout = aiohttp.ClientTimeout(total=read_timeout,
                                              connect=min(connect_timeout, read_timeout),
                                              sock_connect=min(connect_timeout, read_timeout),
                                              sock_read=read_timeout)
        self._region = region
        self._clients: OrderedDict[tuple[str, str], aiohttp.ClientSession] = OrderedDict()
        self._max_clients = max_clients
        #: the allow-list whose checked addresses are the only ones ever connected to
        self.allow = allow if isinstance(allow, AllowList) else AllowList(tuple(allow))

    def _client(self, target: Target) -> aiohttp.ClientSession:
        ident = ""
        if target.auth is not None:  # key clients by a hash, never keep a secret as a dict key
            ident = hashlib.sha256("\0".join(target.auth).encode()).hexdigest()[:24]
        key = (target.store, ident)
        client = self._clients.get(key)
        if client is None or client.closed:
            # no DNS cache of aiohttp's own: every new connection asks the pinned resolver,
            # which answers only with addresses the allow-list has checked (cached there briefly)
            conn = aiohttp.TCPConnector(limit=self._max_concurrency, use_dns_cache=False,
                                        resolver=PinnedResolver(self.allow))  # type: ignore[arg-type]
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

    def _headers(self, target: Target, url: str, rng: str | None) -> dict[str, str]:
        headers: dict[str, str] = {"Accept-Encoding": "identity"}
        if rng:
            headers["Range"] = rng
        if target.etag:
            etag = target.etag if target.etag.startswith(('"', "W/")) else f'"{target.etag}"'
            headers["If-Match"] = etag
        if target.auth is None:
            return headers
        if target.kind == "s3":
            from botocore.auth import S3SigV4Auth
            from botocore.awsrequest import AWSRequest
            from botocore.credentials import Credentials

            req = AWSRequest(method="GET", url=url, headers=headers)
            S3SigV4Auth(Credentials(*target.auth), "s3", self._region).add_auth(req)
            return dict(req.headers.items())
        token = base64.b64encode(":".join(target.auth).encode()).decode()
        headers["Authorization"] = f"Basic {token}"
        return headers

    async def read(self, target: Target, offset: int, size: int | None, *,
                   max_bytes: int) -> bytes:
        """``size`` bytes at ``offset`` (to the end when None, at most ``max_bytes``).

        The answer is verified before its body is read: a ranged read must come back 206 with
        exactly the ``Content-Range`` asked for (or 200 with exactly the whole object, when the
        whole object was asked for); anything else is a 502 naming the store. At most the
        requested size (plus one byte, to detect an overlong body) is ever read."""
        url = encode_url(target.url)  # what is signed is what is sent
        if target.kind == "s3" and target.version_id:
            url += ("&" if "?" in url else "?") + "versionId=" + quote(target.version_id, safe="")
        if size is not None:
            rng = f"bytes={offset}-{offset + size - 1}"
        else:
            rng = f"bytes={offset}-" if offset else None
        headers = self._headers(target, url, rng)
        limit = size if size is not None else max_bytes
        try:
            async with self._sem:
                async with self._client(target).get(parse_url(url), headers=headers,
                                                    allow_redirects=False) as resp:
                    if resp.status not in (200, 206):
                        body = await _read_bounded(resp, 4096)
                        raise self._status_error(target, resp, body, rng)
                    self._check_etag(target, resp)
                    self._check_range(target, resp, offset, size)
                    data = await _read_bounded(resp, limit + 1)
                    total = _total_size(resp)
        except asyncio.TimeoutError:
            raise StorageError(f"timed out reading {target.name} from store {target.store}",
                               status=504, store=target.store, causes=["timeout"]) from None
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, RefusedAddress):
                raise StorageError(str(exc.os_error), status=403, store=target.store) from None
            raise self._unreachable(target, exc) from None
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            raise self._unreachable(target, exc) from None
        if size is None:
            if len(data) > max_bytes:
                raise StorageError(
                    f"{target.name} is larger than this server's limit of {max_bytes} bytes; "
                    "give size", status=413, store=target.store)
            return data
        if len(data) > size:
            raise StorageError(f"store {target.store} sent more than the {size} bytes asked "
                               f"for ({rng}) of {target.name}", status=502, store=target.store)
        if len(data) < size:
            if total is not None and offset + size > total:
                raise StorageError(
                    f"range {rng} is past the end of {target.name} ({total} bytes)",
                    status=400, store=target.store)
            raise StorageError(f"short read from store {target.store}: got {len(data)} of "
                               f"{size} bytes of {target.name}", status=502, store=target.store)
        return data

    @staticmethod
    def _unreachable(target: Target, exc: BaseException) -> StorageError:
        return StorageError(f"could not read {target.name}: store {target.store} is "
                            f"unreachable or failed ({type(exc).__name__})", status=502,
                            store=target.store, causes=[str(exc) or type(exc).__name__])

    @staticmethod
    def _check_range(target: Target, resp: aiohttp.ClientResponse, offset: int,
                     size: int | None) -> None:
        """502 unless the answer is the range asked for (see :meth:`read`)."""
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
        raise StorageError(f"store {target.store} did not honour the range {asked} of "
                           f"{target.name}: it {why}", status=502, store=target.store,
                           causes=[f"store answered HTTP {resp.status} with Content-Range "
                                   f"{got!r}"])

    @staticmethod
    def _check_etag(target: Target, resp: aiohttp.ClientResponse) -> None:
        if not target.etag:
            return
        got = resp.headers.get("etag")
        if got is not None and got.strip('"').removeprefix("W/").strip('"') != target.etag.strip('"'):
            raise ObjectChangedError(
                f"object changed since manifest was written: {target.name}", status=409,
                store=target.store, causes=[f"ETag {got} != {target.etag}"])

    @staticmethod
    def _status_error(target: Target, resp: aiohttp.ClientResponse, body: bytes,
                      rng: str | None) -> StorageError:
        st = resp.status
        code = _S3_CODE.search(body)
        msg = _S3_MESSAGE.search(body)
        detail = [x.group(1).decode("utf-8", "replace") for x in (code, msg) if x]
        causes = [f"store answered HTTP {st}" + (f": {' - '.join(detail)}" if detail else "")]
        where = f"{target.name} (store {target.store})"
        # the store's own words (S3's "AccessDenied: Access Denied"), which clients look for
        words = ": ".join(detail) if detail else f"HTTP {st} {resp.reason or ''}".rstrip()
        if not detail and st == 403 and target.kind == "s3":  # S3's bare 403 (no error body)
            words = f"Access Denied ({words})"
        if st == 416:
            total = _total_size(resp)
            extra = f", object has {total} bytes" if total is not None else ""
            return StorageError(f"range {rng} is past the end of {where}{extra}", status=400,
                                store=target.store, causes=causes)
        if st == 404:
            what = "bucket" if code and b"Bucket" in code.group(1) else "object"
            return StorageError(f"{what} not found: {where}: {words}", status=400,
                                store=target.store, causes=causes)
        if st in (401, 403):
            return StorageError(f"store refused the credentials for {where}: {words}",
                                status=401, store=target.store, causes=causes)
        if st == 412:
            return ObjectChangedError(f"object changed since manifest was written: {target.name}",
                                      status=409, store=target.store, causes=causes)
        if st == 504:
            return StorageError(f"store timed out serving {where}", status=504,
                                store=target.store, causes=causes)
        return StorageError(f"store failed to serve {where} (HTTP {st})", status=502,
                            store=target.store, causes=causes)

    async def aclose(self) -> None:
        clients = list(self._clients.values())
        self._clients.clear()
        for c in clients:
            await c.close()


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
