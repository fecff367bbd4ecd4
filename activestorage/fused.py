"""One-pass masked sums and counts: the kernel's compiled fast path.

NumPy reduces a chunk the netCDF way in several passes (compare with each missing value into a
boolean mask, test the mask, sum where valid); on a memory-bound machine each pass costs about
as much as reading the chunk. ``activestorage._fused`` (C, built at install when a compiler is
there) loads every element once. Float sums accumulate in float64 in a fixed order that depends
only on the array's shape and strides, so results are deterministic and at least as accurate as
NumPy's pairwise float32 sum; integer sums wrap exactly as NumPy's int64/uint64 sums do.

Without the extension (or for dtypes it does not handle, e.g. float16) every function here
returns None and the kernel takes its NumPy path, with the same results up to float rounding.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

try:
    from . import _fused as _c
except ImportError:  # no compiler at install time: the NumPy path does the same work
    _c = None
    log.debug("activestorage._fused is not built; reductions use the NumPy path")

#: whether the compiled fast path is available in this installation
COMPILED = _c is not None
#: the C code's limit on missing values (more are compared with np.isin instead)
MAX_VALUES = 16


def _spec(x: np.ndarray, values: tuple[Any, ...], nan: bool, vmin: Any,
          vmax: Any) -> tuple[list[Any], bool, Any, Any] | None:
    """The missing-data arguments as the C code takes them (Python numbers), or None when it
    cannot reduce ``x`` (not built, another dtype or byte order, too many values)."""
    kind = x.dtype.kind
    if _c is None or kind not in "iuf" or len(values) > MAX_VALUES or not x.dtype.isnative:
        return None
    num = float if kind == "f" else int
    return ([num(v) for v in values], nan, None if vmin is None else num(vmin),
            None if vmax is None else num(vmax))


def sum_count(x: np.ndarray, values: tuple[Any, ...] = (), nan: bool = False, vmin: Any = None,
              vmax: Any = None, want_sum: bool = True) -> tuple[Any, int] | None:
    """``(sum, count)`` of the elements of ``x`` that are not missing, in one pass; None when the
    fast path does not apply.

    Missing: equal to one of ``values``, NaN when ``nan``, below ``vmin`` or above ``vmax`` (all
    already converted to ``x.dtype``, as :func:`activestorage.kernel.missing_mask` resolves
    them). The sum is a Python float for float arrays (accumulated in float64), an int for
    integer arrays; with ``want_sum=False`` only the count is meaningful.
    """
    spec = _spec(x, values, nan, vmin, vmax)
    if spec is None:
        return None
    try:
        return _c.reduce(x, want_sum, *spec)
    except (TypeError, ValueError, BufferError):  # an element format the C code does not know
        return None


def sum_count_along(x: np.ndarray, axis: tuple[int, ...], values: tuple[Any, ...] = (),
                    nan: bool = False, vmin: Any = None, vmax: Any = None,
                    want_sum: bool = True) -> tuple[np.ndarray, np.ndarray | None] | None:
    """``(sums, missing)`` along ``axis`` (distinct, non-negative) in one pass over ``x``; None
    when the fast path does not apply.

    ``sums`` has the shape of the kept axes, in NumPy's accumulator for an axis sum (float32 for
    float32, float64, int64 or uint64); ``missing`` counts the missing elements behind each sum,
    or is None when none was missing. Missing data as in :func:`sum_count`. Only layouts whose
    last kept axis is contiguous are taken (others would be read out of order).
    """
    spec = _spec(x, values, nan, vmin, vmax)
    if spec is None:
        return None
    for i in range(x.ndim - 1, -1, -1):  # the last kept axis that is longer than 1
        if i not in axis and x.shape[i] > 1:
            if x.strides[i] != x.itemsize:
                return None
            break
    kept = tuple(i for i in range(x.ndim) if i not in axis)
    if not kept:
        return None
    kind = x.dtype.kind
    acc = np.dtype(np.int64 if kind == "i" else np.uint64 if kind == "u" else x.dtype)
    shape = tuple(x.shape[i] for i in kept)
    sums = np.zeros(shape, acc)
    miss = np.zeros(shape, np.int64)  # calloc'd: pages are only touched where data is missing
    try:
        bad = _c.reduce_leading(x.transpose(tuple(axis) + kept), len(axis), sums, miss, want_sum,
                                *spec)
    except (TypeError, ValueError, BufferError):
        return None
    return sums, (miss if bad else None)


def deviations(x: np.ndarray, mean: float, values: tuple[Any, ...] = (), nan: bool = False,
               vmin: Any = None, vmax: Any = None) -> tuple[float, float, int] | None:
    """``(Σ(x - mean), Σ(x - mean)**2, count)`` in float64 over the elements of ``x`` that are
    not missing (missing as in :func:`sum_count`), in one pass: the second pass of the kernel's
    two-pass moments of a whole chunk. None when the fast path does not apply."""
    spec = _spec(x, values, nan, vmin, vmax)
    if spec is None or not hasattr(_c, "deviations"):
        return None
    try:
        return _c.deviations(x, float(mean), *spec)
    except (TypeError, ValueError, BufferError):
        return None


def moments_cells(x: np.ndarray, ncell: int, values: tuple[Any, ...] = (), nan: bool = False,
                  vmin: Any = None, vmax: Any = None) -> tuple[np.ndarray, np.ndarray] | None:
    """Unweighted ``(n, mean, m2)`` (float64, shape ``x.shape[:ncell] + (3,)``) and counts
    (int64) of each cell of the first ``ncell`` axes of ``x`` over its other axes (at least one),
    missing data as in :func:`sum_count`: per cell a masked sum and count, then the deviations
    from their mean, corrected by their own sum. None when the fast path does not apply (also
    for 8-byte integers, whose compiled sums wrap where NumPy's float64 ones do not)."""
    spec = _spec(x, values, nan, vmin, vmax)
    if (spec is None or not hasattr(_c, "moments_cells") or not 0 <= ncell < x.ndim
            or (x.dtype.kind != "f" and x.dtype.itemsize == 8)):
        return None
    out = np.empty(x.shape[:ncell] + (3,), np.float64)
    counts = np.empty(x.shape[:ncell], np.int64)
    try:
        _c.moments_cells(x, ncell, out, counts, *spec)
    except (TypeError, ValueError, BufferError):
        return None
    return out, counts
