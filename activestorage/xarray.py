"""An xarray accessor: ``da.active.mean("time")`` reduces where the data lives.

Importing this module registers the ``active`` accessor on :class:`xarray.DataArray` (xarray has no
entry point for accessors, only for backends, so the import is the registration)::

    import xarray as xr
    import activestorage.xarray  # noqa: F401  (registers da.active)

    ds = xr.open_dataset("s3://bucket/tas.nc", engine="h5netcdf", storage_options=opts)
    ds.tas.sel(time=slice("2000", "2010")).active(active_storage_url=url).mean(("lat", "lon"))

The accessor finds the dataset (path or URL, variable name, storage options) behind a DataArray
that xarray opened lazily, turns the pending indexing (``.isel``/``.sel`` with slices, labels,
scalars) into an :class:`~activestorage.active.Active` selection, reduces it actively and rebuilds
the DataArray xarray's own reduction would return (dims, coordinates, attributes, dtype), with the
CF ``cell_methods`` appended. On Dask-backed arrays (``chunks=`` on open) the result is lazy and
its graph comes from :mod:`activestorage.dask`.

``var``/``std`` (with ``ddof``) and ``da.active.weighted(w).mean/sum/var/std/sum_of_weights`` are
computed from one moments reduction (count, sum of weights, weighted mean, sum of weighted squared
deviations per result element), finished here as xarray defines each answer.

Arrays whose values are not in the file any more (loaded, computed, transposed, indexed with
arbitrary integer lists) raise :class:`NotActiveError`; ``fallback=True`` uses xarray's own
reduction for them instead.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from dataclasses import dataclass
from typing import Any, Hashable, Iterable, Mapping, Sequence

import numpy as np
import xarray as xr

from .errors import ActiveStorageError, UnsupportedError

log = logging.getLogger(__name__)

__all__ = ["ActiveAccessor", "ActiveWeighted", "DimensionError", "NotActiveError", "OPERATIONS",
           "WEIGHTED_OPERATIONS"]

#: operations the accessor computes actively -> the CF cell_methods method name (None: not a
#: CF cell method; count changes the quantity, so no cell_methods entry is added for it)
OPERATIONS: dict[str, str | None] = {"mean": "mean", "min": "minimum", "max": "maximum",
                                     "sum": "sum", "count": None, "var": "variance",
                                     "std": "standard_deviation"}
#: ``da.active.weighted(w).<op>``: the operations of xarray's ``DataArrayWeighted`` computed
#: actively (all from one moments reduction) -> the CF cell_methods method name
WEIGHTED_OPERATIONS: dict[str, str | None] = {"mean": "mean", "sum": "sum", "var": "variance",
                                              "std": "standard_deviation",
                                              "sum_of_weights": None}
#: the operations computed from the moments partial (count, sum of weights, mean, m2)
_MOMENT_OPERATIONS = ("var", "std")


class NotActiveError(UnsupportedError):
    """The DataArray's values cannot be reduced where they live (they are in memory, computed, or
    indexed in a way Active cannot express); ``fallback=True`` reduces them with xarray instead."""


class DimensionError(ActiveStorageError, ValueError):
    """A ``dim`` argument names a dimension the DataArray does not have."""


# ------------------------------------------------------------------------- finding the source

@dataclass(frozen=True)
class Origin:
    """Where a lazily opened DataArray's values live and which part of them it shows.

    ``index``: per axis of the stored variable, an ``int`` (the axis was indexed away) or an
    ``np.ndarray`` of the positions kept, in order. ``chunked``: the DataArray is Dask-backed.
    """

    dataset: str
    ncvar: str
    storage_options: dict[str, Any] | None
    index: tuple[int | np.ndarray, ...]
    chunked: bool = False
    stored_shape: tuple[int, ...] = ()

    def key(self) -> tuple[int | slice, ...]:
        """The index as ints and slices, for Active (raises NotActiveError if it is no slice)."""
        return tuple(_as_slice(i, ax) for ax, i in enumerate(self.index))

    def full_key(self) -> tuple[slice, ...]:
        """The index as slices only (an int as a length-1 slice): every stored axis is kept,
        so axis numbers are the stored variable's."""
        return tuple(slice(i, i + 1) if isinstance(i, int) else k
                     for i, k in zip(self.index, self.key()))

    @property
    def kept_axes(self) -> tuple[int, ...]:
        """The stored axes the DataArray still has (those not indexed away by a scalar)."""
        return tuple(ax for ax, i in enumerate(self.index) if not isinstance(i, int))

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(len(i) for i in self.index if not isinstance(i, int))


def _as_slice(index: int | np.ndarray, axis: int) -> int | slice:
    if isinstance(index, int):
        return index
    n = len(index)
    if n == 0:
        return slice(0, 0)
    start = int(index[0])
    if n == 1:
        return slice(start, start + 1)
    step = int(index[1]) - start
    if step == 0 or not np.array_equal(index, start + step * np.arange(n)):
        raise NotActiveError(
            f"the selection along axis {axis} is not evenly spaced (an integer list or a label "
            "list); Active reduces slices and scalars only: select a contiguous or strided "
            "range, or pass fallback=True")
    stop = start + step * n
    return slice(start, stop if stop >= 0 else None, step)


