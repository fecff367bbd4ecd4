"""Active against the oracle: netCDF4-python's masked read of the same file, reduced by numpy.ma."""

from __future__ import annotations

import itertools
import tracemalloc

import h5py
import netCDF4
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from activestorage import (Active, ActiveStorageError, FormatError, InvalidArgumentError,
                           SelectionError, UnsupportedError, VariableNotFoundError)

from helpers import DTYPES, OPS, SHARED, assert_same, datasets, oracle, write_nc


@st.composite
def keys(draw, shape):
    key = []
    for n in shape:
        if draw(st.integers(0, 3)) == 0:
            key.append(draw(st.integers(-n, n - 1)))
        else:
            key.append(slice(draw(st.none() | st.integers(-n, n)), draw(st.none() | st.integers(-n, n)),
                             draw(st.none() | st.integers(-3, 3).filter(bool))))
    return tuple(key)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(spec=datasets(), data=st.data())
def test_reductions_match_netcdf4(tmp_path_factory, spec, data):
    path = tmp_path_factory.mktemp("nc") / "x.nc"
    layout = spec["layout"]
    write_nc(path, spec["data"], chunks=spec["chunks"], zlib="zlib" in layout,
             shuffle="shuffle" in layout, fletcher32="fletcher32" in layout,
             endian=spec["endian"], attrs=spec["attrs"], fill_value=spec["fill"])
    with netCDF4.Dataset(path) as ds:
        full = ds["v"][...]
    key = data.draw(keys(full.shape))
    x = full[key]
    threads = data.draw(st.sampled_from([1, 2, 3]))
    with Active(str(path), "v", max_threads=threads) as a:
        np.testing.assert_array_equal(np.ma.getmaskarray(a[key]), np.ma.getmaskarray(x))
        np.testing.assert_array_equal(np.ma.filled(a[key], 0), np.ma.filled(x, 0))
        op = data.draw(st.sampled_from(OPS))
        nd = np.ndim(x)
        axis = None
        if nd and data.draw(st.booleans()):
            axis = tuple(sorted(data.draw(st.sets(st.integers(0, nd - 1), min_size=1))))
        keepdims = data.draw(st.booleans())
        want = oracle(x, op, axis, keepdims)
        got = getattr(a, op)(axis=axis, keepdims=keepdims)[key]
        assert_same(got, want, spec["data"].dtype, op)


@pytest.mark.parametrize("dtype", DTYPES)
def test_default_fill_values_and_unwritten_chunks(tmp_path, dtype):
    """No _FillValue: netCDF's default fill masks; chunks never written read as fill (masked)."""
    path = tmp_path / "x.nc"
    with netCDF4.Dataset(path, "w") as ds:
        ds.createDimension("t", 8)
        ds.createDimension("y", 6)
        v = ds.createVariable("v", dtype, ("t", "y"), chunksizes=(2, 3))
        v[0:2, :] = np.arange(12).reshape(2, 6).astype(dtype)  # chunks in rows 2..7 never written
    with netCDF4.Dataset(path) as ds:
        x = ds["v"][...]
    with Active(str(path), "v") as a:
        for op in OPS:
            assert_same(getattr(a, op)[...], oracle(x, op), dtype, op)
            assert_same(getattr(a, op)(axis=0)[...], oracle(x, op, 0), dtype, op)
        assert a.stats.chunks_unallocated == 6
        np.testing.assert_array_equal(np.ma.getmaskarray(a[...]), np.ma.getmaskarray(x))


