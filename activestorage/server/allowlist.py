"""Which upstream hosts the server may read from, checked against what is actually connected to.

One URL parser serves the check and the fetch (:func:`parse_url`, yarl), so
the host that is checked is the host that is dialled. A host is refused (400) unless it is plain
ASCII: a canonical IPv4/IPv6 literal or a DNS name; spellings that the C library would read as
IPv4 but ``ipaddress`` would not (``0x7f000001``, ``0251.0376.0251.0376``, ``169.254.43518``,
full-width digits) are refused outright. Names are resolved ONCE (cached for ``ttl`` seconds with
their checked addresses); EVERY address must pass, and the HTTP client connects only to those
addresses (:class:`PinnedResolver`), so a second, different DNS answer cannot slip through.

An address is *special* when it is loopback, link-local, private, unspecified, multicast,
reserved or a cloud metadata endpoint (IPv4-mapped IPv6 addresses count as their IPv4 form).
``*`` allows any host but never a special address; a special address is reachable only when the
allow-list names it (as that address, or the host name itself).
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Awaitable, Callable, Iterable, Sequence
from urllib.parse import quote

from yarl import URL

from ..errors import RequestValidationError, StorageError

#: never reachable through ``*``: cloud instance-metadata / credential endpoints.
METADATA_HOSTS = frozenset({"metadata.google.internal", "metadata", "metadata.azure.internal",
                            "instance-data", "instance-data.ec2.internal"})
METADATA_ADDRESSES = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254", "169.254.170.2", "100.100.100.200", "fd00:ec2::254"))

_BAD_CHARS = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")
_NAME = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,62})(\.[a-z0-9_]([a-z0-9_-]{0,62}))*")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
#: ``resolve(host, port) -> addresses``: the one DNS lookup (injectable for tests).
Resolve = Callable[[str, int], Awaitable[list[str]]]


class RefusedAddress(OSError):
    """A resolved address is not allowed (raised inside the HTTP client's connector)."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A checked URL's connection target."""

    scheme: str
    host: str            # lower case, no trailing dot, IPv6 without brackets
    port: int
    ip: IPAddress | None  # the literal, when the host is an address
    named: bool          # matched by an explicit (non-``*``) allow-list entry


#: characters left as they are when a URL's path and query are percent-encoded: the reserved
#: and unreserved sets and ``%`` (so an already-encoded URL is unchanged)
_URL_SAFE = "/%:=&?~#+!$,;'@()*-._"


def encode_url(url: str) -> str:
    """``url`` with its path and query percent-encoded where the API's unencoded keys need it
    (spaces, quotes, brackets, non-ASCII); an already-encoded URL is returned unchanged."""
    scheme, sep, rest = url.partition("://")
    cut = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    tail = rest[cut:]
    if tail.isascii() and not any(c in tail for c in ' "<>[]{}|\\^`'):
        return url
    return f"{scheme}{sep}{rest[:cut]}{quote(tail, safe=_URL_SAFE)}"


def parse_url(url: str) -> URL:
    """The URL as the HTTP client will use it (yarl; the path is already percent-encoded)."""
    return URL(encode_url(url), encoded=True)


def canonical_host(host: str) -> str:
    """``host`` compared as: lower case, without a trailing dot or IPv6 brackets."""
    host = host.lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host[:-1] if host.endswith(".") and not host.endswith("..") else host


def special(ip: IPAddress) -> bool:
    """Loopback, link-local, private, metadata and other non-public addresses."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return (ip in METADATA_ADDRESSES or ip.is_loopback or ip.is_link_local or ip.is_private
            or ip.is_unspecified or ip.is_multicast or ip.is_reserved
            or (isinstance(ip, ipaddress.IPv4Address) and ip in _SHARED))


_SHARED = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT (Alibaba metadata lives here)


def _bad(field: str, why: str) -> RequestValidationError:
    return RequestValidationError(field, why)


