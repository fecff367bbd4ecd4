"""Byte-range reads from S3 and HTTP(S) stores, with the caller's credentials, as typed errors.

One :class:`Upstream` per server process reads through the stores' async face
(:class:`~activestorage.stores.http.AsyncHTTPStore`): connections kept alive per (store,
credentials, host) so they are reused but never shared across identities, made by our own
HTTP/1.1 client (:mod:`activestorage.stores.aio_http`), which receives each body straight into
the buffer the chunk cache and the kernel then use. (Earlier rounds used aiohttp, and before it
httpx: httpx's pool managed ~110 range GETs/s at 64 concurrent 64 KiB requests on this 2-core
machine, aiohttp ~1300/s; aiohttp copied each body 3-4 times, ~60 % of the server's time on 4 MB
chunks, which the client here does not.) S3 requests are signed
with botocore's SigV4 signer using the access key / secret the caller sent as HTTP Basic auth
(anonymous when none); HTTP stores get the Basic credentials passed through. Every failure becomes a
:class:`~activestorage.errors.StorageError` whose ``status`` is the one the API reports and whose
message names the store and the object. Credentials are never logged or put in messages.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
from dataclasses import dataclass, replace
from typing import Any, Iterable
from urllib.parse import quote, unquote_to_bytes, urlsplit

from ..errors import RequestValidationError, StorageError
from ..stores.http import AsyncHTTPStore
from ..stores.s3 import sign_s3
from .allowlist import (METADATA_HOSTS, AllowList, PinnedResolver, RefusedAddress, allow_list,
                        encode_url, parse_url)

__all__ = ["METADATA_HOSTS", "Target", "Upstream", "check_allowed", "parse_basic_auth", "s3_url",
           "virtual_hosted"]

log = logging.getLogger("activestorage.server.upstream")


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


def virtual_hosted(url: str) -> str:
    """A path-style S3 object URL (``scheme://host/bucket/key``) in virtual-hosted style
    (``scheme://bucket.host/key``); 400 where that cannot name the object (an address for a
    host, no key, a bucket name that is not a DNS label)."""
    scheme, _, rest = url.partition("://")
    host, _, path = rest.partition("/")
    bucket, _, key = path.partition("/")
    name = host.rpartition(":")[0] if host.count(":") == 1 else host
    if not key or not _DNS_BUCKET.fullmatch(bucket) or name.startswith("[") \
            or name.replace(".", "").isdigit():
        raise RequestValidationError(
            "url", f"cannot address bucket {bucket!r} at {scheme}://{host} virtual-hosted style "
            "(it needs a DNS host name and a bucket name that is a DNS label); this server is "
            "started with --s3-addressing-style virtual")
    return f"{scheme}://{bucket}.{host}/{key}"


#: bucket names usable as a host name label (no dots: they would break TLS wildcard certificates)
_DNS_BUCKET = re.compile(r"[a-z0-9][a-z0-9-]{1,61}[a-z0-9]")


def _ssl_context(ca_bundle: str | None) -> Any:
    """True (the system's CAs) or a context trusting the CAs of the PEM file ``ca_bundle``."""
    if not ca_bundle:
        return True
    import ssl

    try:
        return ssl.create_default_context(cafile=ca_bundle)
    except (OSError, ssl.SSLError) as exc:
        raise SystemExit(f"activestorage serve: --upstream-ca-bundle {ca_bundle}: {exc}") from None


class Upstream:
    """Pooled, bounded, signed range reads through the stores' async face
    (:class:`~activestorage.stores.http.AsyncHTTPStore`), connecting only to addresses the
    allow-list has checked. Create in the server's event loop; ``aclose`` at exit."""

    def __init__(self, *, max_concurrency: int = 64, connect_timeout: float = 5.0,
                 read_timeout: float = 30.0, region: str = "us-east-1",
                 max_clients: int = 64,
                 allow: Iterable[str] | AllowList = ("127.0.0.1", "localhost", "::1"),
                 addressing_style: str = "path", ca_bundle: str | None = None) -> None:
        self._region = region
        self._virtual = addressing_style == "virtual"
        #: the allow-list whose checked addresses are the only ones ever connected to
        self.allow = allow if isinstance(allow, AllowList) else AllowList(tuple(allow))
        # no DNS cache of the client's own: every new connection asks the pinned resolver, which
        # answers only with addresses the allow-list has checked (cached there briefly)
        self._store = AsyncHTTPStore(max_concurrency=max_concurrency,
                                     connect_timeout=connect_timeout, read_timeout=read_timeout,
                                     max_clients=max_clients,
                                     resolver=lambda: PinnedResolver(self.allow),
                                     not_found=400, refused=(RefusedAddress,),
                                     ssl=_ssl_context(ca_bundle))

    def _headers(self, target: Target, url: str, rng: str | None,
                 method: str = "GET") -> dict[str, str]:
        headers = AsyncHTTPStore.headers(rng, target.etag)
        if target.auth is None:
            return headers
        if target.kind == "s3":
            return sign_s3(url, headers, target.auth, self._region, method)
        token = base64.b64encode(":".join(target.auth).encode()).decode()
        headers["Authorization"] = f"Basic {token}"
        return headers

    def _url(self, target: Target) -> str:
        url = encode_url(target.url)  # what is signed is what is sent
        if target.kind == "s3" and self._virtual:
            url = virtual_hosted(url)
            self.allow.check_url(url)  # the bucket's host name is the one dialled
        if target.kind == "s3" and target.version_id:
            url += ("&" if "?" in url else "?") + "versionId=" + quote(target.version_id, safe="")
        return url

    @staticmethod
    def _ident(target: Target) -> str:
        if target.auth is None:
            return ""
        # key clients by a hash, never keep a secret as a dict key
        return hashlib.sha256("\0".join(target.auth).encode()).hexdigest()[:24]

    async def read(self, target: Target, offset: int, size: int | None, *,
                   max_bytes: int, meta: dict[str, Any] | None = None) -> memoryview:
        """``size`` bytes at ``offset`` (to the end when None, at most ``max_bytes``), as a
        read-only view of the one buffer they were received into.

        The answer is verified before its body is read: a ranged read must come back 206 with
        exactly the ``Content-Range`` asked for (or 200 with exactly the whole object, when the
        whole object was asked for); anything else is a 502 naming the store. At most the
        requested size (plus one byte, to detect an overlong body) is ever read. ``meta``, when
        given, receives the answer's ``"etag"``."""
        url = self._url(target)
        if size is not None:
            rng = f"bytes={offset}-{offset + size - 1}"
        else:
            rng = f"bytes={offset}-" if offset else None
        ident = self._ident(target)
        try:
            parsed = parse_url(url)
        except ValueError as exc:
            raise StorageError(f"could not read {target.name}: store {target.store} is "
                               f"unreachable or failed ({type(exc).__name__})", status=502,
                               store=target.store, causes=[str(exc)]) from None
        return await self._store.read_range(
            parsed, offset, size, max_bytes=max_bytes, name=target.name, store=target.store,
            headers=self._headers(target, url, rng), etag=target.etag, ident=ident,
            s3=target.kind == "s3", meta=meta)

    async def etag(self, target: Target) -> str | None:
        """The object's current ETag, from a HEAD with the caller's credentials (the store
        authorises it as it would the GET); None when the HEAD failed or the store sent none
        (see :mod:`.chunk_cache`: the cache is then not used and a GET reports the error)."""
        url = self._url(target)
        try:
            parsed = parse_url(url)
        except ValueError:
            return None
        headers = self._headers(replace(target, etag=None), url, None, "HEAD")
        status, etag = await self._store.head_etag(parsed, headers=headers, store=target.store,
                                                   ident=self._ident(target))
        return etag if status == 200 else None

    async def aclose(self) -> None:
        await self._store.aclose()
