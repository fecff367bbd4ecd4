"""Several reduction servers as one backend: least-outstanding-requests, failover, back-off.

A batch of chunk requests is cut into parts; each part, when it starts, goes to the healthy server
with the fewest chunk requests in flight, so faster servers take more of the work. A server that
fails (unreachable, 5xx, a malformed answer) is marked down for ``backoff`` seconds and its part is
retried on the others. Errors that are the request's fault (4xx: bad field, missing object,
refused credentials) are raised at once: another server would answer the same.

When every server has failed for a part, :class:`AllServersDownError` lists each server's failure.
Servers in back-off are still tried (once each) when no healthy server is left, so a recovered
server is picked up without waiting for its back-off to end.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence
from urllib.parse import urlsplit

from ..errors import ActiveStorageError, RequestValidationError, ServerError
from ..kernel import Partial
from ..request import ChunkRequest
from .base import Backend, BackendStats

log = logging.getLogger(__name__)

#: seconds a failing server is left alone (``ACTIVESTORAGE_POOL_BACKOFF``).
DEFAULT_BACKOFF = 30.0
#: parts per healthy server that one batch is cut into (more parts balance better).
PARTS_PER_SERVER = 2


class AllServersDownError(ServerError):
    """No server in the pool could do the work; ``failures`` maps each server URL to its error."""

    def __init__(self, failures: Mapping[str, str]) -> None:
        self.failures = dict(failures)
        lines = "; ".join(f"{url}: {why}" for url, why in self.failures.items())
        super().__init__(f"all {len(self.failures)} reduction servers failed: {lines}",
                         status=503, url=None, body=None)


def validate_server_url(url: Any, field: str = "active_storage_url") -> str:
    """An ``http(s)://host[:port][/prefix]`` URL without credentials, or RequestValidationError."""
    if not isinstance(url, str) or not url.strip():
        raise RequestValidationError(field, f"expected a server URL string, got {url!r}")
    try:
        parts = urlsplit(url.strip())
        port = parts.port  # raises ValueError for a bad port
    except ValueError as exc:
        raise RequestValidationError(field, f"malformed server URL {url!r}: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise RequestValidationError(
            field, f"server URL {url!r} must start with http:// or https://")
    if not parts.hostname:
        raise RequestValidationError(field, f"server URL {url!r} has no host")
    if parts.username or parts.password:
        raise RequestValidationError(
            field, "server URL must not carry credentials; pass username=/password= "
                   "(or storage_options) instead")
    if parts.query or parts.fragment:
        raise RequestValidationError(field, f"server URL {url!r} must not have a query or "
                                            "fragment")
    del port
    return url.strip().rstrip("/")


@dataclass
class _Member:
    url: str
    backend: Backend
    outstanding: int = 0
    used: int = 0
    failures: int = 0
    down_until: float = 0.0
    last_error: str = ""


def _is_server_failure(exc: BaseException) -> bool:
    """Would another server plausibly succeed? 4xx answers are the request's fault."""
    if isinstance(exc, ServerError):
        return exc.status is None or exc.status >= 500 or exc.status in (200, 408, 429)
    # Unexpected errors from the transport (not our typed request/format errors) count too.
    return not isinstance(exc, ActiveStorageError)