def _compose(index: tuple[int | np.ndarray, ...], key: Sequence[Any]) -> tuple[Any, ...]:
    """Apply ``key`` (one entry per kept axis: int, slice or integer array) to ``index``."""
    out: list[int | np.ndarray] = []
    kept = iter(key)
    for i in index:
        if isinstance(i, int):
            out.append(i)
            continue
        k = next(kept, slice(None))
        if isinstance(k, (int, np.integer)) and not isinstance(k, bool):
            out.append(int(i[int(k)]))
        elif isinstance(k, slice):
            out.append(i[k])
        elif isinstance(k, np.ndarray) and k.ndim == 1 and k.dtype.kind in "iu":
            out.append(i[k])
        else:
            raise NotActiveError(f"cannot follow an index of type {type(k).__name__} "
                                 "(vectorised or boolean indexing); pass fallback=True")
    return tuple(out)


def _backend_source(backend: Any) -> tuple[str, str, dict[str, Any] | None]:
    """(path or URL, variable name, storage options) of an xarray backend array."""
    name = type(backend).__name__
    if name in ("H5NetCDFArrayWrapper", "NetCDF4ArrayWrapper"):
        store = backend.datastore
        target = getattr(store, "_filename", None)
        # a remote file: xarray opened an fsspec file object, which its file manager holds (the
        # store's _filename is then only that object's repr)
        opened = (getattr(getattr(store, "_manager", None), "_args", None) or (None,))[0]
        if getattr(opened, "fs", None) is not None:
            target = opened
        ncvar = backend.variable_name
        group = getattr(store, "_group", None)
        if group not in (None, "", "/"):
            ncvar = f"{str(group).strip('/')}/{ncvar}"
        url, options = _locate(target, f"{name} of {ncvar!r}")
        return url, ncvar, options
    if name == "ZarrArrayWrapper":
        arr = backend._array  # xarray keeps the zarr array here (no public accessor)
        store = arr.store
        path = arr.path
        root = getattr(store, "root", None)  # LocalStore
        if root is not None:
            return os.fspath(root), path, None
        fs = getattr(store, "fs", None)  # FsspecStore
        if fs is not None:
            url, so = _fs_url(fs, store.path)
            return url, path, so
        raise NotActiveError(f"a Zarr store of type {type(store).__name__} is not one Active "
                             "can read (a local directory or an fsspec URL)")
    raise NotActiveError(f"the values come from an xarray backend array of type {name}; "
                         "activestorage reads netCDF/HDF5 (engines h5netcdf, netcdf4) and Zarr")


def _fs_url(fs: Any, path: str) -> tuple[str, dict[str, Any] | None]:
    url = fs.unstrip_protocol(path)
    # zarr wraps the filesystem as asynchronous, with its own event loop: those are not options
    # of the dataset, and another process (a Dask worker, our server) must not get them
    options = {k: v for k, v in (getattr(fs, "storage_options", None) or {}).items()
               if k not in ("asynchronous", "loop")} or None
    if url.startswith("file://"):
        return url[len("file://"):], None
    return url, options


def _locate(target: Any, what: str) -> tuple[str, dict[str, Any] | None]:
    """A backend's file: a path, a URL, or an fsspec file object (remote h5netcdf)."""
    if isinstance(target, (str, os.PathLike)):
        return os.fspath(target), None
    fs, path = getattr(target, "fs", None), getattr(target, "path", None)
    if fs is not None and isinstance(path, str):
        return _fs_url(fs, path)
    raise NotActiveError(f"{what} was opened from a {type(target).__name__}, not a path or URL "
                         "that Active can reopen; open it by path or URL")


def _unwrap(data: Any) -> tuple[Any, tuple[int | np.ndarray, ...]]:
    """The backend array under xarray's lazy wrappers, and the index they apply to it."""
    from xarray.core import indexing

    seen = data
    while True:
        if isinstance(seen, (indexing.MemoryCachedArray, indexing.CopyOnWriteArray,
                             indexing.ImplicitToExplicitIndexingAdapter)):
            seen = seen.array
        elif type(seen).__name__ == "_ElementwiseFunctionArray":
            _check_decoder(seen.func)
            seen = seen.array
        else:
            break
    if isinstance(seen, indexing.LazilyIndexedArray):
        backend = seen.array
        index: tuple[Any, ...] = tuple(np.arange(n) for n in backend.shape)
        key = seen.key.tuple
        return backend, _compose(index, key)
    if isinstance(seen, indexing.LazilyVectorizedIndexedArray):
        raise NotActiveError("the DataArray was transposed or indexed point-wise (vectorised "
                             "indexing) after opening; reduce before transposing, or pass "
                             "fallback=True")
    from xarray.backends.common import BackendArray

    if isinstance(seen, BackendArray):
        return seen, tuple(np.arange(n) for n in seen.shape)
    raise NotActiveError(
        f"the DataArray's values are {type(seen).__name__}, not a lazily opened file (loaded, "
        "computed or created in memory); open it with xr.open_dataset(...) and reduce before "
        "computing on it, or pass fallback=True to reduce it with xarray")


def find_origin(da: xr.DataArray) -> Origin:
    """Where ``da``'s values live and which part of the stored variable it shows."""
    data = da.variable._data
    chunked = _is_dask(data)
    if chunked:
        backend, index = _dask_origin(data)
    else:
        backend, index = _unwrap(data)
    dataset, ncvar, so = _backend_source(backend)
    origin = Origin(dataset, ncvar, so, index, chunked, tuple(backend.shape))
    if origin.shape != tuple(da.shape):
        raise NotActiveError(f"the DataArray's shape {da.shape} does not match the selection "
                             f"{origin.shape} found behind it; pass fallback=True")
    origin.key()  # raises NotActiveError now if the selection is no slice
    return origin


