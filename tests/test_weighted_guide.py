"""docs/user-guide/weighted.md: its tested example runs and its answers are NumPy's."""

from __future__ import annotations

from pathlib import Path

import netCDF4
import numpy as np
import pytest
import xarray as xr

import activestorage.xarray  # noqa: F401
from activestorage import Active

ROOT = Path(__file__).parents[1]
PAGE = ROOT / "docs" / "user-guide" / "weighted.md"
CMIP6 = ROOT / "tests" / "data" / "CMIP6_IPSL-CM6A-LR_tas.nc"


@pytest.fixture(scope="module")
def example() -> dict:
    block = PAGE.read_text().split("<!-- tested: weighted-global-mean -->", 1)[1]
    code = block.split("```python\n", 1)[1].split("```", 1)[0]
    ns: dict = {}
    exec(compile(code, str(PAGE), "exec"), ns)
    return ns


def _tas_and_lat(path) -> tuple[np.ma.MaskedArray, np.ndarray]:
    with netCDF4.Dataset(path) as nc:
        return np.ma.asarray(nc["tas"][:], np.float64), nc["lat"][:].astype("f8")


def test_cos_lat_series_is_np_ma_average(example):
    series, stats = example["cos_lat_series"](str(CMIP6))
    tas, lat = _tas_and_lat(CMIP6)
    w = np.broadcast_to(np.cos(np.deg2rad(lat))[None, :, None], tas.shape)
    want = np.ma.average(tas, axis=(1, 2), weights=w)
    np.testing.assert_allclose(series, want, rtol=1e-12)
    assert stats.backend == "posix" and stats.chunks_touched == 1
    warmer = series - tas.mean(axis=(1, 2))
    assert 8.6 < warmer.min() and warmer.max() < 11.1  # the figures in the page


def test_area_series_reads_cell_measures_and_agrees(example, tmp_path):
    path = example["add_cell_areas"](str(CMIP6), str(tmp_path / "tas_area.nc"))
    series = example["area_series"](path)
    tas, _ = _tas_and_lat(path)
    with netCDF4.Dataset(path) as nc:
        area = nc["areacella"][:].astype("f8")
        assert nc["tas"].cell_measures == "area: areacella"
    want = np.ma.average(tas, axis=(1, 2), weights=np.broadcast_to(area, tas.shape))
    np.testing.assert_allclose(series, want, rtol=1e-12)
    cos_lat, _ = example["cos_lat_series"](str(CMIP6))
    assert np.abs(series - cos_lat).max() < 0.004  # the page's figure
    np.testing.assert_allclose(area.sum(), 4 * np.pi * 6_371_000.0**2, rtol=1e-6)
    # the page's xarray lines: the area variable of the same file, read by name
    ds = xr.open_dataset(path, engine="h5netcdf")
    got = ds.tas.active.weighted(ds.areacella).mean(("lat", "lon"))
    np.testing.assert_allclose(got.values, want, rtol=1e-6)


def test_monthly_spread_is_np_ma_std_and_ptp(example):
    std, rng = example["monthly_spread"](str(CMIP6))
    tas, _ = _tas_and_lat(CMIP6)
    flat = tas.reshape(tas.shape[0], -1)
    np.testing.assert_allclose(std, flat.std(axis=1, ddof=1), rtol=1e-12)
    np.testing.assert_allclose(rng, np.ptp(flat, axis=1), rtol=1e-7)


def test_xarray_lines_of_the_page_match_xarray():
    ds = xr.open_dataset(CMIP6, engine="h5netcdf")
    loaded = xr.open_dataset(CMIP6, engine="h5netcdf").load()
    cos_lat = np.cos(np.deg2rad(loaded.lat.astype("f8")))
    got = ds.tas.active.weighted(cos_lat).mean(("lat", "lon"))
    want = loaded.tas.weighted(cos_lat).mean(("lat", "lon"))
    xr.testing.assert_allclose(got.drop_attrs(), want.drop_attrs(), rtol=2e-5)
    with Active(str(CMIP6), "tas") as a:
        series = a.mean(axis=(1, 2), weights={1: cos_lat.values})[...]
    np.testing.assert_allclose(got.values, series, rtol=1e-6)