class ServerPool(Backend):
    """Reduce chunks on several Reductionist-compatible servers.

    ``urls``: the servers (a list, or a comma-separated string); a malformed URL raises
    :class:`~activestorage.errors.RequestValidationError` here, not at the first request.
    ``backoff``: seconds a failing server is skipped (default ``$ACTIVESTORAGE_POOL_BACKOFF`` or
    30). ``backend_factory``: builds one member backend per URL (default: a
    :class:`~activestorage.backends.server.ServerBackend` with ``server_options``, retrying once,
    since failing over is faster than waiting). ``server_options``: passed to each ServerBackend
    (``storage_options``, ``username``, ``timeout``, ``api_version`` ...).
    """

    name = "server-pool"
    batches_per_thread = 1  # one large batch request per thread

    def __init__(self, urls: Sequence[str] | str, *, backoff: float | None = None,
                 backend_factory: Callable[[str], Backend] | None = None,
                 max_threads: int | None = None, env: Mapping[str, str] | None = None,
                 **server_options: Any) -> None:
        super().__init__()
        env = os.environ if env is None else env
        if isinstance(urls, str):
            urls = [u for u in urls.split(",") if u.strip()]
        urls = list(urls)
        if not urls:
            raise RequestValidationError("active_storage_url", "the list of servers is empty")
        clean = [validate_server_url(u, f"active_storage_url[{i}]") for i, u in enumerate(urls)]
        if backoff is None:
            backoff = float(env.get("ACTIVESTORAGE_POOL_BACKOFF") or DEFAULT_BACKOFF)
        if backoff < 0:
            raise RequestValidationError("backoff", f"must be >= 0, got {backoff}")
        self.backoff = backoff
        if backend_factory is None:
            from .server import ServerBackend

            server_options.setdefault("retries", 1)
            opts = dict(server_options, env=env)

            def backend_factory(url: str) -> Backend:
                return ServerBackend(url, **opts)
        elif server_options:
            raise ActiveStorageError("pass either backend_factory or server options, not both")
        self._members = [_Member(u, backend_factory(u)) for u in clean]
        self._lock = threading.Lock()
        self.max_threads = int(max_threads or PARTS_PER_SERVER * 2 * len(self._members))
        self._executor: ThreadPoolExecutor | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"ServerPool({[m.url for m in self._members]!r})"

    # ------------------------------------------------------------------- state
    @property
    def urls(self) -> list[str]:
        return [m.url for m in self._members]

    @property
    def default_threads(self) -> int:
        """Threads the caller should use: enough to keep every server busy."""
        return PARTS_PER_SERVER * len(self._members)

    @property
    def stats(self) -> BackendStats:
        """The members' work, summed (a fresh object each time)."""
        total = BackendStats()
        for m in self._members:
            total.add(m.backend.stats)
        return total

    def status(self) -> list[dict[str, Any]]:
        """Per server: url, up, outstanding chunk requests, chunks sent, failures, last error."""
        now = time.monotonic()
        with self._lock:
            return [{"url": m.url, "up": m.down_until <= now, "outstanding": m.outstanding,
                     "chunks": m.used, "failures": m.failures, "last_error": m.last_error,
                     "down_for": max(0.0, m.down_until - now)} for m in self._members]

    def _acquire(self, tried: set[int], n: int) -> int | None:
        """Pick the healthy, untried server with the fewest requests in flight (None: none left).
        With no healthy server left, an untried server in back-off is probed (earliest first)."""
        now = time.monotonic()
        with self._lock:
            cands = [i for i in range(len(self._members)) if i not in tried]
            if not cands:
                return None
            up = [i for i in cands if self._members[i].down_until <= now]
            if up:
                i = min(up, key=lambda j: (self._members[j].outstanding, self._members[j].used))
            else:
                i = min(cands, key=lambda j: self._members[j].down_until)
            m = self._members[i]
            m.outstanding += n
            m.used += n
            return i

    def _release(self, i: int, n: int, error: BaseException | None) -> None:
        with self._lock:
            m = self._members[i]
            m.outstanding -= n
            if error is None:
                m.failures = 0
                m.down_until = 0.0
            else:
                m.failures += 1
                m.last_error = f"{type(error).__name__}: {error}"
                m.down_until = time.monotonic() + self.backoff

    # ------------------------------------------------------------------- work
    def _run_part(self, requests: Sequence[ChunkRequest], operation: str) -> list[Partial]:
        tried: set[int] = set()
        failures: dict[str, str] = {}
        while True:
            i = self._acquire(tried, len(requests))
            if i is None:
                raise AllServersDownError(failures)
            tried.add(i)
            m = self._members[i]
            try:
                out = m.backend.reduce_chunks(requests, operation)
            except Exception as exc:  # noqa: BLE001 - classified below, re-raised if not ours
                if not _is_server_failure(exc):
                    self._release(i, len(requests), None)
                    raise
                self._release(i, len(requests), exc)
                failures[m.url] = f"{type(exc).__name__}: {exc}"
                log.warning("reduction server %s failed (%s); down for %.0f s, retrying %d "
                            "chunk(s) elsewhere", m.url, exc, self.backoff, len(requests))
                continue
            self._release(i, len(requests), None)
            return out

    def _pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._closed:
                raise ActiveStorageError("this ServerPool is closed")
            if self._executor is None:
                self._executor = ThreadPoolExecutor(self.max_threads,
                                                    thread_name_prefix="as-pool")
            return self._executor

    def reduce_chunk(self, request: ChunkRequest, operation: str) -> Partial:
        return self._run_part([request], operation)[0]

    def reduce_chunks(self, requests: Sequence[ChunkRequest], operation: str) -> list[Partial]:
        """Cut the batch into parts, run them concurrently, each on the least-busy server."""
        requests = list(requests)
        if not requests:
            return []
        now = time.monotonic()
        with self._lock:
            healthy = sum(m.down_until <= now for m in self._members)
        nparts = min(len(requests), max(1, healthy) * PARTS_PER_SERVER)
        if nparts == 1:
            return self._run_part(requests, operation)
        size = math.ceil(len(requests) / nparts)
        parts = [requests[i:i + size] for i in range(0, len(requests), size)]
        futures = [self._pool().submit(self._run_part, p, operation) for p in parts]
        try:
            return [p for f in futures for p in f.result()]
        finally:
            for f in futures:
                f.cancel()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            ex, self._executor = self._executor, None
        if ex is not None:
            ex.shutdown(wait=True)
        for m in self._members:
            m.backend.close()