@pytest.mark.parametrize("scale,offset", [(0.5, 10.0), (-2.0, None), (None, 3.0)])
def test_packed_data_is_unpacked(tmp_path, scale, offset):
    path = tmp_path / "p.nc"
    data = np.arange(-50, 70, dtype="i2").reshape(12, 10)
    attrs = {"_FillValue": np.int16(-32767)}
    if scale is not None:
        attrs["scale_factor"] = np.float32(scale)
    if offset is not None:
        attrs["add_offset"] = np.float32(offset)
    with netCDF4.Dataset(path, "w") as ds:
        ds.createDimension("a", 12)
        ds.createDimension("b", 10)
        v = ds.createVariable("v", "i2", ("a", "b"), chunksizes=(5, 4),
                              fill_value=attrs.pop("_FillValue"))
        v.set_auto_maskandscale(False)
        for k, val in attrs.items():
            v.setncattr(k, val)
        data[3, 3] = -32767
        v[...] = data
    with netCDF4.Dataset(path) as ds:
        x = ds["v"][...]
    with Active(str(path), "v") as a:
        for op in OPS:
            for axis in (None, 1):
                assert_same(getattr(a, op)(axis=axis)[2:11:2], oracle(x[2:11:2], op, axis), "f8", op)
        assert_same(a[1:4, ::3], x[1:4, ::3], "f8", "sum")


def test_components_have_keepdims_shape_and_combine(tmp_path):
    data = np.random.default_rng(0).normal(size=(6, 4, 5)).astype("f4")
    path = write_nc(tmp_path / "c.nc", data, chunks=[2, 2, 5], attrs={"valid_max": np.float32(1.0)})
    with netCDF4.Dataset(path) as ds:
        x = ds["v"][...]
    with Active(str(path), "v", components=True) as a:
        c = a.mean[0:3]
        assert set(c) == {"sum", "n"} and np.shape(c["sum"]) == (1, 1, 1)
        c2 = a.mean[3:6]
        total = (np.ma.getdata(c["sum"]) + np.ma.getdata(c2["sum"])) / (c["n"] + c2["n"])
        np.testing.assert_allclose(total.ravel()[0], x.mean(), rtol=1e-5)
        m = a.max(axis=1)[:, 1:3]
        assert set(m) == {"max", "n"} and m["max"].shape == (6, 1, 5)
        assert_same(m["max"], x[:, 1:3].max(axis=1, keepdims=True), "f4", "max")
        np.testing.assert_array_equal(m["n"], np.ma.count(x[:, 1:3], axis=1, keepdims=True))


def test_integer_index_drops_axis_and_axis_counts_after_selection(tmp_path):
    data = np.arange(60, dtype="f8").reshape(3, 4, 5)
    path = write_nc(tmp_path / "i.nc", data, chunks=[1, 2, 5])
    with Active(str(path), "v") as a:
        r = a.mean(axis=0)[1, :, 2:4]          # x[1, :, 2:4] is (4, 2); axis 0 is its first axis
        np.testing.assert_allclose(r, data[1, :, 2:4].mean(axis=0))
        assert a.max[2, 3, 4] == data[2, 3, 4]
        assert a[2, 3, 4] == data[2, 3, 4]
        np.testing.assert_array_equal(a[-1, ::-2, 1], data[-1, ::-2, 1])


def test_method_attribute_like_pyactivestorage(tmp_path):
    data = np.arange(24, dtype="f4").reshape(4, 6)
    path = write_nc(tmp_path / "m.nc", data, chunks=[2, 3])
    a = Active(str(path), "v")
    a.method = "max"
    assert a[1:3] == data[1:3].max()


def test_stats_record_work(tmp_path):
    data = np.zeros((8, 8), "f4")
    path = write_nc(tmp_path / "s.nc", data, chunks=[2, 8])
    with Active(str(path), "v") as a:
        a.sum[0:3]
        s = a.stats
        # the two chunks are stored back to back: one read, though they are selected differently
        assert s.chunks_touched == 2 and s.requests == 1
        assert s.bytes_read == 2 * 2 * 8 * 4 == s.bytes_without_active
        assert s.operation == "sum" and s.backend == "posix"


def test_deterministic_across_thread_counts(tmp_path):
    data = np.random.default_rng(1).normal(size=(64, 50)).astype("f4") * 1e4
    path = write_nc(tmp_path / "d.nc", data, chunks=[1, 50])
    results = set()
    for threads in (1, 2, 2, 2):
        with Active(str(path), "v", max_threads=threads) as a:
            results.add(float(a.sum[...]))
    assert len(results) == 1


