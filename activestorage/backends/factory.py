"""Choosing and building a backend: the one place that knows which backend serves which dataset.

``Active`` and :mod:`activestorage.dask` (which rebuilds backends in every worker from names and
URLs) both call :func:`make_backend`, so a name, a server URL or a list of them means the same
thing everywhere.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable, Mapping, Sequence

from ..errors import ActiveStorageError, InvalidArgumentError
from .base import Backend

log = logging.getLogger(__name__)

__all__ = ["make_backend", "server_urls", "is_remote", "BACKEND_NAMES"]

#: the backends a name selects ("server-pool": the servers as a pool even when only one is
#: given, and for any path: its members may be any backend)
BACKEND_NAMES = ("posix", "fetch", "server", "server-pool")


def server_urls(active_storage_url: Any, env: Mapping[str, str] | None = None) -> Any:
    """The reduction server(s): ``active_storage_url`` or ``$ACTIVESTORAGE_URL``; a comma-separated
    string or a sequence of several becomes a list (one stays a string; none is None)."""
    env = os.environ if env is None else env
    url = active_storage_url or env.get("ACTIVESTORAGE_URL")
    if isinstance(url, str) and "," in url:
        url = [u.strip() for u in url.split(",") if u.strip()]
    return url or None


def is_remote(url: str) -> bool:
    """Whether ``url`` names a remote object (not a local path or ``file://`` URL)."""
    return "://" in url and not url.startswith("file://")


def make_backend(backend: str | Backend | Callable[[], Backend] | None, url: str, *,
                 storage_options: Mapping[str, Any] | None = None,
                 active_storage_url: str | Sequence[str] | None = None,
                 version: int | None = None, disable_chunk_cache: bool = False,
                 logger: logging.Logger | None = None, **options: Any) -> Backend:
    """The backend for the dataset at ``url``.

    ``backend``: a :class:`Backend` instance (returned as is), a zero-argument factory (called),
    a name from :data:`BACKEND_NAMES`, or None: then PyActiveStorage's ``version`` decides (1:
    reduce here, 2: on the server), else whether a server is set (``active_storage_url`` or
    ``$ACTIVESTORAGE_URL``; several servers make a
    :class:`~activestorage.backends.pool.ServerPool`), else the URL (local path: POSIX, remote:
    fetch). A local file with a server set (and no explicit ``backend="server"``) is reduced
    here, as PyActiveStorage does: a reduction server cannot read this machine's files.
    ``logger``: where to say which backend was chosen (default: this module's), so the message
    comes from the caller's logger. ``options``: keyword arguments for the backend's constructor.
    """
    if isinstance(backend, Backend):
        return backend
    if backend is not None and not isinstance(backend, str):
        if not callable(backend):
            raise ActiveStorageError(f"backend must be a name, a Backend or a factory, not "
                                     f"{backend!r}")
        return backend()
    remote = is_remote(url)
    servers = server_urls(active_storage_url)
    if backend:
        name = backend
    elif version == 1:
        name = "fetch" if remote else "posix"
    elif version == 2 and remote and not servers:
        raise InvalidArgumentError(
            f"_version = 2 reduces {url} on a reduction server, but none is set: pass "
            "active_storage_url= or set $ACTIVESTORAGE_URL (or use _version = 1 to reduce here)")
    else:
        name = "server" if servers else "fetch" if remote else "posix"
    if name == "server" and not remote and backend is None:
        (logger or log).info("%s is a local file: reducing it here, not on the reduction server", url)
        name = "posix"
    if name == "posix":
        if remote:
            raise ActiveStorageError(f"backend 'posix' reads local files; {url} is remote: use "
                                     "backend='fetch' or a reduction server")
        from .posix import PosixBackend

        return PosixBackend()
    if name == "fetch":
        from .fetch import FetchBackend

        return FetchBackend(storage_options=storage_options, **options)
    if name == "server-pool":
        from .pool import ServerPool

        return ServerPool(servers, storage_options=storage_options, **options)
    if name == "server":
        if not remote:
            raise ActiveStorageError(
                f"a reduction server cannot read the local file {url}; put it in an object "
                "store, or use backend='posix'")
        if disable_chunk_cache:
            options.setdefault("disable_chunk_cache", True)
        if isinstance(servers, (list, tuple)):
            from .pool import ServerPool

            return ServerPool(servers, storage_options=storage_options, **options)
        from .server import ServerBackend

        return ServerBackend(servers, storage_options=storage_options, **options)
    raise ActiveStorageError(f"unknown backend {name!r}; use 'posix', 'fetch', 'server', "
                             "'server-pool' or a Backend instance")
