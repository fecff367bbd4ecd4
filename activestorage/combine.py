"""Combining chunk partials into a result, the way NumPy would have computed it in one pass.

Partials are added in task order so the answer does not depend on which thread finished first.
Sums of floats accumulate in float64 (at least as accurate as NumPy's pairwise float32 sum) and are
cast back to NumPy's result dtype at the end. Packed variables are unpacked here, on the few
reduced numbers, never on the data: sum -> sum*scale + n*offset, mean -> mean*scale + offset,
min/max swap when the scale is negative.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from . import operations
from .kernel import Partial
from .operations import Operation


def accumulator_dtype(operation: str, dtype: np.dtype) -> np.dtype:
    """What partial values of ``dtype`` are combined in (see :meth:`Operation.accumulator_dtype`)."""
    return operations.get(operation).accumulator_dtype(dtype)


class Accumulator:
    """Values and counts of a reduction being assembled from chunk partials.

    Memory is only what the result needs, and only once it is needed: ``values`` is allocated by
    the first partial, and counts that are uniform over a partial (a broadcast of one number,
    as chunks with nothing missing give) are tallied per result region as plain integers until a
    partial with varying counts, or a reader of :attr:`counts`, needs the array. Counts are
    integers, so when they are added never changes the answer.
    """

    def __init__(self, operation: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.operation = operation
        self._op: Operation = operations.get(operation)
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)
        self._adt = self._op.accumulator_dtype(self.dtype)
        #: resolved once here, read per partial
        self._select = self._op.finish == "select"
        self._ufunc = self._op.ufunc
        self._values: np.ndarray | None = None
        self._counts: np.ndarray | None = None
        #: uniform counts not yet in ``_counts``: result region (as slice triples) -> count
        self._pending: dict[tuple[Any, ...], tuple[tuple[Any, ...], int]] = {}

    @property
    def nbytes(self) -> int:
        n = math.prod(self.shape)
        return n * (self._adt.itemsize + 8)

    @property
    def values(self) -> np.ndarray:
        if self._op.finish == "count":
            return self.counts
        if self._values is None:
            self._values = np.full(self.shape, self._op.initial(self.dtype), self._adt)
        return self._values

    @property
    def counts(self) -> np.ndarray:
        if self._counts is None:
            self._counts = np.zeros(self.shape, dtype=np.int64)
        if self._pending:
            for index, n in self._pending.values():
                self._counts[index] += n
            self._pending.clear()
        return self._counts

    def empty_like(self) -> "Accumulator":
        """A fresh accumulator for the same reduction (for folding on another thread)."""
        return Accumulator(self.operation, self.shape, self.dtype)

    def merge(self, other: "Accumulator") -> None:
        """Fold another accumulator of the same shape into this one."""
        if self._values is None and self._counts is None and not self._pending:
            # nothing here yet: take the other's arrays (x + 0 == x, min(x, inf) == x)
            self._values, self._counts = other._values, other._counts
            self._pending = dict(other._pending)
            return
        if other._values is not None:
            # where nothing contributed the other holds the identity (0, +-inf, the int
            # bounds), so its values fold in whole, with no mask
            self._add_values((Ellipsis,), other._values, None)
        if other._counts is not None:
            c = self.counts
            c += other._counts
        for index, n in other._pending.values():
            self._tally(index, n)

    def _tally(self, index: tuple[Any, ...], n: int) -> None:
        key = tuple((s.start, s.stop, s.step) if type(s) is slice else s for s in index)
        got = self._pending.get(key)
        self._pending[key] = (index, n if got is None else got[1] + n)

    def add(self, index: tuple[slice, ...], p: Partial) -> None:
        """Fold one partial into ``values[index]``/``counts[index]``."""
        index = tuple(index) + (Ellipsis,)  # a view even for 0-d (scalar) variables
        if self._select:
            self.values[index] = p.values
            self.counts[index] = p.counts
            return
        pc = p.counts
        n = int(pc.flat[0]) if pc.size and (pc.size == 1 or not any(pc.strides)) else None
        if n is None:
            c = self.counts[index]
            c += pc
        elif n:
            self._tally(index, n)
        else:
            return  # nothing behind this partial
        if self._ufunc is not None:  # (count: the counts are the values)
            self._add_values(index, p.values, None if n else pc)

    def _add_values(self, index: tuple[Any, ...], pv: np.ndarray,
                    pc: np.ndarray | None) -> None:
        """``pc``: the partial's counts where some may be 0 (None: every one is positive)."""
        ufunc = self._ufunc
        v = self.values[index]
        if ufunc is np.add:  # a partial sum is 0 where nothing contributed
            v += pv
        elif pc is None:
            ufunc(v, pv, out=v)  # type: ignore[misc]
        else:  # elsewhere min/max values are undefined
            ufunc(v, pv, out=v, where=pc > 0)  # type: ignore[misc]


