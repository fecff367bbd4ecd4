"""Dask integration: active reductions as Dask graphs, and variables as Dask arrays.

Two kinds of Dask array describe one variable, both with blocks aligned to its storage chunks by
default:

* :func:`regions` - every block is a :class:`Region` (which part of which variable), not data.
  Slice them, :func:`dask.array.concatenate` several files along time, then :func:`reduce`: each
  task reduces its block's chunks where the data lives (through the chosen backend) and returns
  partial *components*; Dask's tree reduction combines them with the component algebra below.
* :func:`to_dask` - the data itself (masked where missing), for everything that is not a reduction.

Nothing live travels in a graph: a :class:`Source` names the dataset, variable, storage options and
backend (by name, server URL(s), or a picklable factory), and each process opens its own
:class:`~activestorage.active.Active` once and reuses it (:func:`active_for`, a per-process cache).
So the same graph runs on the threaded scheduler and on ``dask.distributed`` process workers, and
a task that dies with its worker is simply re-run elsewhere.

Components (the contract :class:`~activestorage.active.Active` keeps with ``components=True``):
mean and sum give ``{"sum", "n"}``, min ``{"min", "n"}``, max ``{"max", "n"}``, count
``{"count", "n"}``, all in keepdims shape. Combining: sums and ``n`` add; a min/max is the min/max
of the parts whose ``n > 0``; mean = total sum / total n; a result element with ``n == 0`` is
masked (count is never masked).
"""

from __future__ import annotations

import builtins
import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from . import operations
from .combine import Accumulator, finish, fold_components
from .errors import ActiveStorageError, SelectionError, UnsupportedError

log = logging.getLogger(__name__)

#: the reductions (from :mod:`activestorage.operations`)
OPS = operations.METHODS
#: what each operation's components are called (besides "n")
COMPONENT = {name: operations.get(name).component for name in OPS}


def _fields_kind(op: str, weighted: bool) -> str | None:
    """``"moments"``/``"minmax"`` when ``op``'s components are those of a kernel partial with
    several fields (var, std, range, rms, sum_of_squares, weighted mean/sum); None otherwise."""
    o = operations.get(op)
    kind = o.weighted if weighted else o.partial
    return kind if kind is not None and operations.get(kind).fields else None


# ------------------------------------------------------------------------------ sources

