"""activestorage.dask on the threaded scheduler against the oracle (netCDF4's masked read reduced
by numpy.ma): generated files, a generated multi-file dataset, packed data, the real files."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import dask
import dask.array as da
import netCDF4
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from activestorage import Active, ActiveStorageError, SelectionError
from activestorage import dask as ad
from activestorage.backends.posix import PosixBackend
from activestorage.progress import NullProgress, progress, wanted

from helpers import assert_same, datasets, oracle, write_nc

SHARED = Path(__file__).resolve().parent / "data"  # real climate files (tests/data/README.md)
OPS = ["mean", "min", "max", "sum", "count"]


@pytest.fixture(autouse=True)
def threads_and_fresh_cache():
    with dask.config.set(scheduler="threads", num_workers=3):
        yield
    ad.clear_cache()


def write_spec(path, spec):
    layout = spec["layout"]
    write_nc(path, spec["data"], chunks=spec["chunks"], zlib="zlib" in layout,
             shuffle="shuffle" in layout, fletcher32="fletcher32" in layout,
             endian=spec["endian"], attrs=spec["attrs"], fill_value=spec["fill"])
    with netCDF4.Dataset(path) as ds:
        return ds["v"][...]


@st.composite
def block_keys(draw, shape):
    """Dask-style indexing of the regions array: ints, slices with any step."""
    key = []
    for n in shape:
        if draw(st.integers(0, 4)) == 0:
            key.append(draw(st.integers(-n, n - 1)))
        else:
            key.append(slice(draw(st.none() | st.integers(-n, n)), draw(st.none() | st.integers(-n, n)),
                             draw(st.none() | st.integers(-3, 3).filter(bool))))
    return tuple(key)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(spec=datasets(), data=st.data())
def test_reduce_matches_oracle(tmp_path_factory, spec, data):
    path = tmp_path_factory.mktemp("nc") / "x.nc"
    full = write_spec(path, spec)
    r = ad.regions(str(path), "v", chunks=data.draw(st.sampled_from(["storage", "auto", 2])))
    key = data.draw(block_keys(full.shape))
    x, rk = full[key], r[key]
    assert rk.shape == np.shape(x)
    op = data.draw(st.sampled_from(OPS))
    nd = np.ndim(x)
    axis = None
    if nd and data.draw(st.booleans()):
        axis = tuple(sorted(data.draw(st.sets(st.integers(0, nd - 1), min_size=1))))
    keepdims = data.draw(st.booleans())
    lazy = ad.reduce(rk, op, axis, keepdims, split_every=data.draw(st.sampled_from([None, 2])))
    got = lazy.compute()
    want = oracle(x, op, axis, keepdims)
    assert lazy.shape == np.shape(want)
    assert_same(got, want, spec["data"].dtype, op)
    if op != "count" and np.ndim(want) and np.ma.count(want):
        native = x.dtype.newbyteorder("=")
        assert np.asarray(got).dtype == ad.result_dtype(op, native) == lazy.dtype
        with Active(str(path), "v") as a:  # the same dtype as Active's own answer
            assert np.asarray(getattr(a, op)(axis=axis, keepdims=keepdims)[key]).dtype == \
                np.asarray(got).dtype


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(spec=datasets())
def test_to_dask_is_the_data(tmp_path_factory, spec):
    path = tmp_path_factory.mktemp("nc") / "x.nc"
    full = write_spec(path, spec)
    x = ad.to_dask(str(path), "v")
    with Active(str(path), "v") as a:
        assert x.chunksize == tuple(min(c, n) for c, n in zip(a.variable.chunk_shape, a.shape))
    got = x.compute()
    np.testing.assert_array_equal(np.ma.getmaskarray(got), np.ma.getmaskarray(full))
    np.testing.assert_array_equal(np.ma.filled(got, 0), np.ma.filled(full, 0))


@pytest.fixture
def multifile(tmp_path):
    """Four files of one variable, concatenated along time; the last one with other chunks."""
    rng = np.random.default_rng(66)
    paths, parts = [], []
    for i, nt in enumerate([5, 7, 3, 9]):
        data = rng.normal(280, 10, size=(nt, 6, 8)).astype("f4")
        data[rng.random(data.shape) < 0.1] = -999.0
        p = write_nc(tmp_path / f"tas_{i}.nc", data, chunks=[2, 3, 8] if i < 3 else [4, 6, 4],
                     zlib=True, shuffle=True, attrs={"missing_value": np.float32(-999.0)})
        with netCDF4.Dataset(p) as ds:
            parts.append(ds["v"][...])
        paths.append(str(p))
    return paths, np.ma.concatenate(parts, axis=0)


def test_multifile_concatenated_along_time(multifile):
    paths, x = multifile
    r = da.concatenate([ad.regions(p, "v") for p in paths], axis=0)
    assert r.shape == x.shape
    for op in OPS:
        for axis in (None, 0, (1, 2), (0, 2)):
            assert_same(ad.reduce(r, op, axis).compute(), oracle(x, op, axis), "f4", op)
        assert_same(ad.reduce(r[3:20, 2:, ::2], op, 0).compute(), oracle(x[3:20, 2:, ::2], op, 0),
                    "f4", op)
    # the data path agrees too
    d = da.concatenate([ad.to_dask(p, "v") for p in paths], axis=0)
    assert_same(d.mean(axis=0).compute(), oracle(x, "mean", 0), "f4", "mean")


def test_each_block_is_an_active_reduction(multifile):
    """Only components move: every task's block is reduced by Active, whose stats show it."""
    paths, x = multifile
    r = ad.regions(paths[3], "v")
    assert r.numblocks == (3, 1, 2)
    seen = []

    class Spy(PosixBackend):
        def reduce_and_fold(self, requests, operation, slots):
            seen.append((len(requests), operation))
            return super().reduce_and_fold(requests, operation, slots)

    spy = ad.regions(paths[3], "v", backend=Spy)
    assert_same(ad.mean(spy).compute(), oracle(x[15:], "mean"), "f4", "mean")
    assert sorted(seen) == [(1, "sum")] * 6  # one request per storage chunk, never a select


