"""Weights of weighted reductions (``a.mean(axis=(1, 2), weights=w)[sel]``): the user's forms
resolved once per call against the variable, then cut per chunk for the kernel.

The forms (see :meth:`activestorage.Active` and docs/user-guide/api.md):

- a dict ``{axis: 1-D or None}`` (separable weights; axes of the selected array, as ``axis=``
  counts them); each 1-D array is over the whole variable axis, or over the selected elements of
  that axis in the selection's order;
- a tuple (or list) with one entry per reduced axis, in the order ``axis=`` gives them (all the
  selected array's axes when ``axis`` is None);
- an N-D array broadcastable to the variable (NumPy rules, or by dimension names for a variable
  read from the dataset);
- the name of another variable of the dataset, or a CF ``cell_measures`` key (``"area"``) of the
  data variable naming one; it is read whole (it is small) by ``read``.

Missing elements drop their weight in the kernel (``np.ma.average`` semantics).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .errors import InvalidArgumentError, VariableNotFoundError
from .plan import ChunkTask, Selection

log = logging.getLogger(__name__)

__all__ = ["Weights", "resolve", "cell_measure"]


@dataclass(frozen=True)
class Weights:
    """Resolved weights over the whole variable: ``separable`` (variable axis -> 1-D float64 of
    that axis's length) or ``nd`` (float64 with the variable's ndim, each dimension 1 or the
    variable's)."""

    separable: Mapping[int, np.ndarray] | None = None
    nd: np.ndarray | None = None

    def for_task(self, t: ChunkTask, chunk_shape: Sequence[int]) -> Any:
        """The kernel's ``weights`` for task ``t``: over its selected region of the chunk."""
        sl = tuple(slice(c * n + a, c * n + b, s)
                   for c, n, (a, b, s) in zip(t.coords, chunk_shape, t.selection))
        if self.separable is not None:
            return {ax: w[sl[ax]] for ax, w in self.separable.items()}
        w = self.nd
        assert w is not None
        return w[tuple(s if n > 1 else slice(None) for s, n in zip(sl, w.shape))]

    def for_region(self, region: Sequence[tuple[int, int, int]]) -> Any:
        """The kernel's ``weights`` over a region of the variable given as ranges."""
        sl = tuple(slice(a, b, c) for a, b, c in region)
        if self.separable is not None:
            return {ax: w[sl[ax]] for ax, w in self.separable.items()}
        w = self.nd
        assert w is not None
        return w[tuple(s if n > 1 else slice(None) for s, n in zip(sl, w.shape))]


def _checked(w: Any, what: str) -> np.ndarray:
    try:
        a = np.asarray(np.ma.filled(w, np.nan) if np.ma.isMaskedArray(w) else w, np.float64)
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"{what} must be numbers; got {type(w).__name__}") from None
    if a.size and not (np.isfinite(a).all() and a.min() >= 0):
        raise InvalidArgumentError(f"{what} must be finite and not negative (a weight of 0 "
                                   "leaves an element out)")
    return a


def _axis_weights(w: Any, ax: int, user_axis: Any, var_shape: Sequence[int],
                  sel: Selection, where: str) -> np.ndarray:
    """1-D weights for variable axis ``ax``, as long as the whole axis."""
    what = f"{where}weights for axis {user_axis}"
    a = _checked(w, what)
    n = var_shape[ax]
    start, stop, step = sel.ranges[ax]
    m = len(range(start, stop, step))
    if a.ndim != 1:
        raise InvalidArgumentError(f"{what} must be 1-D; got shape {a.shape}")
    if len(a) == n:
        return a
    if len(a) == m:  # over the selected elements, in the selection's order
        full = np.zeros(n)
        idx = np.arange(start, stop, step)
        full[idx[::-1] if ax in sel.flipped else idx] = a
        return full
    raise InvalidArgumentError(
        f"{what} have length {len(a)}, but that axis has {n} elements ({m} selected): give "
        f"one weight per element of the axis or of the selection")


def cell_measure(attrs: Mapping[str, Any], key: str) -> str | None:
    """The variable a CF ``cell_measures`` attribute (``"area: areacella volume: v"``) names
    for ``key``, or None."""
    text = attrs.get("cell_measures")
    if isinstance(text, bytes):
        text = text.decode()
    if not isinstance(text, str):
        return None
    words = text.replace(":", ": ").split()
    for i in range(len(words) - 1):
        if words[i] == f"{key}:":
            return words[i + 1]
    return None


