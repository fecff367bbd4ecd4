"""The xarray accessor (activestorage.xarray) against xarray's own reductions of the same data.

Every active answer is compared with the DataArray method of the same name on a second, loaded
copy of the dataset (reducing the lazy copy with xarray would cache its values in memory, after
which the accessor rightly refuses it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import activestorage.xarray as ax
from activestorage.errors import UnsupportedError

DATA = Path(__file__).parent / "data"
CMIP6 = DATA / "CMIP6_IPSL-CM6A-LR_tas.nc"
CESM2 = DATA / "cesm2_native.nc"
DAILY_MASKED = DATA / "daily_data_masked.nc"
OPS = ("mean", "min", "max", "sum", "count", "var", "std")
WOPS = ("mean", "sum", "var", "std", "sum_of_weights")


def open_pair(path, **kw):
    """(lazy dataset for the accessor, loaded dataset for xarray's oracle)."""
    return xr.open_dataset(path, **kw), xr.open_dataset(path, **kw).load()


def check(got: xr.DataArray, want: xr.DataArray, op: str, dims=("?",),
          values: xr.DataArray | None = None) -> None:
    """Same values (as ``values`` if given), dims, coordinates and dtype; attrs as xarray's
    plus CF cell_methods."""
    xr.testing.assert_allclose(got.drop_attrs(), (want if values is None else values
                                                  ).drop_attrs(), rtol=2e-5)
    assert got.dtype == want.dtype, (op, got.dtype, want.dtype)
    assert got.name == want.name
    extra = {k: v for k, v in got.attrs.items() if k != "cell_methods"}
    assert extra == {k: v for k, v in want.attrs.items() if k != "cell_methods"}
    if want.attrs and ax.OPERATIONS[op] and dims:
        assert got.attrs["cell_methods"].endswith(f" {ax.OPERATIONS[op]}")


def reduce_both(lazy: xr.DataArray, loaded: xr.DataArray, op: str, dim, **kw) -> None:
    got = getattr(lazy.active, op)(dim, **kw)
    want = getattr(loaded, op)(dim, **kw)
    check(got, want, op, ax._dims(lazy, dim), exact(loaded, op, dim, **kw))


def exact(loaded: xr.DataArray, op: str, dim, **kw) -> xr.DataArray | None:
    """xarray's var/std of float32 data accumulate in float32 (a constant field's variance is
    1.5e-5, not 0); ours merges float64 moments: their values are xarray's on float64 data."""
    if op not in ("var", "std") or loaded.dtype != np.float32:
        return None
    return getattr(loaded.astype("f8"), op)(dim, **kw).astype(np.float32)


@pytest.fixture(scope="module")
def netcdf3(tmp_path_factory) -> Path:
    """A netCDF-3 file: cftime (noleap) times, descending latitude, missing values."""
    rng = np.random.default_rng(3)
    time = xr.date_range("2000-01-01", periods=24, freq="MS", calendar="noleap",
                         use_cftime=True)
    lat = np.linspace(80, -80, 9)
    lon = np.arange(0, 360, 30.0)
    tas = rng.normal(280, 10, (24, 9, 12)).astype("f4")
    tas[3, 2, :] = np.nan
    tas[7, :, 4] = np.nan
    ds = xr.Dataset({"tas": (("time", "lat", "lon"), tas,
                             {"units": "K", "standard_name": "air_temperature"})},
                    coords={"time": time, "lat": lat, "lon": lon})
    ds.tas.encoding["_FillValue"] = np.float32(-999.0)
    path = tmp_path_factory.mktemp("nc3") / "tas3.nc"
    ds.to_netcdf(path, format="NETCDF3_CLASSIC", engine="netcdf4")
    return path


@pytest.fixture(scope="module")
def zarr_store(tmp_path_factory) -> Path:
    """A Zarr v3 store with several chunks, missing values and an unwritten region."""
    rng = np.random.default_rng(4)
    time = np.arange("2001-01-01", "2001-01-21", dtype="datetime64[D]").astype("datetime64[ns]")
    data = rng.normal(0, 1, (20, 6, 8))
    data[5:8, 1, 1] = np.nan
    ds = xr.Dataset({"pr": (("time", "y", "x"), data, {"units": "mm"})},
                    coords={"time": time, "y": np.arange(6.0)[::-1], "x": np.arange(8.0)})
    ds.pr.encoding.update(chunks=(4, 3, 4), _FillValue=-1e30)
    path = tmp_path_factory.mktemp("zarr") / "pr.zarr"
    ds.to_zarr(path, zarr_format=3, consolidated=False)
    return path


# ---------------------------------------------------------------------------- every format

@pytest.mark.parametrize("engine", ["h5netcdf", "netcdf4"])
@pytest.mark.parametrize("op", OPS)
def test_netcdf4_real_file_matches_xarray(engine, op):
    lazy, loaded = open_pair(CMIP6, engine=engine)
    for dim in (None, "time", ("lat", "lon"), ["time", "lon"]):
        reduce_both(lazy.tas, loaded.tas, op, dim)


@pytest.mark.parametrize("op", OPS)
def test_missing_data_real_files(op):
    for path, var in ((CESM2, "TREFHT"), (DAILY_MASKED, "ta")):
        lazy, loaded = open_pair(path, engine="h5netcdf")
        assert int(loaded[var].isnull().sum()) > 0 or path == CESM2
        for dim in (None, lazy[var].dims[0], lazy[var].dims[1:]):
            reduce_both(lazy[var], loaded[var], op, dim)


@pytest.mark.parametrize("op", OPS)
def test_netcdf3_cftime_descending_latitude(netcdf3, op):
    lazy, loaded = open_pair(netcdf3, engine="netcdf4")
    assert isinstance(lazy.time.values[0], type(loaded.time.values[0]))
    assert lazy.lat.values[0] > lazy.lat.values[-1]
    for sel in (dict(time=slice("2000-03", "2000-11")), dict(lat=slice(50, -30)),
                dict(time="2000-05", lat=slice(None, 0)), dict(lon=slice(60, 200))):
        for dim in (None, "lon", ("lat", "lon")):
            reduce_both(lazy.tas.sel(sel), loaded.tas.sel(sel), op, dim)


@pytest.mark.parametrize("op", OPS)
def test_zarr_matches_xarray(zarr_store, op):
    lazy, loaded = open_pair(zarr_store, engine="zarr", consolidated=False)
    for sel in ({}, dict(time=slice("2001-01-03", "2001-01-15")), dict(y=slice(4, 1)),
                dict(x=3)):
        for dim in (None, "time", ("y", "x")):
            if dim == ("y", "x") and "x" in sel:
                dim = "y"
            reduce_both(lazy.pr.sel(sel), loaded.pr.sel(sel), op, dim)


# ------------------------------------------------------------------- selections, properties

def test_label_and_scalar_selections_numpy_datetimes():
    lazy, loaded = open_pair(CMIP6, engine="h5netcdf")
    sels = [lambda d: d.sel(time=slice("1850-03", "1850-09")),
            lambda d: d.sel(time="1850-06"),                       # one month, kept dim
            lambda d: d.sel(time=np.datetime64("1850-06-16"), method="nearest"),  # dropped
            lambda d: d.sel(lat=45, method="nearest").sel(lon=slice(100, 200)),
            lambda d: d.isel(time=-1, lon=7),
            lambda d: d.sel(lat=slice(-30, 30)).isel(time=slice(None, None, 4)),
            lambda d: d.sel(lon=[10.0, 12.5, 15.0], method="nearest")]  # an even label list
    for sel in sels:
        a, b = sel(lazy.tas), sel(loaded.tas)
        for op in OPS:
            reduce_both(a, b, op, None)
            reduce_both(a, b, op, a.dims[-1])


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_slices_and_dims_match_xarray(data):
    """Any slice (negative steps too) or scalar on each axis, any subset of dims, any op."""
    lazy, loaded = _CMIP6_PAIR
    key = {}
    for name, n in lazy.tas.sizes.items():
        if data.draw(st.booleans(), label=f"scalar {name}"):
            key[name] = data.draw(st.integers(-n, n - 1), label=name)
        else:
            start = data.draw(st.none() | st.integers(-n - 2, n + 2))
            stop = data.draw(st.none() | st.integers(-n - 2, n + 2))
            step = data.draw(st.none() | st.integers(-7, 7).filter(bool))
            key[name] = slice(start, stop, step)
    a, b = lazy.tas.isel(key), loaded.tas.isel(key)
    # xarray (2026.9) sizes a lazy isel(slice(-n - 1, None, -1)) wrongly: the data claims n
    # elements, its coordinate 0 (range() gives 0); such a DataArray cannot even drop a variable
    expected = {d: len(range(n)[k]) for (d, n), k in zip(lazy.tas.sizes.items(), key.values())
                if isinstance(k, slice)}
    assume(dict(a.sizes) == expected)
    dims = data.draw(st.lists(st.sampled_from(a.dims), unique=True) if a.dims else st.just([]))
    op = data.draw(st.sampled_from(OPS))
    skipna = data.draw(st.sampled_from([None, True, False]))
    kw = {} if op == "count" else {"skipna": skipna}
    if op in ("var", "std"):
        kw["ddof"] = data.draw(st.sampled_from([0, 1]))
    if not a.size:  # noqa: SIM108
        assume(False)  # empty selections: xarray warns and answers NaN
    reduce_both(a, b, op, dims or None, **kw)


_CMIP6_PAIR = open_pair(CMIP6, engine="h5netcdf")


def test_skipna_false_and_min_count(netcdf3):
    lazy, loaded = open_pair(netcdf3, engine="netcdf4")
    for op in ("mean", "min", "max", "sum"):
        reduce_both(lazy.tas, loaded.tas, op, "lon", skipna=False)
        reduce_both(lazy.tas, loaded.tas, op, ("lat", "lon"), skipna=False)
    for min_count in (1, 5, 12):
        reduce_both(lazy.tas, loaded.tas, "sum", "lon", min_count=min_count)
    got = lazy.tas.active.mean("lon", skipna=False)
    assert got.isnull().sum() > 0  # rows with a missing value are NaN, not skipped


@pytest.mark.parametrize("keep_attrs", [None, True, False])
def test_keep_attrs_and_cell_methods(keep_attrs):
    lazy, loaded = open_pair(CMIP6, engine="h5netcdf")
    got = lazy.tas.active.mean("time", keep_attrs=keep_attrs)
    want = loaded.tas.mean("time", keep_attrs=keep_attrs)
    check(got, want, "mean")
    if want.attrs:
        before = loaded.tas.attrs["cell_methods"]
        assert got.attrs["cell_methods"] == f"{before} time: mean"
        assert lazy.tas.active.max(("lat", "lon"), keep_attrs=True).attrs["cell_methods"] \
            == f"{before} lat: lon: maximum"
        assert "cell_methods" not in got.attrs or lazy.tas.active.count(
            "time", keep_attrs=True).attrs["cell_methods"] == before  # count is no cell method
    else:
        assert got.attrs == {}


def test_coordinates_survive_like_xarray():
    lazy, loaded = open_pair(CMIP6, engine="h5netcdf")
    got = lazy.tas.active.mean(("lat", "lon"))
    want = loaded.tas.mean(("lat", "lon"))
    assert set(got.coords) == set(want.coords)  # the scalar "height" coordinate stays
    xr.testing.assert_identical(got.time, want.time)
    assert list(got.indexes) == ["time"]


def test_last_stats_report_what_moved():
    lazy, _ = open_pair(CMIP6, engine="h5netcdf")
    tas = lazy.tas
    assert tas.active.last_stats is None
    m = tas.active.mean(("lat", "lon"))
    stats = tas.active.last_stats
    assert stats is m.active.last_stats
    assert stats.operation == "mean" and stats.chunks_touched == 1 and stats.bytes_read > 0
    configured = tas.active(max_threads=1)
    configured.sum()
    assert configured.last_stats.operation == "sum" and tas.active.last_stats is configured.last_stats


# --------------------------------------------------------------------------------- dask

@pytest.mark.filterwarnings("ignore:The specified chunks separate")
@pytest.mark.parametrize("op", OPS)
def test_dask_backed_arrays_give_lazy_equal_results(op):
    chunked = xr.open_dataset(CMIP6, engine="h5netcdf", chunks={"time": 5})
    plain, loaded = open_pair(CMIP6, engine="h5netcdf")
    for sel in (lambda d: d, lambda d: d.isel(time=slice(2, 13), lat=5),
                lambda d: d.sel(time=slice("1850-02", None)).isel(lon=slice(140, 3, -3)),
                lambda d: d.isel(time=slice(1, None, 4)).isel(lat=slice(10, 100))):
        c, p, b = sel(chunked.tas), sel(plain.tas), sel(loaded.tas)
        for dim in (None, "lon", c.dims[0]):
            got = getattr(c.active, op)(dim)
            assert got.chunks is not None  # lazy, like xarray's own result on Dask arrays
            computed = got.compute()
            check(computed, getattr(b, op)(dim), op, values=exact(b, op, dim))
            xr.testing.assert_allclose(computed, getattr(p.active, op)(dim), rtol=1e-6)


def test_dask_graph_comes_from_activestorage_dask():
    chunked = xr.open_dataset(CMIP6, engine="h5netcdf", chunks={})
    got = chunked.tas.active.mean("time")
    names = [str(k) for k in got.data.dask.layers]
    assert any(n.startswith("active-sum") for n in names) and any(
        n.startswith("regions-") for n in names)


@pytest.mark.filterwarnings("ignore:The specified chunks separate")
def test_dask_after_other_operations_is_refused_or_falls_back():
    chunked = xr.open_dataset(CMIP6, engine="h5netcdf", chunks={"time": 5})
    shifted = chunked.tas + 1
    with pytest.raises(ax.NotActiveError, match="fallback=True"):
        shifted.active.mean("time")
    got = shifted.active(fallback=True).mean("time").compute()
    xr.testing.assert_allclose(got.drop_attrs(), (chunked.tas + 1).mean("time").compute())


# ------------------------------------------------------------------------------- errors

def test_in_memory_array_is_a_clear_error_or_falls_back():
    _, loaded = open_pair(CMIP6, engine="h5netcdf")
    with pytest.raises(ax.NotActiveError, match="in memory|loaded") as info:
        loaded.tas.active.mean("time")
    assert isinstance(info.value, UnsupportedError)
    got = loaded.tas.active.mean("time", fallback=True)
    check(got, loaded.tas.mean("time"), "mean")
    assert loaded.tas.active(fallback=True).max().item() == pytest.approx(float(loaded.tas.max()))
    computed = xr.DataArray(np.arange(6.0), dims="x")
    with pytest.raises(ax.NotActiveError):
        computed.active.sum()


def test_transposed_and_uneven_selections_are_refused():
    lazy, loaded = open_pair(CMIP6, engine="h5netcdf")
    with pytest.raises(ax.NotActiveError, match="transposed"):
        lazy.tas.transpose("lon", "lat", "time").active.mean("time")
    uneven = lazy.tas.isel(lat=[1, 2, 7])
    with pytest.raises(ax.NotActiveError, match="not evenly spaced"):
        uneven.active.mean("lat")
    check(uneven.active.mean("lat", fallback=True), loaded.tas.isel(lat=[1, 2, 7]).mean("lat"),
          "mean")


def test_undecoded_or_valid_range_variables_are_refused(tmp_path):
    raw = xr.open_dataset(CESM2, engine="h5netcdf", mask_and_scale=False)
    with pytest.raises(ax.NotActiveError, match="without CF decoding"):
        raw.TREFHT.active.mean()
    ds = xr.Dataset({"v": ("x", np.arange(10.0), {"valid_max": 7.0})})
    ds.to_netcdf(tmp_path / "v.nc", engine="h5netcdf")
    lazy = xr.open_dataset(tmp_path / "v.nc", engine="h5netcdf")
    with pytest.raises(ax.NotActiveError, match="valid_max"):
        lazy.v.active.max()
    assert lazy.v.active.max(fallback=True).item() == 9.0  # xarray's semantics


def test_unknown_dimension_is_named():
    lazy, _ = open_pair(CMIP6, engine="h5netcdf")
    with pytest.raises(ax.DimensionError, match="'level'"):
        lazy.tas.active.mean("level")
    with pytest.raises(ValueError):
        lazy.tas.active.mean(["time", "time"])


# --------------------------------------------------------------------- var, std, weighted

def reduce_weighted(lazy, loaded, weights, op, dim, wloaded=None, **kw):
    got = getattr(lazy.active.weighted(weights), op)(dim, **kw)
    want = getattr(loaded.weighted(weights if wloaded is None else wloaded), op)(dim, **kw)
    # xarray sums float32 data in float32 (we in float64): 2e-5 as in check()
    xr.testing.assert_allclose(got.drop_attrs(), want.drop_attrs(), rtol=2e-5)
    assert got.dtype == want.dtype, (op, got.dtype, want.dtype)
    assert {k: v for k, v in got.attrs.items() if k != "cell_methods"} == \
        {k: v for k, v in want.attrs.items() if k != "cell_methods"}
    method = ax.WEIGHTED_OPERATIONS[op]
    if want.attrs and method:
        assert got.attrs["cell_methods"].endswith(f" {method}")
    return got


@pytest.mark.parametrize("ddof", [0, 1])
def test_var_std_ddof_match_xarray(ddof):
    lazy, loaded = open_pair(CMIP6, engine="h5netcdf")
    for op in ("var", "std"):
        for dim in (None, "time", ("lat", "lon")):
            reduce_both(lazy.tas, loaded.tas, op, dim, ddof=ddof)
        reduce_both(lazy.tas.isel(lat=3, lon=5), loaded.tas.isel(lat=3, lon=5), op, "time",
                    ddof=ddof)  # one series: 15 values
    got = lazy.tas.active.var(("lat", "lon"), keep_attrs=True)
    assert got.attrs["cell_methods"].endswith("lat: lon: variance")


def test_var_std_missing_data_and_too_few_values(netcdf3):
    lazy, loaded = open_pair(netcdf3, engine="netcdf4")
    for op in ("var", "std"):
        for ddof in (0, 1):
            for skipna in (None, False):
                reduce_both(lazy.tas, loaded.tas, op, "lon", ddof=ddof, skipna=skipna)
                reduce_both(lazy.tas, loaded.tas, op, ("time", "lat"), ddof=ddof,
                            skipna=skipna)
    one = dict(time=slice(0, 1))  # a single value per (lat, lon): ddof=1 gives NaN, as xarray
    with np.errstate(invalid="ignore", divide="ignore"):
        reduce_both(lazy.tas.isel(one), loaded.tas.isel(one), "var", "time", ddof=1)


def test_var_of_large_offset_float32_is_accurate(tmp_path):
    """1e6 + noise in float32: the moments merge keeps the digits a naive sum of squares
    loses; the answer equals float64 NumPy's."""
    rng = np.random.default_rng(5)
    x = (1e6 + rng.standard_normal((40, 30))).astype("f4")
    ds = xr.Dataset({"v": (("t", "x"), x)})
    ds.v.encoding["chunksizes"] = (7, 11)
    ds.to_netcdf(tmp_path / "big.nc", engine="h5netcdf")
    lazy = xr.open_dataset(tmp_path / "big.nc", engine="h5netcdf")
    got = lazy.v.active.var("t").values
    np.testing.assert_allclose(got, x.astype("f8").var(axis=0), rtol=1e-6)
    whole = xr.open_dataset(tmp_path / "big.nc", engine="h5netcdf").v.active.var()
    np.testing.assert_allclose(float(whole), x.astype("f8").var(), rtol=1e-6)


@pytest.mark.parametrize("op", WOPS)
def test_weighted_cos_lat_and_area_match_xarray(op):
    lazy, loaded = open_pair(CMIP6, engine="h5netcdf")
    cos_lat = np.cos(np.deg2rad(loaded.lat.astype("f8")))
    area = cos_lat * xr.DataArray(np.linspace(1, 2, loaded.sizes["lon"]), dims="lon",
                                  coords={"lon": loaded.lon})  # N-D: over lat and lon
    for w in (cos_lat, area):
        for dim in (("lat", "lon"), "lat", None, "time"):
            reduce_weighted(lazy.tas, loaded.tas, w, op, dim)
        for sel in (lambda d: d.sel(time=slice("1850-03", "1850-09")),
                    lambda d: d.sel(lat=slice(-30, 60)),
                    lambda d: d.sel(time="1850-06", lon=slice(100, 200)),
                    lambda d: d.isel(time=4),  # a scalar selection drops time
                    lambda d: d.isel(lon=slice(None, None, 7), lat=slice(140, 2, -3))):
            a, b = sel(lazy.tas), sel(loaded.tas)
            for dim in (None, a.dims[-1]):
                reduce_weighted(a, b, w, op, dim)


@pytest.mark.parametrize("op", WOPS)
def test_weighted_missing_data_cftime_descending_latitude(netcdf3, op):
    lazy, loaded = open_pair(netcdf3, engine="netcdf4")
    w = np.cos(np.deg2rad(loaded.lat.astype("f8")))
    for sel in ({}, dict(time=slice("2000-03", "2000-11")), dict(lat=slice(50, -30))):
        a, b = lazy.tas.sel(sel), loaded.tas.sel(sel)
        for dim in (("lat", "lon"), "lon", "time"):
            reduce_weighted(a, b, w, op, dim)
            if op != "sum_of_weights":
                reduce_weighted(a, b, w, op, dim, skipna=False)


@pytest.mark.parametrize("op", WOPS)
def test_weighted_zarr(zarr_store, op):
    lazy, loaded = open_pair(zarr_store, engine="zarr", consolidated=False)
    w = xr.DataArray(np.linspace(0.5, 2.0, loaded.sizes["y"]), dims="y",
                     coords={"y": loaded.y})  # y descends; selected by label like the data
    for sel in ({}, dict(time=slice("2001-01-03", "2001-01-15")), dict(y=slice(4, 1))):
        a, b = lazy.pr.sel(sel), loaded.pr.sel(sel)
        for dim in (("y", "x"), "y", "time"):
            reduce_weighted(a, b, w, op, dim)


def test_weights_variable_of_the_same_file_is_read_where_the_data_is():
    """CESM2's Gaussian weights ``gw(lat)``: a lazily opened variable of the dataset."""
    lazy, loaded = open_pair(CESM2, engine="h5netcdf")
    for op in WOPS:
        reduce_weighted(lazy.TREFHT, loaded.TREFHT, lazy.gw, op, ("lat", "lon"),
                        wloaded=loaded.gw)
        reduce_weighted(lazy.TREFHT.isel(lat=slice(1, 3)), loaded.TREFHT.isel(lat=slice(1, 3)),
                        lazy.gw, op, "lat", wloaded=loaded.gw)
    assert ax._same_dataset_variable(lazy.TREFHT, lazy.gw) == "gw"
    ax.find_origin(lazy.gw)  # still lazy: sent by name, never loaded here
    assert ax._same_dataset_variable(lazy.TREFHT, lazy.gw.isel(lat=slice(1, 3))) is None
    assert ax._same_dataset_variable(lazy.TREFHT, loaded.gw) is None


@pytest.mark.filterwarnings("ignore:The specified chunks separate")
def test_dask_backed_var_and_weighted_are_lazy_and_equal():
    chunked = xr.open_dataset(CMIP6, engine="h5netcdf", chunks={"time": 5})
    _, loaded = open_pair(CMIP6, engine="h5netcdf")
    w = np.cos(np.deg2rad(loaded.lat.astype("f8")))
    for sel in (lambda d: d, lambda d: d.isel(time=slice(2, 13), lon=slice(10, 90))):
        c, b = sel(chunked.tas), sel(loaded.tas)
        for dim in (("lat", "lon"), "time"):
            got = c.active.var(dim, ddof=1)
            assert got.chunks is not None
            check(got.compute(), b.var(dim, ddof=1), "var", values=exact(b, "var", dim, ddof=1))
            got = c.active.weighted(w).mean(dim)
            assert got.chunks is not None
            xr.testing.assert_allclose(got.compute().drop_attrs(),
                                       b.weighted(w).mean(dim).drop_attrs(), rtol=1e-6)


def test_weighted_errors_are_clear():
    lazy, loaded = open_pair(CMIP6, engine="h5netcdf")
    with pytest.raises(TypeError, match="DataArray"):
        lazy.tas.active.weighted(np.ones(143))
    with pytest.raises(ax.DimensionError, match="'level'"):
        lazy.tas.active.weighted(xr.DataArray(np.ones(3), dims="level")).mean()
    nan_weights = xr.DataArray(np.where(np.arange(143) == 3, np.nan, 1.0), dims="lat")
    with pytest.raises(ValueError, match="missing values"):
        lazy.tas.active.weighted(nan_weights).mean(("lat", "lon"))
    with pytest.raises(ValueError, match="missing values"):  # xarray says the same
        loaded.tas.weighted(nan_weights).mean(("lat", "lon"))
    short = xr.DataArray(np.ones(10), dims="lat")
    with pytest.raises(ValueError, match="'lat'"):
        lazy.tas.active.weighted(short).mean()
    in_memory = loaded.tas.active.weighted(np.cos(np.deg2rad(loaded.lat.astype("f8"))))
    with pytest.raises(ax.NotActiveError):
        in_memory.mean(("lat", "lon"))
    got = in_memory.mean(("lat", "lon"), fallback=True)
    xr.testing.assert_allclose(got.drop_attrs(), loaded.tas.weighted(
        np.cos(np.deg2rad(loaded.lat.astype("f8")))).mean(("lat", "lon")).drop_attrs())
    assert "ActiveWeighted" in repr(lazy.tas.active.weighted(nan_weights.fillna(1)))


def test_user_guide_example_runs_and_matches_xarray():
    page = Path(__file__).parents[1] / "docs" / "user-guide" / "xarray.md"
    block = page.read_text().split("<!-- tested: xarray-global-mean -->", 1)[1]
    code = block.split("```python\n", 1)[1].split("```", 1)[0]
    ns: dict = {}
    exec(compile(code, str(page), "exec"), ns)
    series, stats = ns["global_mean"](CMIP6)
    want = xr.open_dataset(CMIP6, engine="h5netcdf").tas.sel(
        time=slice("1850-01", "1850-12")).load().mean(("lat", "lon"))
    check(series, want, "mean", ("lat", "lon"))
    assert series.sizes == {"time": 12} and "height" in series.coords
    assert stats.bytes_read == 942_518 and stats.chunks_touched == 1  # the figures in the page
    loaded = xr.open_dataset(CMIP6, engine="h5netcdf").load()
    assert ns["warmest_month"](CMIP6).item() == loaded.tas.sel(lat=slice(-30, 30)).max(
        ("lat", "lon")).idxmax("time").item()