class Source:
    """Everything a task needs to open a variable, and nothing that cannot pickle.

    ``backend``: ``"posix"``, ``"fetch"``, ``"server"``, ``None`` (chosen from the URL), or a
    picklable zero-argument factory returning a :class:`~activestorage.backends.Backend` (a class,
    a ``functools.partial``) - not a live backend instance. ``active_storage_url``: one server URL
    or a list (several servers: a :class:`~activestorage.backends.pool.ServerPool`).
    ``storage_options`` travel inside the task graph to the workers; prefer credentials from the
    workers' environment (``AWS_ACCESS_KEY_ID`` ...) on shared clusters.
    """

    __slots__ = ("dataset", "ncvar", "options", "token")

    def __init__(self, dataset: Any, ncvar: str | None = None, *,
                 storage_options: Mapping[str, Any] | None = None,
                 active_storage_url: str | Sequence[str] | None = None,
                 backend: str | Callable[[], Any] | None = None,
                 backend_options: Mapping[str, Any] | None = None,
                 max_threads: int | None = None) -> None:
        from .backends.base import Backend

        if isinstance(dataset, os.PathLike):
            dataset = os.fspath(dataset)
        if not isinstance(dataset, str):
            raise ActiveStorageError(
                f"a Dask graph needs the dataset as a path or URL (it is reopened in every "
                f"worker); got {type(dataset).__name__}")
        if isinstance(backend, Backend):
            raise ActiveStorageError(
                "a Dask graph cannot carry a live backend instance (its sessions and files do "
                "not travel to workers): pass backend= by name, or a picklable factory such as "
                "the backend class or functools.partial(BackendClass, ...)")
        if backend is not None and not isinstance(backend, str) and not callable(backend):
            raise ActiveStorageError(f"backend must be a name or a factory, not {backend!r}")
        if isinstance(active_storage_url, (list, tuple)):
            active_storage_url = tuple(active_storage_url)
            if len(active_storage_url) == 1:
                active_storage_url = active_storage_url[0]
        options = {"storage_options": dict(storage_options) if storage_options else None,
                   "active_storage_url": active_storage_url, "backend": backend,
                   "backend_options": dict(backend_options) if backend_options else None,
                   "max_threads": max_threads}
        self.dataset = dataset
        self.ncvar = ncvar
        self.options = {k: v for k, v in options.items() if v is not None}
        from dask.base import tokenize

        described = {k: _describe(v) for k, v in self.options.items()}
        self.token = "activestorage-" + tokenize(dataset, ncvar, sorted(described.items()))

    @classmethod
    def from_active(cls, active: Any, **options: Any) -> "Source":
        """The Source of an open Active: its dataset URL/path, variable and backend. Storage
        options are not kept by Active; pass them again if the dataset needs them."""
        var = active.variable
        backend = active.backend
        name = getattr(backend, "name", None)
        if name in ("server", "server-pool"):
            urls = getattr(backend, "urls", None) or getattr(backend, "url", None)
            options.setdefault("active_storage_url", urls)
            options.setdefault("backend", "server")
        elif name in ("posix", "fetch"):
            options.setdefault("backend", name)
        else:
            options.setdefault("backend", None)
        return cls(var.source, var.name, **options)

    def __getstate__(self) -> tuple[Any, ...]:
        return (self.dataset, self.ncvar, self.options, self.token)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        self.dataset, self.ncvar, self.options, self.token = state

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Source) and other.token == self.token

    def __hash__(self) -> int:
        return hash(self.token)

    def __repr__(self) -> str:  # no storage options: they may hold credentials
        return f"Source({self.dataset!r}, {self.ncvar!r}, backend={self.options.get('backend')!r})"

    def open(self) -> Any:
        """A new Active for this source (callers normally want :func:`active_for`); its
        backend comes from :func:`~activestorage.backends.factory.make_backend`, as for any
        Active, when first used."""
        from .active import Active

        kw = dict(self.options)
        if kw.get("backend") in (None, "server") and isinstance(kw.get("active_storage_url"),
                                                                tuple):
            kw["backend"] = "server-pool"  # a list of servers is used as given, for any path
        return Active(self.dataset, self.ncvar, **kw)


def _describe(obj: Any) -> Any:
    """A stable, side-effect-free stand-in for a factory when tokenizing (tokenizing a class
    directly can re-pickle it). The client computes the token once; workers reuse it."""
    if isinstance(obj, partial):
        return ("partial", _describe(obj.func), repr(obj.args), repr(sorted(obj.keywords.items())))
    if callable(obj):
        return ("callable", getattr(obj, "__module__", ""), getattr(obj, "__qualname__", repr(obj)),
                id(obj))
    return obj


# ------------------------------------------------------------------ per-process cache

_CACHE: "OrderedDict[str, Any]" = OrderedDict()
_CACHE_LOCK = threading.Lock()
_OPENING: dict[str, threading.Lock] = {}


def _cache_size() -> int:
    return builtins.max(1, int(os.environ.get("ACTIVESTORAGE_DASK_CACHE", "64")))


def active_for(source: Source) -> Any:
    """This process's Active for ``source``, opened on first use (metadata read once per
    process, then shared by its threads)."""
    with _CACHE_LOCK:
        hit = _CACHE.get(source.token)
        if hit is not None:
            _CACHE.move_to_end(source.token)
            return hit
        lock = _OPENING.setdefault(source.token, threading.Lock())
    with lock:
        with _CACHE_LOCK:
            hit = _CACHE.get(source.token)
        if hit is None:
            hit = source.open()
            with _CACHE_LOCK:
                _CACHE[source.token] = hit
                _OPENING.pop(source.token, None)
                while len(_CACHE) > _cache_size():
                    # Not closed: another thread may still be using it; the GC releases it.
                    old, _ = _CACHE.popitem(last=False)
                    log.debug("dropped cached Active %s", old)
    return hit


def clear_cache() -> None:
    """Close and forget this process's cached Active objects."""
    with _CACHE_LOCK:
        items = list(_CACHE.values())
        _CACHE.clear()
    for active in items:
        active.close()