def test_folding_is_deterministic_across_thread_counts(tmp_path):
    """Several fold blocks of small chunks, stacked and folded: every thread count folds the
    same chunks together, so results are bit-identical (and right)."""
    data = np.random.default_rng(2).normal(size=(5000, 512)).astype("f4") * 1e4
    path = write_nc(tmp_path / "f.nc", data, chunks=[1, 512])  # 2 KiB chunks, 1024 per block
    seen: dict[str, set] = {"sum": set(), "axis0": set(), "sub": set()}
    for threads in (1, 2, 3, 2):
        with Active(str(path), "v", max_threads=threads) as a:
            seen["sum"].add(float(a.sum[...]))
            seen["axis0"].add(np.asarray(a.mean(axis=0)[...]).tobytes())
            seen["sub"].add(float(a.max[7:4999:3, 5:300]))
    assert all(len(v) == 1 for v in seen.values()), {k: len(v) for k, v in seen.items()}
    np.testing.assert_allclose(float(next(iter(seen["sum"]))), data.astype("f8").sum(), rtol=1e-6)
    np.testing.assert_allclose(np.frombuffer(next(iter(seen["axis0"])), "f4"),
                               data.astype("f8").mean(axis=0), rtol=1e-5, atol=1e-3)


def test_h5py_variable_with_filters_and_filter_mask(tmp_path):
    path = tmp_path / "h.h5"
    data = np.arange(4000, dtype=">i4").reshape(40, 100)
    with h5py.File(path, "w") as f:
        f.create_dataset("v", data=data, chunks=(10, 25), compression="gzip", shuffle=True,
                         fletcher32=True)
    with h5py.File(path, "r") as f:
        a = Active(f["v"])
        assert a.sum[...] == data.sum()
        np.testing.assert_array_equal(a.max(axis=1)[5:35:3], data[5:35:3].max(axis=1))


def test_open_variable_objects(tmp_path):
    data = np.arange(30, dtype="f8").reshape(5, 6)
    path = write_nc(tmp_path / "o.nc", data, chunks=[5, 2])
    with netCDF4.Dataset(path) as ds:
        assert Active(ds["v"]).sum[...] == data.sum()
    import h5netcdf

    with h5netcdf.File(path, "r") as ds:
        assert Active(ds.variables["v"]).min[...] == 0


def test_errors_are_typed_and_name_things(tmp_path):
    path = write_nc(tmp_path / "e.nc", np.zeros((3, 4), "f4"))
    with pytest.raises(VariableNotFoundError, match=r"no variable 'nope'.*variables: v"):
        Active(str(path), "nope")
    with pytest.raises(FormatError, match="no such file"):
        Active(str(tmp_path / "missing.nc"), "v")
    junk = tmp_path / "junk.nc"
    junk.write_bytes(b"hello world" * 10)
    with pytest.raises(FormatError, match="junk.nc"):
        Active(str(junk), "v")
    a = Active(str(path), "v")
    with pytest.raises(SelectionError, match=r"e.nc.*index 3 is out of bounds"):
        a.mean[3]
    with pytest.raises(SelectionError, match="axis 2 is out of bounds"):
        a.mean(axis=2)[...]
    with pytest.raises(ActiveStorageError):
        Active(str(path), "v", max_threads=0)


def test_corrupt_chunk_is_an_error_not_a_number(tmp_path):
    path = write_nc(tmp_path / "z.nc", np.arange(1000, dtype="f4").reshape(10, 100), chunks=[5, 100],
                    zlib=True)
    a = Active(str(path), "v")
    loc = next(iter(a.variable.chunks.values()))
    with open(path, "r+b") as f:
        f.seek(loc.offset + 2)
        f.write(b"\xff" * 16)
    with pytest.raises(ActiveStorageError, match="corrupt|zlib"):
        Active(str(path), "v").sum[...]


REAL = [("CMIP6_IPSL-CM6A-LR_tas.nc", "tas"), ("cesm2_native.nc", "TREFHT"),
        ("daily_data.nc", "ta"), ("daily_data_masked.nc", "ta")]