def _is_dask(data: Any) -> bool:
    try:
        import dask.array
    except ImportError:  # pragma: no cover - dask is an extra
        return False
    return isinstance(data, dask.array.Array)


def _dask_origin(arr: Any) -> tuple[Any, tuple[int | np.ndarray, ...]]:
    """Follow a Dask array from xarray's open back to the backend array, replaying the slicing
    layers (``getitem``) that ``.isel``/``.sel`` added; anything else is not followed."""
    try:
        from dask._task_spec import Alias, Task, TaskRef
    except ImportError as exc:  # pragma: no cover - older dask
        raise NotActiveError(f"following Dask arrays needs dask 2024.12 or later ({exc}); "
                             "pass fallback=True") from None

    layers = arr.dask.layers
    deps = arr.dask.dependencies
    chain = []
    name = arr.name
    while True:
        chain.append(name)
        below = deps.get(name, set())
        if len(below) != 1:
            break
        name = next(iter(below))
    original = chain[-1]
    if not original.startswith("original-") or len(chain) < 2:
        raise NotActiveError("this Dask array was not opened from a file by xarray (or was "
                             "combined with other arrays); pass fallback=True")
    (adapter,) = layers[original].values()
    backend, index = _unwrap(adapter)
    opened = chain[-2]
    chunks = _chunks_of(layers, opened, index)
    for layer_name in reversed(chain[:-2]):
        layer = layers[layer_name]
        if not layer_name.startswith("getitem-"):
            raise NotActiveError(f"the Dask array went through {layer_name.split('-')[0]!r} after "
                                 "opening; Active follows slicing only: pass fallback=True")
        per_axis: list[dict[int, Any]] = [dict() for _ in chunks]
        ints: list[set[int]] = [set() for _ in chunks]
        starts = [np.concatenate([[0], np.cumsum(c)]).astype(int) for c in chunks]
        for key, task in layer.items():
            if isinstance(task, Alias):  # a block taken whole
                target = task.target
                src, sub = getattr(target, "key", target), ()
            else:
                sub = _task_index(task)
                if not (isinstance(task, Task) and isinstance(task.args[0], TaskRef)
                        and isinstance(sub, tuple)):
                    raise NotActiveError("a Dask slicing task of an unknown form; pass "
                                         "fallback=True")
                src = task.args[0].key
            out_idx = key[1:]
            kept = 0
            for ax, (blk, k) in enumerate(zip(src[1:], sub + (slice(None),) * (len(chunks)
                                                                           - len(sub)))):
                lo = int(starts[ax][blk])
                size = int(chunks[ax][blk])
                if isinstance(k, (int, np.integer)):
                    ints[ax].add(lo + int(k))
                    continue
                if not isinstance(k, slice):
                    raise NotActiveError("Dask fancy indexing cannot be followed; pass "
                                         "fallback=True")
                per_axis[ax][out_idx[kept]] = lo + np.arange(size)[k]
                kept += 1
        new_key: list[Any] = []
        new_chunks: list[tuple[int, ...]] = []
        for ax in range(len(chunks)):
            if ints[ax]:
                if len(ints[ax]) != 1 or per_axis[ax]:
                    raise NotActiveError("an inconsistent Dask slicing layer; pass fallback=True")
                new_key.append(next(iter(ints[ax])))
                continue
            parts = per_axis[ax]
            new_key.append(np.concatenate([parts[i] for i in sorted(parts)]) if parts
                           else np.arange(0))
            new_chunks.append(tuple(len(parts[i]) for i in sorted(parts)))
        index = _compose(index, new_key)
        chunks = new_chunks
    return backend, index


def _task_index(task: Any) -> Any:
    """The index tuple a Dask getter/getitem task applies (plain, or wrapped in a DataNode)."""
    args = getattr(task, "args", ())
    if len(args) != 2:
        return None
    sub = args[1]
    return getattr(sub, "value", sub)


def _chunks_of(layers: Mapping[str, Any], name: str, index: tuple[Any, ...]
               ) -> list[tuple[int, ...]]:
    """Block sizes of the array xarray opened, read from its getter tasks' slices."""
    shape = [len(i) for i in index if not isinstance(i, int)]
    sizes: list[dict[int, int]] = [dict() for _ in shape]
    for key, task in layers[name].items():
        sub = _task_index(task)
        if not isinstance(sub, tuple) or len(sub) != len(shape) or len(key) != len(shape) + 1:
            raise NotActiveError("the Dask array's opening layer has an unknown form; pass "
                                 "fallback=True")
        for ax, s in enumerate(sub):
            sizes[ax][key[1 + ax]] = len(range(*s.indices(shape[ax])))
    return [tuple(d[i] for i in sorted(d)) for d in sizes]


# ------------------------------------------------------------------------------ the accessor

def _dims(da: xr.DataArray, dim: Any) -> tuple[Hashable, ...]:
    if dim is None or dim is ...:
        return tuple(da.dims)
    items = [dim] if isinstance(dim, str) or not isinstance(dim, Iterable) else list(dim)
    missing = [d for d in items if d not in da.dims]
    if missing:
        raise DimensionError(f"dimensions {missing} not found in the DataArray's dimensions "
                             f"{tuple(da.dims)}")
    if len(set(items)) != len(items):
        raise DimensionError(f"repeated dimension in {dim!r}")
    return tuple(d for d in da.dims if d in items)


