"""The ``fetch`` backend: byte-range reads from S3, HTTP or local files, kernel in-process.

With no reduction server the client reads each chunk's bytes and reduces them itself. It is the
in-process backend (:class:`~activestorage.backends.inprocess.StoreBackend`) with its merged-GET
read plan: ranges of one object that are adjacent (or separated by at most ``max_gap`` bytes) are
read by one GET through the object's store (:mod:`activestorage.stores`: one pooled client per
kind, so threads share connections), GETs run on a thread pool, and a deflated chunk alone in its
GET is inflated as its body arrives. Pinned locators (``etag``/``version_id``) are honoured: a
mismatch raises :class:`~activestorage.errors.ObjectChangedError`.
"""

from __future__ import annotations

from typing import Any, Mapping

from ..stores.base import DEFAULT_MAX_GAP, DEFAULT_MAX_RANGE, RangeGroup  # noqa: F401
from ..stores.base import merge_ranges as coalesce  # noqa: F401 - the name callers know
from .inprocess import StoreBackend


class FetchBackend(StoreBackend):
    """Read chunk bytes with range GETs through pooled clients; reduce them in-process.

    ``storage_options``: s3fs-style S3 options (see :func:`~activestorage.storage.resolve_s3_options`;
    for HTTP, ``headers`` and ``username``/``password`` are used). ``max_threads``: connection pool
    size and the concurrency of ``reduce_chunks`` (default ``ACTIVESTORAGE_THREADS`` or 8).
    ``timeout``: connect and read timeout in seconds for every request. ``verify``: TLS verification
    (bool or CA bundle path). ``coalesce``: merge nearby ranges in ``reduce_chunks``.
    """

    name = "fetch"

    def __init__(self, storage_options: Mapping[str, Any] | None = None, *,
                 max_threads: int | None = None, timeout: float = 30.0,
                 verify: bool | str | None = None, coalesce: bool = True,
                 max_gap: int = DEFAULT_MAX_GAP, retries: int = 3,
                 env: Mapping[str, str] | None = None) -> None:
        super().__init__(storage_options, max_threads=max_threads, timeout=timeout,
                         verify=verify, coalesce=coalesce, max_gap=max_gap, retries=retries,
                         env=env)
        #: Active's thread count when the caller gives none (I/O bound: more than the cores)
        self.default_threads = self.max_threads
