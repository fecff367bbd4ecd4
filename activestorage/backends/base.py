"""The backend interface: run chunk reductions somewhere and count what it cost.

A backend turns :class:`~activestorage.request.ChunkRequest`s (which carry ``url``, ``offset`` and
``size``) into :class:`~activestorage.kernel.Partial`s. The POSIX and fetch backends read bytes and
run the kernel in-process; the server backend asks a reduction server. ``reduce_chunks`` takes a
batch so a backend can amortise per-call costs (one pread loop, one HTTP request for many chunks).
"""

from __future__ import annotations

import os
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, fields
from typing import Hashable, Sequence

from ..coalesce import MAX_RUN_BYTES, MAX_STACKED_CHUNK
from ..kernel import Partial
from ..request import ChunkRequest


@dataclass
class BackendStats:
    """Work done, summed over calls: bytes read from storage, bytes received by this process,
    requests made to storage or a server; ``client_chunks``: chunks a server backend reduced in
    this process because its server lacks the operation (our moments extension)."""

    bytes_read: int = 0
    bytes_received: int = 0
    requests: int = 0
    client_chunks: int = 0

    def add(self, other: "BackendStats") -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def copy(self) -> "BackendStats":
        return BackendStats(**{f.name: getattr(self, f.name) for f in fields(self)})


class Backend(ABC):
    """Reduces chunks. Thread-safe: ``reduce_chunks`` is called from a thread pool.

    The attributes below are everything the engine (:class:`~activestorage.active.Active`)
    reads besides the methods; a subclass overrides them as class attributes, instance
    attributes or properties.
    """

    #: a short name for reports ("posix", "fetch", "server", "server-pool")
    name: str = "backend"
    #: threads a caller should use when it is given none: the core count suits CPU-bound
    #: in-process work; I/O-bound backends set more
    default_threads: int = os.cpu_count() or 1
    #: how many batches per thread a caller should split its chunks into: several balance the
    #: threads of an in-process backend; one keeps the batches of a batching server large
    batches_per_thread: int = 4
    #: whether :meth:`reduce_and_fold` really folds (callers then hand it fixed-size blocks of
    #: chunks, so what gets folded together never depends on the thread count)
    folds: bool = False
    #: decoded chunk bytes in one such block (in-process: one coalesced run's worth)
    fold_block_bytes: int = MAX_RUN_BYTES

    def __init__(self) -> None:
        self._stats_lock = threading.Lock()
        self._stats = BackendStats()

    @property
    def stats(self) -> BackendStats:
        """Work done so far, summed over calls (callers copy it to measure one call)."""
        return self._stats

    def _account(self, bytes_read: int = 0, bytes_received: int = 0, requests: int = 0,
                 client_chunks: int = 0) -> None:
        with self._stats_lock:
            stats = self._stats
            stats.bytes_read += bytes_read
            stats.bytes_received += bytes_received
            stats.requests += requests
            stats.client_chunks += client_chunks

    def fold_block(self, chunk_nbytes: int) -> int:
        """Chunks in one fold block, for chunks of ``chunk_nbytes`` decoded bytes (a function of
        the chunk size only, so what is folded together never depends on the thread count)."""
        return max(1, self.fold_block_bytes // max(1, chunk_nbytes))

    @abstractmethod
    def reduce_chunk(self, request: ChunkRequest, operation: str) -> Partial:
        """Reduce the chunk ``request`` describes (its ``url``/``offset``/``size`` say where)."""

    def reduce_chunks(self, requests: Sequence[ChunkRequest], operation: str) -> list[Partial]:
        """Reduce several chunks, results in the order given. Override to batch."""
        return [self.reduce_chunk(r, operation) for r in requests]

    def reduce_and_fold(self, requests: Sequence[ChunkRequest], operation: str,
                        slots: Sequence[Hashable]) -> list[Partial | None]:
        """Like :meth:`reduce_chunks` for a caller that only needs partials combined per slot.

        A backend may fold the partial of a request into that of an earlier request with the same
        slot and return ``None`` in its place (never for ``select``). By default nothing is folded.
        """
        return list(self.reduce_chunks(requests, operation))

    def close(self) -> None:
        """Release files, sessions and connections."""

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class InProcessBackend(Backend):
    """A backend that runs the kernel in this process on bytes it reads itself (POSIX, fetch):
    it can fold partials, so both entry points share one implementation."""

    folds = True

    def fold_block(self, chunk_nbytes: int) -> int:
        """One chunk per block when chunks are too large to stack: pairing them gains nothing
        and doubles what each thread holds (its read, or GET, and the partials in flight)."""
        if chunk_nbytes >= MAX_STACKED_CHUNK:
            return 1
        return super().fold_block(chunk_nbytes)

    def reduce_chunks(self, requests: Sequence[ChunkRequest], operation: str) -> list[Partial]:
        return self._reduce(requests, operation, None)  # type: ignore[return-value]

    def reduce_and_fold(self, requests: Sequence[ChunkRequest], operation: str,
                        slots: Sequence[Hashable]) -> list[Partial | None]:
        return self._reduce(requests, operation, None if operation == "select" else slots)

    @abstractmethod
    def _reduce(self, requests: Sequence[ChunkRequest], operation: str,
                slots: Sequence[Hashable] | None) -> list[Partial | None]:
        """Partials of ``requests`` in order; with ``slots``, folded as :meth:`reduce_and_fold`."""