def _cell_methods(attrs: Mapping[str, Any], dims: Sequence[Hashable], op: str,
                  weighted: bool = False) -> dict[str, Any]:
    """``attrs`` with ``"dim1: dim2: method"`` appended to ``cell_methods`` (CF section 7.3)."""
    method = (WEIGHTED_OPERATIONS if weighted else OPERATIONS).get(op)
    out = dict(attrs)
    if method is None or not dims:
        return out
    entry = " ".join(f"{d}:" for d in dims) + f" {method}"
    before = str(out.get("cell_methods", "")).strip()
    out["cell_methods"] = f"{before} {entry}" if before else entry
    return out


def _template(da: xr.DataArray, op: str, dims: tuple[Hashable, ...],
              kwargs: Mapping[str, Any], weights: xr.DataArray | None = None) -> xr.DataArray:
    """xarray's own reduction of a one-element stand-in with ``da``'s dims, dtype and attrs:
    it says which attributes survive and the result dtype, whatever xarray version this is."""
    stand_in = xr.DataArray(np.ones((1,) * da.ndim, dtype=da.dtype), dims=da.dims,
                            attrs=da.attrs, name=da.name)
    with warnings.catch_warnings():  # a one-element var with ddof=1 warns about its dof
        warnings.simplefilter("ignore", RuntimeWarning)
        if weights is not None:
            w = xr.DataArray(np.ones((1,) * weights.ndim, dtype=weights.dtype), dims=weights.dims)
            return getattr(stand_in.weighted(w), op)(dim=list(dims), **kwargs)
        return getattr(stand_in, op)(dim=list(dims), **kwargs)


def _rebuild(da: xr.DataArray, values: Any, dims: tuple[Hashable, ...],
             template: xr.DataArray, op: str, keep_attrs: bool,
             weighted: bool = False) -> xr.DataArray:
    """The DataArray xarray's reduction would return, holding ``values``."""
    reduced = set(dims)
    drop = [k for k, c in da.coords.items() if reduced & set(c.dims)]
    coords = da.drop_vars(drop).coords
    attrs = (_cell_methods(template.attrs, dims, op, weighted) if keep_attrs
             else dict(template.attrs))
    kept = [d for d in da.dims if d not in reduced]
    return xr.DataArray(values, dims=kept, coords=coords, name=da.name, attrs=attrs)


@dataclass
class _Options:
    """Options for Active (see :class:`~activestorage.active.Active`)."""

    storage_options: dict[str, Any] | None = None
    active_storage_url: Any = None
    backend: Any = None
    backend_options: dict[str, Any] | None = None
    max_threads: int | None = None
    fallback: bool = False