# ------------------------------------------------------------------------------ regions

def _as_slice(r: range | int) -> slice | int:
    if isinstance(r, int):
        return r
    if r.step < 0 and r.stop < 0:
        return slice(r.start, None, r.step)
    return slice(r.start, r.stop, r.step)


@dataclass(frozen=True)
class Region:
    """One block of a :func:`regions` array: indices into ``source``'s variable, per axis a
    ``range`` (a kept axis) or an ``int`` (an axis indexed away). Dask slices it like an array."""

    source: Source
    index: tuple[range | int, ...]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(len(r) for r in self.index if isinstance(r, range))

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def key(self) -> tuple[slice | int, ...]:
        """The index to give Active (``a.mean[key]``)."""
        return tuple(_as_slice(r) for r in self.index)

    def __getitem__(self, key: Any) -> "Region":
        if not isinstance(key, tuple):
            key = (key,)
        if any(k is Ellipsis for k in key):
            i = key.index(Ellipsis)
            key = key[:i] + (slice(None),) * (self.ndim - len(key) + 1) + key[i + 1:]
        if len(key) > self.ndim:
            raise SelectionError(f"too many indices ({len(key)}) for a region of dimension "
                                 f"{self.ndim}")
        key = key + (slice(None),) * (self.ndim - len(key))
        kept = iter(key)
        out: list[range | int] = []
        for r in self.index:
            if isinstance(r, int):
                out.append(r)
                continue
            k = next(kept)
            if isinstance(k, slice):
                out.append(r[k])
            elif isinstance(k, (int, np.integer)) and not isinstance(k, bool):
                out.append(r[int(k)])
            else:
                raise UnsupportedError(
                    f"regions support integer and slice indexing only, not {type(k).__name__} "
                    "(index the data from to_dask() instead)")
        return Region(self.source, tuple(out))

    def astype(self, dtype: Any, **kwargs: Any) -> "Region":
        """Dask casts blocks when concatenating different dtypes; reductions cast at the end."""
        return self

    def load(self) -> np.ma.MaskedArray:
        """The data of this region (masked where missing)."""
        x = active_for(self.source)[self.key]
        return np.ma.asarray(x)

    def components(self, op: str, axis: tuple[int, ...] | None = None,
                   weights: Any = None) -> dict[str, np.ndarray]:
        """This region's components for ``op`` over ``axis`` (keepdims), computed actively.
        For the moments/minmax operations ``v`` carries the fields as a last axis."""
        a = active_for(self.source)
        kind = _fields_kind(op, weights is not None)
        if kind is None:
            comp = getattr(a, op)(axis=axis, components=True)[self.key]
            return _plain(comp, op, self.shape, axis)
        # var's components are the whole moments partial (a weighted mean's keep only sums)
        how = a.var if kind == "moments" else a.range
        kw = {} if weights is None else {"weights": weights}
        comp = how(axis=axis, components=True, **kw)[self.key]
        names = operations.get(kind).fields
        axes = range(len(self.shape)) if axis is None else axis
        kshape = tuple(1 if i in axes else n for i, n in enumerate(self.shape))
        n = np.asarray(comp["n"], dtype=np.int64).reshape(kshape)
        v = np.stack([np.asarray(np.ma.getdata(comp[f])).reshape(kshape) for f in names], -1)
        if kind == "moments":  # empty cells all zeros, as the kernel makes them
            v = np.where((n > 0)[..., None], v, 0.0)
        return {"v": v, "n": n}

    def __repr__(self) -> str:
        return f"Region({self.source!r}, {self.key})"


def _plain(comp: Mapping[str, Any], op: str, shape: tuple[int, ...],
           axis: tuple[int, ...] | None) -> dict[str, np.ndarray]:
    """Active's components -> ``{"v": values, "n": counts}`` plain arrays in keepdims shape."""
    axes = range(len(shape)) if axis is None else axis
    kshape = tuple(1 if i in axes else n for i, n in enumerate(shape))
    n = np.asarray(comp["n"], dtype=np.int64).reshape(kshape)
    v = np.asarray(np.ma.getdata(comp[COMPONENT[op]])).reshape(kshape)
    return {"v": v, "n": n}


