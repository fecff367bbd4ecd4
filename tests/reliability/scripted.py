"""A small scripted HTTP store on loopback, for reliability tests of upstream misbehaviour.

Each test gives it a ``script``: a function from the request (method, path, headers) to an
:class:`Answer` (status, headers, body pieces, delay between pieces). It serves one request per
connection (``Connection: close``), in daemon threads of the test process, and records what it was
asked and how many body bytes it managed to send (so a test can tell that the server stopped
reading early)::

    with ScriptedStore(lambda req: Answer(200, body=[data])) as store:
        ... point our server at store.url ...
        assert store.requests[0].headers["range"] == "bytes=8-15"
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    sent: int = 0            # body bytes written before the client went away (or all of them)
    complete: bool = False   # the whole body was written


@dataclass
class Answer:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: Iterable[bytes] = ()
    delay: float = 0.0       # seconds before each body piece (a dripping store)
    length: int | None = None  # Content-Length to announce (default: the sum of the pieces)


def ranged(data: bytes) -> Callable[[Seen], Answer]:
    """A well-behaved store of ``data``: 206 for ``Range: bytes=a-b``, 200 without a range."""
    def script(req: Seen) -> Answer:
        rng = req.headers.get("range")
        if not rng:
            return Answer(200, body=[data])
        a, _, b = rng.removeprefix("bytes=").partition("-")
        start, end = int(a), min(int(b) if b else len(data) - 1, len(data) - 1)
        return Answer(206, {"content-range": f"bytes {start}-{end}/{len(data)}"},
                      [data[start:end + 1]])
    return script


_REASONS = {200: "OK", 206: "Partial Content", 404: "Not Found", 416: "Range Not Satisfiable",
            500: "Internal Server Error"}


class ScriptedStore:
    """Serve ``script``'s answers on ``127.0.0.1:<port>`` until closed."""

    def __init__(self, script: Callable[[Seen], Answer]) -> None:
        self.script = script
        self.requests: list[Seen] = []
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def __enter__(self) -> "ScriptedStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._closed = True
        self._sock.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(60)
            head = b""
            while b"\r\n\r\n" not in head:
                more = conn.recv(65536)
                if not more:
                    return
                head += more
            lines = head.split(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
            seen = Seen(method, path, headers)
            self.requests.append(seen)
            ans = self.script(seen)
            body = ans.body
            length = ans.length
            if length is None:  # announce the sum: only for bodies given as a list of pieces
                body = list(body)
                length = sum(len(b) for b in body)
            hdr = {"content-length": str(length), "connection": "close", **ans.headers}
            out = f"HTTP/1.1 {ans.status} {_REASONS.get(ans.status, 'Whatever')}\r\n" + "".join(
                f"{k}: {v}\r\n" for k, v in hdr.items()) + "\r\n"
            try:
                conn.sendall(out.encode("latin-1"))
                for piece in body:
                    if ans.delay:
                        time.sleep(ans.delay)
                    conn.sendall(piece)
                    seen.sent += len(piece)
                seen.complete = True
            except OSError:
                return


def pieces(total: int, piece: int = 1 << 20, fill: bytes = b"\0") -> Iterable[bytes]:
    """``total`` bytes as lazily made pieces (a huge body that is never all in memory)."""
    block = fill * piece
    left = total
    while left > 0:
        n = min(piece, left)
        yield block[:n]
        left -= n
