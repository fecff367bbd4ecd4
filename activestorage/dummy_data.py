"""PyActiveStorage's ``activestorage.dummy_data``: small netCDF-4 test files.

Every file has dimensions ``xdim``/``ydim``/``zdim`` of size ``n``, coordinate variables
``x``/``y``/``z`` and a float64 variable ``data`` chunked as ``chunksize`` whose element
``[i, j, k]`` is ``i + j*n + k*n*n`` -- every value is distinct and tells where it came from.
The variants overwrite a few elements with values that netCDF readers must treat as missing and
return where they put them, as ``(missing, fill, valid_range, valid_min, valid_max)`` lists of
index tuples (None for the kinds not used).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

Indices = list[tuple[int, ...]] | None


def _values(n: int) -> tuple[np.ndarray, np.ndarray]:
    i, j, k = np.meshgrid(np.arange(n), np.arange(n), np.arange(n), indexing="ij")
    return np.arange(n), (i + j * n + k * n * n).astype("f8")


def make_ncdata(filename: str, chunksize: Sequence[int], n: int, compression: str | None = None,
                missing: float | None = None, fillvalue: float | None = None,
                valid_range: Sequence[float] | None = None, valid_min: float | None = None,
                valid_max: float | None = None, partially_missing_data: bool = False,
                shuffle: bool = False, byte_order: str = "native"
                ) -> tuple[Indices, Indices, Indices, Indices, Indices]:
    """Write the test file; see the module docstring. ``partially_missing_data`` sets every
    other x-plane to ``missing`` (so whole chunks are missing)."""
    import netCDF4

    if n < 5:
        raise ValueError(f"n must be at least 5; got {n}")
    if partially_missing_data and missing is None:
        raise ValueError("partially_missing_data needs a missing value (missing=...)")
    if valid_range is not None and (valid_min is not None or valid_max is not None):
        raise ValueError("give valid_range or valid_min/valid_max, not both")
    if byte_order not in ("native", "little", "big"):
        raise ValueError(f"byte_order must be 'native', 'little' or 'big'; got {byte_order!r}")
    coords, data = _values(n)
    last, mid = n - 1, n // 2
    found: dict[str, Indices] = dict.fromkeys(("missing", "fill", "range", "min", "max"))

    def put(kind: str, where: list[tuple[int, int, int]], value: float) -> None:
        for idx in where:
            data[idx] = value
        found[kind] = list(where)

    if missing is not None and not partially_missing_data:
        put("missing", [(1, 1, 1), (mid, 1, 1), (1, last, 1), (last, 1, mid)], missing)
    if fillvalue is not None:
        put("fill", [(1, 2, 3), (mid, mid, 1), (last, last, last)], fillvalue)
    if valid_min is not None:
        put("min", [(2, 0, 0), (3, mid, 2), (last, 2, 2)], valid_min - abs(0.1 * valid_min) - 1)
    if valid_max is not None:
        put("max", [(2, 2, 2), (mid, 3, 3), (last, last - 1, 1)], valid_max * 10 + 1)
    if valid_range is not None:
        lo, hi = float(valid_range[0]), float(valid_range[1])
        put("range", [(2, last, n - 2), (2, n - 2, last)], lo - abs(0.1 * lo) - 1)
        for idx in [(last, n - 2, last), (mid, mid + 1, mid)]:
            data[idx] = hi * 10 + 1
            found["range"].append(idx)  # type: ignore[union-attr]
    if partially_missing_data:
        data[::2] = missing

    endian = {"native": "native", "little": "little", "big": "big"}[byte_order]
    with netCDF4.Dataset(filename, "w", format="NETCDF4") as ds:
        for d in ("xdim", "ydim", "zdim"):
            ds.createDimension(d, n)
        for name, dim, scale in (("x", "xdim", 1), ("y", "ydim", n), ("z", "zdim", n * n)):
            v = ds.createVariable(name, "i4", (dim,), compression=compression, shuffle=shuffle,
                                  endian=endian)
            v[:] = coords * scale
        var = ds.createVariable("data", "f8", ("xdim", "ydim", "zdim"),
                                chunksizes=tuple(chunksize), compression=compression,
                                shuffle=shuffle, fill_value=fillvalue, endian=endian)
        var.set_auto_mask(False)
        var[:] = data
        if missing is not None:
            var.missing_value = missing
        if valid_min is not None:
            var.valid_min = valid_min
        if valid_max is not None:
            var.valid_max = valid_max
        if valid_range is not None:
            var.valid_range = np.asarray(valid_range, "f8")
    return found["missing"], found["fill"], found["range"], found["min"], found["max"]


def make_vanilla_ncdata(filename: str = "test_vanilla.nc", chunksize: Sequence[int] = (3, 3, 1),
                        n: int = 10) -> Any:
    """No missing data, no compression."""
    return make_ncdata(filename, chunksize, n)


def make_missing_ncdata(filename: str = "test_missing.nc", chunksize: Sequence[int] = (3, 3, 1),
                        n: int = 10) -> Any:
    """A few elements equal to ``missing_value = -999``."""
    return make_ncdata(filename, chunksize, n, missing=-999.0)


def make_partially_missing_ncdata(filename: str = "test_partially_missing_data.nc",
                                  chunksize: Sequence[int] = (3, 3, 1), n: int = 10) -> Any:
    """Every other x-plane is ``missing_value = -999``."""
    return make_ncdata(filename, chunksize, n, missing=-999.0, partially_missing_data=True)


def make_fillvalue_ncdata(filename: str = "test_fillvalue.nc",
                          chunksize: Sequence[int] = (3, 3, 1), n: int = 10) -> Any:
    """A few elements equal to ``_FillValue = -999``."""
    return make_ncdata(filename, chunksize, n, fillvalue=-999.0)


def make_validmin_ncdata(filename: str = "test_validmin.nc",
                         chunksize: Sequence[int] = (3, 3, 1), n: int = 10,
                         valid_min: float = 200.0) -> Any:
    """A few elements below ``valid_min``."""
    return make_ncdata(filename, chunksize, n, valid_min=valid_min)


def make_validmax_ncdata(filename: str = "test_validmax.nc",
                         chunksize: Sequence[int] = (3, 3, 1), n: int = 10,
                         valid_max: float = 1.2e3) -> Any:
    """A few elements above ``valid_max``."""
    return make_ncdata(filename, chunksize, n, valid_max=valid_max)


def make_validrange_ncdata(filename: str = "test_validrange.nc",
                           chunksize: Sequence[int] = (3, 3, 1), n: int = 10,
                           valid_range: Sequence[float] = (-1.0, 1.2e3)) -> Any:
    """A few elements outside ``valid_range``."""
    return make_ncdata(filename, chunksize, n, valid_range=valid_range)


def make_compressed_ncdata(filename: str = "test_vanilla.nc",
                           chunksize: Sequence[int] = (3, 3, 1), n: int = 10,
                           compression: str | None = None, shuffle: bool = False) -> Any:
    """The vanilla file with ``compression`` (e.g. ``"zlib"``) and optionally shuffle."""
    return make_ncdata(filename, chunksize, n, compression=compression, shuffle=shuffle)


def make_byte_order_ncdata(filename: str = "test_vanilla.nc",
                           chunksize: Sequence[int] = (3, 3, 1), n: int = 10,
                           byte_order: str = "native") -> Any:
    """The vanilla file stored ``"big"``/``"little"``/``"native"`` endian."""
    return make_ncdata(filename, chunksize, n, byte_order=byte_order)
