"""The accumulator: lazily tallied uniform counts and merged per-thread accumulators give exactly
what adding every partial's arrays eagerly gives."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from activestorage.combine import Accumulator, finish
from activestorage.kernel import Partial

SHAPE = (3, 4, 5)


def eager(operation: str, adds: list[tuple[tuple[slice, ...], Partial]], dtype: np.dtype):
    """The reference: every partial's values and counts added into full arrays at once."""
    if operation in ("sum", "mean"):
        values = np.zeros(SHAPE, np.float64 if dtype.kind == "f" else np.int64)
    elif operation == "count":
        values = np.zeros(SHAPE, np.int64)
    else:
        values = np.full(SHAPE, np.inf if operation == "min" else -np.inf)
    counts = np.zeros(SHAPE, np.int64)
    for index, p in adds:
        counts[index] += p.counts
        if operation in ("sum", "mean"):
            values[index] += p.values
        elif operation == "count":
            values[index] += p.counts
        else:
            f = np.minimum if operation == "min" else np.maximum
            f(values[index], p.values, out=values[index], where=p.counts > 0)
    return values, counts


@st.composite
def partials(draw):
    a = [draw(st.integers(0, n - 1)) for n in SHAPE]
    b = [draw(st.integers(lo + 1, n)) for lo, n in zip(a, SHAPE)]
    index = tuple(slice(lo, hi) for lo, hi in zip(a, b))
    shape = tuple(hi - lo for lo, hi in zip(a, b))
    values = np.array(draw(st.lists(st.integers(-50, 50), min_size=int(np.prod(shape)),
                                    max_size=int(np.prod(shape)))), np.float64).reshape(shape)
    kind = draw(st.sampled_from(["broadcast", "broadcast0", "varying", "filled"]))
    if kind == "varying":
        counts = np.array(draw(st.lists(st.integers(0, 3), min_size=values.size,
                                        max_size=values.size)), np.int64).reshape(shape)
    elif kind == "filled":
        counts = np.full(shape, draw(st.integers(1, 4)), np.int64)
    else:
        counts = np.broadcast_to(np.int64(0 if kind == "broadcast0" else draw(st.integers(1, 4))),
                                 shape)
    # as the kernel makes them: a sum over nothing is 0 (a min/max there is undefined)
    return index, Partial(np.where(counts > 0, values, 0), counts)


@settings(max_examples=200, deadline=None)
@given(operation=st.sampled_from(["sum", "mean", "min", "max", "count"]),
       adds=st.lists(partials(), min_size=0, max_size=12), cuts=st.lists(st.integers(0, 12)))
def test_lazy_counts_and_merges_equal_eager_adds(operation, adds, cuts):
    """Adds split across several accumulators (as worker threads split them), merged in order
    into a fresh one, equal the eager reference: values where anything contributed, and counts."""
    dtype = np.dtype(np.float64)
    edges = sorted({0, len(adds), *(c for c in cuts if c <= len(adds))})
    acc = Accumulator(operation, SHAPE, dtype)
    for lo, hi in zip(edges[:-1], edges[1:]):
        local = acc.empty_like()
        for index, p in adds[lo:hi]:
            local.add(index, p)
        acc.merge(local)
    want_v, want_n = eager(operation, adds, dtype)
    np.testing.assert_array_equal(acc.counts, want_n)
    got = acc.values
    seen = want_n > 0
    np.testing.assert_array_equal(np.where(seen, got, 0), np.where(seen, want_v, 0))
    out = finish(acc, operation)
    masked = np.zeros(SHAPE, bool) if operation == "count" else ~seen  # a count is never masked
    np.testing.assert_array_equal(np.ma.getmaskarray(out), masked)


def test_uniform_counts_allocate_no_count_array_until_read():
    acc = Accumulator("sum", (100, 100), np.dtype(np.float32))
    for row in range(0, 100, 10):
        acc.add((slice(row, row + 10), slice(None)),
                Partial(np.ones((10, 100)), np.broadcast_to(np.int64(16), (10, 100))))
        acc.add((slice(row, row + 10), slice(None)),
                Partial(np.ones((10, 100)), np.broadcast_to(np.int64(4), (10, 100))))
    assert acc._counts is None and len(acc._pending) == 10  # one tally per region
    np.testing.assert_array_equal(acc.counts, np.full((100, 100), 20))
    np.testing.assert_array_equal(finish(acc, "mean"), np.full((100, 100), 0.1, np.float32))


def test_a_fresh_accumulator_takes_over_the_first_merged_one():
    acc = Accumulator("max", (4,), np.dtype(np.int16))
    local = acc.empty_like()
    local.add((slice(None),), Partial(np.arange(4, dtype=np.int16), np.ones(4, np.int64)))
    values = local.values
    acc.merge(local)
    assert acc.values is values  # no copy, no second array


@pytest.mark.parametrize("operation", ["min", "max"])
def test_integer_min_max_merge_with_untouched_regions(operation):
    """Regions one accumulator never saw hold the dtype's bounds, which merge as identities."""
    dt = np.dtype(np.int32)
    acc = Accumulator(operation, (2,), dt)
    first, second = acc.empty_like(), acc.empty_like()
    first.add((slice(0, 1),), Partial(np.array([7], dt), np.broadcast_to(np.int64(3), (1,))))
    second.add((slice(1, 2),), Partial(np.array([-9], dt), np.array([2])))
    acc.merge(first)
    acc.merge(second)
    np.testing.assert_array_equal(acc.values, [7, -9])
    np.testing.assert_array_equal(acc.counts, [3, 2])
