"""``Active``: NumPy-style reductions of one variable, computed chunk by chunk where the data lives.

>>> a = Active("tas.nc", "tas")
>>> a.mean[0:12, :, 10:20]            # one number
>>> a.mean(axis=0)[0:12]              # reduce along axis 0 of the selection only
>>> a.sum(components=True)[...]       # {"sum": ..., "n": ...} for Dask/cf-python combining
>>> a.var(axis=0, ddof=1)[...]        # second moments: var, std, rms, sum_of_squares; range
>>> a.mean(axis=(1, 2), weights={1: coslat})[...]   # weighted (also "area": cell_measures)
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

from . import memory, operations
from .backends.base import Backend
from .backends.factory import is_remote, make_backend, server_urls
from .combine import Accumulator, finish, fold
from .errors import (AxisError, InvalidArgumentError, OperationNotAvailableError,
                     SelectionError, ServerError, StorageError, UnsupportedError)
from .formats import open_variable
from .formats.base import Variable
from .formats.objects import locate
# PyActiveStorage's helpers at their old module path
from .compat import get_endpoint_url, get_missing_attributes, load_from_https, load_from_s3  # noqa: F401
from . import orthogonal
from .kernel import Partial, reduce_array
from .plan import ChunkTask, Plan, Selection, normalize_key
from .progress import progress
from .request import ChunkRequest
from .weights import Weights, resolve as resolve_weights

log = logging.getLogger(__name__)

#: the reductions (``a.mean`` ...), from :mod:`activestorage.operations`
METHODS = operations.METHODS
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
                    active_storage_url: Any, version: int | None = None,
                    disable_chunk_cache: bool = False, **kwargs: Any) -> Backend:
    """The backend for ``url``: see :func:`~activestorage.backends.factory.make_backend`."""
    return make_backend(backend, url, storage_options=storage_options,
                        active_storage_url=active_storage_url, version=version,
                        disable_chunk_cache=disable_chunk_cache, logger=log, **kwargs)


def _is_method(name: Any) -> bool:
    """Whether ``name`` is a reduction of the table of operations (read now, not at import)."""
    op = operations.OPERATIONS.get(name) if isinstance(name, str) else None
    return op is not None and op.method


class _MethodName(str):
    """The active method's name (``"mean"``, ...), callable like PyActiveStorage's ``method``
    attribute, which is the NumPy function: ``active.method([3, 444]) == 3`` for ``"min"``."""

    def __call__(self, x: Any, axis: Any = None, keepdims: bool = False) -> Any:
        fn = operations.get(str(self)).numpy
        return fn(x, axis=axis, keepdims=keepdims)


#: "not given" (``interface_type=None`` is a value PyActiveStorage users pass)
_UNSET: Any = object()
#: the exceptions of opening a dataset that are kept until the first ``active[...]`` (cf-python
#: builds ``Active`` outside its ``try`` and can fall back to a local reduction only from there)
_DEFERRED = (StorageError, UnsupportedError, ServerError)


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
        ``"posix"``, ``"fetch"``, ``"server"``, ``"server-pool"``, a
        :class:`~activestorage.backends.Backend` or a zero-argument factory of one (see
        :func:`~activestorage.backends.factory.make_backend`).
    components:
        Return ``{"sum": ..., "n": ...}``-style partial components with keepdims shape.
    progress:
        Show a progress bar for calls lasting over a second (``None``: only when someone can see
        it, i.e. a terminal or a notebook; ``$ACTIVESTORAGE_PROGRESS=0`` turns it off).
    backend_options:
        Keyword arguments for the backend's constructor (e.g. ``api_version``, ``batch``,
        ``timeout``, ``verify``, ``username``/``password`` for a server).
    interface_type:
        PyActiveStorage's store kind: ``"s3"`` (a scheme-less path is then ``bucket/key`` on the
        S3 endpoint of ``storage_options``), ``"https"`` or None (from the URL). One that
        contradicts the URL is an :class:`~activestorage.errors.InvalidArgumentError`.
    option_disable_chunk_cache:
        Ask the reduction server not to cache the chunks it reads (sent with every request).
    keepdims:
        Keep reduced axes as length 1. None (default): NumPy shapes for ``active.mean[...]``,
        PyActiveStorage's keepdims shapes for ``active.method = ...; active[...]`` and for every
        call once the object is used the PyActiveStorage way (``_version`` set,
        ``interface_type``/``option_disable_chunk_cache`` given, or ``peer_compat=True``).
    peer_compat:
        Force PyActiveStorage-compatible result shapes (default ``$ACTIVESTORAGE_PEER_COMPAT``).

    PyActiveStorage's attribute API works too: ``active._version`` (0: data only, 1: reduce
    here, 2: on the reduction server; unset: the choice above), ``active.method = "min"`` (or
    ``active._method``) then ``active[sel]`` (the method resets after the call),
    ``active.components = True``. Opening errors that a caller could recover from (the store,
    an unsupported codec) are raised by the first ``active[...]``, not here.
    """

    def __init__(self, dataset: Any, ncvar: str | None = None, axis: Any = None,
                 interface_type: str | None = _UNSET, max_threads: int | None = None,
                 storage_options: dict[str, Any] | None = None, active_storage_url: Any = None,
                 option_disable_chunk_cache: bool = _UNSET, *, backend: Any = None,
                 components: bool = False, keepdims: bool | None = None,
                 method: str | None = None, progress: bool | None = None,
                 backend_options: dict[str, Any] | None = None,
                 peer_compat: bool | None = None) -> None:
        if dataset is None:
            raise InvalidArgumentError("dataset is None: give a path, a URL, a manifest, or an "
                                       "open variable (h5py, netCDF4, pyfive) or fsspec file")
        if max_threads is not None and max_threads < 1:
            raise InvalidArgumentError(f"max_threads must be >= 1; got {max_threads}")
        if peer_compat is None:
            peer_compat = os.environ.get("ACTIVESTORAGE_PEER_COMPAT", "").lower() in (
                "1", "true", "yes", "on")
        self._peer = bool(peer_compat or interface_type is not _UNSET
                          or option_disable_chunk_cache is not _UNSET)
        dataset, storage_options = locate(
            dataset, storage_options, None if interface_type is _UNSET else interface_type)
        self.storage_options = storage_options
        self._dataset = dataset  # for weights read from another variable of it
        self.interface_type = None if interface_type is _UNSET else interface_type
        self.active_storage_url = active_storage_url
        self.option_disable_chunk_cache = bool(option_disable_chunk_cache is not _UNSET
                                               and option_disable_chunk_cache)
        t0 = time.perf_counter()
        self._open_error: Exception | None = None
        self._var: Variable | None = None
        try:
            self._var = open_variable(dataset, ncvar, storage_options=storage_options)
        except _DEFERRED as exc:
            log.debug("opening %r failed; raised at the first call: %s", dataset, exc)
            self._open_error = exc
        self._metadata_seconds = time.perf_counter() - t0
        self._backend_spec = backend
        self._backend_options = dict(backend_options or {})
        self._backend_obj: Backend | None = backend if isinstance(backend, Backend) else None
        self._owns_backend = not isinstance(backend, Backend)
        self._version_set: int | None = None
        self.max_threads = max_threads
        self.axis = axis
        self.components = components
        self.keepdims = keepdims
        self._ctor_method = method
        self._method = method
        self.method = method  # validates
        self.progress = progress
        self._stats: CallStats | None = None
        # worker threads kept between calls (starting threads costs ~0.2-3 ms a call); the pid
        # says whether they exist in this process (a fork copies the executor, not its threads)
        self._pool: tuple[ThreadPoolExecutor, int, int] | None = None
        self._pool_lock = threading.Lock()

    # -------------------------------------------------------- PyActiveStorage API
    @property
    def _variable(self) -> Variable:
        if self._var is None:
            assert self._open_error is not None
            raise self._open_error
        return self._var

    @property
    def _backend(self) -> Backend:
        """The backend, chosen at first use (``_version`` may be set after construction)."""
        if self._backend_obj is None:
            self._backend_obj = make_backend(
                self._backend_spec, self._variable.source, storage_options=self.storage_options,
                active_storage_url=self.active_storage_url, version=self._version_set,
                disable_chunk_cache=self.option_disable_chunk_cache, logger=log,
                **self._backend_options)
        return self._backend_obj

    @property
    def _version(self) -> int:
        """PyActiveStorage's mode: 0 data only, 1 reduce here, 2 reduce on the server."""
        if self._version_set is not None:
            return self._version_set
        if self._backend_obj is not None:
            return 2 if self._backend_obj.name.startswith("server") else 1
        server = server_urls(self.active_storage_url)
        remote = self._var is not None and is_remote(self._var.source)
        return 2 if server and remote and self._backend_spec in (None, "server",
                                                                 "server-pool") else 1

    @_version.setter
    def _version(self, value: int) -> None:
        self._peer = True
        if value == self._version_set:
            return
        self._version_set = value
        if self._owns_backend and self._backend_obj is not None:
            self._backend_obj.close()
            self._backend_obj = None

    @property
    def method(self) -> _MethodName | None:
        """The reduction ``active[...]`` applies (None: plain data); see the class docstring."""
        m = self._method
        return _MethodName(m) if _is_method(m) else None

    @method.setter
    def method(self, value: str | None) -> None:
        if value is not None and not _is_method(value):
            raise InvalidArgumentError(f"unknown method {value!r}; use one of "
                                       f"{', '.join(METHODS)} (or None for plain data)")
        self._method = value

    @property
    def _axis(self) -> Any:
        return self.axis

    @_axis.setter
    def _axis(self, value: Any) -> None:
        self.axis = value

    @property
    def ncvar(self) -> str:
        return self._variable.name

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
        """Plain data, or (with ``method`` set, PyActiveStorage style) the method's reduction with
        keepdims shapes (unless ``keepdims=False``); ``method`` then resets to the
        constructor's."""
        version, method = self._version_set, self._method
        if version is not None and version not in (0, 1, 2):
            raise InvalidArgumentError(f"_version {version!r} is not supported; use 0 (data "
                                       "only), 1 (reduce here) or 2 (reduce on the server)")
        if method is None:
            if self.components:
                raise InvalidArgumentError("components=True needs a method (mean, min, max, "
                                           "sum, count): set active.method first")
            return self._reduce("select", key, None, False, False)
        if not _is_method(method):
            raise InvalidArgumentError(f"unknown method {method!r}; use one of "
                                       f"{', '.join(METHODS)}")
        try:
            if version == 0:
                raise InvalidArgumentError(f"_version = 0 reads data only, but method is "
                                           f"{method!r}: set _version = 1 or 2 to reduce")
            items = key if isinstance(key, tuple) else (key,)
            for i, k in enumerate(items):
                if orthogonal._is_int(k):
                    raise SelectionError(
                        f"{self._variable.source}: variable {self._variable.name!r}: the integer "
                        f"index {k!r} (position {i}) drops an axis, which a method reduction "
                        "keeps: use a slice such as "
                        f"{int(k)}:{int(k) + 1 if int(k) != -1 else ''}, or active.{method}[...]")
            keepdims = True if self.keepdims is None else self.keepdims
            return self._reduce(method, key, self.axis, self.components, keepdims)
        finally:
            self._method = self._ctor_method

    def __repr__(self) -> str:
        if self._var is None:
            return f"<Active (not opened: {self._open_error})>"
        v = self._var
        backend = self._backend_obj.name if self._backend_obj is not None else "not chosen yet"
        return (f"<Active {v.source}:{v.name} {v.dtype} {v.shape} chunks={v.chunk_shape} "
                f"backend={backend}>")

    def close(self) -> None:
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None and pool[1] == os.getpid():
            pool[0].shutdown(wait=True)
        if self._owns_backend and self._backend_obj is not None:
            self._backend_obj.close()

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
    # ``a.mean``, ``a.min`` ...: one property per method of the table of operations, made below
    # the class (type checkers see these declarations)
    mean: "Reduction"
    min: "Reduction"
    max: "Reduction"
    sum: "Reduction"
    count: "Reduction"
    var: "Reduction"
    std: "Reduction"
    range: "Reduction"
    rms: "Reduction"
    sum_of_squares: "Reduction"

    # ------------------------------------------------------------------- engine
    def _threads(self, ntasks: int) -> int:
        return max(1, min(self.max_threads or self._backend.default_threads, ntasks))

    def _reduce(self, operation: str, key: Any, axis: Any, components: bool,
                keepdims: bool, ddof: Any = None, weights: Any = None) -> Any:
        op = operations.OPERATIONS.get(operation)
        if op is None or not (op.method or op.finish == "select"):
            raise InvalidArgumentError(f"unknown method {operation!r}; use one of {', '.join(METHODS)}")
        var = self._variable
        t0 = time.perf_counter()
        where = f"{var.source}: variable {var.name!r}: "
        if ddof is not None:
            if not op.ddof:
                takes = ", ".join(n for n, o in operations.OPERATIONS.items() if o.ddof)
                raise InvalidArgumentError(f"{where}ddof applies to {takes}, not {operation}")
            if isinstance(ddof, bool) or not isinstance(ddof, (int, float, np.integer,
                                                               np.floating)) or ddof < 0:
                raise InvalidArgumentError(f"{where}ddof must be a number >= 0; got {ddof!r}")
        if weights is not None and op.weighted is None:
            takes = ", ".join(n for n, o in operations.OPERATIONS.items()
                              if o.weighted and o.method)
            raise InvalidArgumentError(f"{where}weights apply to {takes}, not {operation}")
        if orthogonal.has_lists(key) and (weights is not None or op.partial != op.name
                                          and operations.get(op.partial).fields):
            raise UnsupportedError(f"{where}{operation}{' with weights' if weights is not None else ''}"
                                   " over list (orthogonal) indices is not supported yet; select "
                                   "with slices, or reduce each list run separately")
        if orthogonal.has_lists(key):
            full = orthogonal.expand(key, var.shape, where)
            if operation == "select":
                return orthogonal.select(
                    full, lambda k: self._reduce("select", k, None, False, False))
            return orthogonal.reduce(
                full, operation, axis, components, keepdims,
                lambda k: self._reduce(operation, k, axis, True, True), where)
        sel = normalize_key(key, var.shape, where)
        select = op.finish == "select"
        red_axes = () if select else _reduce_axes(axis, sel, where)
        kernel_axes = () if select else tuple(sorted(set(red_axes) | set(sel.dropped)))
        kop = op.for_scale(var.scale_factor)  # the partial the chunks give
        w: Weights | None = None
        if weights is not None:
            kop = op.weighted  # type: ignore[assignment]
            w = resolve_weights(weights, var_shape=var.shape, var_attrs=var.attrs,
                                var_dims=var.dimensions, sel=sel, axis=axis, where=where,
                                read=self._read_other)
        if operations.get(kop).fields and self._backend.name.startswith("server"):
            # S (#21 server) replaces this with the v2 extension and a client-side fallback
            raise OperationNotAvailableError(
                f"{where}{operation}{' with weights' if w is not None else ''} needs the "
                f"{kop!r} partial, which the reduction server backend does not send yet: use "
                "backend='posix' (local files) or backend='fetch' (remote) to compute it here")

        out_shape = tuple(1 if ax in kernel_axes else n for ax, n in enumerate(sel.shape))
        plan = Plan(sel, var.chunk_shape)
        acc = Accumulator(kop, out_shape, var.dtype)
        before = self._backend.stats.copy()
        touched_bytes, unallocated = _stored(var, plan)
        if len(plan):
            self._execute(plan, kop, kernel_axes, acc, full=not select and all(
                n == 1 for n in out_shape) and len(kernel_axes) == var.ndim, weights=w)
            if not select and self._backend.folds and acc.nbytes >= memory.RELEASE_MIN_BYTES:
                memory.release_free_memory()  # the per-chunk partials' blocks (see memory.py)
        result = finish(acc, operation, scale=var.scale_factor, offset=var.add_offset,
                        components=components, ddof=0 if ddof is None else ddof)
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
        return result

    def _read_other(self, name: str) -> tuple[np.ndarray, tuple[str, ...]]:
        """Another variable of this dataset, whole, and its dimension names (for weights)."""
        with Active(self._dataset, name, storage_options=self.storage_options,
                    backend=self._backend, progress=False) as other:
            return other[...], other.variable.dimensions

    def _execute(self, plan: Plan, kop: str, kernel_axes: tuple[int, ...], acc: Accumulator,
                 full: bool, weights: Weights | None = None) -> None:
        var = self._variable
        ntasks = len(plan)
        # A folding backend gets fixed blocks of tasks (a function of the chunk size only), so
        # which partials it folds together, and so the rounding, never depends on thread count.
        folds = self._backend.folds and kop != "select"
        block = min(MAX_BLOCK_TASKS, self._backend.fold_block(var.chunk_nbytes)) if folds else 1
        nblocks = -(-ntasks // block)
        threads = self._threads(nblocks)
        # enough batches to balance threads and move a progress bar; few enough to amortise calls
        per_thread = self._backend.batches_per_thread
        nbatches = min(nblocks, max(threads * per_thread, ntasks // 512))
        if threads == 1 and ntasks <= 4096:
            nbatches = 1
        bar = progress(ntasks, f"{kop} {var.name}", self.progress)
        try:
            self._run_batches(plan, nbatches, block, threads, kop, kernel_axes, acc, full, folds,
                              bar, weights)
        finally:
            bar.close()

    def _run_batches(self, plan: Plan, nbatches: int, block: int, threads: int, kop: str,
                     kernel_axes: tuple[int, ...], acc: Accumulator, full: bool, folds: bool,
                     bar: Any, weights: Weights | None = None) -> None:
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
                    tw = None if weights is None else weights.for_task(t, var.chunk_shape)
                    if req is None:
                        partials[i] = _fill_partial(var, t, kop, kernel_axes, tw)
                    else:
                        if tw is not None:
                            req = req._replace(weights=tw)
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


def _method(name: str) -> property:
    def reduction(self: Active) -> "Reduction":
        return Reduction(self, name)

    reduction.__name__ = name
    reduction.__doc__ = (f"The {name} of a selection: ``a.{name}[key]``, or "
                         f"``a.{name}(axis=..., keepdims=..., components=...)[key]``.")
    return property(reduction)


for _name in METHODS:
    setattr(Active, _name, _method(_name))
del _name


class Reduction:
    """``Active.mean`` and friends: index it to reduce, or call it to set axis/keepdims/components."""

    def __init__(self, active: Active, operation: str, axis: Any = "default",
                 keepdims: bool | None = None, components: bool | None = None,
                 ddof: Any = None, weights: Any = None) -> None:
        self._active = active
        self._operation = operation
        self._axis = axis
        self._keepdims = keepdims
        self._components = components
        self._ddof = ddof
        self._weights = weights

    def __call__(self, axis: Any = "default", *, keepdims: bool | None = None,
                 components: bool | None = None, ddof: Any = None,
                 weights: Any = None) -> "Reduction":
        """``ddof``: delta degrees of freedom of ``var``/``std`` (NumPy's; default 0).
        ``weights``: of ``mean``/``sum``/``var``/``std``: ``{axis: 1-D or None}``, a tuple
        with one entry per reduced axis, an array broadcastable to the variable, or the name
        of another variable (``"area"``: the one the variable's ``cell_measures`` names);
        missing elements drop their weight, as ``np.ma.average`` does."""
        return Reduction(self._active, self._operation, axis, keepdims, components, ddof,
                         weights)

    def __getitem__(self, key: Any) -> Any:
        a = self._active
        axis = a.axis if self._axis == "default" else self._axis
        keepdims = self._keepdims
        if keepdims is None:
            keepdims = a._peer if a.keepdims is None else a.keepdims
        components = a.components if self._components is None else self._components
        return a._reduce(self._operation, key, axis, components, keepdims, self._ddof,
                         self._weights)

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
            raise AxisError(f"{where}axis must be an integer or a tuple of integers; "
                            f"got {a!r}") from None
        if not -ndim <= a < ndim:
            raise AxisError(f"{where}axis {a} is out of bounds for the selected array of "
                            f"dimension {ndim}")
        out.append(result_axes[a % ndim])
    if len(set(out)) != len(out):
        raise AxisError(f"{where}repeated axis in {axis!r}")
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


def _fill_partial(var: Variable, t: ChunkTask, kop: str, axes: tuple[int, ...],
                  weights: Any = None) -> Partial:
    """A never-written chunk reads as the fill value."""
    shape = tuple(len(range(a, b, c)) for a, b, c in t.selection)
    fill = 0 if var.fill_value is None else var.fill_value
    x = np.full(shape, fill, dtype=var.dtype)
    return reduce_array(x, kop, axes, None if var.missing.is_empty() else var.missing, weights)


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
