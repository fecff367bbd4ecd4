"""The table of operations: its readers agree with it, its algebra is right, and one entry is all
a new operation needs (a toy ``prod`` registered in a test-local copy of the table)."""

from __future__ import annotations

import dataclasses

import netCDF4
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from activestorage import Active, operations
from activestorage.backends.base import Backend
from activestorage.combine import Accumulator, finish, fold_components
from activestorage.kernel import Partial, reduce_array
from activestorage.operations import METHODS, OPERATIONS, WIRE_OPERATIONS, Operation

DTYPES = ["i1", "u1", "i2", "u2", "i4", "u4", "i8", "u8", "f4", "f8"]


# --------------------------------------------------------------------------- the readers

def test_every_reader_takes_its_list_from_the_table():
    from activestorage import active, cli, kernel, request
    from activestorage import dask as ad
    from activestorage.server import app

    assert METHODS == ("mean", "min", "max", "sum", "count", "var", "std", "range", "rms",
                       "sum_of_squares")
    assert WIRE_OPERATIONS == ("count", "min", "max", "sum", "select", "minmax", "moments")
    assert kernel.OPERATIONS is request.OPERATIONS is app.OPERATIONS is WIRE_OPERATIONS
    assert active.METHODS is cli.OPERATIONS is ad.OPS is METHODS
    assert ad.COMPONENT == {"mean": "sum", "sum": "sum", "min": "min", "max": "max",
                            "count": "count", "var": "moments", "std": "moments",
                            "range": "minmax", "rms": "moments", "sum_of_squares": "moments"}
    for name in METHODS:
        assert isinstance(getattr(Active, name), property), name
    with pytest.raises(SystemExit):  # argparse refuses what the table does not hold
        cli.build_parser().parse_args(["reduce", "x.nc", "v", "--op", "median"])
    ns = cli.build_parser().parse_args(["reduce", "x.nc", "v", "--op", "mean"])
    assert ns.op == "mean"


def test_entries_are_consistent():
    for name, op in OPERATIONS.items():
        assert op.name == name
        assert op.partial in OPERATIONS and OPERATIONS[op.partial].wire == op.partial
        assert op.wire is None or op.wire == name
        if op.mirror is not None:
            assert OPERATIONS[op.mirror].mirror == name
        assert (op.component is None) == (op.finish == "select")
        assert (op.numpy is None) == (not op.method)
    with pytest.raises(ValueError, match="finish must be one of"):
        Operation("bad", partial="sum", wire=None, ufunc=np.add, finish="nope", component="x",
                  numpy=np.ma.sum)


def test_a_negative_scale_mirrors_min_and_max_only():
    assert OPERATIONS["min"].for_scale(-2.0) == "max"
    assert OPERATIONS["max"].for_scale(-0.5) == "min"
    assert OPERATIONS["min"].for_scale(2.0) == "min"
    assert OPERATIONS["min"].for_scale(None) == "min"
    assert OPERATIONS["mean"].for_scale(-1.0) == "sum"
    assert OPERATIONS["sum"].for_scale(-1.0) == "sum"


# --------------------------------------------------------------------------- the algebra

@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(["min", "max", "sum"]), dtype=st.sampled_from(DTYPES),
       data=st.data())
def test_initial_is_the_identity_of_combining(name, dtype, data):
    op = OPERATIONS[name]
    dt = np.dtype(dtype)
    if dt.kind == "f":
        x = np.array(data.draw(st.lists(st.floats(-1e6, 1e6, width=32), min_size=1,
                                        max_size=5)), dt)
    else:
        info = np.iinfo(dt)
        x = np.array(data.draw(st.lists(st.integers(int(info.min), int(info.max)), min_size=1,
                                        max_size=5)), dt)
    adt = op.accumulator_dtype(dt)
    x = x.astype(adt)
    start = np.full(x.shape, op.initial(dt), adt)
    np.testing.assert_array_equal(op.ufunc(start, x), x)


@pytest.mark.parametrize("dtype", DTYPES)
def test_accumulator_dtypes_follow_numpy(dtype):
    dt = np.dtype(dtype)
    x = np.zeros(2, dt)
    assert OPERATIONS["count"].accumulator_dtype(dt) == np.int64
    assert OPERATIONS["min"].accumulator_dtype(dt) == dt
    want = np.float64 if dt.kind == "f" else np.sum(x).dtype
    assert OPERATIONS["sum"].accumulator_dtype(dt) == want
    assert OPERATIONS["mean"].accumulator_dtype(dt) == want


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from([m for m in METHODS if not OPERATIONS[OPERATIONS[m].partial].fields]),
       data=st.data())
def test_folded_components_equal_one_accumulator(name, data):
    """dask's fold of components and Active's accumulator are one implementation: folding the
    finished components of pieces equals reducing the whole."""
    nparts = data.draw(st.integers(1, 4))
    parts, whole = [], []
    for _ in range(nparts):
        v = np.array(data.draw(st.lists(st.integers(-50, 50), min_size=3, max_size=3)), "f8")
        n = np.array(data.draw(st.lists(st.integers(0, 3), min_size=3, max_size=3)), np.int64)
        whole.append((v, n))
        acc = Accumulator(OPERATIONS[name].partial, (3,), np.dtype("f8"))
        acc.add((slice(None),), Partial(np.where(n > 0, v, 0) if name in ("sum", "mean") else v,
                                        n))
        comp = finish(acc, name, components=True)
        parts.append({"v": np.ma.getdata(comp[OPERATIONS[name].component]), "n": comp["n"]})
    got = fold_components(parts, name)
    n = np.sum([n for _, n in whole], axis=0)
    np.testing.assert_array_equal(got["n"], n)
    if name == "count":
        np.testing.assert_array_equal(got["v"], n)
        return
    masked = np.ma.MaskedArray([v for v, _ in whole], mask=[c == 0 for _, c in whole])
    want = {"min": np.ma.min, "max": np.ma.max}.get(name, np.ma.sum)(masked, axis=0)
    ok = n > 0
    np.testing.assert_array_equal(got["v"][ok], np.ma.getdata(want)[ok])


