"""Combining chunk partials into a result, the way NumPy would have computed it in one pass.

Partials are added in task order so the answer does not depend on which thread finished first.
Sums of floats accumulate in float64 (at least as accurate as NumPy's pairwise float32 sum) and are
cast back to NumPy's result dtype at the end. Packed variables are unpacked here, on the few
reduced numbers, never on the data: sum -> sum*scale + n*offset, mean -> mean*scale + offset,
min/max swap when the scale is negative.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .kernel import Partial, sum_dtype


def accumulator_dtype(operation: str, dtype: np.dtype) -> np.dtype:
    if operation in ("sum", "mean"):
        return np.dtype(np.float64) if dtype.kind == "f" else sum_dtype(dtype)
    if operation == "count":
        return np.dtype(np.int64)
    return np.dtype(dtype)


def _initial(operation: str, dtype: np.dtype) -> Any:
    if operation in ("min", "max"):
        if dtype.kind == "f":
            return np.inf if operation == "min" else -np.inf
        info = np.iinfo(dtype)
        return info.max if operation == "min" else info.min
    return 0


class Accumulator:
    """Values and counts of a reduction being assembled from chunk partials."""

    def __init__(self, operation: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.operation = operation
        self.dtype = np.dtype(dtype)
        adt = accumulator_dtype(operation, self.dtype)
        self.values = np.full(shape, _initial(operation, self.dtype), dtype=adt)
        self.counts = np.zeros(shape, dtype=np.int64)

    @property
    def nbytes(self) -> int:
        return self.values.nbytes + self.counts.nbytes

    def empty_like(self) -> "Accumulator":
        """A fresh accumulator for the same reduction (for folding on another thread)."""
        return Accumulator(self.operation, self.values.shape, self.dtype)

    def merge(self, other: "Accumulator") -> None:
        """Fold another accumulator of the same shape into this one."""
        self.add(tuple(slice(None) for _ in self.values.shape),
                 Partial(other.values, other.counts))

    def add(self, index: tuple[slice, ...], p: Partial) -> None:
        """Fold one partial into ``values[index]``/``counts[index]``."""
        op = self.operation
        index = tuple(index) + (Ellipsis,)  # a view even for 0-d (scalar) variables
        if op == "select":
            self.values[index] = p.values
            self.counts[index] = p.counts
            return
        c = self.counts[index]
        c += p.counts
        v = self.values[index]
        if op in ("sum", "mean"):
            v += p.values
        elif op == "count":
            v += p.counts
        else:
            ufunc = np.minimum if op == "min" else np.maximum
            ufunc(v, p.values, out=v, where=p.counts > 0)


def fold(partials: Sequence[Partial], operation: str, dtype: np.dtype) -> Partial:
    """Combine partials of a full reduction (every partial a single element) into one, in order."""
    counts = np.fromiter((p.counts.flat[0] for p in partials), np.int64, len(partials))
    n = counts.sum()
    shape = partials[0].values.shape
    if operation == "count":
        return Partial(np.full(shape, n, np.int64), np.full(shape, n, np.int64))
    adt = accumulator_dtype(operation, dtype)
    vals = np.fromiter((p.values.flat[0] for p in partials), adt, len(partials))
    if operation in ("sum", "mean"):
        v = vals.sum(dtype=adt)
    else:
        ok = vals[counts > 0]
        if ok.size:
            v = ok.min() if operation == "min" else ok.max()
        else:
            v = _initial(operation, dtype)
    return Partial(np.full(shape, v, adt), np.full(shape, n, np.int64))


def unpack(values: np.ndarray, scale: Any, offset: Any) -> np.ndarray:
    """Packed -> physical values (``x*scale + offset``)."""
    out = values
    if scale is not None:
        out = out * scale
    if offset is not None:
        out = out + offset
    return out


def finish(acc: Accumulator, operation: str, *, scale: Any = None, offset: Any = None,
           components: bool = False) -> Any:
    """Turn an accumulator into the user-facing result (keepdims shape; caller squeezes axes).

    Returns a masked array (masked where no value contributed), or for ``components`` a dict
    ``{"sum"|"min"|"max"|"count": ..., "n": counts}``.
    """
    n = acc.counts
    empty = n == 0
    v = acc.values
    dtype = acc.dtype
    packed = scale is not None or offset is not None
    if operation == "select":
        data = unpack(v, scale, offset) if packed else v
        return np.ma.MaskedArray(data, mask=empty)
    if operation == "count":
        if components:
            return {"count": n.copy(), "n": n.copy()}
        return np.ma.MaskedArray(n.copy(), mask=np.zeros(n.shape, bool))
    if operation in ("sum", "mean"):
        s = v
        if packed:
            s = s * (1 if scale is None else scale) + n * (0 if offset is None else offset)
        elif dtype.kind == "f":
            s = s.astype(dtype)
        if components:
            return {"sum": np.ma.MaskedArray(s, mask=empty), "n": n.copy()}
        if operation == "sum":
            return np.ma.MaskedArray(s, mask=empty)
        with np.errstate(invalid="ignore", divide="ignore"):
            if packed:
                m = (v / np.where(empty, 1, n)) * (1 if scale is None else scale) \
                    + (0 if offset is None else offset)
            else:
                m = v / np.where(empty, 1, n)
                m = m.astype(dtype if dtype.kind == "f" else np.float64)
        return np.ma.MaskedArray(m, mask=empty)
    # min / max (for a negative scale the caller reduced with the opposite operation)
    data = unpack(v, scale, offset) if packed else v
    if components:
        return {operation: np.ma.MaskedArray(data, mask=empty), "n": n.copy()}
    return np.ma.MaskedArray(data, mask=empty)