def _open_for_graph(dataset: Any, ncvar: str | None, options: dict[str, Any]) -> tuple[Source, Any]:
    """(Source, Active) for graph building; an Active given by the caller is reused as is."""
    from .active import Active

    if isinstance(dataset, Source):
        if options:
            raise ActiveStorageError("options go into Source(...), not next to it")
        return dataset, active_for(dataset)
    if isinstance(dataset, Active):
        return Source.from_active(dataset, **options), dataset
    source = Source(dataset, ncvar, **options)
    return source, active_for(source)


def _block_chunks(var: Any, chunks: Any) -> tuple[tuple[int, ...], ...]:
    import dask.array as da

    shape = tuple(var.shape)
    storage = tuple(builtins.max(1, int(c)) for c in var.chunk_shape) if var.chunk_shape else ()
    if len(storage) != len(shape):
        storage = tuple(builtins.max(1, n) for n in shape)
    if isinstance(chunks, str) and chunks == "storage":
        return da.core.normalize_chunks(storage, shape)
    if isinstance(chunks, str) and chunks == "auto":
        return da.core.normalize_chunks("auto", shape, dtype=var.dtype, previous_chunks=storage)
    out = da.core.normalize_chunks(chunks, shape, dtype=var.dtype)
    for ax, (blocks, c) in enumerate(zip(out, storage)):
        if any(b % c for b in blocks[:-1]):
            log.warning("blocks along axis %d (%s) are not multiples of the storage chunk %d: "
                        "chunks on block edges are read by two tasks", ax, blocks[:3], c)
    return out


def _physical_dtype(var: Any) -> np.dtype:
    """The dtype of unpacked values (what netCDF4 and Active's selection return)."""
    if not var.packed:
        return np.dtype(var.dtype)
    x = np.zeros(1, var.dtype)
    if var.scale_factor is not None:
        x = x * var.scale_factor
    if var.add_offset is not None:
        x = x + var.add_offset
    return np.dtype(x.dtype)


def regions(dataset: Any, ncvar: str | None = None, *, chunks: Any = "storage",
            **options: Any) -> Any:
    """A Dask array of :class:`Region` blocks over a variable, ready for :func:`reduce`.

    ``dataset``: a path/URL (with ``ncvar``), a :class:`Source`, or an open Active. ``chunks``:
    ``"storage"`` (one block per storage chunk, the default), ``"auto"`` (multiples of storage
    chunks up to Dask's ``array.chunk-size``) or any Dask chunks spec. ``options``: as
    :class:`Source` (storage_options, active_storage_url, backend, backend_options, max_threads).
    """
    import dask.array as da
    from dask.highlevelgraph import HighLevelGraph

    source, active = _open_for_graph(dataset, ncvar, options)
    var = active.variable
    bchunks = _block_chunks(var, chunks)
    name = "regions-" + source.token.split("-", 1)[1] + "-" + _chunks_token(bchunks)
    starts = [np.concatenate([[0], np.cumsum(c)]).astype(int) for c in bchunks]
    dsk = {}
    for idx in np.ndindex(*[len(c) for c in bchunks]):
        index = tuple(range(int(s[i]), int(s[i + 1])) for s, i in zip(starts, idx))
        dsk[(name, *idx)] = Region(source, index)
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=())
    meta = np.empty((0,) * len(var.shape), dtype=_physical_dtype(var))
    return da.Array(graph, name, bchunks, meta=meta)


def _chunks_token(chunks: Any) -> str:
    from dask.base import tokenize

    return tokenize(chunks)


def _load(block: Any) -> np.ma.MaskedArray:
    return _region(block).load()


def to_dask(dataset: Any, ncvar: str | None = None, *, chunks: Any = "storage",
            **options: Any) -> Any:
    """The variable as a Dask array of data (masked where missing), blocks aligned with storage
    chunks. Use it for anything; for reductions :func:`reduce` moves far less data."""
    r = regions(dataset, ncvar, chunks=chunks, **options)
    meta = np.ma.masked_array(np.empty((0,) * r.ndim, dtype=r.dtype),
                              mask=np.empty((0,) * r.ndim, dtype=bool))
    return r.map_blocks(_load, dtype=r.dtype, meta=meta, name="data-" + r.name.split("-", 1)[1])


