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


# ----------------------------------------------------------- moments and minmax (#21)

from hypothesis.extra import numpy as hnp  # noqa: E402

from activestorage.combine import fold  # noqa: E402
from activestorage.kernel import reduce_array  # noqa: E402
from activestorage.request import Missing  # noqa: E402

MOMENT_OPS = ["var", "std", "rms", "sum_of_squares", "mean", "sum"]


def weighted_oracle(xm: np.ma.MaskedArray, w: np.ndarray | None, axis: tuple[int, ...],
                    op: str, ddof: int):
    """np.ma's answer (np.ma.var/std/mean/sum for unit weights, np.ma.average for weights)."""
    xm = np.ma.asarray(xm, np.float64)
    if w is None:
        if op in ("var", "std"):
            return getattr(np.ma, op)(xm, axis=axis, ddof=ddof, keepdims=True)
        if op == "rms":
            return np.ma.sqrt(np.ma.mean(xm * xm, axis=axis, keepdims=True))
        if op == "sum_of_squares":
            return np.ma.sum(xm * xm, axis=axis, keepdims=True)
        return getattr(np.ma, op)(xm, axis=axis, keepdims=True)
    w = np.broadcast_to(w, xm.shape)
    we = np.ma.MaskedArray(w, mask=np.ma.getmaskarray(xm))
    sw = we.sum(axis=axis, keepdims=True)
    mean = np.ma.average(xm, axis=axis, weights=w, keepdims=True)
    if op == "mean":
        return mean
    if op == "sum":
        return mean * sw
    var0 = np.ma.average((xm - mean) ** 2, axis=axis, weights=w, keepdims=True)
    if op == "rms":
        return np.ma.sqrt(var0 + mean * mean)
    if op == "sum_of_squares":
        return (var0 + mean * mean) * sw
    sw2 = (we * we).sum(axis=axis, keepdims=True)
    den = sw - ddof * sw2 / sw
    # no degrees of freedom left (one weighted element with ddof=1: w - w*w/w is 0, which
    # rounding can make a tiny positive or negative number): NaN, as the kernel answers
    den = np.ma.where(den > 1e-12 * sw, den, np.nan)
    var = var0 * sw / den
    return var if op == "var" else np.ma.sqrt(var)


@st.composite
def chunked(draw):
    """An array with missing elements and optional weights, cut into a grid of chunks."""
    ndim = draw(st.integers(1, 3))
    shape = tuple(draw(st.lists(st.integers(1, 7), min_size=ndim, max_size=ndim)))
    dtype = np.dtype(draw(st.sampled_from(["i2", "u1", "i8", "f4", "f8"])))
    if dtype.kind == "f":
        el = st.floats(-1e4, 1e4, width=dtype.itemsize * 8)
    else:
        info = np.iinfo(dtype)
        el = st.integers(max(int(info.min), -10**4), min(int(info.max), 10**4))
    x = draw(hnp.arrays(dtype, shape, elements=el))
    fill = x.flat[draw(st.integers(0, x.size - 1))] if draw(st.booleans()) else None
    edges = [sorted({0, n, *draw(st.lists(st.integers(1, n), max_size=3))}) for n in shape]
    axis = tuple(sorted(draw(st.sets(st.integers(0, ndim - 1), min_size=1))))
    kind = draw(st.sampled_from(["none", "separable", "nd"]))
    w8 = st.floats(0.25, 4)
    if kind == "none":
        w = None
    elif kind == "separable":
        w = {ax: np.array(draw(st.lists(w8, min_size=shape[ax], max_size=shape[ax])))
             for ax in axis}
    else:
        w = draw(hnp.arrays(np.float64, shape, elements=w8))
    return x, fill, edges, axis, w


def _full_weights(w, shape):
    if w is None or isinstance(w, np.ndarray):
        return w
    out = np.ones(shape)
    for ax, v in w.items():
        out = out * v.reshape(tuple(-1 if i == ax else 1 for i in range(len(shape))))
    return out


def _chunk_weights(w, block):
    if w is None:
        return None
    if isinstance(w, np.ndarray):
        return w[block]
    return {ax: v[block[ax]] for ax, v in w.items()}


@settings(max_examples=150, deadline=None)
@given(chunked(), st.sampled_from(MOMENT_OPS), st.sampled_from([0, 1]),
       st.sampled_from([None, (0.5, 10.0), (-2.0, 1.0)]), st.lists(st.integers(0, 30)))