@xr.register_dataarray_accessor("active")
class ActiveAccessor:
    """``da.active``: reductions computed where the data lives, with xarray's argument names.

    Call it to set options for the next reductions: ``da.active(active_storage_url=url,
    storage_options=opts, backend="fetch", backend_options={...}, max_threads=8,
    fallback=True).mean("time")``. Without options the dataset's storage options are taken from
    how xarray opened it, and the server from ``$ACTIVESTORAGE_URL``. ``last_stats`` reports what
    the last reduction touched and moved (an :class:`~activestorage.active.CallStats`).
    """

    def __init__(self, da: xr.DataArray, options: _Options | None = None,
                 parent: "ActiveAccessor | None" = None) -> None:
        self._da = da
        self._options = options or _Options()
        self._parent = parent
        self.last_stats: Any = None

    def __call__(self, *, storage_options: dict[str, Any] | None = None,
                 active_storage_url: Any = None, backend: Any = None,
                 backend_options: dict[str, Any] | None = None, max_threads: int | None = None,
                 fallback: bool = False) -> "ActiveAccessor":
        """This accessor with options for Active (and ``fallback``) set."""
        opts = _Options(storage_options, active_storage_url, backend, backend_options,
                        max_threads, fallback)
        return ActiveAccessor(self._da, opts, parent=self)

    # ----------------------------------------------------------------------- reductions
    def mean(self, dim: Any = None, *, skipna: bool | None = None,
             keep_attrs: bool | None = None, fallback: bool | None = None) -> xr.DataArray:
        """Mean over ``dim`` (a name, names, or None for all), like ``DataArray.mean``."""
        return self._reduce("mean", dim, skipna, keep_attrs, fallback)

    def min(self, dim: Any = None, *, skipna: bool | None = None,
            keep_attrs: bool | None = None, fallback: bool | None = None) -> xr.DataArray:
        """Minimum over ``dim``, like ``DataArray.min``."""
        return self._reduce("min", dim, skipna, keep_attrs, fallback)

    def max(self, dim: Any = None, *, skipna: bool | None = None,
            keep_attrs: bool | None = None, fallback: bool | None = None) -> xr.DataArray:
        """Maximum over ``dim``, like ``DataArray.max``."""
        return self._reduce("max", dim, skipna, keep_attrs, fallback)

    def sum(self, dim: Any = None, *, skipna: bool | None = None, min_count: int | None = None,
            keep_attrs: bool | None = None, fallback: bool | None = None) -> xr.DataArray:
        """Sum over ``dim``, like ``DataArray.sum`` (0 where nothing is valid, unless
        ``min_count`` asks for that many valid values)."""
        return self._reduce("sum", dim, skipna, keep_attrs, fallback, min_count=min_count)

    def count(self, dim: Any = None, *, keep_attrs: bool | None = None,
              fallback: bool | None = None) -> xr.DataArray:
        """Number of non-missing values over ``dim``, like ``DataArray.count``."""
        return self._reduce("count", dim, None, keep_attrs, fallback)

    def var(self, dim: Any = None, *, skipna: bool | None = None, ddof: int = 0,
            keep_attrs: bool | None = None, fallback: bool | None = None) -> xr.DataArray:
        """Variance over ``dim`` with ``ddof`` delta degrees of freedom, like ``DataArray.var``
        (NaN where fewer than ``ddof + 1`` values are valid)."""
        return self._reduce("var", dim, skipna, keep_attrs, fallback, ddof=ddof)

    def std(self, dim: Any = None, *, skipna: bool | None = None, ddof: int = 0,
            keep_attrs: bool | None = None, fallback: bool | None = None) -> xr.DataArray:
        """Standard deviation over ``dim``, like ``DataArray.std``."""
        return self._reduce("std", dim, skipna, keep_attrs, fallback, ddof=ddof)

    def weighted(self, weights: xr.DataArray) -> "ActiveWeighted":
        """Weighted reductions, like ``DataArray.weighted(weights)``: ``weights`` is a
        DataArray over some of this array's dimensions (cos(lat), a cell-area variable)."""
        return ActiveWeighted(self, weights)

    # ----------------------------------------------------------------------- machinery
    def _record(self, stats: Any) -> None:
        self.last_stats = stats
        if self._parent is not None:
            self._parent._record(stats)

    def _reduce(self, op: str, dim: Any, skipna: bool | None, keep_attrs: bool | None,
                fallback: bool | None, min_count: int | None = None, ddof: int = 0,
                weights: xr.DataArray | None = None) -> xr.DataArray:
        da = self._da
        weighted = weights is not None
        dims = _dims(da, dim)
        fallback = self._options.fallback if fallback is None else fallback
        xkw: dict[str, Any] = {"keep_attrs": keep_attrs}
        if op not in ("count", "sum_of_weights"):
            xkw["skipna"] = skipna
        if min_count is not None:
            xkw["min_count"] = min_count
        if op in _MOMENT_OPERATIONS and not weighted:
            xkw["ddof"] = ddof
        template = _template(da, op, dims, xkw, weights)
        keep = bool(template.attrs) if keep_attrs is None else keep_attrs
        aligned = _align_weights(da, weights) if weighted else None
        try:
            origin = find_origin(da)
            _check_decoding(da)
        except NotActiveError as exc:
            if not fallback:
                raise
            log.info("activestorage: reducing %s with xarray (fallback): %s", da.name, exc)
            self._record(None)
            source = da.weighted(weights) if weighted else da
            out = getattr(source, op)(dim=list(dims), **xkw)
            return (out.assign_attrs(_cell_methods(out.attrs, dims, op, weighted)) if keep
                    else out)
        axes = tuple(da.dims.index(d) for d in dims)
        skip = True if skipna is None else bool(skipna)
        if weighted or op in _MOMENT_OPERATIONS:
            w = None if aligned is None else _active_weights(da, origin, aligned)
            values = self._moment_values(origin, op, axes, skip, ddof, w, template.dtype)
        elif origin.chunked:
            values = self._dask_values(origin, op, axes, skip, min_count, template.dtype)
        else:
            values = self._values(origin, op, axes, skip, min_count, template.dtype)
        out = _rebuild(da, values, dims, template, op, keep, weighted)
        out.active.last_stats = self.last_stats  # also readable from the result
        return out

    def _active_kwargs(self, origin: Origin) -> dict[str, Any]:
        o = self._options
        so = o.storage_options if o.storage_options is not None else origin.storage_options
        kw = {"storage_options": so, "active_storage_url": o.active_storage_url,
              "backend": o.backend, "backend_options": o.backend_options,
              "max_threads": o.max_threads}
        return {k: v for k, v in kw.items() if v is not None}

    def _values(self, origin: Origin, op: str, axes: tuple[int, ...], skipna: bool,
                min_count: int | None, dtype: np.dtype) -> np.ndarray:
        from .active import Active

        key = origin.key()
        with Active(origin.dataset, origin.ncvar, progress=False,
                    **self._active_kwargs(origin)) as a:
            comp = getattr(a, op)(axis=axes, components=True)[key]
            self._record(a.stats)
        value = comp["count" if op == "count" else "min" if op == "min" else
                     "max" if op == "max" else "sum"]
        n = np.asarray(comp["n"], dtype=np.int64)
        v = np.asarray(np.ma.getdata(value), dtype=np.float64 if op == "mean" else None)
        if axes:
            v, n = np.squeeze(v, axis=axes), np.squeeze(n, axis=axes)
        size = math.prod(origin.shape[ax] for ax in axes)
        return _finish(op, v, n, size, skipna, min_count, dtype)

    def _moment_values(self, origin: Origin, op: str, axes: tuple[int, ...], skipna: bool,
                       ddof: int, weights: Any, dtype: np.dtype) -> Any:
        """var/std, and the weighted operations, from one moments reduction (its components:
        count, sum of weights, weighted mean, sum of weighted squared deviations). The
        selection keeps every stored axis (:meth:`Origin.full_key`), so axes and weights are
        numbered as the stored variable's; the scalar-indexed axes are squeezed at the end."""
        size = math.prod(origin.shape[ax] for ax in axes)
        stored = tuple(origin.kept_axes[ax] for ax in axes)
        dropped = tuple(sorted(set(stored) | {ax for ax, i in enumerate(origin.index)
                                              if isinstance(i, int)}))
        kw: dict[str, Any] = {"axis": stored, "components": True}
        if weights is not None:
            kw["weights"] = weights
        weighted = weights is not None
        if origin.chunked:
            from functools import partial

            import dask.array

            from . import dask as ad

            source = ad.Source(origin.dataset, origin.ncvar, **self._active_kwargs(origin))
            regions = ad.regions(source, chunks="auto")[origin.full_key()]
            self._record(None)  # a lazy result: nothing has moved yet
            finish = partial(_moments_aggregate, op=op, size=size, skipna=skipna, ddof=ddof,
                             weighted=weighted, dtype=dtype)
            reduced = dask.array.reduction(
                regions, partial(_moments_chunk, weights=weights), finish, axis=stored,
                keepdims=True, dtype=dtype, combine=_moments_combine, concatenate=False,
                meta=np.empty((0,) * regions.ndim, dtype), name=f"active-{op}-moments")
            return reduced.squeeze(axis=dropped) if dropped else reduced
        from .active import Active

        with Active(origin.dataset, origin.ncvar, progress=False,
                    **self._active_kwargs(origin)) as a:
            comp = a.var(**kw)[origin.full_key()]
            self._record(a.stats)
        return _finish_moments(op, comp, dropped, size, skipna, ddof, weighted, dtype)

    def _dask_values(self, origin: Origin, op: str, axes: tuple[int, ...], skipna: bool,
                     min_count: int | None, dtype: np.dtype) -> Any:
        from . import dask as ad

        kw = self._active_kwargs(origin)
        source = ad.Source(origin.dataset, origin.ncvar, **kw)
        regions = ad.regions(source, chunks="auto")[origin.key()]
        # the mean is finished here from the sum and the count, like the other operations
        value = ad.reduce(regions, "sum" if op == "mean" else op, axis=axes)
        need_n = op != "count" and (op == "mean" or not skipna or min_count is not None)
        n = ad.reduce(regions, "count", axis=axes) if need_n else None
        size = math.prod(origin.shape[ax] for ax in axes)
        self._record(None)  # a lazy result: nothing has moved yet

        def finish(v: Any, c: Any = None) -> np.ndarray:
            v = np.ma.asarray(v)
            if c is None:
                c = np.where(np.ma.getmaskarray(v), 0, size)
            return _finish(op, np.ma.getdata(v), np.asarray(c), size, skipna, min_count, dtype)

        import dask.array

        args = (value,) if n is None else (value, n)
        return dask.array.map_blocks(finish, *args, dtype=dtype, meta=np.empty((0,) * value.ndim,
                                                                               dtype))