def _host_of(url: str, field: str) -> tuple[str, str, int]:
    """(scheme, canonical host, port) of ``url``, refusing anything ambiguous with a 400."""
    if any(ord(c) < 0x20 or ord(c) == 0x7F or 0xD800 <= ord(c) <= 0xDFFF for c in url):
        raise _bad(field, "must not contain control characters or unpaired surrogates")
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in ("http", "https"):
        raise _bad(field, "must be an http:// or https:// URL with a host")
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    if "\\" in authority:
        raise _bad(field, "must not contain a backslash in its host part")
    if "@" in authority:
        raise _bad(field, "must not carry credentials (user@host); send them as HTTP Basic auth")
    try:
        u = parse_url(url)
        raw = u.raw_host or ""
        port = u.port
    except (ValueError, TypeError, UnicodeError) as exc:
        raise _bad(field, f"is not a valid URL: {exc}") from None
    if not raw or port is None:
        raise _bad(field, "must be an http:// or https:// URL with a host")
    if not 0 < port < 65536:
        raise _bad(field, f"has an invalid port {port}")
    if not raw.isascii():
        raise _bad(field, f"host {raw!r} must be ASCII (a DNS name, IDNA-encoded, or an address)")
    return u.scheme.lower(), canonical_host(raw), port


def _literal(host: str, field: str) -> IPAddress | None:
    """The host as an address when it is one, refusing non-canonical IPv4 spellings."""
    if ":" in host:
        if "%" in host:
            raise _bad(field, "must not give an IPv6 zone (%...) in its host")
        try:
            return ipaddress.IPv6Address(host)
        except ValueError:
            raise _bad(field, f"host {host!r} is not a valid IPv6 address") from None
    try:
        return ipaddress.IPv4Address(host)
    except ValueError:
        pass
    try:
        socket.inet_aton(host)
    except OSError:
        pass
    else:  # the C library would read it as an IPv4 address: only the dotted-quad form is allowed
        raise _bad(field, f"host {host!r} is not a canonical dotted-quad IPv4 address")
    if host.replace(".", "").isdigit() or not _NAME.fullmatch(host):
        raise _bad(field, f"host {host!r} is not a valid host name or address")
    return None


@dataclass(frozen=True, slots=True)
class _Entry:
    host: str              # canonical; "*" for the wildcard
    port: int | None
    ip: IPAddress | None


def _entry(text: str) -> _Entry:
    text = text.strip().lower()
    if text.startswith("["):  # [::1]:port
        h, _, rest = text[1:].partition("]")
        port = rest.lstrip(":")
    elif text.count(":") == 1:
        h, port = text.split(":")
    else:
        h, port = text, ""
    h = canonical_host(h)
    try:
        ip: IPAddress | None = ipaddress.ip_address(h)
    except ValueError:
        ip = None
    return _Entry(str(ip) if ip is not None else h, int(port) if port.isdigit() else None, ip)


