"""A stacked run of alike chunks must give exactly the partials of reducing each chunk alone."""

import numpy as np
from hypothesis import given, settings, strategies as st

from activestorage.coalesce import reduce_run, runs
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
