"""Combining chunk partials into a result, the way NumPy would have computed it in one pass.

Partials are added in task order so the answer does not depend on which thread finished first.
Sums of floats accumulate in float64 (at least as accurate as NumPy's pairwise float32 sum) and are
cast back to NumPy's result dtype at the end. Packed variables are unpacked here, on the few
reduced numbers, never on the data: sum -> sum*scale + n*offset, mean -> mean*scale + offset,
min/max swap when the scale is negative.

Second moments (``var``, ``std``, ``rms``, ``sum_of_squares`` and weighted means/sums) combine
``moments`` partials ``(sw, mean, m2, sw2)`` with the pairwise formula of Chan et al., never raw
sums of squares (which lose every digit of float32 data like 1e6 + noise); ranges combine
``minmax`` partials. See :mod:`activestorage.operations` for the fields.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from . import operations
from .kernel import Partial
from .operations import Operation, initial


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
        #: "moments"/"minmax": values with a last axis of fields, merged by their own rule
        self._fields = len(self._op.fields)
        self._combines = self._ufunc is not None or self._fields > 0
        self._values: np.ndarray | None = None
        self._counts: np.ndarray | None = None
        #: uniform counts not yet in ``_counts``: result region (as slice triples) -> count
        self._pending: dict[tuple[Any, ...], tuple[tuple[Any, ...], int]] = {}

    @property
    def nbytes(self) -> int:
        n = math.prod(self.shape)
        return n * (self._adt.itemsize * max(self._fields, 1) + 8)

    @property
    def values(self) -> np.ndarray:
        """The combined values (``shape``, plus a last axis of the fields for moments/minmax)."""
        if self._op.finish == "count":
            return self.counts
        if self._values is None:
            if self.operation == "minmax":
                self._values = np.empty(self.shape + (2,), self._adt)
                self._values[..., 0] = initial(np.minimum, self._adt)
                self._values[..., 1] = initial(np.maximum, self._adt)
            elif self._fields:
                self._values = np.zeros(self.shape + (self._fields,), self._adt)
            else:
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
        if self._combines:  # (count: the counts are the values)
            self._add_values(index, p.values, None if n else pc)

    def _add_values(self, index: tuple[Any, ...], pv: np.ndarray,
                    pc: np.ndarray | None) -> None:
        """``pc``: the partial's counts where some may be 0 (None: every one is positive)."""
        ufunc = self._ufunc
        v = self.values[index]
        if self.operation == "moments":  # empty cells are all zeros: they merge as identities
            merge_moments(v, pv, out=v)
        elif self.operation == "minmax":
            where = True if pc is None else pc > 0
            np.minimum(v[..., 0], pv[..., 0], out=v[..., 0], where=where)
            np.maximum(v[..., 1], pv[..., 1], out=v[..., 1], where=where)
        elif ufunc is np.add:  # a partial sum is 0 where nothing contributed
            v += pv
        elif pc is None:
            ufunc(v, pv, out=v)  # type: ignore[misc]
        else:  # elsewhere min/max values are undefined
            ufunc(v, pv, out=v, where=pc > 0)  # type: ignore[misc]


