"""cf-python's collapse chunk dictionaries from activestorage's components.

cf-python collapses a chunked array with Dask: per Dask chunk a *chunk function*
(``cf.data.collapse.dask_collapse.cf_<method>_chunk``) returns a dictionary of partial results
(``{"N": ..., "sum": ..., "V1": ..., "weighted": ...}`` for a mean), which its *combine* and
*aggregate* functions merge and finish. When active storage is on, cf-python asks ``Active`` for
the chunk's components instead and renames them into that dictionary. This module is that
renaming, for every method activestorage can compute, weighted or not:

==================  ====================================  ====================================
cf method           cf chunk dictionary                   from our components
==================  ====================================  ====================================
``sample_size``     ``N``                                 ``n``
``max``, ``min``    ``N``, ``max`` / ``min``              ``n``, ``max`` / ``min``
``range``,          ``N``, ``max``, ``min``               ``n``, ``max``, ``min`` (``a.range``)
``mid_range``
``sum``             ``N``, ``sum`` (weighted sum)         ``n``, ``sum = sw*mean``
``mean``            ``N``, ``sum``, ``V1``, ``weighted``  ``V1`` = ``sw`` (``n`` unweighted)
``rms``             ``N``, ``sum`` (of ``w*x**2``),       ``sum`` = ``m2 + sw*mean**2``
                    ``V1``, ``weighted``
``var``             ``N``, ``sum``, ``V1``, ``V2``,       ``part`` = ``m2 + sw*mean**2``;
(``sd``)            ``part``, ``weighted``, ``ddof``      ``V2`` = ``sw2`` (weighted, ddof 1)
``sum_of_weights``  ``N``, ``sum`` (of weights)           ``sw`` (``n`` unweighted)
``sum_of_weights2`` ``N``, ``sum`` (of squared weights)   ``sw2`` (``n`` unweighted)
==================  ====================================  ====================================

The moments (``n``, ``sw``, ``mean``, ``m2``, ``sw2``: count, sum of weights, weighted mean, sum of
weighted squared deviations, sum of squared weights) come from ``a.var(components=True)`` (with
``weights=`` for a weighted collapse), in float64 like cf's chunk sums. ``a.mean``/``a.sum``
components (``{"sum", "n"}``, weighted ``{"sum", "sw", "sw2", "n"}``) are accepted for ``sum``,
``mean`` and ``sum_of_weights`` too (their sums have the data's dtype).
cf's ``part`` is ``V1 * (var0 + mean**2)``, i.e. the weighted sum of squares; its aggregate
subtracts ``sum**2 / V1`` again, so cf-python's variance is as accurate as its own chunk
functions make it (our ``m2`` is merged with Chan's pairwise formula and loses nothing before
that step).

Where a chunk has no valid element along the collapsed axes (``n == 0``), cf's chunk functions
return masked values (a masked sum of nothing) and so does :func:`to_cf`; cf's aggregate then
masks the result there, as it does without active storage.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from .errors import InvalidArgumentError

__all__ = ["CF_METHODS", "active_operation", "to_cf", "cf_chunk", "variable_weights"]

#: cf-python's collapse methods -> the Active operation whose components give its chunk
#: dictionary (weighted or not). Sums, means, rms and variances all come from the moments
#: (``a.var(components=True)``: float64 sum of weights, mean and m2), as cf's own chunk
#: functions sum in float64 (``a.mean(components=True)``'s sums have the data's dtype).
CF_METHODS: Mapping[str, str] = {
    "sample_size": "count", "max": "max", "min": "min", "range": "range",
    "mid_range": "range", "sum": "var", "mean": "var", "rms": "var", "var": "var",
    "sd": "var", "sum_of_weights": "var", "sum_of_weights2": "var",
}

_MOMENTS = ("sw", "mean", "m2", "sw2")


def active_operation(method: str) -> str:
    """The Active operation to ask for components for cf-python's collapse ``method``
    (weighted or not: weights do not change which)."""
    try:
        return CF_METHODS[method]
    except KeyError:
        raise InvalidArgumentError(
            f"cf-python method {method!r} has no activestorage components; known: "
            f"{', '.join(sorted(CF_METHODS))}") from None


def _mask_empty(value: Any, n: np.ndarray) -> Any:
    """``value`` masked where nothing contributed (``n == 0``), as cf's masked sums are."""
    value = np.asanyarray(value)
    empty = n == 0
    if np.any(empty) or np.ma.isMA(value):
        return np.ma.masked_where(np.broadcast_to(empty, value.shape), value, copy=False)
    return value