# ------------------------------------------------------------------ the component algebra

def _region(block: Any) -> Region:
    if isinstance(block, Region):
        return block
    raise ActiveStorageError(
        "active reductions need the lazy regions from activestorage.dask.regions() (sliced or "
        f"concatenated as you like), not data blocks; got a {type(block).__name__}")


def _flatten(parts: Any) -> list[dict[str, np.ndarray]]:
    if isinstance(parts, dict):
        return [parts]
    return [p for sub in parts for p in _flatten(sub)]


def combine_components(parts: Iterable[Mapping[str, np.ndarray]], op: str,
                       weighted: bool = False) -> dict[str, np.ndarray]:
    """Fold same-shaped ``{"v", "n"}`` components: sums and counts add, min/max over n > 0,
    moments by Chan's formula (:func:`activestorage.combine.fold_components`, the combining
    ``Active`` does)."""
    return fold_components(list(parts), _fields_kind(op, weighted) or op)


def result_dtype(op: str, dtype: Any, weighted: bool = False) -> np.dtype:
    """NumPy's result dtype for ``op`` over unpacked values of ``dtype`` (float64 for the
    moments operations; a range of integers in int64/uint64)."""
    dtype = np.dtype(dtype)
    kind = _fields_kind(op, weighted)
    if kind == "moments":
        return np.dtype(np.float64)
    if kind == "minmax":
        return np.dtype(dtype if dtype.kind == "f" else np.uint64 if dtype.kind == "u"
                        else np.int64)
    if op == "count":
        return np.dtype(np.int64)
    if op == "mean":
        return dtype if dtype.kind == "f" else np.dtype(np.float64)
    if op == "sum" and dtype.kind in "iub":
        return np.dtype(np.uint64 if dtype.kind == "u" else np.int64)
    return dtype


def finalize(comp: Mapping[str, np.ndarray], op: str, axis: tuple[int, ...],
             keepdims: bool, dtype: Any, *, weighted: bool = False, ddof: Any = None) -> Any:
    """Combined components -> the answer, masked where no value contributed."""
    v, n = comp["v"], comp["n"]
    empty = n == 0
    kind = _fields_kind(op, weighted)
    if kind is not None:  # the combining's own finish, on already unpacked components
        acc = Accumulator(kind, n.shape, v.dtype)
        acc._values, acc._counts = np.asarray(v), np.asarray(n)
        out = finish(acc, op, ddof=0 if ddof is None else ddof)
        out = np.ma.MaskedArray(np.ma.getdata(out).astype(dtype), mask=np.ma.getmaskarray(out))
    elif op == "count":
        out = np.ma.MaskedArray(n.astype(np.int64), mask=np.zeros(n.shape, bool))
    else:
        if op == "mean":
            with np.errstate(invalid="ignore", divide="ignore"):
                v = v / np.where(empty, 1, n)
        with np.errstate(invalid="ignore", over="ignore"):
            data = np.where(empty, 0, v).astype(dtype)
        out = np.ma.MaskedArray(data, mask=empty)
    if not keepdims:
        out = out.reshape(tuple(s for i, s in enumerate(out.shape) if i not in axis))
    if out.ndim == 0:
        return np.ma.masked if bool(out.mask) else out.data[()]
    return out


def _chunk(block: Any, axis: tuple[int, ...] | None = None, keepdims: bool = True, *, op: str,
           weights: Any = None, **_: Any) -> dict[str, np.ndarray]:
    return _region(block).components(op, axis, weights)


def _combine(parts: Any, axis: Any = None, keepdims: bool = True, *, op: str,
             weighted: bool = False, **_: Any) -> dict[str, np.ndarray]:
    return combine_components(_flatten(parts), op, weighted)


def _aggregate(parts: Any, axis: Any = None, keepdims: bool = False, *, op: str, dtype: Any,
               weighted: bool = False, ddof: Any = None, **_: Any) -> Any:
    return finalize(combine_components(_flatten(parts), op, weighted), op, tuple(axis),
                    keepdims, dtype, weighted=weighted, ddof=ddof)