def merge_moments(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Two ``moments`` values (last axis ``(sw, mean, m2, sw2)``) merged with the weighted
    pairwise formula of Chan et al.: ``sw = a.sw + b.sw``, ``d = b.mean - a.mean``,
    ``mean = a.mean + d*b.sw/sw``, ``m2 = a.m2 + b.m2 + d*d*a.sw*b.sw/sw``. ``out`` may be
    ``a``."""
    asw, am, am2, asw2 = (a[..., k] for k in range(4))
    bsw, bm, bm2, bsw2 = (b[..., k] for k in range(4))
    sw = asw + bsw
    d = bm - am
    frac = np.divide(bsw, sw, out=np.zeros(np.shape(sw)), where=sw > 0)
    mean = am + d * frac
    m2 = am2 + bm2 + d * d * asw * frac
    sw2 = asw2 + bsw2
    if out is None:
        out = np.empty(np.broadcast_shapes(a.shape, b.shape), np.float64)
    out[..., 0] = sw
    out[..., 1] = mean
    out[..., 2] = m2
    out[..., 3] = sw2
    return out


def fold_moments(values: np.ndarray) -> np.ndarray:
    """``moments`` values stacked on the first axis (``(k, ..., 4)``) merged into one (``(...,
    4)``): the k-way form of :func:`merge_moments` (mean of the means weighted by ``sw``;
    ``m2`` the sum of the ``m2`` plus each part's ``sw * (mean - total mean)**2``)."""
    sw = values[..., 0].sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.divide((values[..., 0] * values[..., 1]).sum(axis=0), sw,
                         out=np.zeros(np.shape(sw)), where=sw > 0)
    d = values[..., 1] - mean
    m2 = values[..., 2].sum(axis=0) + (values[..., 0] * d * d).sum(axis=0)
    return np.stack([sw, mean, m2, values[..., 3].sum(axis=0)], axis=-1)


def fold(partials: Sequence[Partial], operation: str, dtype: np.dtype) -> Partial:
    """Combine partials of a full reduction (every partial a single element) into one, in order."""
    counts = np.fromiter((p.counts.flat[0] for p in partials), np.int64, len(partials))
    n = counts.sum()
    shape = partials[0].values.shape
    op = operations.get(operation)
    if op.fields:
        k = len(op.fields)
        vals = np.array([p.values.reshape(-1)[:k] for p in partials],
                        op.accumulator_dtype(dtype)).reshape(len(partials), k)
        if operation == "moments":
            v = fold_moments(vals)
        else:
            ok = vals[counts > 0]
            v = (np.array([ok[:, 0].min(), ok[:, 1].max()]) if ok.size else np.array(
                [initial(np.minimum, vals.dtype), initial(np.maximum, vals.dtype)]))
        return Partial(np.broadcast_to(v.astype(vals.dtype), shape).copy(),
                       np.full(shape[:-1], n, np.int64))
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
           components: bool = False, ddof: float = 0) -> Any:
    """Turn an accumulator into the user-facing result (keepdims shape; caller squeezes axes).

    ``operation`` is the user's (``"mean"``, ``"min"``, ``"select"`` ...); ``acc`` combined its
    partials (for a negative ``scale`` those of the mirrored operation, see
    :meth:`~activestorage.operations.Operation.for_scale`: unpacking turns the packed max into
    the physical min). Returns a masked array (masked where no value contributed), or for
    ``components`` a dict ``{"sum"|"min"|"max"|"count": ..., "n": counts}``. For ``moments``
    and ``minmax`` accumulators see :func:`finish_fields` (``ddof``: of ``var``/``std``).
    """
    if acc.operation in ("moments", "minmax"):
        return finish_fields(acc, operation, scale=scale, offset=offset, components=components,
                             ddof=ddof)
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


def _masked(x: Any, mask: np.ndarray) -> np.ma.MaskedArray:
    return np.ma.MaskedArray(x, mask=mask)


def finish_fields(acc: Accumulator, operation: str, *, scale: Any = None, offset: Any = None,
                  components: bool = False, ddof: float = 0) -> Any:
    """Finish a ``moments`` or ``minmax`` accumulator into ``operation``'s answer (float64;
    ``range`` of integers in int64/uint64, so it never wraps as ``np.ptp`` does).

    Unpacking: ``mean -> mean*scale + offset``, ``m2 -> m2*scale**2``, ``sw`` unchanged;
    ``min``/``max`` each unpacked (swapped for a negative scale). Finishes:
    ``mean``, ``sum = mean*sw``, ``var = m2 / (sw - ddof*sw2/sw)`` (NaN where that is not
    positive, as NumPy), ``std = sqrt(var)``, ``rms = sqrt(m2/sw + mean**2)``,
    ``sum_of_squares = m2 + sw*mean**2``, ``range = max - min``. Masked where no element is
    present (and for means, variances and rms also where the weights sum to 0).

    ``components``: weighted ``mean``/``sum`` -> ``{"sum": weighted sum, "sw": sum of weights,
    "sw2": sum of squared weights, "n": count}``; the other moments operations -> ``{"n",
    "sw", "mean", "m2", "sw2"}``; ``range`` -> ``{"min", "max", "n"}``; the raw partials
    (``operation`` ``"moments"``/``"minmax"``) likewise. All keepdims-shaped; ``n`` a plain
    array, the others masked where ``n == 0``.
    """
    op = operations.get(operation)
    how = op.finish
    n = acc.counts
    empty = n == 0
    v = acc.values
    if acc.operation == "minmax":
        if how not in ("range", "partial"):
            raise ValueError(f"{operation!r} does not finish minmax partials")
        lo, hi = v[..., 0], v[..., 1]
        if scale is not None or offset is not None:
            lo, hi = unpack(lo, scale, offset), unpack(hi, scale, offset)
            if scale is not None and scale < 0:
                lo, hi = hi, lo
        if components or how == "partial":
            return {"min": _masked(lo, empty), "max": _masked(hi, empty), "n": n.copy()}
        kind = np.asarray(lo).dtype.kind
        if kind in "iu":
            wide = np.uint64 if kind == "u" else np.int64
            r = np.subtract(hi, lo, dtype=wide)
        else:
            r = hi - lo
        return _masked(r, empty)
    if how not in ("mean", "total", "var", "std", "rms", "sum_of_squares", "partial"):
        raise ValueError(f"{operation!r} does not finish moments partials")
    sw, mean, m2, sw2 = (v[..., k] for k in range(4))
    if scale is not None:
        mean = mean * scale
        m2 = m2 * (float(scale) ** 2)
    if offset is not None:
        mean = mean + offset
    no_weight = sw <= 0
    if components or how == "partial":
        if how in ("mean", "total"):
            return {"sum": _masked(mean * sw, empty), "sw": _masked(sw.copy(), empty),
                    "sw2": _masked(sw2.copy(), empty), "n": n.copy()}
        return {"n": n.copy(), "sw": _masked(sw.copy(), empty), "mean": _masked(mean, empty),
                "m2": _masked(m2, empty), "sw2": _masked(sw2.copy(), empty)}
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        if how == "mean":
            return _masked(np.where(no_weight, 0.0, mean), empty | no_weight)
        if how == "total":
            return _masked(mean * sw, empty)
        if how == "sum_of_squares":
            return _masked(m2 + sw * mean * mean, empty)
        if how == "rms":
            safe = np.where(no_weight, 1.0, sw)
            return _masked(np.sqrt(m2 / safe + mean * mean), empty | no_weight)
        denom = sw - ddof * np.divide(sw2, sw, out=np.zeros(np.shape(sw)), where=sw > 0)
        var = np.divide(m2, denom, out=np.full(np.shape(m2), np.nan), where=denom > 0)
        return _masked(np.sqrt(var) if how == "std" else var, empty | no_weight)


def fold_components(parts: Sequence[Mapping[str, np.ndarray]],
                    operation: str) -> dict[str, np.ndarray]:
    """Combine same-shaped ``{"v": values, "n": counts}`` components (what ``Active`` returns
    with ``components=True``, as plain arrays), in order, the way :class:`Accumulator` combines
    chunk partials: counts add, and values where ``n == 0`` play no part. Sums come back in
    their accumulator dtype (float64 for floats); :mod:`activestorage.dask` folds with this.
    For ``"moments"``/``"minmax"`` ``v`` has the fields as a last axis (zeros where ``n == 0``
    for moments)."""
    first = np.asarray(parts[0]["v"])
    fields = len(operations.get(operation).fields)  # moments/minmax: a last axis of fields
    acc = Accumulator(operation, first.shape[:-1] if fields else first.shape, first.dtype)
    add_values = acc._op.ufunc is np.add
    for p in parts:
        pv, pc = np.asarray(p["v"]), np.asarray(p["n"])
        if add_values:  # Accumulator trusts a partial sum to be 0 where nothing contributed
            pv = np.where(pc > 0, pv, 0)
        acc.add((), Partial(pv, pc))
    return {"v": acc.values, "n": acc.counts}