class ActiveWeighted:
    """``da.active.weighted(w)``: xarray's ``DataArrayWeighted`` reductions computed where the
    data lives. Missing values drop their weight (as in xarray and ``np.ma.average``); the
    weights must not be missing themselves. Weights whose dimensions are the data's are sent
    with each chunk request (cos(lat): one weight per latitude); a weights DataArray opened
    from the same dataset as the data (a cell-area variable) is read where the data is.
    """

    def __init__(self, accessor: ActiveAccessor, weights: xr.DataArray) -> None:
        if not isinstance(weights, xr.DataArray):
            raise TypeError(f"weights must be a DataArray (as for DataArray.weighted), not "
                            f"{type(weights).__name__}")
        self._accessor = accessor
        self.weights = weights

    def __repr__(self) -> str:
        dims = ", ".join(map(str, self.weights.dims))
        return f"ActiveWeighted with weights along dimensions: {dims}"

    def _reduce(self, op: str, dim: Any, skipna: bool | None, keep_attrs: bool | None,
                fallback: bool | None) -> xr.DataArray:
        return self._accessor._reduce(op, dim, skipna, keep_attrs, fallback,
                                      weights=self.weights)

    def mean(self, dim: Any = None, *, skipna: bool | None = None,
             keep_attrs: bool | None = None, fallback: bool | None = None) -> xr.DataArray:
        """Weighted mean over ``dim``, like ``da.weighted(w).mean(dim)``."""
        return self._reduce("mean", dim, skipna, keep_attrs, fallback)

    def sum(self, dim: Any = None, *, skipna: bool | None = None,
            keep_attrs: bool | None = None, fallback: bool | None = None) -> xr.DataArray:
        """Weighted sum over ``dim``, like ``da.weighted(w).sum(dim)`` (0 where all missing)."""
        return self._reduce("sum", dim, skipna, keep_attrs, fallback)

    def var(self, dim: Any = None, *, skipna: bool | None = None,
            keep_attrs: bool | None = None, fallback: bool | None = None) -> xr.DataArray:
        """Weighted variance over ``dim`` (sum of weighted squared deviations over the sum of
        weights, as xarray defines it: no ``ddof``), like ``da.weighted(w).var(dim)``."""
        return self._reduce("var", dim, skipna, keep_attrs, fallback)

    def std(self, dim: Any = None, *, skipna: bool | None = None,
            keep_attrs: bool | None = None, fallback: bool | None = None) -> xr.DataArray:
        """Weighted standard deviation, like ``da.weighted(w).std(dim)``."""
        return self._reduce("std", dim, skipna, keep_attrs, fallback)

    def sum_of_weights(self, dim: Any = None, *, keep_attrs: bool | None = None,
                       fallback: bool | None = None) -> xr.DataArray:
        """Sum of the weights of the non-missing values (NaN where that is 0), like
        ``da.weighted(w).sum_of_weights(dim)``."""
        return self._reduce("sum_of_weights", dim, None, keep_attrs, fallback)


