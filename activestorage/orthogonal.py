"""List (orthogonal) indices, as netCDF4-python and PyActiveStorage take them.

``a[:, [0, 1, 5, 7], :]`` selects those positions on axis 1 independently of the other axes
(``np.ix_`` semantics, not NumPy's fancy indexing). The planner only knows slices, so a list is cut
into runs of consecutive positions; each combination of runs is an ordinary box (slices only) that
the normal engine reduces to components, and the boxes are put back together here: concatenated
along list axes that stay, folded along list axes that are reduced.
"""

from __future__ import annotations

import itertools
import operator
from typing import Any, Callable, Sequence

import numpy as np

from . import operations
from .errors import AxisError, SelectionError


def has_lists(key: Any) -> bool:
    """Whether ``key`` holds a list or 1-d array index anywhere."""
    items = key if isinstance(key, tuple) else (key,)
    return any(isinstance(k, (list, np.ndarray)) and np.ndim(k) >= 1 for k in items)


def expand(key: Any, shape: Sequence[int], where: str = "") -> list[Any]:
    """``key`` with its Ellipsis expanded to one entry per axis; lists become arrays of
    non-negative positions (booleans: where true), checked against the axis size."""
    items = list(key) if isinstance(key, tuple) else [key]
    ndim = len(shape)
    if sum(1 for k in items if k is Ellipsis) > 1:
        raise SelectionError(f"{where}an index can only have a single ellipsis ('...')")
    explicit = len(items) - sum(1 for k in items if k is Ellipsis)
    if explicit > ndim:
        raise SelectionError(f"{where}too many indices: {explicit} given for {ndim} dimensions")
    if Ellipsis in [k if k is Ellipsis else None for k in items]:
        i = next(j for j, k in enumerate(items) if k is Ellipsis)
        items[i:i + 1] = [slice(None)] * (ndim - explicit)
    items += [slice(None)] * (ndim - len(items))
    out: list[Any] = []
    for axis, (k, n) in enumerate(zip(items, shape)):
        if isinstance(k, (list, np.ndarray)) and np.ndim(k) >= 1:
            arr = np.asarray(k)
            if arr.ndim != 1:
                raise SelectionError(f"{where}a list index must be one-dimensional (axis {axis})")
            if arr.dtype == bool:
                if arr.size != n:
                    raise SelectionError(f"{where}boolean index on axis {axis} has {arr.size} "
                                         f"elements for a dimension of size {n}")
                arr = np.flatnonzero(arr)
            elif arr.size and arr.dtype.kind not in "iu":
                raise SelectionError(f"{where}list index on axis {axis} must hold integers")
            arr = arr.astype(np.int64)
            if arr.size == 0:
                raise SelectionError(f"{where}empty list index on axis {axis}")
            bad = (arr < -n) | (arr >= n)
            if bad.any():
                raise SelectionError(f"{where}index {int(arr[bad][0])} is out of bounds for axis "
                                     f"{axis} with size {n}")
            out.append(arr % n)
        else:
            out.append(k)
    return out


def runs(idx: np.ndarray) -> list[slice]:
    """``idx`` cut into slices of consecutive increasing positions, in order."""
    breaks = np.flatnonzero(np.diff(idx) != 1) + 1
    starts = np.concatenate(([0], breaks))
    ends = np.concatenate((breaks, [idx.size]))
    return [slice(int(idx[a]), int(idx[b - 1]) + 1) for a, b in zip(starts, ends)]


def _is_int(k: Any) -> bool:
    if isinstance(k, (bool, np.bool_)):
        return False
    try:
        operator.index(k)
    except TypeError:
        return False
    return True


def result_axes(full: Sequence[Any]) -> list[int]:
    """Variable axes that remain in the selected array (integer-indexed ones are dropped)."""
    return [ax for ax, k in enumerate(full) if not _is_int(k)]


def reduced_positions(axis: Any, ndim: int, where: str = "") -> list[int]:
    """User ``axis`` (None, int or tuple; NumPy style) as sorted positions of the selected array."""
    if axis is None:
        return list(range(ndim))
    items = [axis] if np.ndim(axis) == 0 else list(axis)
    out = []
    for a in items:
        try:
            a = operator.index(a)
        except TypeError:
            raise AxisError(f"{where}axis must be an integer or a tuple of integers; "
                            f"got {a!r}") from None
        if not -ndim <= a < ndim:
            raise AxisError(f"{where}axis {a} is out of bounds for the selected array of "
                            f"dimension {ndim}")
        out.append(a % ndim)
    if len(set(out)) != len(out):
        raise AxisError(f"{where}repeated axis in {axis!r}")
    return sorted(out)


def select(full: list[Any], read: Callable[[tuple[Any, ...]], Any]) -> Any:
    """Plain data: read the bounding box of the list axes, then take the listed positions."""
    box = list(full)
    pos = result_axes(full)
    data = None
    lists = [(ax, k) for ax, k in enumerate(full) if isinstance(k, np.ndarray)]
    for ax, k in lists:
        box[ax] = slice(int(k.min()), int(k.max()) + 1)
    data = read(tuple(box))
    for ax, k in lists:
        data = np.ma.take(data, k - int(k.min()), axis=pos.index(ax))
    return data


