"""A small asyncio HTTP/1.1 client for range GETs and HEADs whose bodies land in their final buffer.

Why not aiohttp: a profile of the reduction server reading 4 MB chunks over nginx spent ~60 % of
its time receiving bodies, which aiohttp copies three or four times (the event loop's read, the
parser's slice, the joins in ``resp.read()``). Here the connection is an
:class:`asyncio.BufferedProtocol`: once the headers are in, the kernel's ``recv`` writes the body
straight into one buffer allocated from ``Content-Length`` (never more than the caller's cap), and
that buffer is what the caller gets. The status line and headers are parsed from a small buffer of
their own (a response's headers are a few hundred bytes; what follows them in that buffer is
copied once into the body).

What it does, and only that (the server's upstream reads need no more):
- GET and HEAD, HTTP/1.1, keep-alive; one request at a time per connection, connections pooled
  by :class:`Pool` (one pool per store and identity: the caller never shares a pool across
  credentials);
- bodies framed by ``Content-Length``, chunked transfer-encoding or the connection's close;
  at most ``cap`` body bytes are kept, and a body longer than that is cut there
  (:attr:`Response.overflow`) and its connection closed;
- ``check(response)`` runs as soon as the headers are parsed, before any body byte is read, and
  returns the cap (or raises: the connection is then closed unread);
- a request on a pooled connection that the server had closed (nothing of the answer arrived)
  is sent once more on a fresh connection;
- no redirects, no decompression, no cookies, no proxies: what is asked is what is sent.

Timeouts are the caller's (``asyncio.timeout`` around :meth:`Pool.request`): a cancelled
request closes its connection. Connecting goes through ``resolve`` (the server's pinned
resolver), so only addresses it returns are dialled.
"""

from __future__ import annotations

import asyncio
import socket
import ssl as _ssl
import time
from typing import Any, Awaitable, Callable

import numpy as np

__all__ = ["BodyError", "HTTPError", "Pool", "ProtocolError", "Response", "StaleConnection"]

#: response headers larger than this are refused
MAX_HEAD = 64 << 10
#: bytes received at a time while the headers (or chunk framing) are read
HEAD_BUFFER = 16 << 10
#: an unknown-length body's buffer starts at this size and doubles (up to the cap)
GROW_FROM = 64 << 10
#: idle pooled connections older than this are closed rather than reused (servers commonly
#: drop idle keep-alive connections after 5-75 s)
IDLE_SECONDS = 15.0


class HTTPError(Exception):
    """A transport-level failure: the store's answer could not be read."""


class ProtocolError(HTTPError):
    """The store's answer is not HTTP/1.x as this client reads it."""


class BodyError(HTTPError):
    """The connection closed before the whole body (as framed) arrived."""


class StaleConnection(HTTPError):
    """A pooled connection was closed by the server before any of the answer arrived."""


class Response:
    """A response: ``status``, ``reason``, ``headers`` (lower-case names; repeated fields joined
    with ``", "``), and after :meth:`Pool.request` the ``body`` (read-only, at most the cap)."""

    __slots__ = ("status", "reason", "headers", "version", "body", "overflow")

    def __init__(self, status: int, reason: str, headers: dict[str, str], version: str) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.version = version
        self.body: memoryview = memoryview(b"")
        #: the body was longer than the cap (only the cap's bytes were kept)
        self.overflow = False


#: ``check(response) -> cap``: runs when the headers are in; the cap bounds the body kept
Check = Callable[[Response], int]

_IDLE, _HEAD, _LENGTH, _CHUNKED, _CLOSE, _DONE = range(6)
# chunked sub-states
_C_SIZE, _C_DATA, _C_CRLF, _C_TRAILER = range(4)


def _parse_head(block: bytes) -> Response:
    """The status line and headers of ``block`` (without the final blank line)."""
    try:
        text = block.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes every byte
        raise ProtocolError("undecodable response headers") from None
    lines = text.split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code, _, reason = rest.partition(" ")
    if not version.startswith("HTTP/1.") or len(code) != 3 or not code.isdigit():
        raise ProtocolError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise ProtocolError(f"malformed header line: {line[:80]!r}")
        name = name.lower()
        value = value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return Response(int(code), reason.strip(), headers, version)


