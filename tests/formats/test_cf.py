"""The CF/netCDF missing-data rules of formats/cf.py against netCDF4-python itself."""

from __future__ import annotations

import subprocess
import sys

import netCDF4
import numpy as np

from activestorage.formats import cf


def test_default_fill_values_are_netcdf4s():
    """The restated table is netCDF4-python's, kind+size by kind+size (value and type)."""
    want = {k: v for k, v in netCDF4.default_fillvals.items() if k in cf.DEFAULT_FILLVALS}
    assert set(cf.DEFAULT_FILLVALS) == {k for k in netCDF4.default_fillvals
                                         if k[0] in "iuf" and len(k) == 2}
    for key, value in want.items():
        assert np.dtype(key).type(cf.DEFAULT_FILLVALS[key]) == np.dtype(key).type(value), key


def test_opening_a_variable_does_not_import_netcdf4(tmp_path):
    """A fresh process reducing an HDF5 variable without _FillValue never imports netCDF4
    (40-300 ms, a large share of the first call)."""
    import h5py

    path = tmp_path / "v.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("v", data=np.arange(24, dtype="i2").reshape(4, 6), chunks=(2, 3))
    code = ("import sys\nfrom activestorage import Active\n"
            f"a = Active({str(path)!r}, 'v')\nassert int(a.sum[...]) == 276\n"
            "print('netCDF4' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