#: the moments components of Active (``a.var(components=True)``), in the order used here
_MOMENTS = ("n", "sw", "mean", "m2")


@dataclass(frozen=True)
class _Weights:
    """Weights over a DataArray's selection: ``values`` (dims a subset of the data's, in its
    order, each as long as the data's), or ``ncvar``, a variable of the data's own dataset
    that the reduction reads where the data is (then ``values`` is None)."""

    values: xr.DataArray | None
    ncvar: str | None = None


def _align_weights(da: xr.DataArray, weights: xr.DataArray) -> _Weights:
    """``weights`` checked and aligned to ``da``'s selection, as ``DataArray.weighted`` aligns
    them (by coordinate labels where the weights have them, else by position)."""
    if not isinstance(weights, xr.DataArray):
        raise TypeError(f"weights must be a DataArray, not {type(weights).__name__}")
    extra = [d for d in weights.dims if d not in da.dims]
    if extra:
        raise DimensionError(f"the weights have dimensions {extra} that the data "
                             f"{tuple(da.dims)} does not have")
    named = _same_dataset_variable(da, weights)  # before anything loads the weights' values
    w = weights
    for d in w.dims:
        if d in w.indexes and d in da.indexes:
            try:
                w = w.sel({d: da.indexes[d]})
            except KeyError:
                raise ValueError(f"the weights' {d!r} coordinate does not cover the data's; "
                                 "select the weights like the data") from None
        elif w.sizes[d] != da.sizes[d]:
            raise ValueError(f"the weights have {w.sizes[d]} values along {d!r}, the data "
                             f"{da.sizes[d]}")
    if named is not None:
        return _Weights(None, named)
    w = w.transpose(*[d for d in da.dims if d in w.dims]).load()
    if bool(w.isnull().any()):
        raise ValueError("`weights` cannot contain missing values (as in DataArray.weighted); "
                         "replace them, e.g. with weights.fillna(0)")
    return _Weights(w)


def _same_dataset_variable(da: xr.DataArray, weights: xr.DataArray) -> str | None:
    """The name of ``weights``' variable when it is a whole, lazily opened variable of the
    dataset ``da`` comes from (a cell-area or Gaussian-weights variable): the reduction then
    reads it next to the data, from the same store."""
    try:
        w, d = find_origin(weights), find_origin(da)
    except ActiveStorageError:
        return None
    if (w.dataset, w.storage_options) != (d.dataset, d.storage_options) or w.chunked:
        return None
    whole = all(not isinstance(i, int) and np.array_equal(i, np.arange(len(i)))
                for i in w.index)
    # Active lays a weights variable out along the data's axes by dimension name, in order
    ordered = list(weights.dims) == [dim for dim in da.dims if dim in weights.dims]
    return w.ncvar if whole and ordered and len(w.index) == weights.ndim else None


def _active_weights(da: xr.DataArray, origin: Origin, weights: _Weights) -> Any:
    """Aligned weights in the form Active takes them, over the stored variable's axes (the
    moments reductions select with :meth:`Origin.full_key`, which keeps every axis): a
    variable name; for weights along one dimension one 1-D array over that whole stored axis
    (separable: each chunk request carries its slice); else an array broadcastable to the
    stored variable. Positions outside the selection get weight 1 (they are never read)."""
    if weights.ncvar is not None:
        return weights.ncvar
    w = weights.values
    assert w is not None
    ndim = len(origin.index)
    axes = [origin.kept_axes[da.dims.index(d)] for d in w.dims]
    shape = [origin.stored_shape[ax] if ax in axes else 1 for ax in range(ndim)]
    full = np.ones(shape, dtype=np.float64)
    where = [np.asarray(origin.index[ax]) if ax in axes else np.zeros(1, dtype=int)
             for ax in range(ndim)]
    full[np.ix_(*where)] = np.asarray(w.values, dtype=np.float64).reshape(
        [len(x) for x in where])
    if len(axes) == 1:
        return {axes[0]: full.reshape(-1)}
    return full


def _moments_chunk(block: Any, axis: tuple[int, ...] | None = None, keepdims: bool = True, *,
                   weights: Any = None, **_: Any) -> dict[str, np.ndarray]:
    """A Dask task: one region's moments, reduced where the data lives, as one float64 array
    ``(n, sw, mean, m2, sw2)`` on a last axis (keepdims shape before it)."""
    from . import dask as ad

    a = ad.active_for(block.source)
    kw: dict[str, Any] = {"axis": axis, "components": True}
    if weights is not None:
        kw["weights"] = weights
    comp = a.var(**kw)[block.key]
    kshape = tuple(1 if i in (axis or ()) else n for i, n in enumerate(block.shape))
    fields = [np.asarray(np.ma.getdata(comp[k]), np.float64).reshape(kshape)
              for k in ("n", "sw", "mean", "m2", "sw2")]
    return {"m": np.stack(fields, axis=-1)}


