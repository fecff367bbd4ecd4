"""netCDF-4/HDF5 metadata details that netCDF4-python is the oracle for."""

from __future__ import annotations

from pathlib import Path

import netCDF4
import numpy as np
import pytest

from activestorage import Active
from activestorage.formats import open_variable


def _walk(group: netCDF4.Group):
    yield from group.variables.values()
    for sub in group.groups.values():
        yield from _walk(sub)


@pytest.fixture(scope="module")
def cf_file(tmp_path_factory) -> Path:
    """Coordinate variables, a dimension without one, a 2-D coordinate, a scalar and a group."""
    path = tmp_path_factory.mktemp("dims") / "dims.nc"
    with netCDF4.Dataset(path, "w") as ds:
        ds.createDimension("time", None)
        ds.createDimension("lat", 3)
        ds.createDimension("lon", 4)
        ds.createDimension("bnds", 2)  # no coordinate variable: a bare netCDF dimension
        ds.createVariable("time", "f8", ("time",))[:] = np.arange(5.0)
        ds.createVariable("lat", "f4", ("lat",))[:] = [-1.0, 0.0, 1.0]
        ds.createVariable("lon", "f4", ("lon",))[:] = np.arange(4.0)
        ds.createVariable("lat_bnds", "f4", ("lat", "bnds"))[:] = np.zeros((3, 2))
        ds.createVariable("height", "f4", ())[...] = 2.0
        ds.createVariable("tas", "f4", ("time", "lat", "lon"))[:] = np.arange(60.0).reshape(5, 3, 4)
        ds.createVariable("lon2d", "f4", ("lon", "lat"))[:] = np.ones((4, 3))
        g = ds.createGroup("sub")
        g.createDimension("x", 2)
        g.createVariable("x", "i4", ("x",))[:] = [7, 8]
        g.createVariable("y", "f8", ("x", "lat"))[:] = np.ones((2, 3))
    return path


def test_dimension_names_match_netcdf4(cf_file):
    """Every variable, coordinate variables (HDF5 dimension scales) included, as netCDF4 names them."""
    with netCDF4.Dataset(cf_file) as ds:
        want = {(v.group().path.strip("/") + "/" + v.name).lstrip("/"): v.dimensions
                for v in _walk(ds)}
    assert "lat" in want and "sub/x" in want
    for name, dims in want.items():
        assert open_variable(cf_file, name).dimensions == dims, name
    assert Active(str(cf_file), "lat").variable.dimensions == ("lat",)
