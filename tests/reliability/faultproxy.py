"""A small fault-injecting HTTP proxy on loopback, for reliability tests.

Put it between a client and a store (our server and nginx/moto) or between the SDK and our server::

    with FaultProxy("127.0.0.1", upstream_port) as proxy:
        proxy.inject("reset", count=2)     # the next two requests are reset mid-body
        ... point the client at proxy.url ...
        assert proxy.requests == ...       # how many requests reached the proxy

Each accepted connection carries one request (the answer always says ``Connection: close``). The
request is forwarded unchanged (Host header included, so S3 SigV4 signatures stay valid), the
whole upstream answer is read, and then the answer is delivered -- or mangled by the fault at the
head of the queue. Faults:

``refuse``      no listener at all: connections are refused (``refuse()`` / ``heal()``)
``reset``       headers and half the body, then a TCP RST
``stall``       read the request, answer nothing for ``stall_seconds`` (or until ``heal()``)
``truncate``    correct headers, half the body, then a clean close (FIN)
``status``      answer ``status`` (500, 503, ...) with a small body, without asking upstream
``long_length`` Content-Length larger than the body that follows, then close
``short_length``Content-Length smaller than the real body (the rest is sent and ignored)
``garbage``     a response that is not HTTP at all
``redirect``    answer ``status`` (302, ...) with ``Location: <location>`` (``redirect()``)

The proxy runs in daemon threads of the calling process; ``close()`` stops it.
"""

from __future__ import annotations

import http.client
import socket
import struct
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any

FAULTS = ("reset", "stall", "truncate", "status", "long_length", "short_length", "garbage",
          "redirect")
_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "proxy-connection"}


@dataclass
class _Fault:
    kind: str
    status: int = 503
    location: str = ""