def _align(a: np.ndarray, dims: Sequence[str], var_dims: Sequence[str], ndim: int) -> np.ndarray:
    """A weights variable with dimension names laid out along the data variable's axes."""
    if dims and var_dims and len(dims) == a.ndim and all(d in var_dims for d in dims):
        pos = [list(var_dims).index(d) for d in dims]
        if pos == sorted(pos):
            shape = [1] * ndim
            for p, n in zip(pos, a.shape):
                shape[p] = n
            return a.reshape(shape)
    return a


def resolve(weights: Any, *, var_shape: Sequence[int], var_attrs: Mapping[str, Any],
            var_dims: Sequence[str], sel: Selection, axis: Any, where: str,
            read: Callable[[str], tuple[np.ndarray, Sequence[str]]]) -> Weights:
    """Resolve the user's ``weights`` (see the module docstring) into :class:`Weights`.

    ``axis`` is the user's ``axis=`` (None: all axes of the selection); ``read(name)`` reads
    another variable of the dataset whole and gives its data and dimension names. Errors are
    :class:`InvalidArgumentError` naming the axis and the lengths at fault.
    """
    ndim = len(var_shape)
    result_axes = sel.result_axes
    dims: Sequence[str] = ()
    if isinstance(weights, str):
        name = cell_measure(var_attrs, weights) or weights
        try:
            data, dims = read(name)
        except VariableNotFoundError:
            known = var_attrs.get("cell_measures")
            raise InvalidArgumentError(
                f"{where}weights {weights!r}: no such variable in the dataset"
                + (f" (cell_measures is {known!r})" if known else
                   " (and the variable has no cell_measures attribute)")) from None
        log.debug("weights %r read from variable %r, shape %s", weights, name, np.shape(data))
        if np.ma.isMaskedArray(data) and np.ma.getmaskarray(data).any():
            log.info("weights variable %r has missing values; they weigh 0", name)
            data = np.ma.filled(data, 0)
        weights = _align(np.asarray(np.ma.getdata(data), np.float64), dims, var_dims, ndim)
    if isinstance(weights, (tuple, list)) and not _is_array_like(weights):
        if axis is None:
            keys: list[Any] = list(range(len(result_axes)))
        else:
            keys = [axis] if np.ndim(axis) == 0 else list(axis)
        if len(weights) != len(keys):
            raise InvalidArgumentError(
                f"{where}a tuple of weights needs one entry per reduced axis ({len(keys)}: "
                f"{tuple(keys)}); got {len(weights)}")
        weights = dict(zip(keys, weights))
    if isinstance(weights, Mapping):
        sep: dict[int, np.ndarray] = {}
        for k, w in weights.items():
            try:
                ua = int(k)
            except (TypeError, ValueError):
                raise InvalidArgumentError(f"{where}weights keys must be axes (integers); "
                                           f"got {k!r}") from None
            if not -len(result_axes) <= ua < len(result_axes):
                raise InvalidArgumentError(f"{where}weights for axis {ua}: out of bounds for the "
                                           f"selected array of dimension {len(result_axes)}")
            ax = result_axes[ua % len(result_axes)]
            if ax in sep:
                raise InvalidArgumentError(f"{where}weights given twice for axis {k!r}")
            if w is not None:
                sep[ax] = _axis_weights(w, ax, k, var_shape, sel, where)
        return Weights(separable=sep)
    a = _checked(weights, f"{where}weights")
    try:
        ok = a.ndim <= ndim and np.broadcast_shapes(a.shape, tuple(var_shape)) == tuple(var_shape)
    except ValueError:
        ok = False
    if not ok:
        raise InvalidArgumentError(
            f"{where}weights of shape {a.shape}"
            + (f" (dimensions {tuple(dims)})" if dims else "")
            + f" do not broadcast to the variable's shape {tuple(var_shape)}"
            + (f" (dimensions {tuple(var_dims)})" if var_dims else ""))
    return Weights(nd=a.reshape((1,) * (ndim - a.ndim) + a.shape))


def _is_array_like(w: Sequence[Any]) -> bool:
    """A list/tuple of numbers is an N-D array; one of arrays/None is one entry per axis."""
    return bool(w) and all(np.ndim(v) == 0 and v is not None for v in w)