def _need(components: Mapping[str, Any], keys: tuple[str, ...], method: str) -> None:
    missing = [k for k in keys if k not in components]
    if missing:
        op = "var" if set(missing) & set(_MOMENTS) else CF_METHODS.get(method, method)
        raise InvalidArgumentError(
            f"cf-python's {method!r} chunk needs components {missing}, which these components "
            f"({sorted(components)}) lack: ask Active for a.{op}(components=True)")


def to_cf(method: str, components: Mapping[str, Any], *, weighted: bool = False,
          ddof: float | None = None) -> dict[str, Any]:
    """cf-python's chunk dictionary for collapse ``method`` from Active ``components``.

    ``components``: what ``Active`` returns with ``components=True`` (keepdims shape), for the
    operation :func:`active_operation` names. ``weighted``: the collapse had weights (cf then
    carries ``V1``/``V2`` as sums of weights rather than the counts). ``ddof``: the variance's
    delta degrees of freedom (``var``/``sd`` only; cf needs ``V2`` for weighted ``ddof=1``).
    """
    if method not in CF_METHODS:
        active_operation(method)  # raises the error naming the known methods
    _need(components, ("n",), method)
    n = np.asarray(np.ma.getdata(components["n"]), dtype=np.int64)
    N = _mask_empty(n, n)
    if method == "sample_size":
        return {"N": N}
    if method in ("max", "min"):
        _need(components, (method,), method)
        return {"N": N, method: _mask_empty(components[method], n)}
    if method in ("range", "mid_range"):
        _need(components, ("max", "min"), method)
        return {"N": N, "max": _mask_empty(components["max"], n),
                "min": _mask_empty(components["min"], n)}
    if method in ("sum", "mean", "sum_of_weights") and "mean" not in components:
        # a.mean/a.sum components: {"sum", "n"}, weighted also "sw" and "sw2"
        _need(components, ("sum",) + (("sw",) if weighted else ()), method)
        wsum = _mask_empty(np.asarray(np.ma.getdata(components["sum"]), np.float64), n)
        V1 = _mask_empty(np.asarray(np.ma.getdata(components["sw"]), np.float64), n) \
            if weighted else N
        if method == "sum":
            return {"N": N, "sum": wsum}
        if method == "sum_of_weights":
            return {"N": N, "sum": V1}
        return {"N": N, "sum": wsum, "V1": V1, "weighted": weighted}

    need = _MOMENTS if method not in ("sum", "mean", "sum_of_weights") else _MOMENTS[:2]
    _need(components, need, method)
    sw, mean = (np.asarray(np.ma.getdata(components[k]), dtype=np.float64)
                for k in ("sw", "mean"))
    V1 = _mask_empty(sw, n) if weighted else N
    wsum = _mask_empty(mean * sw, n)
    if method == "sum":
        return {"N": N, "sum": wsum}
    if method == "mean":
        return {"N": N, "sum": wsum, "V1": V1, "weighted": weighted}
    if method == "sum_of_weights":
        return {"N": N, "sum": V1}
    m2, sw2 = (np.asarray(np.ma.getdata(components[k]), dtype=np.float64)
               for k in ("m2", "sw2"))
    squares = _mask_empty(m2 + sw * mean * mean, n)
    if method == "rms":
        return {"N": N, "sum": squares, "V1": V1, "weighted": weighted}
    if method == "sum_of_weights2":
        return {"N": N, "sum": _mask_empty(sw2, n) if weighted else N}
    # var, sd
    V2 = _mask_empty(sw2, n) if weighted and ddof == 1 else None
    return {"N": N, "sum": wsum, "V1": V1, "V2": V2, "part": squares, "weighted": weighted,
            "ddof": ddof}


