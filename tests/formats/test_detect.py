"""Format detection from leading bytes and names."""

from __future__ import annotations

import pytest

from activestorage.formats.hdf5 import HDF5_MAGIC
from activestorage.formats.registry import detect_format


@pytest.mark.parametrize("head, path, kind", [
    (b"CDF\x01" + bytes(20), "a.nc", "netcdf3"),
    (b"CDF\x02" + bytes(20), "a.nc", "netcdf3"),
    (b"CDF\x05" + bytes(20), "a.nc", "netcdf3"),
    (HDF5_MAGIC + bytes(100), "a.nc", "hdf5"),
    (bytes(512) + HDF5_MAGIC, "a.h5", "hdf5"),
    (bytes(1024) + HDF5_MAGIC, "a.h5", "hdf5"),
    (bytes(2048) + HDF5_MAGIC + bytes(8), "a.h5", "hdf5"),
    (bytes(4096) + HDF5_MAGIC, "a.h5", "unknown"),  # not at an allowed user-block offset
    (bytes(100) + HDF5_MAGIC, "a.h5", "unknown"),
    (b"", "s3://bucket/store.zarr", "zarr"),
    (b"", "/data/store.zarr/", "zarr"),
    (b'{"zarr_format": 2}', "/data/store/.zarray", "zarr"),
    (b'{"zarr_format": 3, "node_type": "array"}', "/data/x/zarr.json", "zarr"),
    (b'  \n{"activestorage_manifest": 1, "variables": {}}', "refs.json", "json"),
    (b'{"version": 1, "refs": {".zgroup": "{\\"zarr_format\\": 2}"}}', "k.json", "json"),
    (b"CDF\x03", "a.nc", "unknown"),
    (b"GRIB", "a.grb", "unknown"),
    (b"", "a.nc", "unknown"),
])
def test_detect_format(head, path, kind):
    assert detect_format(head, path) == kind
