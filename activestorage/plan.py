"""Planning: a NumPy basic index over a variable -> which chunks, which part of each, where it lands.

A selection is normalised to one positive-step ``(start, stop, step)`` per axis (negative steps are
planned as positive ones and the output flipped afterwards; integer indices become length-1 ranges
whose axes are dropped at the end). Each touched chunk gets a :class:`ChunkTask`: the chunk's grid
coordinates, the selection inside the chunk, and the slice of the output it fills. A :class:`Plan`
makes them a span at a time, so a call over millions of chunks never lists them all.
"""

from __future__ import annotations

import itertools
import math
import operator
from dataclasses import dataclass
from typing import Any, Iterator, NamedTuple, Sequence

import numpy as np

from .errors import SelectionError


@dataclass(frozen=True, slots=True)
class Selection:
    """A normalised basic index: per-axis positive-step ranges, plus what to undo at the end."""

    ranges: tuple[tuple[int, int, int], ...]  # (start, stop, step), step > 0, stop exclusive
    dropped: tuple[int, ...]                   # axes indexed by an integer (removed from the result)
    flipped: tuple[int, ...]                   # axes selected with a negative step (reversed)

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the selection with every axis kept (dropped axes have length 1)."""
        return tuple(len(range(a, b, c)) for a, b, c in self.ranges)

    @property
    def result_axes(self) -> tuple[int, ...]:
        """Variable axes that remain in ``x[sel]`` (NumPy semantics), in order."""
        return tuple(i for i in range(len(self.ranges)) if i not in self.dropped)


class ChunkTask(NamedTuple):
    """One chunk's share of a selection (a named tuple: there may be millions)."""

    coords: tuple[int, ...]
    selection: tuple[tuple[int, int, int], ...]  # inside the chunk
    out: tuple[slice, ...]                       # where the chunk's selected part lands
    whole: bool                                  # the selection is the entire chunk


def normalize_key(key: Any, shape: Sequence[int], where: str = "") -> Selection:
    """Turn ``key`` (int, slice, Ellipsis or a tuple of them) into a :class:`Selection`."""
    if not isinstance(key, tuple):
        key = (key,)
    ndim = len(shape)
    n_ellipsis = sum(1 for k in key if k is Ellipsis)
    if n_ellipsis > 1:
        raise SelectionError(f"{where}an index can only have a single ellipsis ('...')")
    explicit = len(key) - n_ellipsis
    if explicit > ndim:
        raise SelectionError(f"{where}too many indices: {explicit} given for {ndim} dimensions")
    if n_ellipsis:
        i = next(j for j, k in enumerate(key) if k is Ellipsis)
        key = key[:i] + (slice(None),) * (ndim - explicit) + key[i + 1:]
    else:
        key = key + (slice(None),) * (ndim - explicit)
    ranges, dropped, flipped = [], [], []
    for axis, (k, n) in enumerate(zip(key, shape)):
        if isinstance(k, slice):
            for part in (k.start, k.stop, k.step):
                if part is not None and not is_index(part):
                    raise SelectionError(f"{where}slice {k} on axis {axis} must use integers")
            if k.step is not None and operator.index(k.step) == 0:
                raise SelectionError(f"{where}slice step on axis {axis} cannot be zero")
            a, b, c = k.indices(n)
            if c < 0:
                m = len(range(a, b, c))
                if m == 0:
                    a, b, c = 0, 0, 1
                else:
                    lo = a + (m - 1) * c
                    a, b, c = lo, a + 1, -c
                    flipped.append(axis)
            ranges.append((a, b, c))
        elif is_index(k):
            i = operator.index(k)
            if not -n <= i < n:
                raise SelectionError(
                    f"{where}index {i} is out of bounds for axis {axis} with size {n}")
            i %= n
            ranges.append((i, i + 1, 1))
            dropped.append(axis)
        else:
            raise SelectionError(
                f"{where}only integers, slices and '...' are supported as indices (basic NumPy "
                f"indexing); got {type(k).__name__} on axis {axis}")
    return Selection(tuple(ranges), tuple(dropped), tuple(flipped))