def cf_chunk(method: str, active: Any, index: Any, *, weights: Any = None,
             ddof: float | None = None, max_weights_bytes: int = 256 * 2**20) -> dict[str, Any]:
    """Reduce ``active[index]`` for cf-python's collapse ``method`` and return cf's chunk
    dictionary: what cf-python's ``active_chunk_function`` needs, for any method here.

    ``active``: an :class:`~activestorage.active.Active` (its ``axis`` says what collapses);
    ``index``: ints and slices. ``weights``: the chunk's weights as cf-python has them (an
    array of the selection's shape, or broadcastable to it), or any form ``Active`` accepts
    (per-axis 1-D arrays, an array broadcastable to the whole variable); None: unweighted.
    """
    op = active_operation(method)
    kwargs: dict[str, Any] = {"axis": active.axis, "components": True}
    if weights is not None and op == "var":
        kwargs["weights"] = variable_weights(weights, index, tuple(active.shape),
                                             max_weights_bytes)
    components = getattr(active, op)(**kwargs)[index]
    return to_cf(method, components, weighted=weights is not None, ddof=ddof)


def variable_weights(weights: Any, index: Any, shape: tuple[int, ...],
                     max_bytes: int = 256 * 2**20) -> Any:
    """Weights over a selection (cf-python's per-chunk form) as weights over the variable
    (``Active``'s N-D form); other forms are returned unchanged.

    Axes along which the weights do not vary collapse to length 1 (cf broadcasts area weights
    over time, for instance); the others become as long as the variable's axis, with the
    weights at the selected positions (the rest is never read). Refuses (InvalidArgumentError)
    to build more than ``max_bytes``.
    """
    if weights is None or isinstance(weights, (str, Mapping, tuple, list)):
        return weights
    w = np.asarray(np.ma.filled(weights, 0) if np.ma.isMA(weights) else weights, np.float64)
    key = index if isinstance(index, tuple) else (index,)
    if any(k is Ellipsis for k in key):
        i = key.index(Ellipsis)
        key = key[:i] + (slice(None),) * (len(shape) - len(key) + 1) + key[i + 1:]
    key = key + (slice(None),) * (len(shape) - len(key))
    if not all(isinstance(k, (slice, int, np.integer)) for k in key):
        raise InvalidArgumentError("cf_chunk: weights over a selection need an index of ints "
                                   f"and slices; got {index!r}")
    positions = [range(*k.indices(n)) if isinstance(k, slice) else int(k) % n
                 for k, n in zip(key, shape)]
    kept = [ax for ax, p in enumerate(positions) if isinstance(p, range)]
    sel_shape = tuple(len(positions[ax]) for ax in kept)
    try:
        np.broadcast_shapes(w.shape, sel_shape)
        fits = w.ndim <= len(sel_shape) and np.broadcast_shapes(w.shape, sel_shape) == sel_shape
    except ValueError:
        fits = False
    if not fits:
        return weights  # not over the selection: Active's forms (it checks them)
    w = w.reshape((1,) * (len(sel_shape) - w.ndim) + w.shape)
    for j in range(w.ndim):  # axes along which nothing varies: length 1
        if w.shape[j] > 1 and np.all(w == w.take([0], axis=j)):
            w = w.take([0], axis=j)
    full_shape = [1] * len(shape)
    where: list[Any] = [np.zeros(1, dtype=np.intp)] * len(shape)
    for j, ax in enumerate(kept):
        if w.shape[j] > 1:
            full_shape[ax] = shape[ax]
            where[ax] = np.asarray(positions[ax], dtype=np.intp)
    nbytes = 8 * int(np.prod(full_shape))
    if nbytes > max_bytes:
        raise InvalidArgumentError(
            f"cf_chunk: these weights vary along every selected axis; as weights over the "
            f"variable they would take {nbytes} bytes (limit {max_bytes}): give per-axis 1-D "
            "weights ({axis: 1-D}) or raise max_weights_bytes")
    full = np.ones(full_shape, dtype=np.float64)
    full[np.ix_(*where)] = w.reshape([len(x) for x in where])
    return full