def fold(partials: Sequence[Partial], operation: str, dtype: np.dtype) -> Partial:
    """Combine partials of a full reduction (every partial a single element) into one, in order."""
    counts = np.fromiter((p.counts.flat[0] for p in partials), np.int64, len(partials))
    n = counts.sum()
    shape = partials[0].values.shape
    op = operations.get(operation)
    ufunc = op.ufunc
    if ufunc is None:  # count
        return Partial(np.full(shape, n, np.int64), np.full(shape, n, np.int64))
    adt = op.accumulator_dtype(dtype)
    vals = np.fromiter((p.values.flat[0] for p in partials), adt, len(partials))
    if ufunc is np.add:
        v = vals.sum(dtype=adt)
    else:
        ok = vals[counts > 0]
        v = ufunc.reduce(ok) if ok.size else op.initial(dtype)
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

    ``operation`` is the user's (``"mean"``, ``"min"``, ``"select"`` ...); ``acc`` combined its
    partials (for a negative ``scale`` those of the mirrored operation, see
    :meth:`~activestorage.operations.Operation.for_scale`: unpacking turns the packed max into
    the physical min). Returns a masked array (masked where no value contributed), or for
    ``components`` a dict ``{"sum"|"min"|"max"|"count": ..., "n": counts}``.
    """
    op = operations.get(operation)
    how = op.finish
    n = acc.counts
    empty = n == 0
    v = acc.values
    dtype = acc.dtype
    packed = scale is not None or offset is not None
    if how == "select":
        data = unpack(v, scale, offset) if packed else v
        return np.ma.MaskedArray(data, mask=empty)
    if how == "count":
        if components:
            return {op.component: n.copy(), "n": n.copy()}
        return np.ma.MaskedArray(n.copy(), mask=np.zeros(n.shape, bool))
    if how in ("total", "mean"):
        s = v
        if packed:
            s = s * (1 if scale is None else scale) + n * (0 if offset is None else offset)
        elif dtype.kind == "f":
            s = s.astype(dtype)
        if components:
            return {op.component: np.ma.MaskedArray(s, mask=empty), "n": n.copy()}
        if how == "total":
            return np.ma.MaskedArray(s, mask=empty)
        with np.errstate(invalid="ignore", divide="ignore"):
            if packed:
                m = (v / np.where(empty, 1, n)) * (1 if scale is None else scale) \
                    + (0 if offset is None else offset)
            else:
                m = v / np.where(empty, 1, n)
                m = m.astype(dtype if dtype.kind == "f" else np.float64)
        return np.ma.MaskedArray(m, mask=empty)
    # "value" (min / max): each value unpacked
    data = unpack(v, scale, offset) if packed else v
    if components:
        return {op.component: np.ma.MaskedArray(data, mask=empty), "n": n.copy()}
    return np.ma.MaskedArray(data, mask=empty)


def fold_components(parts: Sequence[Mapping[str, np.ndarray]],
                    operation: str) -> dict[str, np.ndarray]:
    """Combine same-shaped ``{"v": values, "n": counts}`` components (what ``Active`` returns
    with ``components=True``, as plain arrays), in order, the way :class:`Accumulator` combines
    chunk partials: counts add, and values where ``n == 0`` play no part. Sums come back in
    their accumulator dtype (float64 for floats); :mod:`activestorage.dask` folds with this."""
    first = np.asarray(parts[0]["v"])
    acc = Accumulator(operation, first.shape, first.dtype)
    add_values = acc._op.ufunc is np.add
    for p in parts:
        pv, pc = np.asarray(p["v"]), np.asarray(p["n"])
        if add_values:  # Accumulator trusts a partial sum to be 0 where nothing contributed
            pv = np.where(pc > 0, pv, 0)
        acc.add((), Partial(pv, pc))
    return {"v": acc.values, "n": acc.counts}