async def _getaddrinfo(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class AllowList:
    """The server's upstream allow-list: syntax and name checks, then checked resolution."""

    def __init__(self, entries: Iterable[str], *, resolve: Resolve | None = None,
                 ttl: float = 10.0) -> None:
        self.entries = tuple(_entry(e) for e in entries if e.strip())
        self.resolve: Resolve = resolve or _getaddrinfo
        self.ttl = ttl
        self._cache: dict[tuple[str, int], tuple[float, list[str]]] = {}
        self._passed: dict[str, Endpoint] = {}

    # -- synchronous part: run for every request before anything is fetched
    def check_url(self, url: str, field: str = "url") -> Endpoint:
        """Raise 400 for a malformed/ambiguous URL, 403 unless the allow-list covers its host."""
        if _BAD_CHARS.search(url):
            raise _bad(field, "must not contain control characters or unpaired surrogates")
        # what is checked depends only on the scheme and authority: remember those that passed
        start = url.find("://") + 3
        ends = [i for i in (url.find(c, start) for c in "/?#") if i >= 0]
        key = url[:min(ends)] if ends else url
        ep = self._passed.get(key)
        if ep is not None:
            return ep
        scheme, host, port = _host_of(url, field)
        ep = self.endpoint(scheme, host, port, field)
        if ep.ip is not None:
            self.check_address(ep, ep.ip)
        if len(self._passed) > 4096:
            self._passed.clear()
        self._passed[key] = ep
        return ep

    def endpoint(self, scheme: str, host: str, port: int, field: str = "url") -> Endpoint:
        ip = _literal(host, field)
        if ip is not None:
            host = str(ip)
        named = any(e.host == host and e.port in (None, port) for e in self.entries
                    if e.host != "*")
        wildcard = any(e.host == "*" for e in self.entries)
        if not named and (not wildcard or host in METADATA_HOSTS):
            raise self._refused(host, port)
        return Endpoint(scheme, host, port, ip, named)

    def check_address(self, ep: Endpoint, ip: IPAddress) -> None:
        """403 unless ``ip`` may be connected to for ``ep``."""
        if not special(ip):
            return
        if ep.named:  # the operator listed this host (or this very address) by name
            return
        mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
        for e in self.entries:
            if e.ip is not None and e.ip in (ip, mapped) and e.port in (None, ep.port):
                return
        raise self._refused(ep.host, ep.port, str(ip))

    # -- asynchronous part: the one resolution, at connection time
    async def addresses(self, ep: Endpoint) -> list[str]:
        """The checked addresses to connect to for ``ep`` (resolved once per ``ttl``)."""
        if ep.ip is not None:
            return [str(ep.ip)]
        key = (ep.host, ep.port)
        hit = self._cache.get(key)
        now = time.monotonic()
        if hit is not None and hit[0] > now:
            return hit[1]
        try:
            found = await self.resolve(ep.host, ep.port)
        except OSError as exc:
            raise StorageError(f"cannot resolve upstream host {ep.host!r}: {exc}", status=502,
                               store=ep.host) from None
        addrs = []
        for a in found:
            ip = ipaddress.ip_address(a.partition("%")[0])
            self.check_address(ep, ip)
            addrs.append(str(ip))
        if not addrs:
            raise StorageError(f"upstream host {ep.host!r} has no address", status=502,
                               store=ep.host)
        if len(self._cache) > 4096:
            self._cache.clear()
        self._cache[key] = (now + self.ttl, addrs)
        return addrs

    @staticmethod
    def _refused(host: str, port: int, address: str | None = None) -> StorageError:
        what = f"upstream host {host!r}" + (f" (address {address})" if address else "")
        return StorageError(
            f"{what} is not on this server's allow-list (start the server with "
            "--allow-upstream HOST to permit it; '*' never covers loopback, private, link-local "
            "or metadata addresses)", status=403, store=host)


@lru_cache(maxsize=64)
def allow_list(entries: Sequence[str]) -> AllowList:
    """A shared :class:`AllowList` for a settings tuple (its syntax/name checks are stateless)."""
    return AllowList(tuple(entries))


class PinnedResolver:
    """The upstream client's resolver, which never resolves on its own: it returns the
    allow-list's checked addresses (resolving through :meth:`AllowList.addresses`, which checks
    every answer)."""

    def __init__(self, allow: AllowList) -> None:
        self.allow = allow

    async def resolve(self, host: str, port: int = 0,
                      family: int = socket.AF_INET) -> list[dict[str, Any]]:
        try:
            ep = self.allow.endpoint("http", canonical_host(host), port)
            addrs = await self.allow.addresses(ep)
        except (StorageError, RequestValidationError) as exc:
            raise RefusedAddress(str(exc)) from None
        out = []
        for a in addrs:
            fam = socket.AF_INET6 if ":" in a else socket.AF_INET
            if family not in (socket.AF_UNSPEC, fam):
                continue
            out.append({"hostname": host, "host": a, "port": port, "family": fam,
                        "proto": 0, "flags": socket.AI_NUMERICHOST})
        if not out:
            raise RefusedAddress(f"no allowed address for {host!r}")
        return out

    async def close(self) -> None:
        return None
