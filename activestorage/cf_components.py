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
``sum``             ``N``, ``sum`` (weighted sum)         ``n``, ``sum``; weighted: ``sw*mean``
``mean``            ``N``, ``sum``, ``V1``, ``weighted``  ``V1`` = ``sw`` (``n`` unweighted)
``rms``             ``N``, ``sum`` (of ``w*x**2``),       ``sum`` = ``m2 + sw*mean**2``
                    ``V1``, ``weighted``
``var``             ``N``, ``sum``, ``V1``, ``V2``,       ``part`` = ``m2 + sw*mean**2``;
(``sd``)            ``part``, ``weighted``, ``ddof``      ``V2`` = ``sw2`` (weighted, ddof 1)
``sum_of_weights``  ``N``, ``sum`` (of weights)           ``sw`` (``n`` unweighted)
``sum_of_weights2`` ``N``, ``sum`` (of squared weights)   ``sw2`` (``n`` unweighted)
==================  ====================================  ====================================

The moments (``n``, ``sw``, ``mean``, ``m2``, ``sw2``: count, sum of weights, weighted mean, sum of
weighted squared deviations, sum of squared weights) come from ``a.var(components=True)`` (or
``a.std``, ``a.rms``, ``a.sum_of_squares``, and weighted ``a.mean``/``a.sum`` with ``weights=``).
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

__all__ = ["CF_METHODS", "active_operation", "to_cf", "cf_chunk"]

#: cf-python's collapse methods -> the Active operation whose components give its chunk
#: dictionary (weighted or not). Unweighted mean/sum/min/max/sample size use the plain
#: operations; everything with weights or second moments reads the moments.
CF_METHODS: Mapping[str, str] = {
    "sample_size": "count", "max": "max", "min": "min", "range": "range",
    "mid_range": "range", "sum": "sum", "mean": "mean", "rms": "var", "var": "var",
    "sd": "var", "sum_of_weights": "var", "sum_of_weights2": "var",
}

_MOMENTS = ("sw", "mean", "m2", "sw2")


def active_operation(method: str, weighted: bool = False) -> str:
    """The Active operation to ask for components for cf-python's collapse ``method``.

    Weighted sums and means need the moments (sum of weights, weighted mean); the moments
    operation is ``var`` (its components hold all of them).
    """
    try:
        op = CF_METHODS[method]
    except KeyError:
        raise InvalidArgumentError(
            f"cf-python method {method!r} has no activestorage components; known: "
            f"{', '.join(sorted(CF_METHODS))}") from None
    if weighted and op in ("sum", "mean"):
        return "var"
    if weighted and op in ("count", "min", "max", "range"):
        return op  # weights do not change these
    return op


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
    if not weighted and method in ("sum", "mean") and "sum" in components:
        total = _mask_empty(np.asarray(np.ma.getdata(components["sum"]), np.float64), n)
        if method == "sum":
            return {"N": N, "sum": total}
        return {"N": N, "sum": total, "V1": N, "weighted": False}

    _need(components, _MOMENTS, method)
    sw, mean, m2, sw2 = (np.asarray(np.ma.getdata(components[k]), dtype=np.float64)
                         for k in _MOMENTS)
    V1 = _mask_empty(sw, n) if weighted else N
    wsum = _mask_empty(mean * sw, n)
    squares = _mask_empty(m2 + sw * mean * mean, n)
    if method == "sum":
        return {"N": N, "sum": wsum}
    if method == "mean":
        return {"N": N, "sum": wsum, "V1": V1, "weighted": weighted}
    if method == "rms":
        return {"N": N, "sum": squares, "V1": V1, "weighted": weighted}
    if method == "sum_of_weights":
        return {"N": N, "sum": V1}
    if method == "sum_of_weights2":
        return {"N": N, "sum": _mask_empty(sw2, n) if weighted else N}
    # var, sd
    V2 = _mask_empty(sw2, n) if weighted and ddof == 1 else None
    return {"N": N, "sum": wsum, "V1": V1, "V2": V2, "part": squares, "weighted": weighted,
            "ddof": ddof}


def cf_chunk(method: str, active: Any, index: Any, *, weights: Any = None,
             ddof: float | None = None) -> dict[str, Any]:
    """Reduce ``active[index]`` for cf-python's collapse ``method`` and return cf's chunk
    dictionary: what cf-python's ``active_chunk_function`` needs, for any method here.

    ``active``: an :class:`~activestorage.active.Active` (its ``axis`` says what collapses).
    ``weights``: the chunk's weights (any form ``Active`` accepts: an N-D array broadcastable to
    the selection, per-axis 1-D arrays); None for an unweighted collapse.
    """
    op = active_operation(method, weighted=weights is not None)
    kwargs: dict[str, Any] = {"axis": active.axis, "components": True}
    if weights is not None and op not in ("count", "min", "max", "range"):
        kwargs["weights"] = weights
    if op == "var" and ddof is not None:
        kwargs["ddof"] = ddof
    components = getattr(active, op)(**kwargs)[index]
    return to_cf(method, components, weighted=weights is not None, ddof=ddof)
