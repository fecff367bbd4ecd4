"""A stacked run of alike chunks must give exactly the partials of reducing each chunk alone."""

import numpy as np
from hypothesis import given, settings, strategies as st

from activestorage.coalesce import reduce_run, runs
from activestorage.combine import Accumulator
from activestorage.kernel import reduce_chunk
from activestorage.request import Missing, make_request


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_run_equals_chunk_by_chunk(data):
    dtype = np.dtype(data.draw(st.sampled_from(["i2", ">i4", "<u8", "f4", ">f8"])))
    ndim = data.draw(st.integers(1, 3))
    shape = tuple(data.draw(st.integers(1, 5)) for _ in range(ndim))
    k = data.draw(st.integers(1, 6))
    n = int(np.prod(shape))
    raw = np.arange(k * n).astype(dtype) % 7
    order = data.draw(st.sampled_from("CF"))
    sel = None
    if data.draw(st.booleans()):
        sel = tuple((a, b + 1, c) for a, b, c in
                    ((data.draw(st.integers(0, s - 1)), s - 1, data.draw(st.integers(1, 2))) for s in shape))
    axis = tuple(sorted(data.draw(st.sets(st.integers(0, ndim - 1), min_size=1))))
    missing = data.draw(st.sampled_from([None, Missing(values=(dtype.type(3),)),
                                         Missing(valid_min=dtype.type(1), valid_max=dtype.type(5))]))
    op = data.draw(st.sampled_from(["sum", "min", "max", "count"]))
    item = dtype.itemsize
    reqs = [make_request(dtype, shape, url="f", offset=i * n * item, size=n * item, order=order,
                         selection=sel, axis=axis, missing=missing) for i in range(k)]
    assert runs(reqs) == [(0, k)]
    got = reduce_run(raw.tobytes(), reqs, op)
    for i, r in enumerate(reqs):
        want = reduce_chunk(raw[i * n:(i + 1) * n].tobytes(), r, op)
        np.testing.assert_array_equal(got[i].counts, want.counts)
        ok = want.counts > 0
        np.testing.assert_array_equal(got[i].values[ok], want.values[ok])
        assert got[i].values.shape == want.values.shape


def test_runs_break_on_gaps_codecs_and_size():
    base = dict(url="f", size=16)
    a = make_request("f4", (4,), offset=0, **base)
    b = make_request("f4", (4,), offset=16, **base)
    gap = make_request("f4", (4,), offset=40, **base)
    z = make_request("f4", (4,), offset=56, compression={"id": "zlib"}, **base)
    other = make_request("f4", (4,), offset=72, url="g", size=16)
    assert runs([a, b, gap, z, other]) == [(0, 2), (2, 3), (3, 4), (4, 5)]
    assert runs([a, b], max_bytes=16) == [(0, 1), (1, 2)]
    big = [make_request("f4", (2**18,), url="f", offset=i * 2**20, size=2**20) for i in range(2)]
    assert runs(big) == [(0, 1), (1, 2)]  # 1 MiB chunks gain nothing from stacking


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_mixed_run_grouped_and_folded_equals_chunk_by_chunk(data):
    """Chunks of one run selected differently (a selection cutting the chunk grid) are grouped by
    layout at a regular stride; with slots, partials are folded per slot and still add up."""
    dtype = np.dtype(data.draw(st.sampled_from(["i2", ">i4", "f4", ">f8"])))
    shape = (data.draw(st.integers(1, 4)), data.draw(st.integers(1, 4)))
    n = int(np.prod(shape))
    k = data.draw(st.integers(1, 12))
    item = dtype.itemsize
    raw = (np.arange(k * n) * 7 % 11).astype(dtype)
    layouts = [dict(selection=None, axis=(0, 1)),
               dict(selection=((0, 1, 1), (0, shape[1], 1)), axis=(0, 1)),
               dict(selection=None, axis=(0,)),
               dict(selection=((0, shape[0], 2), (shape[1] - 1, shape[1], 1)), axis=(1,))]
    pick = data.draw(st.lists(st.integers(0, len(layouts) - 1), min_size=k, max_size=k))
    order = data.draw(st.sampled_from("CF"))
    missing = data.draw(st.sampled_from([None, Missing(values=(dtype.type(3),))]))
    reqs = [make_request(dtype, shape, url="f", offset=i * n * item, size=n * item, order=order,
                         missing=missing, **layouts[p]) for i, p in enumerate(pick)]
    slots = [(p, data.draw(st.integers(0, 1))) for p in pick]  # a slot never mixes layouts
    op = data.draw(st.sampled_from(["sum", "min", "max", "count"]))
    assert runs(reqs) == [(0, k)]
    want = [reduce_chunk(raw[i * n:(i + 1) * n].tobytes(), r, op) for i, r in enumerate(reqs)]

    plain = reduce_run(raw.tobytes(), reqs, op)
    for g, w in zip(plain, want):
        np.testing.assert_array_equal(g.counts, w.counts)
        np.testing.assert_array_equal(g.values[w.counts > 0], w.values[w.counts > 0])

    folded = reduce_run(raw.tobytes(), reqs, op, slots)
    for slot in set(slots):
        members = [i for i, s in enumerate(slots) if s == slot]
        got = [folded[i] for i in members if folded[i] is not None]
        assert folded[members[0]] is not None  # the first of a slot carries its partial
        acc_got, acc_want = Accumulator(op, want[members[0]].values.shape, dtype), \
            Accumulator(op, want[members[0]].values.shape, dtype)
        for p in got:
            acc_got.add((), p)
        for i in members:
            acc_want.add((), want[i])
        np.testing.assert_array_equal(acc_got.counts, acc_want.counts)
        ok = acc_want.counts > 0
        np.testing.assert_allclose(acc_got.values[ok], acc_want.values[ok], rtol=1e-12)


def test_interleaved_selections_need_one_read(tmp_path, monkeypatch):
    """A selection cutting each row of chunks differently still reads the run once, and each
    differently-selected column is reduced as one strided group (not chunk by chunk)."""
    from activestorage.backends.posix import PosixBackend
    x = np.arange(6 * 4, dtype="<f4").reshape(6, 4)  # six chunks of 4, in two columns of layouts
    path = tmp_path / "raw.bin"
    path.write_bytes(x.tobytes())
    sel = [((1, 4, 1),), ((0, 2, 1),)]
    reqs = [make_request("f4", (4,), url=str(path), offset=16 * i, size=16, selection=sel[i % 2])
            for i in range(6)]
    calls = []
    import activestorage.coalesce as co
    real = co.reduce_array

    def spy(arr, *a, **kw):
        calls.append(arr.shape)
        return real(arr, *a, **kw)

    monkeypatch.setattr(co, "reduce_array", spy)
    with PosixBackend() as b:
        got = b.reduce_and_fold(reqs, "sum", [0] * 6)
        assert b.stats.requests == 1
    assert sorted(calls) == [(3, 2), (3, 3)]
    assert got[0].values.item() + got[1].values.item() == sum(
        x[i, 1:4].sum() if i % 2 == 0 else x[i, 0:2].sum() for i in range(6))
    assert got[2:] == [None] * 4