class _Connection(asyncio.BufferedProtocol):
    """One HTTP/1.1 connection: sends a request, reads its answer into the body's buffer."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.used = 0          # requests sent on this connection
        self.idle_since = 0.0
        self._state = _IDLE
        self._head = bytearray(HEAD_BUFFER)
        self._hlen = 0
        self._fut: asyncio.Future[Response] | None = None
        self._resp: Response | None = None
        self._check: Check | None = None
        self._head_only = False
        self._body: Any = None  # the body's final buffer (a numpy uint8 array)
        self._view: memoryview = memoryview(b"")
        self._pos = 0
        self._want = 0         # bytes of the body to keep (Content-Length bodies)
        self._cap = 0
        self._length = 0       # the Content-Length, when the body has one
        self._chunk = _C_SIZE
        self._left = 0         # bytes left of the current chunk
        self._line = bytearray()
        self._reusable = False

    # -- asyncio.BufferedProtocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._state == _LENGTH or self._state == _CLOSE:
            if self._state == _CLOSE and self._pos == len(self._body):
                self._grow()
            return self._view[self._pos:self._want if self._state == _LENGTH else None]
        if self._hlen == len(self._head):  # headers or chunk framing longer than the buffer
            self._head.extend(bytes(len(self._head)))
        return memoryview(self._head)[self._hlen:]

    def buffer_updated(self, nbytes: int) -> None:
        try:
            if self._state == _LENGTH:
                self._pos += nbytes
                if self._pos == self._want:
                    self._finish(self._want == self._length)
            elif self._state == _CLOSE:
                self._pos += nbytes
                if self._pos >= self._cap + 1:
                    self._pos = self._cap
                    self._overflow()
            elif self._state == _HEAD:
                self._hlen += nbytes
                self._headers()
            elif self._state == _CHUNKED:
                data = bytes(memoryview(self._head)[:nbytes])
                self._hlen = 0
                self._chunked(data)
            else:  # bytes nobody asked for: the connection can no longer be trusted
                self._hlen = 0
                self._fail(ProtocolError("the store sent bytes that answer no request"))
        except Exception as exc:  # a malformed answer, or the check refused it: the caller's
            self._fail(exc)       # error, the connection closed

    def eof_received(self) -> bool:
        return False  # close the transport; connection_lost says what it meant

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._state == _CLOSE:
            self._finish(False)
        elif self._state not in (_IDLE, _DONE):
            if self._state == _HEAD and self._hlen == 0 and self.used > 1:
                self._fail(StaleConnection("the store closed a kept-alive connection"))
            elif self._state == _HEAD:
                self._fail(ProtocolError("the store closed the connection before the response "
                                         "headers were complete" + (f": {exc}" if exc else "")))
            else:
                self._fail(BodyError(self._short_message(exc)))

    # -- requests
    def send(self, request: bytes, check: Check, head_only: bool) -> asyncio.Future[Response]:
        """Send ``request`` (the whole head); the future is the answer with its body."""
        assert self._state == _IDLE and self.transport is not None and not self.closed
        loop = asyncio.get_running_loop()
        self._fut = loop.create_future()
        self._check = check
        self._head_only = head_only
        self._hlen = 0
        if len(self._head) > HEAD_BUFFER:  # grown by an earlier answer's long headers
            self._head = bytearray(HEAD_BUFFER)
        self._state = _HEAD
        self._reusable = False
        self.used += 1
        self.transport.write(request)
        return self._fut

    def reusable(self) -> bool:
        return self._reusable and not self.closed

    def abort(self) -> None:
        self.closed = True
        self._state = _DONE
        if self.transport is not None:
            self.transport.abort()

    # -- parsing
    def _headers(self) -> None:
        while self._state == _HEAD:
            end = self._head.find(b"\r\n\r\n", 0, self._hlen)
            if end < 0:
                if self._hlen >= MAX_HEAD:
                    raise ProtocolError(f"response headers longer than {MAX_HEAD} bytes")
                return
            resp = _parse_head(bytes(self._head[:end]))
            rest = bytes(self._head[end + 4:self._hlen])
            self._hlen = 0
            if 100 <= resp.status < 200:  # interim answer (100 Continue): the real one follows
                self._head[:len(rest)] = rest
                self._hlen = len(rest)
                continue
            self._start_body(resp)
            if rest:
                self._feed(rest)

    def _start_body(self, resp: Response) -> None:
        assert self._check is not None
        self._resp = resp
        cap = self._check(resp)
        self._cap = cap
        h = resp.headers
        keep = resp.version == "HTTP/1.1" and "close" not in h.get("connection", "").lower()
        self._reusable = keep
        if self._head_only or resp.status in (204, 304):
            self._finish(keep)
            return
        if "chunked" in h.get("transfer-encoding", "").lower():
            self._state = _CHUNKED
            self._chunk = _C_SIZE
            self._line.clear()
            self._alloc(min(cap, GROW_FROM), exact=False)
            return
        length = h.get("content-length")
        if length is not None:
            if not length.isdigit():
                raise ProtocolError(f"invalid Content-Length {length[:40]!r}")
            self._length = int(length)
            self._want = min(self._length, cap)
            resp.overflow = self._length > cap  # only the cap's bytes are read
            self._state = _LENGTH
            self._alloc(self._want, exact=True)
            if self._want == 0:
                self._finish(self._length == 0)
            return
        self._state = _CLOSE  # the body ends when the connection does
        self._alloc(min(cap + 1, GROW_FROM), exact=False)

    def _alloc(self, n: int, exact: bool) -> None:
        # no zero fill: every byte handed out is one the store sent
        self._body = np.empty(max(n, 1) if not exact else n, np.uint8)
        self._view = memoryview(self._body)
        self._pos = 0

    def _grow(self) -> None:
        """A larger buffer for an unknown-length body (new object: the old one may still be
        exported to the event loop's ``recv_into``)."""
        new = np.empty(min(max(2 * len(self._body), GROW_FROM), self._cap + 1), np.uint8)
        new[:self._pos] = self._body[:self._pos]
        self._body = new
        self._view = memoryview(new)

    def _feed(self, data: bytes) -> None:
        """Body bytes that arrived with the headers (or as chunked framing)."""
        if self._state == _CHUNKED:
            self._chunked(data)
            return
        if self._state == _LENGTH:
            n = min(len(data), self._want - self._pos)
            self._view[self._pos:self._pos + n] = data[:n]
            self._pos += n
            if n < len(data) and self._want == self._length:
                raise ProtocolError("the store sent more than its Content-Length")
            if self._pos == self._want:
                self._finish(self._want == self._length)
        elif self._state == _CLOSE:
            self._append(data)

    def _append(self, data: bytes | memoryview) -> None:
        """Copy ``data`` onto an unknown-length body, cutting it at the cap."""
        room = self._cap + 1 - self._pos
        data = data[:room]
        while self._pos + len(data) > len(self._body):
            self._grow()
        self._view[self._pos:self._pos + len(data)] = data
        self._pos += len(data)
        if self._pos > self._cap:
            self._pos = self._cap
            self._overflow()

    def _chunked(self, data: bytes) -> None:
        mv = memoryview(data)
        i = 0
        while i < len(mv) and self._state == _CHUNKED:
            if self._chunk == _C_DATA:
                n = min(self._left, len(mv) - i)
                self._append(mv[i:i + n])
                i += n
                self._left -= n
                if self._left == 0:
                    self._chunk = _C_CRLF
                    self._line.clear()
                continue
            nl = data.find(b"\n", i)
            if nl < 0:
                self._line += mv[i:]
                if len(self._line) > 4096:
                    raise ProtocolError("a chunk-size line longer than 4096 bytes")
                return
            self._line += mv[i:nl + 1]
            i = nl + 1
            line = bytes(self._line).rstrip(b"\r\n")
            self._line.clear()
            if self._chunk == _C_CRLF:
                if line:
                    raise ProtocolError("chunk data not followed by CRLF")
                self._chunk = _C_SIZE
            elif self._chunk == _C_SIZE:
                size = line.split(b";", 1)[0].strip()
                try:
                    self._left = int(size, 16)
                except ValueError:
                    raise ProtocolError(f"invalid chunk size {size[:20]!r}") from None
                if self._left < 0 or not size.isalnum():
                    raise ProtocolError(f"invalid chunk size {size[:20]!r}")
                self._chunk = _C_DATA if self._left else _C_TRAILER
            elif not line:  # _C_TRAILER: the blank line after the trailers ends the body
                self._finish(i == len(mv))

    def _overflow(self) -> None:
        assert self._resp is not None
        self._resp.overflow = True
        self._finish(False)

    def _finish(self, reusable: bool) -> None:
        resp = self._resp
        reusable = reusable and self._reusable
        self._state = _DONE if not reusable else _IDLE
        self._reusable = reusable
        if resp is not None and self._body is not None and not self._head_only:
            resp.body = self._view[:self._pos].toreadonly()
        self._body, self._view, self._resp, self._check = None, memoryview(b""), None, None
        fut, self._fut = self._fut, None
        if not reusable and self.transport is not None:
            self.closed = True
            self.transport.close()
        if fut is not None and not fut.done():
            fut.set_result(resp)  # type: ignore[arg-type]

    def _fail(self, exc: BaseException) -> None:
        self._state = _DONE
        self._reusable = False
        self._body, self._view, self._resp, self._check = None, memoryview(b""), None, None
        self.closed = True
        if self.transport is not None:
            self.transport.abort()
        fut, self._fut = self._fut, None
        if fut is not None and not fut.done():
            fut.set_exception(exc)

    def _short_message(self, exc: Exception | None) -> str:
        if self._state == _LENGTH:
            got = f"{self._pos} of {self._length} bytes"
        else:
            got = f"{self._pos} bytes of a chunked body"
        return f"the connection closed after {got}" + (f": {exc}" if exc else "")


Resolve = Callable[[str, int], Awaitable[list[tuple[int, str]]]]


class Pool:
    """Kept-alive connections to one store for one identity.

    ``resolve(host, port)`` returns the (family, address) pairs to dial, in order; ``ssl`` is
    None for plain HTTP, else the context for ``https`` URLs. ``max_idle`` bounds the idle
    connections kept (busy ones are bounded by the caller's concurrency limit)."""

    def __init__(self, resolve: Resolve, *, ssl: _ssl.SSLContext | None = None,
                 connect_timeout: float = 5.0, max_idle: int = 64) -> None:
        self._resolve = resolve
        self._ssl = ssl
        self._connect_timeout = connect_timeout
        self._max_idle = max_idle
        self._idle: list[_Connection] = []
        self.closed = False
        #: connections opened (for tests and metrics)
        self.opened = 0

    async def request(self, method: str, scheme: str, host: str, port: int, target: str,
                      headers: dict[str, str], check: Check) -> Response:
        """Send ``method target`` with ``headers`` (``Host`` is added when absent) and return
        the answer with its body read (see :class:`Response`; ``check`` runs first)."""
        head = _request_head(method, host, port, scheme, target, headers)
        conn = self._take()
        fresh = conn is None
        while True:
            if conn is None:
                conn = await self._connect(scheme, host, port)
            try:
                resp = await conn.send(head, check, method == "HEAD")
            except StaleConnection:
                if fresh:
                    raise
                conn, fresh = None, True  # once more, on a new connection
                continue
            except BaseException:
                conn.abort()  # cancelled (deadline) or failed mid-answer: not reusable
                raise
            if conn.reusable():
                self._give(conn)
            return resp

    def _take(self) -> _Connection | None:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed and now - conn.idle_since < IDLE_SECONDS:
                return conn
            conn.abort()
        return None

    def _give(self, conn: _Connection) -> None:
        if self.closed or len(self._idle) >= self._max_idle:
            conn.abort()
            return
        conn.idle_since = time.monotonic()
        self._idle.append(conn)

    async def _connect(self, scheme: str, host: str, port: int) -> _Connection:
        loop = asyncio.get_running_loop()
        tls = scheme == "https"
        last: BaseException | None = None
        for family, address in await self._resolve(host, port):
            try:
                async with asyncio.timeout(self._connect_timeout):
                    _t, conn = await loop.create_connection(
                        _Connection, address, port, family=family,
                        ssl=(self._ssl or _default_context()) if tls else None,
                        server_hostname=host if tls else None)
            except (OSError, TimeoutError) as exc:
                last = exc
                continue
            self.opened += 1
            return conn
        if isinstance(last, TimeoutError):
            raise TimeoutError(f"connecting to {host}:{port} timed out")
        raise last if last is not None else OSError(f"no address to connect to for {host}")

    def close(self) -> None:
        """Close the idle connections (busy ones close when their request ends)."""
        self.closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.abort()


_CONTEXT: list[_ssl.SSLContext] = []


def _default_context() -> _ssl.SSLContext:
    """The system's CAs (made once)."""
    if not _CONTEXT:
        _CONTEXT.append(_ssl.create_default_context())
    return _CONTEXT[0]


def _request_head(method: str, host: str, port: int, scheme: str, target: str,
                  headers: dict[str, str]) -> bytes:
    """The request line and headers, refusing any CR/LF that would split them."""
    lines = [f"{method} {target} HTTP/1.1"]
    if not any(k.lower() == "host" for k in headers):
        name = f"[{host}]" if ":" in host else host
        default = 443 if scheme == "https" else 80
        lines.append(f"Host: {name}" if port == default else f"Host: {name}:{port}")
    lines.extend(f"{k}: {v}" for k, v in headers.items())
    text = "\r\n".join(lines)
    if "\n" in text.replace("\r\n", "") or "\r" in text.replace("\r\n", ""):
        raise ValueError("a request header or target contains CR or LF")
    return (text + "\r\n\r\n").encode("latin-1")


async def system_resolve(host: str, port: int) -> list[tuple[int, str]]:
    """(family, address) pairs of ``host`` from the system's resolver."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys((int(i[0]), str(i[4][0])) for i in infos))