def is_index(k: Any) -> bool:
    """Whether ``k`` is an integer index (anything with ``__index__``, but not a bool)."""
    if isinstance(k, (bool, np.bool_)):
        return False
    try:
        operator.index(k)
    except TypeError:
        return False
    return True


def _axis_plan(rng: tuple[int, int, int], chunk: int) -> list[tuple[int, tuple[int, int, int], slice]]:
    """For one axis: (chunk index, selection inside that chunk, output slice) for each touched chunk."""
    start, stop, step = rng
    m = len(range(start, stop, step))
    if m == 0:
        return []
    last = start + (m - 1) * step
    out = []
    for c in range(start // chunk, last // chunk + 1):
        lo, hi = c * chunk, (c + 1) * chunk
        first = start if start >= lo else start + -(-(lo - start) // step) * step
        end = min(stop, hi, last + 1)
        if first >= end:
            continue
        k = len(range(first, end, step))
        o = (first - start) // step
        out.append((c, (first - lo, end - lo, step), slice(o, o + k)))
    return out


def _whole(local: tuple[int, int, int], chunk: int) -> bool:
    return local[0] == 0 and local[1] == chunk and local[2] == 1


class Plan:
    """The chunks a selection touches, as :class:`ChunkTask`s in C order of the chunk grid, made a
    span at a time: a call over millions of chunks holds the tasks of the spans in flight, not a
    list of them all. Spans are built with C-level loops (a few hundred ns a task)."""

    def __init__(self, sel: Selection, chunk_shape: Sequence[int]) -> None:
        per_axis = [_axis_plan(r, c) for r, c in zip(sel.ranges, chunk_shape)]
        #: per axis: the chunk indices touched, the selection inside each, where each lands, and
        #: whether that selection is the whole chunk along the axis
        self.ids = [[c for c, _, _ in p] for p in per_axis]
        self._sels = [[s for _, s, _ in p] for p in per_axis]
        self._outs = [[o for _, _, o in p] for p in per_axis]
        self._whole = [[_whole(s, c) for _, s, _ in p] for p, c in zip(per_axis, chunk_shape)]
        #: chunks touched along each axis
        self.grid = tuple(len(p) for p in per_axis)

    def __len__(self) -> int:
        return math.prod(self.grid)

    def _columns(self, a: int, b: int) -> list[list[int]]:
        """Per axis, the position along it of each task in ``[a, b)``."""
        return [ix.tolist() for ix in np.unravel_index(np.arange(a, b), self.grid)]

    @staticmethod
    def _pick(table: list[list[Any]], cols: list[list[int]]) -> Iterator[tuple[Any, ...]]:
        return zip(*(map(t.__getitem__, c) for t, c in zip(table, cols)))

    def tasks(self, a: int = 0, b: int | None = None) -> list[ChunkTask]:
        """Tasks ``a`` to ``b`` (default: to the end)."""
        b = len(self) if b is None else min(b, len(self))
        if a >= b:
            return []
        if not self.grid:  # a scalar: one chunk, all of it
            return [ChunkTask((), (), (), True)]
        cols = self._columns(a, b)
        return list(map(ChunkTask, self._pick(self.ids, cols), self._pick(self._sels, cols),
                        self._pick(self._outs, cols), map(all, self._pick(self._whole, cols))))

    def layout(self, reduced: Sequence[int], a: int = 0, b: int | None = None
               ) -> tuple[list[tuple[slice, ...]], list[tuple[Any, ...]]]:
        """For tasks ``a`` to ``b``, reducing axes ``reduced``: where each chunk's partial lands in
        the result (reduced axes kept with length 1), and a slot shared by the chunks whose
        partials land in the same place (grid coordinates, None on reduced axes)."""
        b = len(self) if b is None else min(b, len(self))
        if a >= b:
            return [], []
        if not self.grid:
            return [()], [()]
        cols = self._columns(a, b)
        one = slice(0, 1)
        outs = [[one] * len(o) if ax in reduced else o for ax, o in enumerate(self._outs)]
        ids = [[None] * len(i) if ax in reduced else i for ax, i in enumerate(self.ids)]
        return list(self._pick(outs, cols)), list(self._pick(ids, cols))

    def coords(self) -> Iterator[tuple[int, ...]]:
        """Grid coordinates of every task, in order (lazily)."""
        return itertools.product(*self.ids)