def test_packed_and_auto_blocks(tmp_path):
    data = np.arange(-300, 420, dtype="i2").reshape(24, 30)
    path = tmp_path / "p.nc"
    with netCDF4.Dataset(path, "w") as ds:
        ds.createDimension("a", 24)
        ds.createDimension("b", 30)
        v = ds.createVariable("v", "i2", ("a", "b"), chunksizes=(4, 10), fill_value=np.int16(-300))
        v.set_auto_maskandscale(False)
        v.scale_factor = np.float32(-0.5)
        v.add_offset = np.float32(10.0)
        v[...] = data
    with netCDF4.Dataset(path) as ds:
        x = ds["v"][...]
    with dask.config.set({"array.chunk-size": "1KiB"}):
        r = ad.regions(str(path), "v", chunks="auto")
    assert all(c % 4 == 0 for c in r.chunks[0][:-1]) and all(c % 10 == 0 for c in r.chunks[1][:-1])
    assert r.dtype == x.dtype
    for op in OPS:
        for axis in (None, 1):
            assert_same(ad.reduce(r, op, axis).compute(), oracle(x, op, axis), "f8", op)
    got = ad.to_dask(str(path), "v").compute()
    assert got.dtype == x.dtype
    assert_same(got, x, "f8", "select")


def test_active_instance_and_source_inputs(multifile):
    paths, x = multifile
    with Active(paths[0], "v") as a:
        assert_same(ad.max(a, axis=0).compute(), oracle(x[:5], "max", 0), "f4", "max")
    src = ad.Source(paths[1], "v", backend="posix")
    assert_same(ad.count(src).compute(), oracle(x[5:12], "count"), "f4", "count")
    assert_same(ad.sum(paths[2], ncvar="v", keepdims=True).compute(),
                oracle(x[12:15], "sum", None, True), "f4", "sum")


