"""What a user does without active storage: read the selection, mask it, reduce it with NumPy.

- ``netcdf4_numpy``: netCDF4-python (masked array with its own missing-data rules) + ``.mean()``.
- ``xarray``: ``xr.open_dataset`` (CF decoding masks ``_FillValue``/``missing_value`` as NaN) +
  ``.mean()`` (NaN-skipping). Opened with ``cache=False`` so every run reads the file again.
- ``h5py_numpy``: h5py reads raw values; NumPy masks ``_FillValue``/``missing_value`` and reduces.

"Bytes moved" for these is the stored size of the chunks the selection touches: what the HDF5
library reads from the file.
"""

from __future__ import annotations

from typing import Any

import h5py
import netCDF4
import numpy as np
import xarray as xr

from . import data


class _Baseline:
    checks_result = True
    skip: str | None = None

    def __init__(self, ds: dict[str, Any], config: dict[str, Any]) -> None:
        self.ds = ds

    def bytes_moved(self, case: dict[str, Any]) -> int | None:
        return self.ds["stored_bytes"][case["name"]]

    def close(self) -> None:
        pass


class NetCDF4Numpy(_Baseline):
    def __init__(self, ds: dict[str, Any], config: dict[str, Any]) -> None:
        super().__init__(ds, config)
        self.nc = netCDF4.Dataset(ds["path"])
        self.var = self.nc[data.VAR]

    def run(self, case: dict[str, Any]) -> Any:
        x = self.var[data.box_slices(case["box"])]
        return x.mean() if case["axis"] is None else x.mean(axis=tuple(case["axis"]))

    def close(self) -> None:
        self.nc.close()


class Xarray(_Baseline):
    def __init__(self, ds: dict[str, Any], config: dict[str, Any]) -> None:
        super().__init__(ds, config)
        self.xds = xr.open_dataset(ds["path"], engine="netcdf4", cache=False)
        self.da = self.xds[data.VAR]

    def run(self, case: dict[str, Any]) -> Any:
        da = self.da.isel({d: slice(a, b) for d, (a, b) in zip(self.da.dims, case["box"])})
        if case["axis"] is None:
            return da.mean().values
        return da.mean(dim=[self.da.dims[i] for i in case["axis"]]).values

    def close(self) -> None:
        self.xds.close()


class H5pyNumpy(_Baseline):
    def __init__(self, ds: dict[str, Any], config: dict[str, Any]) -> None:
        super().__init__(ds, config)
        self.f = h5py.File(ds["path"], "r")
        self.var = self.f[data.VAR]
        self.markers = [np.asarray(self.var.attrs[k]).ravel() for k in ("_FillValue",
                        "missing_value") if k in self.var.attrs]

    def run(self, case: dict[str, Any]) -> Any:
        x = self.var[data.box_slices(case["box"])]
        axis = None if case["axis"] is None else tuple(case["axis"])
        if not self.markers:
            return x.mean(axis=axis)
        mask = np.zeros(x.shape, dtype=bool)
        for values in self.markers:
            for v in values:
                mask |= x == v
        return np.ma.MaskedArray(x, mask).mean(axis=axis)

    def close(self) -> None:
        self.f.close()


FACTORIES = {
    "netcdf4_numpy": NetCDF4Numpy,
    "xarray": Xarray,
    "h5py_numpy": H5pyNumpy,
}
