"""uvicorn's httptools protocol with a request-header deadline (slowloris protection).

uvicorn bounds idle keep-alive connections but not a client that sends its request headers one
byte at a time; each such client would hold a connection and a file descriptor forever. Here a
connection must finish each request's headers within ``header_timeout`` seconds of connecting or
of starting the request, else it is closed (like nginx's ``client_header_timeout``). The
deadline comes from the app's lifespan state (``client_timeout``, from the server settings), so it
also reaches worker processes. Request bodies are bounded by the app's own body-read deadline.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class DeadlineHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol that closes connections whose request headers take too long."""

    default_timeout: float = 10.0
    _deadline: asyncio.TimerHandle | None = None

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
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

