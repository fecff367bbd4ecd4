"""uvicorn's httptools protocol with a request-header deadline, a header-size limit, a write
deadline and JSON answers while shutting down.

uvicorn bounds idle keep-alive connections but not a client that sends its request headers one
byte at a time; each such client would hold a connection and a file descriptor forever. Here a
connection must finish each request's headers within ``header_timeout`` seconds of connecting or
of starting the request, else it is closed (like nginx's ``client_header_timeout``). The
deadline comes from the app's lifespan state (``client_timeout``, from the server settings), so it
also reaches worker processes. Request bodies are bounded by the app's own body-read deadline.

Also from the lifespan state:

* ``max_header_bytes``: a request line plus headers larger than this gets a 431 JSON error and
  the connection is closed (httptools itself has no limit).
* ``write_timeout``: when a client stops reading, the connection's write buffer fills and the
  transport pauses writing; if it stays paused this long the connection is aborted, so the
  response (and the memory budget it holds) is released.
* Once uvicorn starts a graceful shutdown, a request that arrives on a kept-alive connection gets a
  503 JSON error with ``Retry-After``, and one cut by the shutdown deadline gets the same instead
  of uvicorn's plain-text 500 (any other failure before the response started: a JSON 500).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


def json_error(status: int, reason: str, message: str,
               extra: tuple[tuple[str, str], ...] = ()) -> bytes:
    """A complete HTTP/1.1 error response with the API's JSON error body; closes the connection."""
    body = json.dumps({"error": {"message": message}}).encode()
    head = [f"HTTP/1.1 {status} {reason}", "content-type: application/json",
            f"content-length: {len(body)}", "connection: close", *(f"{k}: {v}" for k, v in extra)]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


#: seconds a client is told to wait before retrying when the server is shutting down
RETRY_AFTER_SECONDS = 5


class DeadlineHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol with header deadline and size limit, write deadline, shutdown answers."""

    default_timeout: float = 10.0
    default_max_header_bytes: int = 64 << 10
    default_write_timeout: float = 30.0
    _deadline: asyncio.TimerHandle | None = None
    _write_deadline: asyncio.TimerHandle | None = None
    _header_bytes: int = 0
    _refused: bool = False
    _draining: bool = False

    def _arm(self) -> None:
        if self._deadline is None:
            timeout = float(self.app_state.get("client_timeout", self.default_timeout))
            self._deadline = self.loop.call_later(timeout, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self.transport.close()

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_bytes = 0
        self._arm()

    def _count(self, n: int) -> None:
        self._header_bytes += n
        limit = int(self.app_state.get("max_header_bytes", self.default_max_header_bytes))
        if self._header_bytes > limit and not self._refused:
            self._refuse(431, "Request Header Fields Too Large",
                         f"request line and headers exceed {limit} bytes (--max-header-bytes)")

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        if not self._refused:
            super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        if not self._refused:
            super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._disarm()
        if self._refused:
            return
        if self._draining and not self._busy():
            self._refuse(503, "Service Unavailable", "server is shutting down; retry shortly",
                         (("retry-after", str(RETRY_AFTER_SECONDS)),))
            return
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None:  # a JSON error instead of uvicorn's plain-text 500
            cycle.send_500_response = lambda: _send_json_error(cycle, self._draining)
            cycle.transport = CorkedTransport(self.transport, self.loop)

    def _busy(self) -> bool:
        """An earlier (pipelined) request on this connection is still being answered."""
        return self.cycle is not None and not self.cycle.response_complete

    def _refuse(self, status: int, reason: str, message: str,
                extra: tuple[tuple[str, str], ...] = ()) -> None:
        """Answer ``status`` with a JSON error and close, without running the app. (Behind a
        pipelined request still being answered the error cannot go first: just close.)"""
        self._refused = True
        if not self.transport.is_closing():
            if not self._busy():
                self.transport.write(json_error(status, reason, message, extra))
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        super().data_received(data)

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._write_deadline is None:
            timeout = float(self.app_state.get("write_timeout", self.default_write_timeout))
            self._write_deadline = self.loop.call_later(timeout, self._stalled)

    def resume_writing(self) -> None:
        if self._write_deadline is not None:
            self._write_deadline.cancel()
            self._write_deadline = None
        super().resume_writing()

    def _stalled(self) -> None:
        """The client has read nothing for ``write_timeout`` seconds: drop it (and its answer)."""
        self._write_deadline = None
        if not self.transport.is_closing():
            self.logger.info("closing a connection whose client stopped reading")
        self.transport.abort()

    def shutdown(self) -> None:
        self._draining = True
        super().shutdown()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._write_deadline is not None:
            self._write_deadline.cancel()
            self._write_deadline = None
        super().connection_lost(exc)


class CorkedTransport:
    """The connection's transport as one request's response cycle sees it: the cycle's first
    write (the status line and headers) is held back and sent with the next one (the body) in
    one write: one system call and one TCP segment instead of two for a small answer (the two
    writes were ~9 % of a 64 KiB request's CPU in a py-spy profile). What is held is written
    at the event loop's next turn at the latest, and before anything else the cycle writes or
    closes: the bytes on the wire are the same, in the same order."""

    __slots__ = ("_transport", "_loop", "_held", "_timer", "_first")

    #: a body up to this size is joined to the held head; a larger one follows it separately
    JOIN_BYTES = 64 << 10

    def __init__(self, transport: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None
        self._timer: asyncio.Handle | None = None
        self._first = True

    def write(self, data: Any) -> None:
        if self._first:  # the head: held until the body comes (or the loop turns)
            self._first = False
            self._held = bytes(data)
            self._timer = self._loop.call_soon(self.flush)
            return
        held = self._held
        if held is not None:
            self._release()
            if len(data) <= self.JOIN_BYTES:
                self._transport.write(held + bytes(data))
                return
            self._transport.write(held)
        self._transport.write(data)

    def _release(self) -> None:
        self._held = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def flush(self) -> None:
        """Write what is held (if the connection is still open)."""
        held = self._held
        self._release()
        if held is not None and not self._transport.is_closing():
            self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._release()
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:  # is_closing, get_extra_info, ...: the transport's
        return getattr(self._transport, name)


async def _send_json_error(cycle: Any, draining: bool) -> None:
    if draining:
        status, msg = 503, "server is shutting down: the request was cut; retry shortly"
        extra = [(b"retry-after", str(RETRY_AFTER_SECONDS).encode())]
    else:
        status, msg, extra = 500, "internal server error", []
    body = json.dumps({"error": {"message": msg}}).encode()
    await cycle.send({"type": "http.response.start", "status": status,
                      "headers": [(b"content-type", b"application/json"),
                                  (b"content-length", str(len(body)).encode()),
                                  (b"connection", b"close"), *extra]})
    await cycle.send({"type": "http.response.body", "body": body, "more_body": False})

