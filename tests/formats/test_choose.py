"""``Active(path)`` with no variable: a Zarr array store's array, or the one data variable."""

from __future__ import annotations

import sys
from pathlib import Path

import netCDF4
import numpy as np
import pytest
from hypothesis import given, strategies as st

from activestorage import Active
from activestorage.errors import MissingDependencyError, VariableNotFoundError
from activestorage.formats import open_variable
from activestorage.formats.choose import Candidate, choose_variable, data_variables
from activestorage.formats.references import manifest_from_variables

NAMES = st.text("abcdefgh", min_size=1, max_size=4)


@given(data=st.lists(NAMES, min_size=0, max_size=4, unique=True),
       coords=st.lists(NAMES, min_size=0, max_size=3, unique=True),
       aux=st.lists(NAMES, min_size=0, max_size=4, unique=True),
       how=st.lists(st.sampled_from(["bounds", "coordinates", "cell_measures", "climatology",
                                     "grid_mapping"]), min_size=4, max_size=4))
def test_data_variables_are_what_nothing_else_points_at(data, coords, aux, how):
    """Generated CF-like datasets: data variables use coordinate variables (named like their
    dimension) and name auxiliary variables in CF attributes; only the data variables remain."""
    coords = [f"c_{c}" for c in coords]
    aux = [f"x_{a}" for a in aux]
    data = [f"d_{d}" for d in data]
    cands = [Candidate(c, (c,)) for c in coords]
    cands += [Candidate(a, tuple(coords[:1]) + ("nv",)) for a in aux]
    for i, d in enumerate(data):
        attrs = {}
        for j, a in enumerate(aux):  # every auxiliary variable named by some data variable
            if j % max(1, len(data)) == i:
                key = how[j % len(how)]
                val = f"area: {a}" if key == "cell_measures" else a
                attrs[key] = f"{attrs[key]} {val}" if key in attrs else val
        cands.append(Candidate(d, tuple(coords), attrs))
    got = data_variables(cands)
    assert sorted(got) == sorted(data or aux)  # with no data variable, nobody names the others
    if len(got) == 1:
        assert choose_variable(cands, "ds") == got[0]
    else:
        with pytest.raises(VariableNotFoundError) as err:
            choose_variable(cands, "ds")
        for name in got or [c.name for c in cands]:
            assert name in str(err.value)


def _cmip_like(path: Path, extra_data: bool = False, fmt: str = "NETCDF4") -> Path:
    """tos with time/lat/lon coordinates, bounds, a cell measure, a scalar coordinate."""
    rng = np.random.default_rng(1)
    with netCDF4.Dataset(path, "w", format=fmt) as ds:
        for name, n in (("time", 6), ("lat", 5), ("lon", 4), ("bnds", 2)):
            ds.createDimension(name, n)
        for name in ("time", "lat", "lon"):
            v = ds.createVariable(name, "f8", (name,))
            v[:] = np.arange(len(ds.dimensions[name]), dtype="f8")
            v.bounds = f"{name}_bnds"
            ds.createVariable(f"{name}_bnds", "f8", (name, "bnds"))[:] = 0.0
        ds.createVariable("areacello", "f4", ("lat", "lon"))[:] = 1.0
        ds.createVariable("height", "f8", ())[...] = 2.0
        tos = ds.createVariable("tos", "f4", ("time", "lat", "lon"), fill_value=np.float32(1e20))
        tos.cell_measures = "area: areacello"
        tos.coordinates = "height"
        tos[:] = np.ma.masked_greater(rng.normal(290.0, 5.0, (6, 5, 4)).astype("f4"), 297.0)
        if extra_data:
            ds.createVariable("sos", "f4", ("time", "lat", "lon"))[:] = 35.0
    return path


@pytest.mark.parametrize("fmt", ["NETCDF4", "NETCDF3_CLASSIC"])
def test_one_data_variable_is_reduced(tmp_path, fmt):
    path = _cmip_like(tmp_path / "tos.nc", fmt=fmt)
    with netCDF4.Dataset(path) as ds:
        x = ds["tos"][...]
    a = Active(str(path))
    assert a.variable.name == "tos"
    assert float(a.mean[...]) == pytest.approx(float(x.astype("f8").mean()), rel=1e-6)
    assert int(a.count[...]) == int(x.count())


def test_several_data_variables_are_listed(tmp_path):
    path = _cmip_like(tmp_path / "two.nc", extra_data=True)
    with pytest.raises(VariableNotFoundError, match=r"2 data variables.*: sos, tos$") as err:
        Active(str(path))
    assert "areacello" not in str(err.value) and "time_bnds" not in str(err.value)


def test_only_coordinates_lists_every_variable(tmp_path):
    path = tmp_path / "coords.nc"
    with netCDF4.Dataset(path, "w") as ds:
        ds.createDimension("lat", 3)
        ds.createVariable("lat", "f4", ("lat",))[:] = [1, 2, 3]
    with pytest.raises(VariableNotFoundError, match="no data variable.*lat"):
        open_variable(path)


def test_manifest_with_one_variable(tmp_path):
    path = _cmip_like(tmp_path / "tos.nc")
    names = ("lat", "time", "tos", "time_bnds", "areacello")
    doc = manifest_from_variables([open_variable(path, n) for n in names])
    var = open_variable(doc)
    assert var.name == "tos"


zarr = pytest.importorskip("zarr", reason="the [zarr] extra is not installed")


def test_zarr_array_store_needs_no_name(tmp_path):
    x = np.arange(7 * 9, dtype="i4").reshape(7, 9)
    store = tmp_path / "one.zarr"
    z = zarr.create_array(str(store), shape=x.shape, chunks=(3, 4), dtype="i4")
    z[...] = x
    a = Active(str(store))
    assert int(a.sum[...]) == int(x.sum())
    assert int(a.max[2:6, 1:8]) == int(x[2:6, 1:8].max())


def test_zarr_group_with_one_data_array(tmp_path):
    root = zarr.open_group(str(tmp_path / "g.zarr"), mode="w", zarr_format=2)
    lat = root.create_array("lat", shape=(4,), dtype="f8")
    lat[:] = np.arange(4.0)
    lat.attrs["_ARRAY_DIMENSIONS"] = ["lat"]
    t = root.create_array("t", shape=(4,), chunks=(2,), dtype="f8")
    t[:] = [1.0, 2.0, 3.0, 4.0]
    t.attrs["_ARRAY_DIMENSIONS"] = ["lat"]
    assert float(Active(str(tmp_path / "g.zarr")).mean[...]) == 2.5
    root.create_array("u", shape=(4,), dtype="f8").attrs["_ARRAY_DIMENSIONS"] = ["lat"]
    with pytest.raises(VariableNotFoundError, match="t, u"):
        Active(str(tmp_path / "g.zarr"))


def test_directory_without_zarr_names_the_extra(tmp_path, monkeypatch):
    store = tmp_path / "one.zarr"
    zarr.create_array(str(store), shape=(2,), dtype="i4")[:] = [1, 2]
    monkeypatch.setitem(sys.modules, "zarr", None)  # as if the [zarr] extra were not installed
    for ncvar in ("/", None):
        with pytest.raises(MissingDependencyError, match=r"activestorage\[zarr\]") as err:
            open_variable(store, ncvar)
        assert err.value.extra == "zarr" and err.value.name == "zarr"
