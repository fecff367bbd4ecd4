"""Planning must cover exactly the elements NumPy's basic indexing selects, each once, in place."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from activestorage.errors import SelectionError
from activestorage.plan import ChunkTask, Plan, normalize_key


@st.composite
def shape_chunks_key(draw):
    ndim = draw(st.integers(1, 3))
    shape = tuple(draw(st.integers(1, 9)) for _ in range(ndim))
    chunks = tuple(draw(st.integers(1, n)) for n in shape)
    key = []
    for n in shape:
        if draw(st.booleans()):
            key.append(slice(draw(st.none() | st.integers(-n - 2, n + 2)),
                             draw(st.none() | st.integers(-n - 2, n + 2)),
                             draw(st.none() | st.integers(-4, 4).filter(bool))))
        else:
            key.append(draw(st.integers(-n, n - 1)))
    return shape, chunks, tuple(key)


@settings(max_examples=300, deadline=None)
@given(shape_chunks_key())
def test_plan_reassembles_numpy_selection(args):
    shape, chunks, key = args
    x = np.arange(int(np.prod(shape))).reshape(shape)
    sel = normalize_key(key, shape)
    out = np.full(sel.shape, -1)
    for t in Plan(sel, chunks).tasks():
        origin = [c * k for c, k in zip(t.coords, chunks)]
        block = x[tuple(slice(o, o + k) for o, k in zip(origin, chunks))]
        part = block[tuple(slice(a, b, c) for a, b, c in t.selection)]
        assert (out[t.out] == -1).all(), "an output element was written twice"
        out[t.out] = part
    assert (out >= 0).all() or out.size == 0
    if sel.flipped:
        out = np.flip(out, axis=sel.flipped)
    out = out.reshape(tuple(n for i, n in enumerate(out.shape) if i not in sel.dropped))
    np.testing.assert_array_equal(out, x[key])


def test_ellipsis_and_errors():
    sel = normalize_key((Ellipsis, 1), (4, 5, 6))
    assert sel.ranges == ((0, 4, 1), (0, 5, 1), (1, 2, 1)) and sel.dropped == (2,)
    with pytest.raises(SelectionError, match="out of bounds"):
        normalize_key(7, (5,))
    with pytest.raises(SelectionError, match="too many indices"):
        normalize_key((1, 2), (5,))
    with pytest.raises(SelectionError, match="cannot be zero"):
        normalize_key(slice(None, None, 0), (5,))
    with pytest.raises(SelectionError, match="basic NumPy"):
        normalize_key([1, 2], (5,))
    with pytest.raises(SelectionError, match="single ellipsis"):
        normalize_key((Ellipsis, Ellipsis), (5,))


@settings(max_examples=200, deadline=None)
@given(shape_chunks_key(), st.data())
def test_plan_spans_equal_the_whole_plan(args, data):
    """Tasks and layouts made a span at a time are the whole plan's, cut where the spans are cut;
    the layout's slots are equal exactly where partials land in the same place."""
    shape, chunks, key = args
    sel = normalize_key(key, shape)
    plan = Plan(sel, chunks)
    n = len(plan)
    reduced = tuple(sorted(data.draw(st.sets(st.integers(0, len(shape) - 1)))))
    tasks = plan.tasks()
    index, slots = plan.layout(reduced)
    assert len(tasks) == len(index) == len(slots) == n
    assert [t.coords for t in tasks] == list(plan.coords())
    cuts = sorted(data.draw(st.sets(st.integers(0, n), max_size=4)) | {0, n})
    for a, b in zip(cuts[:-1], cuts[1:]):
        assert plan.tasks(a, b) == tasks[a:b]
        assert plan.layout(reduced, a, b) == (index[a:b], slots[a:b])
    for t, where, slot in zip(tasks, index, slots):
        for ax in range(len(shape)):
            if ax in reduced:
                assert where[ax] == slice(0, 1) and slot[ax] is None
            else:
                assert where[ax] == t.out[ax] and slot[ax] == t.coords[ax]


def test_a_scalar_plans_one_whole_task():
    plan = Plan(normalize_key((), ()), ())
    assert len(plan) == 1
    assert plan.tasks() == [ChunkTask((), (), (), True)]
    assert plan.layout(()) == ([()], [()])
