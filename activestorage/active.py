"""``Active``: NumPy-style reductions of one variable, computed chunk by chunk where the data lives.

>>> a = Active("tas.nc", "tas")
>>> a.mean[0:12, :, 10:20]            # one number
>>> a.mean(axis=0)[0:12]              # reduce along axis 0 of the selection only
>>> a.sum(components=True)[...]       # {"sum": ..., "n": ...} for Dask/cf-python combining
>>> a[0, :2]                          # plain selection, masked where missing
>>> a.stats                           # what the last call touched, read and moved

Planning (:mod:`activestorage.plan`) says which chunks a selection touches and where each lands;
a backend reduces the chunks on a thread pool; :mod:`activestorage.combine` folds the partials in
task order, so results are deterministic whatever order threads finish in.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

from . import memory
from .backends.base import Backend
from .combine import Accumulator, finish, fold
from .errors import ActiveStorageError, SelectionError
from .formats import open_variable
from .formats.base import Variable
from .kernel import Partial, reduce_array
from .plan import ChunkTask, Plan, Selection, normalize_key
from .progress import progress
from .request import ChunkRequest

log = logging.getLogger(__name__)

METHODS = ("mean", "min", "max", "sum", "count")
#: memory allowed for per-batch accumulators of axis reductions (beyond it, partials are folded
#: on the calling thread)
LOCAL_ACCUMULATOR_BYTES = 256 * 2**20
#: chunks a worker reduces before folding their partials into its accumulator
LOCAL_FOLD_TASKS = 64
#: most chunks in one fold block, however small the chunks (their tasks and requests are in
#: memory together)
MAX_BLOCK_TASKS = 1024


@dataclass(frozen=True)
class CallStats:
    """A read-only record of one call's work.

    ``bytes_without_active`` is what a client would have had to move to compute the same answer
    itself: the stored (possibly compressed) bytes of every chunk touched. ``seconds`` is the
    reduction's time; ``metadata_*`` is what opening the dataset cost (once per ``Active``).
    """

    operation: str
    chunks_touched: int = 0
    chunks_unallocated: int = 0
    bytes_read: int = 0
    bytes_received: int = 0
    bytes_without_active: int = 0
    requests: int = 0
    seconds: float = 0.0
    metadata_seconds: float = 0.0
    metadata_bytes: int = 0
    metadata_requests: int = 0
    backend: str = ""

    @property
    def bytes_saved(self) -> int:
        return max(self.bytes_without_active - self.bytes_received, 0)


def _choose_backend(backend: Any, url: str, storage_options: dict[str, Any] | None,
                    active_storage_url: Any, **kwargs: Any) -> Backend:
    """An explicit backend (instance or name) wins; else a server URL; else by the dataset's URL."""
    if isinstance(backend, Backend):
        return backend
    remote = "://" in url and not url.startswith("file://")
    server_url = active_storage_url or os.environ.get("ACTIVESTORAGE_URL")
    if isinstance(server_url, str) and "," in server_url:
        server_url = [u.strip() for u in server_url.split(",") if u.strip()]
    name = backend or ("server" if server_url else "fetch" if remote else "posix")
    if name == "posix":
        if remote:
            raise ActiveStorageError(f"backend 'posix' reads local files; {url} is remote: use "
                                     "backend='fetch' or a reduction server")
        from .backends.posix import PosixBackend

        return PosixBackend()
    if name == "fetch":
        from .backends.fetch import FetchBackend

        return FetchBackend(storage_options=storage_options, **kwargs)
    if name == "server":
        if not remote:
            raise ActiveStorageError(
                f"a reduction server cannot read the local file {url}; put it in an object "
                "store, or use backend='posix'")
        if isinstance(server_url, (list, tuple)):
            from .backends.pool import ServerPool

            return ServerPool(list(server_url), storage_options=storage_options, **kwargs)
        from .backends.server import ServerBackend

        return ServerBackend(server_url, storage_options=storage_options, **kwargs)
    raise ActiveStorageError(f"unknown backend {name!r}; use 'posix', 'fetch', 'server' or a "
                             "Backend instance")


