"""The table of operations: every reduction this project knows, each defined once.

An :class:`Operation` says what the kernel computes per chunk (:attr:`Operation.partial`), how two
partials combine (:attr:`Operation.ufunc` and :meth:`Operation.initial`), how combined partials
finish into the user's answer (:attr:`Operation.finish`, including unpacking ``scale_factor``/
``add_offset`` and the min/max swap a negative scale causes, :meth:`Operation.for_scale`), what its
Dask/cf-python components are called (``{component, "n"}``) and what it is called on the wire
(:attr:`Operation.wire`; ``mean`` has no wire name: it travels as ``sum``).

Readers: the kernel (:mod:`activestorage.kernel`), the combining (:mod:`activestorage.combine`),
``Active``'s methods (``a.mean`` ...), the server (the wire operations it serves and advertises),
the CLI (``--op``) and :mod:`activestorage.dask`. They resolve an entry once per call, never per
chunk. Adding an operation is one entry here plus its tests (see docs/architecture.md, "Where to
add... an operation").

This module imports nothing of the project, so every other module can import it.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Callable, Mapping

import numpy as np

__all__ = ["Operation", "OPERATIONS", "METHODS", "WIRE_OPERATIONS", "MOMENTS_FIELDS",
           "MINMAX_FIELDS", "get", "accumulator_dtype", "initial"]

_INT64 = np.dtype(np.int64)
_UINT64 = np.dtype(np.uint64)
_FLOAT64 = np.dtype(np.float64)

#: how combined values become the answer (see :func:`activestorage.combine.finish`); the last
#: six finish moments (``var`` ...) or minmax (``range``) partials, ``"partial"`` gives a kernel
#: partial's combined values as they are
FINISHES = ("select", "count", "total", "mean", "value", "var", "std", "rms", "sum_of_squares",
            "range", "partial")

#: the fields of a ``moments`` partial's last axis, in order (see :mod:`activestorage.kernel`)
MOMENTS_FIELDS = ("sw", "mean", "m2", "sw2")
#: the fields of a ``minmax`` partial's last axis
MINMAX_FIELDS = ("min", "max")


@dataclass(frozen=True, slots=True)
class Operation:
    """One operation. Instances are immutable; the table maps names to them.

    ``name``: what users call it (``a.mean``, ``--op mean``, ``dask.reduce(x, "mean")``).
    ``partial``: the kernel reduction whose per-chunk partial this operation combines (the
    name of another entry, or its own): ``mean`` combines ``sum`` partials.
    ``wire``: the operation's name in a Reductionist request, or None when it is not sent as
    itself (``mean`` is sent as its partial, ``sum``).
    ``ufunc``: how two partial values combine elementwise (and how the kernel reduces a chunk):
    ``np.add`` for sums, ``np.minimum``/``np.maximum``; None where the values are the counts
    (``count``) or are placed, not combined (``select``).
    ``finish``: how the combined values finish, one of :data:`FINISHES`: ``"total"``
    (``sum*scale + n*offset``), ``"mean"`` (``sum/n*scale + offset``), ``"value"`` (each value
    unpacked, ``x*scale + offset``), ``"count"`` (the counts), ``"select"`` (the data).
    ``component``: the name of the values in components (``{"sum": ..., "n": ...}``), None
    for ``select``.
    ``mirror``: the operation this one becomes on packed values when the scale is negative
    (unpacking reverses the order: the min of the physical values is the max of the packed).
    ``numpy``: the NumPy (masked-array) function giving the same answer: the test oracle, and
    PyActiveStorage's callable ``active.method``.
    ``method``: an ``Active`` method, CLI ``--op`` and Dask operation (``select`` and the
    kernel partials ``moments``/``minmax`` are not).
    ``fields``: for a partial whose values carry several numbers per element (``moments``:
    :data:`MOMENTS_FIELDS`, ``minmax``: :data:`MINMAX_FIELDS`), their names: the values then
    have one more, last, axis of that length. Empty for one number per element.
    ``weighted``: the partial this operation combines when the user gives weights (``mean``,
    ``sum``, ``var``, ``std``: ``moments``); None when weights are refused.
    ``ddof``: whether the operation takes ``ddof`` (``var``, ``std``).
    """

    name: str
    partial: str
    wire: str | None
    ufunc: np.ufunc | None
    finish: str
    component: str | None
    numpy: Callable[..., Any] | None
    mirror: str | None = None
    method: bool = True
    fields: tuple[str, ...] = ()
    weighted: str | None = None
    ddof: bool = False

    def __post_init__(self) -> None:
        if self.finish not in FINISHES:
            raise ValueError(f"operation {self.name!r}: finish must be one of {FINISHES}, "
                             f"not {self.finish!r}")

    def for_scale(self, scale: Any) -> str:
        """The partial the kernel computes for packed values with ``scale``: the mirrored one's
        when a negative scale reverses the order (``min`` -> ``max``)."""
        if self.mirror is not None and scale is not None and scale < 0:
            return self.mirror
        return self.partial

    def initial(self, dtype: np.dtype) -> Any:
        """The identity combining starts from: 0 for sums and counts; for min/max the far
        bound of ``dtype`` (+-inf, or the integer limits)."""
        return initial(self.ufunc, dtype)

    def accumulator_dtype(self, dtype: np.dtype) -> np.dtype:
        """What values of ``dtype`` are combined in: for sums (any ufunc with an identity)
        float64 for floats (at least as accurate as NumPy's pairwise float32 sum) and NumPy's
        integer sum dtype (int64/uint64); int64 counts; float64 moments; ``dtype`` itself
        otherwise (min, max, minmax)."""
        return accumulator_dtype(self, dtype)


def initial(ufunc: np.ufunc | None, dtype: np.dtype) -> Any:
    """The identity of combining values of ``dtype`` with ``ufunc`` (0 when it has none)."""
    if ufunc is np.minimum or ufunc is np.maximum:
        dtype = np.dtype(dtype)
        low = ufunc is np.minimum
        if dtype.kind == "f":
            return np.inf if low else -np.inf
        info = np.iinfo(dtype)
        return info.max if low else info.min
    if ufunc is None or ufunc.identity is None:
        return 0
    return ufunc.identity


def accumulator_dtype(op: Operation, dtype: np.dtype) -> np.dtype:
    """See :meth:`Operation.accumulator_dtype`."""
    dtype = np.dtype(dtype)
    if op.finish == "count":
        return _INT64
    if op.partial == "moments":
        return _FLOAT64
    if op.ufunc is not None and op.ufunc.identity is not None:  # sums, products: widen
        kind = dtype.kind
        if kind == "f":
            return _FLOAT64
        if kind == "i":
            return _INT64
        if kind == "u":
            return _UINT64
    return dtype


def _rms(x: Any, axis: Any = None, keepdims: bool = False) -> Any:
    """Root mean square of the unmasked elements (NumPy has no function for it)."""
    x = np.ma.asarray(x, np.float64)
    return np.ma.sqrt(np.ma.mean(x * x, axis=axis, keepdims=keepdims))


def _sum_of_squares(x: Any, axis: Any = None, keepdims: bool = False) -> Any:
    """Sum of the squares of the unmasked elements, in float64."""
    x = np.ma.asarray(x, np.float64)
    return np.ma.sum(x * x, axis=axis, keepdims=keepdims)


def _table(*ops: Operation) -> Mapping[str, Operation]:
    return MappingProxyType({op.name: op for op in ops})


#: every operation by name; a read-only view (copy it to extend, as the tests do)
OPERATIONS: Mapping[str, Operation] = _table(
    Operation("mean", partial="sum", wire=None, ufunc=np.add, finish="mean", component="sum",
              numpy=np.ma.mean, weighted="moments"),
    Operation("min", partial="min", wire="min", ufunc=np.minimum, finish="value",
              component="min", numpy=np.ma.min, mirror="max"),
    Operation("max", partial="max", wire="max", ufunc=np.maximum, finish="value",
              component="max", numpy=np.ma.max, mirror="min"),
    Operation("sum", partial="sum", wire="sum", ufunc=np.add, finish="total", component="sum",
              numpy=np.ma.sum, weighted="moments"),
    Operation("count", partial="count", wire="count", ufunc=None, finish="count",
              component="count", numpy=np.ma.count),
    Operation("select", partial="select", wire="select", ufunc=None, finish="select",
              component=None, numpy=None, method=False),
    # second moments and ranges (#21): combined from the two kernel partials below
    Operation("var", partial="moments", wire=None, ufunc=None, finish="var",
              component="moments", numpy=np.ma.var, weighted="moments", ddof=True),
    Operation("std", partial="moments", wire=None, ufunc=None, finish="std",
              component="moments", numpy=np.ma.std, weighted="moments", ddof=True),
    Operation("range", partial="minmax", wire=None, ufunc=None, finish="range",
              component="minmax", numpy=np.ma.ptp),
    Operation("rms", partial="moments", wire=None, ufunc=None, finish="rms",
              component="moments", numpy=_rms),
    Operation("sum_of_squares", partial="moments", wire=None, ufunc=None,
              finish="sum_of_squares", component="moments",
              numpy=_sum_of_squares),
    # kernel partials only (like select): per element (sw, mean, m2, sw2) and (min, max)
    Operation("moments", partial="moments", wire="moments", ufunc=None, finish="partial",
              component="moments", numpy=None, method=False, fields=MOMENTS_FIELDS),
    Operation("minmax", partial="minmax", wire="minmax", ufunc=None, finish="partial",
              component="minmax", numpy=None, method=False, fields=MINMAX_FIELDS),
)

#: the user-facing reductions (Active methods, CLI ``--op`` choices, Dask operations), in order
METHODS: tuple[str, ...] = tuple(op.name for op in OPERATIONS.values() if op.method)
_API_ORDER = ("count", "min", "max", "sum", "select")


def wire_operations(table: Mapping[str, Operation]) -> tuple[str, ...]:
    """The wire names of ``table``'s operations: the Reductionist API's in its order, then any
    others by name."""
    names = {op.wire for op in table.values() if op.wire}
    return tuple(sorted(names, key=lambda w: (_API_ORDER.index(w) if w in _API_ORDER
                                              else len(_API_ORDER), w)))


#: the operations a reduction server serves (the ``operation`` of its URLs)
WIRE_OPERATIONS: tuple[str, ...] = wire_operations(OPERATIONS)


def get(name: str, table: Mapping[str, Operation] | None = None) -> Operation:
    """The operation called ``name`` (KeyError if there is none)."""
    return (OPERATIONS if table is None else table)[name]