def reduce(full: list[Any], operation: str, axis: Any, components: bool, keepdims: bool,
           reduce_box: Callable[[tuple[Any, ...]], dict[str, Any]], where: str = "",
           ddof: Any = None) -> Any:
    """A reduction over a selection with list indices, from per-box components.

    ``reduce_box(key)`` must return the components dict (keepdims shape) of ``operation`` over
    ``axis`` for a key of slices and integers. ``ddof``: of var/std.
    """
    pos = result_axes(full)
    red = set(reduced_positions(axis, len(pos), where))
    lists = [ax for ax, k in enumerate(full) if isinstance(k, np.ndarray)]
    pieces = [runs(full[ax]) for ax in lists]
    parts: dict[tuple[int, ...], dict[str, Any]] = {}
    for combo in itertools.product(*[range(len(p)) for p in pieces]):
        key = list(full)
        for ax, p, i in zip(lists, pieces, combo):
            key[ax] = p[i]
        parts[combo] = reduce_box(tuple(key))

    def build(prefix: tuple[int, ...]) -> dict[str, Any]:
        depth = len(prefix)
        if depth == len(lists):
            return parts[prefix]
        subs = [build(prefix + (i,)) for i in range(len(pieces[depth]))]
        if len(subs) == 1:
            return subs[0]
        at = pos.index(lists[depth])
        return {k: (np.concatenate([s[k] for s in subs], axis=at) if k == "n" else
                    np.ma.concatenate([s[k] for s in subs], axis=at)) for k in subs[0]}

    got = build(())
    op = operations.get(operation)
    if operations.get(op.partial).fields:  # var, std, range, rms, sum_of_squares
        return _reduce_fields(got, op, red, pos, lists, components, keepdims, ddof)
    value_key = op.component
    n = np.asarray(got["n"])
    values = got[value_key]
    fold_at = tuple(pos.index(ax) for ax in lists if pos.index(ax) in red)
    if fold_at:
        values = _fold(op, np.ma.masked_where(np.broadcast_to(n == 0, np.shape(values)), values),
                       fold_at)
        n = n.sum(axis=fold_at, keepdims=True)
        values = np.ma.MaskedArray(np.ma.getdata(values), mask=n == 0)
    if components:
        return {value_key: values, "n": n}
    if op.finish == "mean":
        with np.errstate(invalid="ignore", divide="ignore"):
            values = np.ma.MaskedArray(np.ma.getdata(values) / np.where(n == 0, 1, n), mask=n == 0)
    elif op.finish == "count":
        values = np.ma.MaskedArray(n, mask=np.zeros(n.shape, bool))
    if not keepdims:
        values = values.reshape(tuple(m for i, m in enumerate(values.shape) if i not in red))
    if values.ndim == 0:
        return np.ma.masked if np.ma.getmaskarray(values).item() else np.ma.getdata(values)[()]
    return values


def _reduce_fields(got: dict[str, Any], op: operations.Operation, red: set[int],
                   pos: list[int], lists: list[int], components: bool, keepdims: bool,
                   ddof: Any) -> Any:
    """:func:`reduce` for the operations combining moments/minmax components: the boxes'
    components folded along the reduced list axes (Chan's formula; min/max over n > 0), then
    finished by :func:`activestorage.combine.finish`."""
    from .combine import Accumulator, finish, fold_moments

    kind = op.partial
    names = operations.get(kind).fields
    n = np.asarray(got["n"])
    v = np.stack([np.asarray(np.ma.getdata(got[f])) for f in names], -1)
    fold_at = tuple(pos.index(ax) for ax in lists if pos.index(ax) in red)
    if kind == "moments":
        v = np.where((n > 0)[..., None], v, 0.0)
    if fold_at:
        if kind == "moments":
            moved = np.moveaxis(v, fold_at, tuple(range(len(fold_at))))
            k = int(np.prod(moved.shape[:len(fold_at)]))
            v = np.expand_dims(fold_moments(moved.reshape((k,) + moved.shape[len(fold_at):])),
                               fold_at)
        else:
            empty = np.broadcast_to((n == 0)[..., None], v.shape)
            lo = np.ma.MaskedArray(v[..., 0], mask=empty[..., 0]).min(axis=fold_at, keepdims=True)
            hi = np.ma.MaskedArray(v[..., 1], mask=empty[..., 1]).max(axis=fold_at, keepdims=True)
            v = np.stack([np.ma.getdata(lo), np.ma.getdata(hi)], -1)
        n = n.sum(axis=fold_at, keepdims=True)
    acc = Accumulator(kind, n.shape, v.dtype)
    acc._values, acc._counts = v, n
    out = finish(acc, op.name, components=components, ddof=0 if ddof is None else ddof)
    if components:
        return out
    if not keepdims:
        out = out.reshape(tuple(m for i, m in enumerate(out.shape) if i not in red))
    if out.ndim == 0:
        return np.ma.masked if np.ma.getmaskarray(out).item() else np.ma.getdata(out)[()]
    return out


#: masked folds of the table's combining ufuncs (counts and sums add)
_MA_FOLDS = {np.minimum: np.ma.min, np.maximum: np.ma.max, np.add: np.ma.sum, None: np.ma.sum}


def _fold(op: operations.Operation, values: np.ma.MaskedArray, axis: tuple[int, ...]) -> Any:
    """Combine component values along ``axis`` (masked where nothing contributed), keepdims."""
    fold = _MA_FOLDS.get(op.ufunc)
    if fold is not None:
        return fold(values, axis=axis, keepdims=True)
    assert op.ufunc is not None
    data = np.ma.getdata(values.filled(op.initial(values.dtype)))
    return np.ma.MaskedArray(op.ufunc.reduce(data, axis=axis, keepdims=True))