def _normalize_axis(axis: Any, ndim: int) -> tuple[int, ...]:
    if axis is None:
        return tuple(range(ndim))
    items = [axis] if np.ndim(axis) == 0 else list(axis)
    out = []
    for a in items:
        if isinstance(a, bool) or not isinstance(a, (int, np.integer)):
            raise SelectionError(f"axis must be an integer or a tuple of integers; got {a!r}")
        if not -ndim <= a < ndim:
            raise SelectionError(f"axis {a} is out of bounds for an array of dimension {ndim}")
        out.append(int(a) % ndim)
    if len(set(out)) != len(out):
        raise SelectionError(f"repeated axis in {axis!r}")
    return tuple(sorted(out))


def reduce(x: Any, op: str, axis: Any = None, keepdims: bool = False, *, ncvar: str | None = None,
           split_every: Any = None, chunks: Any = "storage", ddof: Any = None,
           weights: Any = None, **options: Any) -> Any:
    """A lazy Dask array: ``op`` (mean/min/max/sum/count, var/std/range/rms/sum_of_squares) of
    ``x`` over ``axis``, actively.

    ``x``: a :func:`regions` array (sliced or concatenated as you like), or anything
    :func:`regions` accepts (a path/URL with ``ncvar``, a :class:`Source`, an open Active).
    Every task reduces the storage chunks of its block through the backend; only components move.
    ``ddof``: of var/std. ``weights`` (mean/sum/var/std): as ``Active``'s, over the whole
    variable each block is cut from (``{axis: 1-D over the variable's axis}`` or an array
    broadcastable to the variable; every block of a concatenation gets the same).
    """
    import dask.array as da

    if op not in OPS:
        raise ActiveStorageError(f"unknown operation {op!r}; use one of {', '.join(OPS)}")
    o = operations.get(op)
    if ddof is not None and not o.ddof:
        raise ActiveStorageError(f"ddof applies to var and std, not {op}")
    if weights is not None and o.weighted is None:
        raise ActiveStorageError(f"weights apply to mean, sum, var and std, not {op}")
    if weights is not None and not isinstance(weights, (dict, str, np.ndarray)):
        raise ActiveStorageError("dask weights must be a dict {axis: 1-D over the variable's "
                                 "axis}, an array broadcastable to the variable or a variable "
                                 "name")
    weighted = weights is not None
    if not isinstance(x, da.Array):
        x = regions(x, ncvar, chunks=chunks, **options)
    elif options or ncvar is not None:
        raise ActiveStorageError("options apply when reduce() opens the dataset; a regions "
                                 "array already carries them")
    axes = _normalize_axis(axis, x.ndim)
    dtype = result_dtype(op, x.dtype, weighted)
    meta = np.ma.masked_array(np.empty((0,) * (x.ndim if keepdims else x.ndim - len(axes)),
                                       dtype=dtype))
    return da.reduction(x, partial(_chunk, op=op, weights=weights),
                        partial(_aggregate, op=op, dtype=dtype, weighted=weighted, ddof=ddof),
                        axis=axes, keepdims=keepdims, dtype=dtype, split_every=split_every,
                        combine=partial(_combine, op=op, weighted=weighted), concatenate=False,
                        meta=meta, name=f"active-{op}")


def mean(x: Any, axis: Any = None, keepdims: bool = False, **kw: Any) -> Any:
    """Active mean (see :func:`reduce`)."""
    return reduce(x, "mean", axis, keepdims, **kw)


def min(x: Any, axis: Any = None, keepdims: bool = False, **kw: Any) -> Any:  # noqa: A001
    """Active min (see :func:`reduce`)."""
    return reduce(x, "min", axis, keepdims, **kw)


def max(x: Any, axis: Any = None, keepdims: bool = False, **kw: Any) -> Any:  # noqa: A001
    """Active max (see :func:`reduce`)."""
    return reduce(x, "max", axis, keepdims, **kw)


def sum(x: Any, axis: Any = None, keepdims: bool = False, **kw: Any) -> Any:  # noqa: A001
    """Active sum (see :func:`reduce`)."""
    return reduce(x, "sum", axis, keepdims, **kw)


def count(x: Any, axis: Any = None, keepdims: bool = False, **kw: Any) -> Any:
    """Active count of non-missing values (see :func:`reduce`)."""
    return reduce(x, "count", axis, keepdims, **kw)