@pytest.mark.parametrize("name,var", REAL)
def test_real_files(name, var):
    path = SHARED / name
    with netCDF4.Dataset(path) as ds:
        x = ds[var][...]
    with Active(str(path), var) as a:
        sels = [Ellipsis, (slice(0, 12), slice(None), slice(1, 3)), (slice(None, None, 2), 0)]
        for sel, op in itertools.product(sels, OPS):
            assert_same(getattr(a, op)[sel], oracle(x[sel], op), x.dtype, op)
            assert_same(getattr(a, op)(axis=0)[sel], oracle(x[sel], op, 0), x.dtype, op)


def test_progress_bar_never_changes_results(tmp_path, capsys):
    data = np.arange(600, dtype="f4").reshape(60, 10)
    path = write_nc(tmp_path / "pb.nc", data, chunks=[1, 10])
    for flag in (True, False, None):
        with Active(str(path), "v", progress=flag, max_threads=2) as a:
            assert a.sum[...] == data.sum()


def test_server_list_builds_a_pool(tmp_path):
    from activestorage.active import _choose_backend
    from activestorage.backends.pool import ServerPool

    b = _choose_backend(None, "s3://bucket/x.nc", {"anon": True},
                        ["http://127.0.0.1:1", "http://127.0.0.1:2"])
    assert isinstance(b, ServerPool) and len(b.urls) == 2
    b.close()


def test_scalar_variables(tmp_path):
    path = tmp_path / "scalar.nc"
    with netCDF4.Dataset(path, "w") as ds:
        ds.createVariable("s", "f8", ()).assignValue(3.5)
        ds.createVariable("m", "i4", (), fill_value=-1).assignValue(-1)
    with Active(str(path), "s") as a:
        assert a[...] == 3.5 and a.mean[...] == 3.5 and a.count[...] == 1 and a.max[...] == 3.5
        c = a.sum(components=True)[...]
        assert c["sum"] == 3.5 and c["n"] == 1
    with Active(str(path), "m") as a:
        assert a.mean[...] is np.ma.masked and a.count[...] == 0


@pytest.mark.parametrize("use_mmap", [True, False])
def test_posix_reads_by_map_or_pread_agree(tmp_path, use_mmap):
    from activestorage.backends.posix import PosixBackend

    data = np.random.default_rng(2).normal(size=(30, 8, 9)).astype(">f4")
    path = write_nc(tmp_path / "r.nc", data, chunks=[1, 4, 9], attrs={"valid_min": np.float32(-1)})
    with netCDF4.Dataset(path) as ds:
        x = ds["v"][...]
    with Active(str(path), "v", backend=PosixBackend(use_mmap=use_mmap)) as a:
        for op in OPS:
            assert_same(getattr(a, op)(axis=(0, 2))[3:27:2], oracle(x[3:27:2], op, (0, 2)), "f4", op)
        np.testing.assert_array_equal(np.ma.filled(a[2:5], 0), np.ma.filled(x[2:5], 0))


def _select_in_child(a, want, q):
    q.put(bool(np.array_equal(a[...], want)))


def test_worker_threads_are_reused_and_survive_a_fork(tmp_path):
    """Worker threads persist between calls; a forked child (which inherits the executor but
    not its threads) starts its own instead of waiting forever."""
    import multiprocessing
    import threading

    data = np.arange(64 * 50, dtype="f4").reshape(64, 50)
    path = write_nc(tmp_path / "t.nc", data, chunks=[1, 50])
    with Active(str(path), "v", max_threads=2) as a:
        a[...]  # a selection: one task per chunk, on the worker threads
        first = {t.ident for t in threading.enumerate() if t.name.startswith("activestorage")}
        np.testing.assert_array_equal(a[...], data)
        again = {t.ident for t in threading.enumerate() if t.name.startswith("activestorage")}
        assert 1 <= len(first) <= 2 and again == first  # started once, not once per call
        ctx = multiprocessing.get_context("fork")
        q = ctx.Queue()
        child = ctx.Process(target=_select_in_child, args=(a, data, q))
        child.start()
        child.join(30)
        assert child.exitcode == 0 and q.get(timeout=5) is True
    assert not [t for t in threading.enumerate() if t.name.startswith("activestorage")]