# --------------------------------------------------------------------------- backends

def test_backend_declares_what_the_engine_reads():
    for attr in ("name", "default_threads", "batches_per_thread", "folds", "fold_block_bytes",
                 "stats"):
        assert hasattr(Backend, attr), attr
    assert isinstance(Backend.default_threads, int) and Backend.default_threads >= 1


def test_pool_stats_are_read_only_sums(tmp_path):
    from activestorage.backends.pool import ServerPool
    from activestorage.backends.posix import PosixBackend

    pool = ServerPool(["http://127.0.0.1:1", "http://127.0.0.1:2"],
                      backend_factory=lambda u: PosixBackend())
    try:
        pool._members[0].backend._account(bytes_read=5, requests=1)
        pool._members[1].backend._account(bytes_read=7, requests=2)
        assert (pool.stats.bytes_read, pool.stats.requests) == (12, 3)
        with pytest.raises(AttributeError):
            pool.stats = None  # type: ignore[misc]
    finally:
        pool.close()


def test_make_backend_is_shared_by_active_and_dask(tmp_path, monkeypatch):
    from activestorage.backends import factory, make_backend
    from activestorage.backends.fetch import FetchBackend
    from activestorage.backends.posix import PosixBackend

    monkeypatch.delenv("ACTIVESTORAGE_URL", raising=False)
    assert isinstance(make_backend(None, str(tmp_path / "x.nc")), PosixBackend)
    b = make_backend(None, "s3://bucket/x.nc", storage_options={"anon": True})
    assert isinstance(b, FetchBackend)
    b.close()
    assert make_backend(b, "s3://bucket/x.nc") is b
    assert isinstance(make_backend(PosixBackend, "/x.nc"), PosixBackend)  # a factory
    assert factory.server_urls(" http://a:1, http://b:2 ") == ["http://a:1", "http://b:2"]
    assert factory.server_urls(None, {"ACTIVESTORAGE_URL": "http://c:3"}) == "http://c:3"
    with pytest.raises(Exception, match="unknown backend 'nope'"):
        make_backend("nope", "/x.nc")


# --------------------------------------------------------------------------- a new operation

PROD = Operation("prod", partial="prod", wire="prod", ufunc=np.multiply, finish="value",
                 component="prod", numpy=np.ma.prod)


@pytest.fixture
def with_prod(monkeypatch):
    """The table plus a toy ``prod``: the one entry a new operation needs."""
    table = dict(OPERATIONS, prod=PROD)
    monkeypatch.setattr(operations, "OPERATIONS", table)
    return table


def _write(path, data, fill=None):
    with netCDF4.Dataset(path, "w") as ds:
        dims = []
        for i, n in enumerate(data.shape):
            ds.createDimension(f"d{i}", n)
            dims.append(f"d{i}")
        v = ds.createVariable("v", data.dtype, dims, chunksizes=[2] * data.ndim,
                              fill_value=fill)
        v.set_auto_maskandscale(False)
        v[...] = data
    return str(path)


def test_an_unknown_operation_is_refused_without_the_entry():
    with pytest.raises(Exception, match="unknown operation 'prod'"):
        reduce_array(np.ones(3), "prod", (0,))


@pytest.mark.parametrize("dtype", ["i4", "f8"])
@pytest.mark.parametrize("axis", [None, 0, 1])
def test_a_toy_operation_from_one_table_entry(with_prod, tmp_path, dtype, axis):
    rng = np.random.default_rng(3)
    data = rng.integers(1, 4, size=(5, 6)).astype(dtype)
    data[1, 2] = data[4, 5] = -99  # missing
    path = _write(tmp_path / "p.nc", data, fill=-99)
    want = np.ma.prod(np.ma.masked_equal(data, -99)[1:5, :], axis=axis)
    with Active(path, "v", max_threads=2) as a:
        a.method = "prod"
        a.keepdims = False
        a.axis = axis
        got = a[1:5, :]
    np.testing.assert_array_equal(np.ma.getdata(got), np.ma.getdata(want))
    # list indices: per-box components folded along the listed axis
    rows = [0, 1, 3, 4]
    want = np.ma.prod(np.ma.masked_equal(data, -99)[rows, :], axis=axis)
    with Active(path, "v", max_threads=2) as a:
        a.method = "prod"
        a.keepdims = False
        a.axis = axis
        got = a[rows, :]
    np.testing.assert_array_equal(np.ma.getdata(got), np.ma.getdata(want))
    # the same through Dask's component fold
    parts = [{"v": np.array([2, 3]), "n": np.array([1, 0])},
             {"v": np.array([5, 7]), "n": np.array([1, 1])}]
    np.testing.assert_array_equal(fold_components(parts, "prod")["v"], [10, 7])


def test_a_replaced_entry_changes_every_reader(with_prod, monkeypatch):
    """The readers resolve entries per call: a copy of the table with a changed entry is what
    the kernel and the combining use."""
    swapped = dataclasses.replace(OPERATIONS["max"], ufunc=np.minimum)
    monkeypatch.setitem(with_prod, "max", swapped)
    p = reduce_array(np.array([3.0, 1.0, 2.0]), "max", (0,))
    assert p.values.item() == 1.0
