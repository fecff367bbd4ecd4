"""Memory-in-flight bound: a byte budget requests reserve before fetching and decoding.

Each request reserves its raw plus decoded size before it reads anything. While the budget is
exhausted a request waits (first come, first served) up to a deadline and then gets a 503, so the
server degrades by refusing work rather than dying of OOM. A request larger than the whole budget
can never run and gets a 413 at once.
"""

from __future__ import annotations

import asyncio
from collections import deque
from contextlib import asynccontextmanager
from typing import AsyncIterator

from ..errors import ActiveStorageError


class LimitError(ActiveStorageError):
    """A server limit refused the request; ``status`` is 413 (never fits) or 503 (busy now)."""

    def __init__(self, message: str, status: int) -> None:
        self.status = status
        super().__init__(message)


class ByteBudget:
    """An async counting budget of bytes. Used from one event loop only (no locks needed)."""

    def __init__(self, limit: int, wait_seconds: float) -> None:
        self.limit = int(limit)
        self.wait_seconds = float(wait_seconds)
        self.used = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    @asynccontextmanager
    async def reserve(self, nbytes: int) -> AsyncIterator[None]:
        """Hold ``nbytes`` of the budget for the duration of the ``async with`` block."""
        nbytes = await self.acquire(nbytes)
        try:
            yield
        finally:
            self.release(nbytes)

    async def acquire(self, nbytes: int) -> int:
        """Take ``nbytes`` (waiting up to ``wait_seconds``); give them back with :meth:`release`
        -- the server does so only once the response has been written or the client is gone."""
        nbytes = max(0, int(nbytes))
        if nbytes > self.limit:
            raise LimitError(f"request needs {nbytes} bytes in memory, more than this server's "
                             f"limit of {self.limit} (--max-bytes-in-flight)", 413)
        if self._waiters or self.used + nbytes > self.limit:
            await self._wait(nbytes)
        else:
            self.used += nbytes
        return nbytes

    def release(self, nbytes: int) -> None:
        """Return ``nbytes`` taken by :meth:`acquire`."""
        self.used -= nbytes
        self._wake()

    async def _wait(self, nbytes: int) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (nbytes, fut)
        self._waiters.append(entry)
        try:
            await asyncio.wait_for(asyncio.shield(fut), self.wait_seconds)
        except asyncio.TimeoutError:
            if fut.done() and not fut.cancelled():  # granted just as we timed out: keep it
                return
            self._remove(entry)
            raise LimitError(f"server busy: {self.used} of {self.limit} bytes in flight; "
                             "retry later", 503) from None
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.used -= nbytes
                self._wake()
            else:
                self._remove(entry)
            raise

    def _remove(self, entry: tuple[int, asyncio.Future[None]]) -> None:
        try:
            self._waiters.remove(entry)
        except ValueError:
            pass
        entry[1].cancel()
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            n, fut = self._waiters[0]
            if fut.done():
                self._waiters.popleft()
                continue
            if self.used + n > self.limit:
                return
            self._waiters.popleft()
            self.used += n
            fut.set_result(None)