def test_call_memory_does_not_grow_with_the_number_of_chunks(tmp_path):
    """Tasks, requests and partials are made a block at a time: a call over 40,000 chunks
    allocates about what one over 10,000 does (a list of every task alone would grow 4x), and
    its answers are right."""
    peaks = []
    for n in (100, 200):
        data = np.arange(n * n, dtype="f4").reshape(n, n) % 97
        path = write_nc(tmp_path / f"many{n}.nc", data, chunks=[1, 1])
        with Active(str(path), "v", max_threads=2) as a:
            a.variable  # the chunk index is read before measuring
            tracemalloc.start()
            try:
                mean = a.mean[...]
                axis = a.max(axis=0)[5:n - 3, :]
                peaks.append(tracemalloc.get_traced_memory()[1])
            finally:
                tracemalloc.stop()
        np.testing.assert_allclose(mean, data.astype("f8").mean(), rtol=1e-6)
        np.testing.assert_array_equal(axis, data[5:n - 3].max(axis=0))
    assert peaks[1] < 1.5 * peaks[0], f"traced peaks {peaks} for 10,000 and 40,000 chunks"


# ------------------------------------------------------- moments, ranges, weights (#21)

from helpers import MOMENT_OPS, assert_moments, moments_oracle  # noqa: E402


@st.composite
def user_weights(draw, var_shape, key, x_ndim, axis):
    """Weights in a form Active takes, and the same as an array over the variable."""
    kind = draw(st.sampled_from(["dict", "dict-selected", "tuple", "nd"]))
    w8 = st.floats(0.0, 4.0, allow_subnormal=False).map(float)  # w*x of a subnormal w underflows
    from activestorage.plan import normalize_key
    sel = normalize_key(key, var_shape)
    res = sel.result_axes
    if kind == "nd" or not x_ndim:
        wshape = tuple(n if draw(st.booleans()) else 1 for n in var_shape)
        w = np.array(draw(st.lists(w8, min_size=int(np.prod(wshape)),
                                   max_size=int(np.prod(wshape))))).reshape(wshape)
        return w, w
    axes = list(range(x_ndim)) if axis is None else list(axis)
    full = np.ones(var_shape)
    form: dict = {}
    for ua in axes:
        va = res[ua]
        n = var_shape[va]
        if draw(st.integers(0, 4)) == 0:
            form[ua] = None
            continue
        wv = np.array(draw(st.lists(w8, min_size=n, max_size=n)))
        if kind == "dict-selected":  # over the selected elements, in the selection's order
            idx = np.arange(n)[key[va] if va < len(key) and isinstance(key[va], slice)
                               else slice(None)]
            form[ua] = wv[idx]
            mask = np.zeros(n)
            mask[idx] = 1
            wv = wv * mask  # unselected positions play no part anyway
        else:
            form[ua] = wv
        full = full * wv.reshape(tuple(n if i == va else 1 for i in range(len(var_shape))))
    if kind == "tuple" and axis is not None:
        return tuple(form.get(ua) for ua in axis), full
    return form, full