def test_components_contract_cf_python_style(multifile):
    """The docs example: a caller's own da.reduction with Active(components=True) per block."""
    paths, x = multifile
    path, want = paths[3], x[15:]

    def chunk(block_index, axis=None, keepdims=True, computing_meta=False):
        with Active(path, "v") as a:  # cf-python opens its own
            c = a.mean(axis=axis, components=True)[block_index]
        return {"sum": np.ma.filled(c["sum"], 0).astype("f8"), "n": c["n"]}

    def combine(parts, axis=None, keepdims=True):
        parts = [p for p in _flat(parts)]
        return {"sum": np.sum([p["sum"] for p in parts], axis=0),
                "n": np.sum([p["n"] for p in parts], axis=0)}

    def aggregate(parts, axis=None, keepdims=False):
        c = combine(parts)
        m = np.ma.masked_where(c["n"] == 0, c["sum"] / np.maximum(c["n"], 1))
        return m if keepdims else m.reshape([n for i, n in enumerate(m.shape) if i not in axis])

    # a Dask array whose blocks are index tuples, like cf-python's active "partitions"
    idx = da.from_array(np.empty(want.shape, "f4"), chunks=(4, 3, 4))
    keys = {}
    for b in np.ndindex(*idx.numblocks):
        keys[(idx.name, *b)] = tuple(slice(sum(c[:i]), sum(c[:i + 1]))
                                     for c, i in zip(idx.chunks, b))
    from dask.highlevelgraph import HighLevelGraph
    blocks = da.Array(HighLevelGraph.from_collections(idx.name, keys, ()), idx.name, idx.chunks,
                      meta=np.empty((0, 0, 0), "f4"))
    m = da.reduction(blocks, chunk, aggregate, combine=combine, axis=(0, 2), dtype="f8",
                     concatenate=False, meta=np.ma.masked_array(np.empty((0,), "f8")))
    assert_same(m.compute(), oracle(want, "mean", (0, 2)), "f4", "mean")


def _flat(parts):
    if isinstance(parts, dict):
        yield parts
    else:
        for p in parts:
            yield from _flat(p)


def test_combine_algebra():
    parts = [{"v": np.array([[1.0, 5.0]]), "n": np.array([[1, 0]])},
             {"v": np.array([[3.0, 2.0]]), "n": np.array([[2, 1]])},
             {"v": np.array([[0.0, 9.0]]), "n": np.array([[0, 1]])}]
    s = ad.combine_components(parts, "sum")
    np.testing.assert_array_equal(s["v"], [[4.0, 11.0]])
    np.testing.assert_array_equal(s["n"], [[3, 2]])
    np.testing.assert_array_equal(ad.combine_components(parts, "min")["v"], [[1.0, 2.0]])
    np.testing.assert_array_equal(ad.combine_components(parts, "max")["v"], [[3.0, 9.0]])
    empty = [{"v": np.array([7]), "n": np.array([0])}] * 2
    assert ad.finalize(ad.combine_components(empty, "min"), "min", (0,), False, "i4") is np.ma.masked
    assert ad.finalize(ad.combine_components(empty, "count"), "count", (0,), False, "i4") == 0


def test_graph_pickles_without_live_objects(multifile):
    paths, x = multifile
    m = ad.mean(ad.regions(paths[0], "v", storage_options={"anon": True}), axis=0)
    import cloudpickle

    blob = cloudpickle.dumps(dict(m.__dask_graph__()))
    assert b"Active" not in blob.replace(b"activestorage", b"")
    src = ad.Source(paths[0], "v", storage_options={"secret": "s3cr3t"})
    assert "s3cr3t" not in repr(src)
    again = pickle.loads(pickle.dumps(src))
    assert again == src and hash(again) == hash(src) and again.options == src.options
    assert ad.Source(paths[0], "v") != src


def test_per_process_cache_opens_once(multifile, monkeypatch):
    paths, x = multifile
    opened = []
    real = ad.Source.open

    def counting(self):
        opened.append(self.token)
        return real(self)

    monkeypatch.setattr(ad.Source, "open", counting)
    ad.clear_cache()
    r = ad.regions(paths[3], "v")
    for op in OPS:
        ad.reduce(r, op, 0).compute()
    assert len(opened) == 1