def var(x: Any, axis: Any = None, keepdims: bool = False, **kw: Any) -> Any:
    """Active variance (``ddof=``, ``weights=``; see :func:`reduce`)."""
    return reduce(x, "var", axis, keepdims, **kw)


def std(x: Any, axis: Any = None, keepdims: bool = False, **kw: Any) -> Any:
    """Active standard deviation (``ddof=``, ``weights=``; see :func:`reduce`)."""
    return reduce(x, "std", axis, keepdims, **kw)


# ------------------------------------------------------------------------------ progress

try:
    from dask.callbacks import Callback as _Callback
except ImportError:  # pragma: no cover - dask is an extra
    _Callback = object  # type: ignore[assignment,misc]


class ProgressCallback(_Callback):  # type: ignore[misc,valid-type]
    """A tqdm bar over the tasks of a local-scheduler compute (threads, processes, sync), shown
    by :func:`activestorage.progress.progress`'s rules (> 1 s, a terminal or notebook)::

        with ProgressCallback("mean of tas"):
            m.compute()
    """

    def __init__(self, desc: str = "active reduction", enabled: bool | None = None,
                 delay: float = 1.0, file: Any = None) -> None:
        super().__init__()
        self.file = file
        self.desc = desc
        self.enabled = enabled
        self.delay = delay
        self.bar: Any = None

    def _start_state(self, dsk: Any, state: Mapping[str, Any]) -> None:
        from .progress import progress

        total = builtins.sum(len(state[k]) for k in ("ready", "waiting", "running", "finished"))
        self.bar = progress(total, self.desc, self.enabled, delay=self.delay, unit="task",
                            file=self.file)

    def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def _finish(self, dsk: Any, state: Any, errored: bool) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _distributed_client() -> Any:
    """The default dask.distributed client, if one is in use."""
    try:
        from distributed import default_client
    except ImportError:
        return None
    try:
        return default_client()
    except ValueError:
        return None


def compute(*collections: Any, progress: bool | None = None, desc: str = "active reduction",
            **kwargs: Any) -> tuple[Any, ...]:
    """``dask.compute`` with a progress bar: a callback on local schedulers, the scheduler's
    progress feed on ``dask.distributed`` (shown by the same rules as :func:`progress`)."""
    import dask

    client = _distributed_client() if kwargs.get("scheduler") is None else None
    if client is None:
        with ProgressCallback(desc, progress):
            return dask.compute(*collections, **kwargs)
    from .progress import progress as make_bar, wanted

    futures = client.compute(list(collections), **kwargs)
    if not wanted(progress):
        return tuple(client.gather(futures))
    bar = make_bar(0, desc, progress, unit="task")
    watcher = _watch_distributed(client, futures, bar)
    try:
        return tuple(client.gather(futures))
    finally:
        try:
            watcher.result(timeout=2)  # the feed ends itself once the keys are done
        except Exception:  # noqa: BLE001 - a progress bar never fails a computation
            watcher.cancel()
        bar.close()


def _watch_distributed(client: Any, futures: Sequence[Any], bar: Any) -> Any:
    """Feed ``bar`` from the scheduler's task counts (distributed's own progress plugin)."""
    import asyncio

    from distributed.diagnostics.progressbar import ProgressBar

    class _Bar(ProgressBar):
        def _draw_bar(self, remaining: int, all: int, **kw: Any) -> None:  # noqa: A002
            if bar.total != all:
                bar.set_total(all)
            done = all - remaining
            if done > bar.n:
                bar.update(done - bar.n)

        def _draw_stop(self, **kw: Any) -> None:
            bar.close()

    watcher = _Bar(futures, client.scheduler.address, interval="200ms", complete=True)
    loop = client.loop.asyncio_loop
    return asyncio.run_coroutine_threadsafe(watcher.listen(), loop)


# min, max and sum are left out of __all__: a star import must not shadow the builtins.
__all__ = ["Region", "Source", "ProgressCallback", "active_for", "clear_cache",
           "combine_components", "compute", "count", "finalize", "mean", "reduce", "regions",
           "result_dtype", "std", "to_dask", "var"]