class FaultProxy:
    """Forward HTTP/1.1 requests to ``upstream_host:upstream_port``, injecting queued faults."""

    def __init__(self, upstream_host: str, upstream_port: int, *, host: str = "127.0.0.1",
                 port: int = 0, stall_seconds: float = 30.0, timeout: float = 30.0) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.host = host
        self.stall_seconds = stall_seconds
        self.timeout = timeout
        self._lock = threading.Lock()
        self._faults: deque[_Fault] = deque()
        self._sticky: _Fault | None = None
        self._healed = threading.Event()
        self.requests = 0                # requests received (faulted or not)
        self.forwarded = 0               # requests sent on to upstream
        self.outcomes: Counter[str] = Counter()
        self.paths: list[str] = []
        self._sock: socket.socket | None = None
        self._closed = False
        self.port = port
        self._listen()

    # ----------------------------------------------------------------- control
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def inject(self, kind: str, count: int = 1, *, status: int = 503) -> None:
        """Apply fault ``kind`` to the next ``count`` requests (``count=0``: until ``heal()``)."""
        if kind == "refuse":
            self.refuse()
            return
        if kind not in FAULTS:
            raise ValueError(f"unknown fault {kind!r}; expected one of {FAULTS}")
        with self._lock:
            self._healed.clear()
            if count == 0:
                self._sticky = _Fault(kind, status)
            else:
                self._faults.extend(_Fault(kind, status) for _ in range(count))

    def redirect(self, location: str, *, status: int = 302, count: int = 0) -> None:
        """Answer the next ``count`` requests (0: until ``heal()``) with a redirect."""
        with self._lock:
            self._healed.clear()
            fault = _Fault("redirect", status, location)
            if count == 0:
                self._sticky = fault
            else:
                self._faults.extend(fault for _ in range(count))

    def refuse(self) -> None:
        """Stop listening: new connections are refused until ``heal()``."""
        with self._lock:
            sock, self._sock = self._sock, None
        if sock is not None:
            try:  # wakes the thread blocked in accept() and stops the kernel listening (Linux)
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def heal(self) -> None:
        """Drop every queued or sticky fault, end stalls, and listen again if refusing."""
        with self._lock:
            self._faults.clear()
            self._sticky = None
            self._healed.set()
            listening = self._sock is not None
        if not listening and not self._closed:
            self._listen()

    def reset_counts(self) -> None:
        with self._lock:
            self.requests = self.forwarded = 0
            self.outcomes.clear()
            self.paths.clear()

    def close(self) -> None:
        self._closed = True
        self.heal()
        self.refuse()

    def __enter__(self) -> "FaultProxy":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---------------------------------------------------------------- serving
    def _listen(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        for _ in range(50):  # after refuse(), rebinding the same port can take a moment
            try:
                sock.bind((self.host, self.port))
                break
            except OSError:
                time.sleep(0.05)
        else:
            sock.bind((self.host, self.port))
        sock.listen(512)
        self.port = sock.getsockname()[1]
        with self._lock:
            self._sock = sock
        threading.Thread(target=self._accept_loop, args=(sock,), daemon=True,
                         name=f"faultproxy-{self.port}").start()

    def _accept_loop(self, sock: socket.socket) -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return  # closed by refuse()/close()
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _next_fault(self) -> _Fault | None:
        with self._lock:
            self.requests += 1
            if self._faults:
                return self._faults.popleft()
            return self._sticky

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(self.timeout)
        try:
            req = _read_request(conn)
            if req is None:
                return
            method, target, headers, body = req
            fault = self._next_fault()
            with self._lock:
                self.paths.append(target)
            if fault is not None and fault.kind == "status":
                self._outcome(f"status{fault.status}")
                msg = f"injected {fault.status}".encode()
                conn.sendall(_head(fault.status, [("Content-Type", "text/plain")], len(msg)) + msg)
                return
            if fault is not None and fault.kind == "redirect":
                self._outcome(f"redirect{fault.status}")
                conn.sendall(_head(fault.status, [("Location", fault.location)], 0))
                return
            if fault is not None and fault.kind == "stall":
                self._outcome("stall")
                self._healed.wait(self.stall_seconds)
                return
            status, rheaders, rbody = self._forward(method, target, headers, body)
            self._deliver(conn, fault, status, rheaders, rbody)
        except (OSError, http.client.HTTPException):
            self._outcome("error")
        finally:
            try:
                conn.close()
            except OSError:
                pass

    def _outcome(self, what: str) -> None:
        with self._lock:
            self.outcomes[what] += 1

    def _forward(self, method: str, target: str, headers: list[tuple[str, str]],
                 body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        up = http.client.HTTPConnection(*self.upstream, timeout=self.timeout)
        try:
            up.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
            for k, v in headers:
                if k.lower() not in _HOP:
                    up.putheader(k, v)
            if body or method in ("POST", "PUT"):
                up.putheader("Content-Length", str(len(body)))
            up.putheader("Connection", "close")
            up.endheaders(body or None)
            resp = up.getresponse()
            rbody = resp.read()
            with self._lock:
                self.forwarded += 1
            return resp.status, [(k, v) for k, v in resp.getheaders() if k.lower() not in _HOP], rbody
        finally:
            up.close()

    def _deliver(self, conn: socket.socket, fault: _Fault | None, status: int,
                 headers: list[tuple[str, str]], body: bytes) -> None:
        kind = fault.kind if fault is not None else "pass"
        self._outcome(kind)
        half = len(body) // 2
        if kind == "pass":
            conn.sendall(_head(status, headers, len(body)) + body)
        elif kind == "reset":
            conn.sendall(_head(status, headers, len(body)) + body[:half])
            time.sleep(0.02)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        elif kind == "truncate":
            conn.sendall(_head(status, headers, len(body)) + body[:half])
            conn.shutdown(socket.SHUT_WR)
        elif kind == "long_length":
            conn.sendall(_head(status, headers, len(body) + 1000) + body)
            conn.shutdown(socket.SHUT_WR)
        elif kind == "short_length":
            conn.sendall(_head(status, headers, max(0, len(body) - 7)) + body)
        elif kind == "garbage":
            conn.sendall(b"\x00\xffNOT HTTP AT ALL\r\n\r\n" + body[:16])


def _head(status: int, headers: list[tuple[str, str]], length: int) -> bytes:
    reason = http.client.responses.get(status, "Status")
    lines = [f"HTTP/1.1 {status} {reason}"]
    lines += [f"{k}: {v}" for k, v in headers]
    lines += [f"Content-Length: {length}", "Connection: close"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _read_request(conn: socket.socket) -> tuple[str, str, list[tuple[str, str]], bytes] | None:
    """One request from ``conn``: (method, target, headers, body); None if the peer went away."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        part = conn.recv(65536)
        if not part:
            return None
        buf += part
        if len(buf) > 1 << 20:
            return None
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers = []
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers.append((k.strip(), v.strip()))
    length = next((int(v) for k, v in headers if k.lower() == "content-length"), 0)
    while len(rest) < length:
        part = conn.recv(65536)
        if not part:
            return None
        rest += part
    return method, target, headers, rest[:length]