def test_bad_input_is_clear(multifile):
    paths, _ = multifile
    with pytest.raises(ActiveStorageError, match="live backend instance"):
        ad.regions(paths[0], "v", backend=PosixBackend())
    with pytest.raises(ActiveStorageError, match="unknown operation"):
        ad.reduce(ad.regions(paths[0], "v"), "median")
    with pytest.raises(SelectionError, match="out of bounds"):
        ad.mean(ad.regions(paths[0], "v"), axis=3)
    with pytest.raises(SelectionError, match="repeated"):
        ad.mean(ad.regions(paths[0], "v"), axis=(0, -3))
    with pytest.raises(ActiveStorageError, match="regions"):
        ad.mean(ad.to_dask(paths[0], "v")).compute()
    with pytest.raises(ActiveStorageError, match="path or URL"):
        ad.Source(object(), "v")
    with pytest.raises(Exception, match="regions support integer and slice"):
        ad.regions(paths[0], "v")[[0, 2]].compute()


def test_server_url_list_becomes_a_pool(multifile, monkeypatch):
    """A list of server URLs in a Source opens a ServerPool (not reachable here: construction)."""
    from activestorage.backends.pool import ServerPool

    made = {}

    class FakePool(ServerPool):
        def __init__(self, urls, **kw):
            made["urls"] = urls
            super().__init__(urls, backend_factory=lambda u: PosixBackend())

    monkeypatch.setattr("activestorage.backends.pool.ServerPool", FakePool)
    paths, x = multifile
    src = ad.Source(paths[0], "v", active_storage_url=["http://a:1", "http://b:2"])
    assert_same(ad.mean(src, axis=1).compute(), oracle(x[:5], "mean", 1), "f4", "mean")
    assert made["urls"] == ("http://a:1", "http://b:2")


# --------------------------------------------------------------------------- progress

def test_progress_rules(monkeypatch):
    assert not wanted(False, {"ACTIVESTORAGE_PROGRESS": "1"})
    assert wanted(True, {"ACTIVESTORAGE_PROGRESS": "0"})
    assert not wanted(None, {"ACTIVESTORAGE_PROGRESS": "0"})
    assert wanted(None, {"ACTIVESTORAGE_PROGRESS": "1"})
    monkeypatch.setattr("sys.stderr", io.StringIO())  # not a terminal, not a notebook
    assert not wanted(None, {})
    assert isinstance(progress(10, "x"), NullProgress)


def test_progress_bar_draws_only_after_delay():
    out = io.StringIO()
    with progress(4, "quick", enabled=True, delay=5.0, file=out) as bar:
        bar.update(4)
    assert "quick" not in out.getvalue()  # finished before the delay: nothing drawn
    out = io.StringIO()
    with progress(4, "shown", enabled=True, delay=0.0, file=out) as bar:
        bar.update(2)
        bar.update(2)
    assert "shown" in out.getvalue() and "/4 " in out.getvalue()


def test_progress_callback_counts_tasks(multifile):
    paths, x = multifile
    out = io.StringIO()
    m = ad.mean(ad.regions(paths[3], "v"))
    with ad.ProgressCallback("dask mean", enabled=True, delay=0.0, file=out):
        got = m.compute()
    assert_same(got, oracle(x[15:], "mean"), "f4", "mean")
    assert "dask mean" in out.getvalue()
    got = ad.compute(m, progress=False)[0]
    assert_same(got, oracle(x[15:], "mean"), "f4", "mean")


# --------------------------------------------------------------------------- real files

REAL = [("CMIP6_IPSL-CM6A-LR_tas.nc", "tas"), ("daily_data.nc", None),
        ("daily_data_masked.nc", None), ("cesm2_native.nc", None)]


def _pick_var(path, name):
    with netCDF4.Dataset(path) as ds:
        if name is not None:
            return name
        cands = [v for v, var in ds.variables.items()
                 if var.ndim >= 3 and var.dtype.kind in "fiu" and v not in ds.dimensions]
        return max(cands, key=lambda v: ds[v].size) if cands else None