class Active:
    """Reductions over one variable of a dataset (path, URL, manifest, or open variable object).

    Parameters
    ----------
    dataset:
        A path (``str``/``pathlib.Path``), an ``s3://``/``https://`` URL, a manifest, or an open
        h5py/h5netcdf/netCDF4 variable.
    ncvar:
        The variable's name. Optional when ``dataset`` is a variable object, a Zarr array store or
        holds exactly one data variable (not counting coordinates, bounds and other CF auxiliaries).
    axis:
        Default axes for reductions (axes of the selected array, as NumPy counts them).
    max_threads:
        Threads reducing chunks concurrently (default: the backend's choice, e.g. the core count
        for local files).
    storage_options:
        fsspec/s3fs options for remote datasets (``key``, ``secret``, ``anon``,
        ``client_kwargs={"endpoint_url": ...}``); AWS environment variables also apply.
    active_storage_url:
        A reduction server, or a list of them (spread over by least outstanding requests, with
        fail-over); default ``$ACTIVESTORAGE_URL`` (comma-separated for several).
    backend:
        ``"posix"``, ``"fetch"``, ``"server"`` or a :class:`~activestorage.backends.Backend`.
    components:
        Return ``{"sum": ..., "n": ...}``-style partial components with keepdims shape.
    progress:
        Show a progress bar for calls lasting over a second (``None``: only when someone can see
        it, i.e. a terminal or a notebook; ``$ACTIVESTORAGE_PROGRESS=0`` turns it off).
    backend_options:
        Keyword arguments for the backend's constructor (e.g. ``api_version``, ``batch``,
        ``timeout``, ``verify``, ``username``/``password`` for a server).
    """

    def __init__(self, dataset: Any, ncvar: str | None = None, *, axis: Any = None,
                 max_threads: int | None = None, storage_options: dict[str, Any] | None = None,
                 active_storage_url: Any = None, backend: Any = None, components: bool = False,
                 keepdims: bool = False, method: str | None = None,
                 progress: bool | None = None,
                 backend_options: dict[str, Any] | None = None) -> None:
        t0 = time.perf_counter()
        self._variable: Variable = open_variable(dataset, ncvar, storage_options=storage_options)
        self._metadata_seconds = time.perf_counter() - t0
        self._backend = _choose_backend(backend, self._variable.source, storage_options,
                                        active_storage_url, **(backend_options or {}))
        self._owns_backend = not isinstance(backend, Backend)
        if max_threads is not None and max_threads < 1:
            raise ActiveStorageError(f"max_threads must be >= 1; got {max_threads}")
        self.max_threads = max_threads
        self.axis = axis
        self.components = components
        self.keepdims = keepdims
        self.method = method
        self.progress = progress
        self._stats: CallStats | None = None
        # worker threads kept between calls (starting threads costs ~0.2-3 ms a call); the pid
        # says whether they exist in this process (a fork copies the executor, not its threads)
        self._pool: tuple[ThreadPoolExecutor, int, int] | None = None
        self._pool_lock = threading.Lock()

    # ------------------------------------------------------------------ metadata
    @property
    def variable(self) -> Variable:
        """The variable's metadata and chunk index."""
        return self._variable

    @property
    def shape(self) -> tuple[int, ...]:
        return self._variable.shape

    @property
    def dtype(self) -> np.dtype:
        return self._variable.dtype

    @property
    def ndim(self) -> int:
        return len(self._variable.shape)

    @property
    def backend(self) -> Backend:
        return self._backend

    @property
    def stats(self) -> CallStats | None:
        """What the last call touched, read and moved (None before the first call)."""
        return self._stats

    # ---------------------------------------------------------------- user API
    def __getitem__(self, key: Any) -> Any:
        if self.method is not None:
            return self._reduce(self.method, key, self.axis, self.components, self.keepdims)
        return self._reduce("select", key, None, False, False)

    def __repr__(self) -> str:
        v = self._variable
        return (f"<Active {v.source}:{v.name} {v.dtype} {v.shape} chunks={v.chunk_shape} "
                f"backend={self._backend.name}>")

    def close(self) -> None:
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None and pool[1] == os.getpid():
            pool[0].shutdown(wait=True)
        if self._owns_backend:
            self._backend.close()

    def _executor(self, threads: int) -> ThreadPoolExecutor:
        """This object's worker threads (at least ``threads``), started once and reused."""
        with self._pool_lock:
            pool = self._pool
            if pool is None or pool[1] != os.getpid() or pool[2] < threads:
                if pool is not None and pool[1] == os.getpid():
                    pool[0].shutdown(wait=False)
                size = max(threads, self.max_threads or 0)
                pool = self._pool = (ThreadPoolExecutor(size, thread_name_prefix="activestorage"),
                                     os.getpid(), size)
            return pool[0]

    def __enter__(self) -> "Active":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ methods
    @property
    def mean(self) -> "Reduction":
        return Reduction(self, "mean")

    @property
    def min(self) -> "Reduction":
        return Reduction(self, "min")

    @property
    def max(self) -> "Reduction":
        return Reduction(self, "max")

    @property
    def sum(self) -> "Reduction":
        return Reduction(self, "sum")

    @property
    def count(self) -> "Reduction":
        return Reduction(self, "count")

    # ------------------------------------------------------------------- engine
    def _threads(self, ntasks: int) -> int:
        default = getattr(self._backend, "default_threads", os.cpu_count() or 1)
        return max(1, min(self.max_threads or default, ntasks))

    def _reduce(self, operation: str, key: Any, axis: Any, components: bool,
                keepdims: bool) -> Any:
        if operation not in METHODS and operation != "select":
            raise ActiveStorageError(f"unknown method {operation!r}; use one of {', '.join(METHODS)}")
        var = self._variable
        t0 = time.perf_counter()
        where = f"{var.source}: variable {var.name!r}: "
        sel = normalize_key(key, var.shape, where)
        select = operation == "select"
        red_axes = () if select else _reduce_axes(axis, sel, where)
        kernel_axes = () if select else tuple(sorted(set(red_axes) | set(sel.dropped)))
        kop = {"mean": "sum"}.get(operation, operation)
        if kop in ("min", "max") and var.scale_factor is not None and var.scale_factor < 0:
            kop = "max" if kop == "min" else "min"  # unpacking with a negative scale flips order

        out_shape = tuple(1 if ax in kernel_axes else n for ax, n in enumerate(sel.shape))
        plan = Plan(sel, var.chunk_shape)
        acc = Accumulator(kop if operation != "mean" else "mean", out_shape, var.dtype)
        before = self._backend.stats.copy()
        touched_bytes, unallocated = _stored(var, plan)
        if len(plan):
            self._execute(plan, kop, kernel_axes, acc, full=not select and all(
                n == 1 for n in out_shape) and len(kernel_axes) == var.ndim)
            if not select and self._backend.folds and acc.nbytes >= memory.RELEASE_MIN_BYTES:
                memory.release_free_memory()  # the per-chunk partials' blocks (see memory.py)
        result = finish(acc, "select" if select else kop if operation != "mean" else "mean",
                        scale=var.scale_factor, offset=var.add_offset, components=components)
        result = _shape_result(result, sel, red_axes, keepdims or components, select)
        after = self._backend.stats
        self._stats = CallStats(
            operation=operation, chunks_touched=len(plan), chunks_unallocated=unallocated,
            bytes_read=after.bytes_read - before.bytes_read,
            bytes_received=after.bytes_received - before.bytes_received,
            bytes_without_active=touched_bytes, requests=after.requests - before.requests,
            seconds=time.perf_counter() - t0, metadata_seconds=self._metadata_seconds,
            metadata_bytes=var.metadata_bytes, metadata_requests=var.metadata_requests,
            backend=self._backend.name)
        if components and isinstance(result, dict) and operation in ("min", "max") \
                and kop != operation:
            result = {operation: result[kop], "n": result["n"]}
        return result

    def _execute(self, plan: Plan, kop: str, kernel_axes: tuple[int, ...], acc: Accumulator,
                 full: bool) -> None:
        var = self._variable
        ntasks = len(plan)
        # A folding backend gets fixed blocks of tasks (a function of the chunk size only), so
        # which partials it folds together, and so the rounding, never depends on thread count.
        folds = self._backend.folds and kop != "select"
        block = min(MAX_BLOCK_TASKS, self._backend.fold_block(var.chunk_nbytes)) if folds else 1
        nblocks = -(-ntasks // block)
        threads = self._threads(nblocks)
        # enough batches to balance threads and move a progress bar; few enough to amortise calls
        per_thread = getattr(self._backend, "batches_per_thread", 4)
        nbatches = min(nblocks, max(threads * per_thread, ntasks // 512))
        if threads == 1 and ntasks <= 4096:
            nbatches = 1
        bar = progress(ntasks, f"{kop} {var.name}", self.progress)
        try:
            self._run_batches(plan, nbatches, block, threads, kop, kernel_axes, acc, full, folds,
                              bar)
        finally:
            bar.close()

    def _run_batches(self, plan: Plan, nbatches: int, block: int, threads: int, kop: str,
                     kernel_axes: tuple[int, ...], acc: Accumulator, full: bool, folds: bool,
                     bar: Any) -> None:
        """Reduce ``plan``'s tasks in batches; each batch makes its own tasks and layout, so
        memory follows the batches in flight, not the number of chunks."""
        var = self._variable
        backend = self._backend
        ntasks = len(plan)
        batches = _spans(ntasks, nbatches, block)
        whole = tuple(slice(0, 1) for _ in var.shape)

        def work(span: tuple[int, int]) -> tuple[list[Partial | None], list[tuple[slice, ...]]]:
            """Partials of tasks ``span`` in order (``None`` where folded into an earlier one),
            and where each lands in the result."""
            a, b = span
            tasks = plan.tasks(a, b)
            if full:
                index: list[tuple[slice, ...]] = [whole]
                slots: list[Any] = [0] * (b - a)
            else:
                index, slots = plan.layout(kernel_axes, a, b)
            partials: list[Partial | None] = [None] * (b - a)
            step = block if folds else b - a
            for c in range(0, b - a, step):
                reqs: list[ChunkRequest] = []
                where: list[int] = []
                for i in range(c, min(c + step, b - a)):
                    t = tasks[i]
                    req = var.request_for(t.coords, selection=None if t.whole else t.selection,
                                          axis=kernel_axes)
                    if req is None:
                        partials[i] = _fill_partial(var, t, kop, kernel_axes)
                    else:
                        reqs.append(req)
                        where.append(i)
                if not reqs:
                    continue
                got = (backend.reduce_and_fold(reqs, kop, [slots[i] for i in where]) if folds
                       else backend.reduce_chunks(reqs, kop))
                for i, p in zip(where, got):
                    partials[i] = p
            bar.update(b - a)
            if full:  # a few partials per batch: memory stays bounded for millions of chunks
                # (one per block when folding, so that this grouping, too, is fixed)
                return [fold([p for p in partials[c:c + step] if p is not None], kop,
                             var.dtype) for c in range(0, b - a, step)], index
            return partials, index

        if full:
            results: Iterable[tuple[list[Partial | None], Any]]
            if len(batches) == 1:
                results = [work(batches[0])]
            else:
                results = list(self._executor(threads).map(work, batches))
            flat = [p for r, _ in results for p in r if p is not None]
            acc.add(whole, fold(flat, kop, var.dtype))
            return

        def add_all(into: Accumulator, got: tuple[list[Partial | None], list[Any]]) -> None:
            for p, where in zip(*got):
                if p is not None:
                    into.add(where, p)

        if len(batches) == 1:
            add_all(acc, work(batches[0]))
            return
        if kop != "select" and acc.nbytes * threads <= LOCAL_ACCUMULATOR_BYTES:
            # Axis reductions: partials can be as large as the chunks (a length-1 axis reduced),
            # so each batch folds its own into an accumulator on its worker thread and only
            # those travel back; they are merged in batch order, so the answer is deterministic.
            step = block if folds else LOCAL_FOLD_TASKS

            def work_local(span: tuple[int, int]) -> Accumulator:
                local = acc.empty_like()
                for a in range(span[0], span[1], step):
                    add_all(local, work((a, min(a + step, span[1]))))
                return local

            for local in self._executor(threads).map(work_local, _spans(ntasks, threads, block)):
                acc.merge(local)
            return
        for got in self._executor(threads).map(work, batches):
            add_all(acc, got)


def _spans(n: int, parts: int, block: int) -> list[tuple[int, int]]:
    """``range(n)`` cut into about ``parts`` non-empty spans whose edges are multiples of ``block``."""
    nblocks = -(-n // block)
    edges = [min(n, round(nblocks * i / parts) * block) for i in range(parts + 1)]
    return [(a, b) for a, b in zip(edges[:-1], edges[1:]) if b > a]


class Reduction:
    """``Active.mean`` and friends: index it to reduce, or call it to set axis/keepdims/components."""

    def __init__(self, active: Active, operation: str, axis: Any = "default",
                 keepdims: bool | None = None, components: bool | None = None) -> None:
        self._active = active
        self._operation = operation
        self._axis = axis
        self._keepdims = keepdims
        self._components = components

    def __call__(self, axis: Any = "default", *, keepdims: bool | None = None,
                 components: bool | None = None) -> "Reduction":
        return Reduction(self._active, self._operation, axis, keepdims, components)

    def __getitem__(self, key: Any) -> Any:
        a = self._active
        axis = a.axis if self._axis == "default" else self._axis
        keepdims = a.keepdims if self._keepdims is None else self._keepdims
        components = a.components if self._components is None else self._components
        return a._reduce(self._operation, key, axis, components, keepdims)

    def __repr__(self) -> str:
        return f"<{self._operation} of {self._active!r}; index it, e.g. [...]>"


# ----------------------------------------------------------------------- helpers

def _reduce_axes(axis: Any, sel: Selection, where: str) -> tuple[int, ...]:
    """User axes (of the selected array, NumPy style) -> variable axes."""
    result_axes = sel.result_axes
    if axis is None:
        return result_axes
    items = [axis] if np.ndim(axis) == 0 else list(axis)
    ndim = len(result_axes)
    out = []
    for a in items:
        try:
            a = int(a)
        except (TypeError, ValueError):
            raise SelectionError(f"{where}axis must be an integer or a tuple of integers; "
                                 f"got {a!r}") from None
        if not -ndim <= a < ndim:
            raise SelectionError(f"{where}axis {a} is out of bounds for the selected array of "
                                 f"dimension {ndim}")
        out.append(result_axes[a % ndim])
    if len(set(out)) != len(out):
        raise SelectionError(f"{where}repeated axis in {axis!r}")
    return tuple(sorted(out))


def _stored(var: Variable, plan: Plan) -> tuple[int, int]:
    """Stored bytes of the chunks ``plan`` touches, and how many of them were never written."""
    stored = getattr(var.chunks, "stored", None)
    if stored is not None:  # a compact index answers from its arrays
        return stored(plan.ids)
    touched = unallocated = 0
    get = var.chunks.get
    for coords in plan.coords():
        loc = get(coords)
        if loc is None:
            unallocated += 1
        else:
            touched += loc.size
    return touched, unallocated


def _fill_partial(var: Variable, t: ChunkTask, kop: str, axes: tuple[int, ...]) -> Partial:
    """A never-written chunk reads as the fill value."""
    shape = tuple(len(range(a, b, c)) for a, b, c in t.selection)
    fill = 0 if var.fill_value is None else var.fill_value
    x = np.full(shape, fill, dtype=var.dtype)
    return reduce_array(x, kop, axes, None if var.missing.is_empty() else var.missing)


def _shape_result(result: Any, sel: Selection, red_axes: Sequence[int], keepdims: bool,
                  select: bool) -> Any:
    """Flip negative-step axes, drop integer-indexed axes, drop reduced axes unless keepdims."""
    def shape_one(x: Any) -> Any:
        flips = tuple(ax for ax in sel.flipped if select or ax not in red_axes)
        if flips:
            x = np.flip(x, axis=flips)
        drop = set(sel.dropped)
        if not keepdims:
            drop |= set(red_axes)
        if drop:
            x = x.reshape(tuple(n for ax, n in enumerate(x.shape) if ax not in drop))
        if x.ndim == 0:
            return np.ma.masked if np.ma.getmaskarray(x).item() else np.ma.getdata(x)[()]
        return x

    if isinstance(result, dict):  # components: the counts "n" stay a plain array
        return {k: (np.ma.getdata(shape_one(np.ma.MaskedArray(v))) if k == "n" else shape_one(v))
                for k, v in result.items()}
    return shape_one(result)