def test_moments_combined_in_task_order_match_numpy_ma(case, op, ddof, packing, cuts):
    """Chunk partials merged with Chan's formula (across several accumulators merged in order,
    as worker threads do) finish to np.ma.var/std/average/... of the whole, unpacked."""
    x, fill, edges, axis, w = case
    missing = Missing(values=() if fill is None else (fill,))
    mask = np.zeros(x.shape, bool) if fill is None else x == fill
    out_shape = tuple(1 if i in axis else n for i, n in enumerate(x.shape))
    blocks = [tuple(slice(e[i], e[i + 1]) for e, i in zip(edges, idx))
              for idx in np.ndindex(*(len(e) - 1 for e in edges))]
    adds = []
    for b in blocks:
        p = reduce_array(x[b], "moments", axis, missing, _chunk_weights(w, b))
        index = tuple(slice(0, 1) if i in axis else s for i, s in enumerate(b))
        adds.append((index, p))
    acc = Accumulator("moments", out_shape, x.dtype)
    cut = sorted({0, len(adds), *(c for c in cuts if c <= len(adds))})
    for lo, hi in zip(cut[:-1], cut[1:]):
        local = acc.empty_like()
        for index, p in adds[lo:hi]:
            local.add(index, p)
        acc.merge(local)
    scale, offset = packing if packing else (None, None)
    got = finish(acc, op, scale=scale, offset=offset, ddof=ddof)
    xm = np.ma.MaskedArray(x.astype(np.float64), mask=mask)
    if packing:
        xm = xm * scale + offset
    with np.errstate(all="ignore"):
        want = weighted_oracle(xm, _full_weights(w, x.shape), axis, op, ddof)
    want = np.ma.asarray(want)
    assert got.dtype == np.float64 and got.shape == out_shape
    gm, wm = np.ma.getmaskarray(got), np.ma.getmaskarray(want) | np.isnan(np.ma.getdata(want))
    n = (~mask).sum(axis=axis, keepdims=True)
    np.testing.assert_array_equal(gm, n == 0)
    ok = ~gm & ~wm
    big = float(np.abs(np.ma.getdata(xm)).max(initial=0)) + 1
    tol = {"var": big * big, "std": big, "rms": big, "mean": big,
           "sum_of_squares": big * big * x.size, "sum": big * x.size}[op] * 1e-9 * 16
    np.testing.assert_allclose(np.ma.getdata(got)[ok], np.ma.getdata(want)[ok], rtol=1e-9,
                               atol=tol)
    # where NumPy has no degrees of freedom left the answer is NaN, not a number
    assert np.isnan(np.ma.getdata(got)[~gm & wm]).all()
    if len(axis) == x.ndim:  # the full-reduction fold gives the same
        f = fold([p for _, p in adds], "moments", x.dtype)
        one = Accumulator("moments", out_shape, x.dtype)
        one.add(tuple(slice(0, 1) for _ in x.shape), f)
        np.testing.assert_allclose(np.ma.getdata(finish(one, op, scale=scale, offset=offset,
                                                        ddof=ddof))[ok],
                                   np.ma.getdata(got)[ok], rtol=1e-12, atol=tol)


def test_chan_merge_keeps_float32_offset_variance():
    """Many float32 chunks of 1e6 + noise merged pairwise: var to rtol 1e-9 of float64 NumPy."""
    x = (1e6 + np.random.default_rng(3).standard_normal(200_000)).astype(np.float32)
    acc = Accumulator("moments", (1,), x.dtype)
    for a in range(0, x.size, 7919):
        acc.add((slice(0, 1),), reduce_array(x[a:a + 7919], "moments", (0,)))
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(finish(acc, "var")[0], np.var(x64), rtol=1e-9)
    np.testing.assert_allclose(finish(acc, "std", ddof=1)[0], np.std(x64, ddof=1), rtol=1e-9)


@settings(max_examples=80, deadline=None)
@given(chunked(), st.sampled_from([None, (0.5, 10.0), (-2.0, 1.0)]))
def test_range_combined_matches_ptp(case, packing):
    x, fill, edges, axis, _ = case
    mask = np.zeros(x.shape, bool) if fill is None else x == fill
    missing = Missing(values=() if fill is None else (fill,))
    out_shape = tuple(1 if i in axis else n for i, n in enumerate(x.shape))
    acc = Accumulator("minmax", out_shape, x.dtype)
    for idx in np.ndindex(*(len(e) - 1 for e in edges)):
        b = tuple(slice(e[i], e[i + 1]) for e, i in zip(edges, idx))
        acc.add(tuple(slice(0, 1) if i in axis else s for i, s in enumerate(b)),
                reduce_array(x[b], "minmax", axis, missing))
    scale, offset = packing if packing else (None, None)
    got = finish(acc, "range", scale=scale, offset=offset)
    xm = np.ma.MaskedArray(x.astype(np.float64), mask=mask)
    if packing:
        xm = xm * scale + offset
    want = np.ma.max(xm, axis=axis, keepdims=True) - np.ma.min(xm, axis=axis, keepdims=True)
    np.testing.assert_array_equal(np.ma.getmaskarray(got), np.ma.getmaskarray(want))
    ok = ~np.ma.getmaskarray(want)
    np.testing.assert_allclose(np.ma.getdata(got)[ok].astype(np.float64),
                               np.ma.getdata(want)[ok], rtol=1e-6)
    comp = finish(acc, "range", scale=scale, offset=offset, components=True)
    assert set(comp) == {"min", "max", "n"}
    assert (np.ma.getdata(comp["min"])[ok] <= np.ma.getdata(comp["max"])[ok]).all()


def test_integer_range_does_not_wrap():
    acc = Accumulator("minmax", (1,), np.dtype(np.int8))
    acc.add((slice(0, 1),), reduce_array(np.array([-100, 100], np.int8), "minmax", (0,)))
    assert finish(acc, "range")[0] == 200  # np.ptp would wrap to -56


def test_moments_components_and_empty_cells():
    acc = Accumulator("moments", (1, 2), np.dtype(np.float32))
    acc.add((slice(0, 1), slice(0, 2)), reduce_array(np.array([[1.0, 3.0], [9.0, 9.0]], np.float32),
                                         "moments", (0,), Missing(values=(9.0,))))
    comp = finish(acc, "var", components=True)
    assert set(comp) == {"n", "sw", "mean", "m2", "sw2"}
    np.testing.assert_array_equal(comp["n"], [[1, 1]])
    np.testing.assert_array_equal(finish(acc, "var", ddof=1).filled(-1), [[np.nan, np.nan]])
    wcomp = finish(acc, "mean", components=True)
    assert set(wcomp) == {"sum", "sw", "sw2", "n"}
    np.testing.assert_array_equal(wcomp["sum"], [[1.0, 3.0]])
    empty = Accumulator("moments", (1,), np.dtype(np.float64))
    empty.add((slice(0, 1),), reduce_array(np.array([5.0]), "moments", (0,),
                                           Missing(values=(5.0,))))
    for op in MOMENT_OPS:
        assert finish(empty, op).mask.all(), op