@pytest.mark.parametrize("name,var", REAL)
def test_real_files(name, var):
    path = SHARED / name
    var = _pick_var(path, var)
    assert var is not None, f"{name} has no 3-D numeric variable"
    with netCDF4.Dataset(path) as ds:
        x = ds[var][...]
    r = ad.regions(str(path), var)
    for op in OPS:
        for axis in (None, 0):
            assert_same(ad.reduce(r, op, axis).compute(), oracle(x, op, axis), x.dtype, op)
    k = (slice(1, None, 2),) + (slice(None),) * (x.ndim - 1)
    assert_same(ad.mean(r[k], axis=(0, 1)).compute(), oracle(x[k], "mean", (0, 1)), x.dtype, "mean")


def test_docs_components_example_runs(multifile):
    """docs/dask.md's cf-python-style example, executed as written."""
    page = Path(__file__).resolve().parents[1] / "docs" / "dask.md"
    text = page.read_text()
    block = text.split("<!-- tested: components-example -->", 1)[1]
    code = block.split("```python\n", 1)[1].split("```", 1)[0]
    ns: dict = {}
    exec(compile(code, str(page), "exec"), ns)
    paths, x = multifile
    got = ns["time_mean"](paths[1], "v", step=3).compute()
    assert_same(got, oracle(x[5:12], "mean", 0), "f4", "mean")


# ------------------------------------------------------- moments, ranges, weights (#21)

from helpers import MOMENT_OPS, assert_moments, moments_oracle  # noqa: E402


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(spec=datasets(), data=st.data())
def test_moments_reduce_matches_oracle(tmp_path_factory, spec, data):
    """var/std/range/rms/sum_of_squares over regions (any blocks, slices, split_every): the
    blocks' moments components merged by Chan's formula give numpy.ma's answer."""
    path = tmp_path_factory.mktemp("nc") / "x.nc"
    full = write_spec(path, spec)
    r = ad.regions(str(path), "v", chunks=data.draw(st.sampled_from(["storage", 2])))
    key = data.draw(block_keys(full.shape))
    x, rk = full[key], r[key]
    op = data.draw(st.sampled_from(MOMENT_OPS))
    nd = np.ndim(x)
    axis = None
    if nd and data.draw(st.booleans()):
        axis = tuple(sorted(data.draw(st.sets(st.integers(0, nd - 1), min_size=1))))
    kw = {"ddof": data.draw(st.sampled_from([0, 1]))} if op in ("var", "std") else {}
    lazy = ad.reduce(rk, op, axis, False, split_every=data.draw(st.sampled_from([None, 2])),
                     **kw)
    got = lazy.compute()
    want = moments_oracle(x, op, axis, False, None, kw.get("ddof", 0))
    assert lazy.shape == np.shape(want)
    assert_moments(got, want, op, spec["data"].dtype)


def test_weighted_mean_and_var_over_multifile_blocks(multifile):
    paths, full = multifile
    r = da.concatenate([ad.regions(p, "v") for p in paths], axis=0)
    w = {1: np.linspace(0.2, 1.0, 6)}
    wx = np.broadcast_to(w[1][:, None], full.shape)
    for op in ("mean", "sum", "var", "std"):
        got = ad.reduce(r, op, (1, 2), weights=w, **({"ddof": 1} if op in ("var", "std")
                                                     else {})).compute()
        want = moments_oracle(full, op, (1, 2), weights=wx,
                              ddof=1 if op in ("var", "std") else 0)
        assert_moments(got, want, op, full.dtype)
    got = ad.var(r, axis=0, ddof=1).compute()
    assert_moments(got, moments_oracle(full, "var", 0, ddof=1), "var", full.dtype)
    with pytest.raises(ActiveStorageError, match="ddof applies"):
        ad.reduce(r, "mean", ddof=1)
    with pytest.raises(ActiveStorageError, match="weights apply"):
        ad.reduce(r, "range", weights=w)