def _moments_combine(parts: Any, axis: Any = None, keepdims: bool = True,
                     **_: Any) -> dict[str, np.ndarray]:
    """Dask's combine: merge regions' moments (counts add; Chan's formula for the rest)."""
    from .combine import merge_moments

    flat: list[np.ndarray] = []
    stack = [parts]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            flat.append(item["m"])
        else:
            stack.extend(reversed(item))
    out = flat[0].copy()
    for m in flat[1:]:
        out[..., 0] += m[..., 0]
        merge_moments(out[..., 1:], m[..., 1:], out=out[..., 1:])
    return {"m": out}


def _moments_aggregate(parts: Any, axis: Any = None, keepdims: bool = True, *, op: str,
                       size: int, skipna: bool, ddof: int, weighted: bool, dtype: np.dtype,
                       **_: Any) -> np.ndarray:
    """Dask's aggregate: merged moments -> xarray's answer (keepdims shape)."""
    m = _moments_combine(parts)["m"]
    comp = {k: m[..., i] for i, k in enumerate(("n", "sw", "mean", "m2", "sw2"))}
    return _finish_moments(op, comp, (), size, skipna, ddof, weighted, dtype)


def _finish_moments(op: str, comp: Mapping[str, Any], axes: tuple[int, ...], size: int,
                    skipna: bool, ddof: int, weighted: bool, dtype: np.dtype) -> np.ndarray:
    """Moments components (keepdims shape; ``axes`` squeezed away) -> xarray's answer for
    ``op``: weighted as xarray weighs (the variance is ``m2 / sum of weights``), unweighted
    with ``ddof`` as ``DataArray.var`` (NaN where ``n - ddof <= 0``)."""
    n, sw, mean, m2 = (np.asarray(np.ma.getdata(comp[k]), dtype=np.int64 if k == "n"
                                  else np.float64) for k in _MOMENTS)
    if axes:
        n, sw, mean, m2 = (np.squeeze(x, axis=axes) for x in (n, sw, mean, m2))
    with np.errstate(invalid="ignore", divide="ignore"):
        if op == "sum_of_weights":
            v = np.where(sw != 0, sw, np.nan)
        elif op == "sum":
            v = np.where(n > 0, mean * sw, 0.0)
        elif op == "mean":
            v = np.where(sw != 0, mean, np.nan)
        else:  # var, std
            denom = sw if weighted else n - ddof
            valid = denom != 0 if weighted else denom > 0
            v = np.where(valid, m2 / np.where(valid, denom, 1), np.nan)
            if op == "std":
                v = np.sqrt(v)
    if not skipna and op != "sum_of_weights":
        v = np.where(n < size, np.nan, v)
    return np.asarray(v).astype(dtype if dtype.kind in "fc" else np.float64)


def _finish(op: str, v: np.ndarray, n: np.ndarray, size: int, skipna: bool,
            min_count: int | None, dtype: np.dtype) -> np.ndarray:
    """Values and counts -> xarray's answer: NaN where no value contributed (with
    ``skipna=False``: where any value was missing); a sum of nothing is 0 unless ``min_count``
    asks for more valid values."""
    n = np.asarray(n)
    if op == "count":
        return n.astype(dtype)
    v = np.asarray(v)
    if op == "mean":
        with np.errstate(invalid="ignore", divide="ignore"):
            v = v / np.where(n == 0, 1, n)
    if op == "sum":
        v = np.where(n == 0, 0, v)
        invalid = n < min_count if min_count else np.zeros(n.shape, bool)
    else:
        invalid = n == 0
    if not skipna:
        invalid = invalid | (n < size)
    if not np.any(invalid):
        return v.astype(dtype)
    out = v.astype(dtype if dtype.kind in "fc" else np.float64)
    out[invalid] = np.nan
    return out


#: xarray's lazy CF decoders that Active applies too (masking fill values, unpacking)
_DECODERS = ("_apply_mask", "_scale_offset_decoding")


def _check_decoder(func: Any) -> None:
    """Accept xarray's lazy masking/unpacking (Active does the same); refuse other decoders."""
    name = getattr(getattr(func, "func", func), "__name__", repr(func))
    if name not in _DECODERS:
        raise NotActiveError(f"xarray decodes this variable with {name}, which activestorage "
                             "does not apply; pass fallback=True")


def _check_decoding(da: xr.DataArray) -> None:
    """Active masks and unpacks as CF says; xarray must have done the same for equal answers."""
    raw = [a for a in ("_FillValue", "missing_value", "scale_factor", "add_offset")
           if a in da.attrs]
    if raw:
        raise NotActiveError(
            f"the DataArray was opened without CF decoding ({', '.join(raw)} still in attrs), "
            "so xarray would count fill values as data while Active masks them; open with "
            "mask_and_scale=True, or pass fallback=True")
    ranged = [a for a in ("valid_min", "valid_max", "valid_range") if a in da.attrs]
    if ranged:
        raise NotActiveError(
            f"{da.name} has {', '.join(ranged)}: Active masks values outside it (as netCDF4 "
            "does) but xarray does not, so the answers would differ; pass fallback=True for "
            "xarray's answer")