@settings(max_examples=120, deadline=None, suppress_health_check=[
    HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(spec=datasets(), data=st.data())
def test_moments_and_weights_match_numpy_ma(tmp_path_factory, spec, data):
    """var/std/range/rms/sum_of_squares and weighted mean/sum/var/std: every dtype, layout,
    chunking, missing kind, strided and negative-step selection, axes, keepdims, ddof 0/1 and
    separable / N-D weights, against numpy.ma on netCDF4-python's masked read."""
    path = tmp_path_factory.mktemp("nc") / "x.nc"
    layout = spec["layout"]
    write_nc(path, spec["data"], chunks=spec["chunks"], zlib="zlib" in layout,
             shuffle="shuffle" in layout, fletcher32="fletcher32" in layout,
             endian=spec["endian"], attrs=spec["attrs"], fill_value=spec["fill"])
    with netCDF4.Dataset(path) as ds:
        full = ds["v"][...]
    key = tuple(k if not isinstance(k, int) or data.draw(st.booleans()) else slice(k, k + 1 or None)
                for k in data.draw(keys(full.shape)))
    x = full[key]
    nd = np.ndim(x)
    axis = None
    if nd and data.draw(st.booleans()):
        axis = tuple(sorted(data.draw(st.sets(st.integers(0, nd - 1), min_size=1))))
    op = data.draw(st.sampled_from(MOMENT_OPS + ["mean", "sum"]))
    kw: dict = {}
    wx = None
    if op in ("var", "std"):
        kw["ddof"] = data.draw(st.sampled_from([0, 1]))
    if op in ("mean", "sum", "var", "std") and (op in ("mean", "sum") or data.draw(st.booleans())):
        form, wfull = data.draw(user_weights(full.shape, key, nd, axis))
        kw["weights"] = form
        wx = np.broadcast_to(wfull, full.shape)[key]
    keepdims = data.draw(st.booleans())
    threads = data.draw(st.sampled_from([1, 2, 3]))
    with Active(str(path), "v", max_threads=threads) as a:
        got = getattr(a, op)(axis=axis, keepdims=keepdims, **kw)[key]
    want = moments_oracle(x, op, axis, keepdims, wx, kw.get("ddof", 0))
    assert_moments(got, want, op, spec["data"].dtype)


@pytest.mark.parametrize("scale,offset", [(0.5, 10.0), (-2.0, None), (None, 3.0)])
def test_moments_of_packed_data(tmp_path, scale, offset):
    path = tmp_path / "p.nc"
    rng = np.random.default_rng(1)
    raw = rng.integers(-1000, 1000, (6, 8)).astype(np.int16)
    raw[0, :3] = -1
    with netCDF4.Dataset(path, "w") as ds:
        ds.createDimension("t", 6)
        ds.createDimension("y", 8)
        v = ds.createVariable("v", "i2", ("t", "y"), chunksizes=(4, 3), fill_value=-1)
        v.set_auto_maskandscale(False)
        if scale is not None:
            v.scale_factor = scale
        if offset is not None:
            v.add_offset = offset
        v[...] = raw
    with netCDF4.Dataset(path) as ds:
        x = ds["v"][...]
    w = {1: np.linspace(0.5, 2, 8)}
    wx = np.broadcast_to(w[1], x.shape)
    with Active(str(path), "v") as a:
        for op in MOMENT_OPS:
            assert_moments(a.__getattribute__(op)[...], moments_oracle(x, op), op, x.dtype)
            assert_moments(getattr(a, op)(axis=0)[1:], moments_oracle(x[1:], op, 0), op, x.dtype)
        for op in ("mean", "sum", "var", "std"):
            assert_moments(getattr(a, op)(axis=1, weights=w)[...],
                           moments_oracle(x, op, 1, weights=wx), op, x.dtype)


def test_weights_from_a_cell_measures_variable_and_errors(tmp_path):
    path = tmp_path / "w.nc"
    rng = np.random.default_rng(2)
    data = (280 + 10 * rng.standard_normal((5, 4, 6))).astype(np.float32)
    area = rng.random((4, 6)) + 0.1
    with netCDF4.Dataset(path, "w") as ds:
        for name, n in zip(("time", "lat", "lon"), data.shape):
            ds.createDimension(name, n)
        v = ds.createVariable("tas", "f4", ("time", "lat", "lon"), chunksizes=(2, 3, 4),
                              fill_value=1e20)
        v.cell_measures = "area: areacella"
        v[...] = data
        v[0, 0, 0] = np.ma.masked
        ds.createVariable("areacella", "f8", ("lat", "lon"))[...] = area
        ds.createVariable("wt", "f8", ("time",))[...] = np.arange(1.0, 6.0)
    with netCDF4.Dataset(path) as ds:
        x = ds["tas"][...]
    with Active(str(path), "tas") as a:
        want = moments_oracle(x, "mean", (1, 2), weights=area)
        assert_moments(a.mean(axis=(1, 2), weights="area")[...], want, "mean", x.dtype)
        assert_moments(a.mean(axis=(1, 2), weights="areacella")[...], want, "mean", x.dtype)
        tw = np.arange(1.0, 6.0)[:, None, None]  # aligned by dimension name, not trailing
        assert_moments(a.var(axis=0, weights="wt", ddof=1)[...],
                       moments_oracle(x, "var", 0, weights=tw, ddof=1), "var", x.dtype)
        with pytest.raises(InvalidArgumentError, match="no such variable.*cell_measures"):
            a.mean(weights="volume")[...]
        with pytest.raises(InvalidArgumentError, match=r"axis 1 have length 5, but that axis has "
                                                       r"4 elements \(2 selected\)"):
            a.mean(axis=1, weights={1: np.ones(5)})[:, 1:3]
        with pytest.raises(InvalidArgumentError, match="do not broadcast"):
            a.sum(weights=np.ones((3, 6)))[...]
        with pytest.raises(InvalidArgumentError, match="finite and not negative"):
            a.mean(axis=2, weights={2: -np.ones(6)})[...]
        with pytest.raises(InvalidArgumentError, match="one entry per reduced axis"):
            a.mean(axis=(1, 2), weights=(np.ones(4),))[...]
        for op in ("min", "max", "count", "range", "rms"):
            with pytest.raises(InvalidArgumentError, match=f"weights apply to .*not {op}"):
                getattr(a, op)(weights="area")[...]
        for op in ("mean", "sum", "min", "range", "rms"):
            with pytest.raises(InvalidArgumentError, match=f"ddof applies to var, std, not {op}"):
                getattr(a, op)(ddof=1)[...]
        with pytest.raises(InvalidArgumentError, match="ddof must be a number"):
            a.var(ddof=-1)[...]


def test_moments_components_are_documented_names(tmp_path):
    path = write_nc(tmp_path / "c.nc", np.arange(24, dtype=np.float64).reshape(4, 6),
                    chunks=[2, 3])
    with Active(str(path), "v") as a:
        comp = a.var(axis=0, components=True)[...]
        assert set(comp) == {"n", "sw", "mean", "m2", "sw2"}
        assert comp["mean"].shape == (1, 6)
        np.testing.assert_allclose(comp["m2"] / comp["n"], np.var(a[...], axis=0,
                                                                  keepdims=True))
        wc = a.mean(axis=1, components=True, weights={1: np.arange(6.0)})[...]
        assert set(wc) == {"sum", "sw", "sw2", "n"}
        np.testing.assert_allclose(wc["sum"][:, 0], a[...] @ np.arange(6.0))
        np.testing.assert_allclose(wc["sw"], 15.0)
        np.testing.assert_allclose(wc["sw2"], 55.0)
        assert set(a.range(components=True)[...]) == {"min", "max", "n"}


@pytest.mark.parametrize("key,axis", [
    ((slice(None), [0, 1, 5, 7], slice(None)), None),
    ((slice(None), [0, 1, 5, 7], slice(None)), 1),
    ((slice(None), [0, 1, 5, 7], slice(None)), (0, 2)),
    (([3, 0, 4], slice(1, None, 2), [2, 3, 0]), (0, 2)),
])
def test_moments_over_list_indices(tmp_path, key, axis):
    """Orthogonal (list) indices: the boxes' moments/minmax components fold along reduced list
    axes and finish as one selection would."""
    rng = np.random.default_rng(4)
    data = (rng.standard_normal((5, 8, 6)) * 10 + 100).astype(np.float32)
    data[rng.random(data.shape) < 0.15] = -1
    path = write_nc(tmp_path / "o.nc", data, chunks=[2, 3, 4], fill_value=np.float32(-1))
    with netCDF4.Dataset(path) as ds:
        x = ds["v"][...]
    xk = x
    for ax, k in enumerate(key):  # orthogonal selection, axis by axis
        xk = xk[(slice(None),) * ax + (k,)]
    with Active(str(path), "v") as a:
        for op in MOMENT_OPS:
            kw = {"ddof": 1} if op in ("var", "std") else {}
            got = getattr(a, op)(axis=axis, **kw)[key]
            assert_moments(got, moments_oracle(xk, op, axis, ddof=kw.get("ddof", 0)), op,
                           x.dtype)
        with pytest.raises(UnsupportedError, match="weights over list"):
            a.mean(weights=np.ones(6))[key]
