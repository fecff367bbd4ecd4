"""The CF/netCDF rules for missing data and packing, shared by every format reader.

Missing-data rules follow netCDF4-python (``Variable._toma``) so results match what netCDF users
see: ``missing_value``(s) and ``_FillValue`` by equality (NaN means NaN), the netCDF default fill
value (``netCDF4.default_fillvals``) when no ``_FillValue`` is set (not for byte types with filling
off), and ``valid_range`` (or ``valid_min``/``valid_max``) bounds. Packing is CF's
``scale_factor``/``add_offset``.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any, Mapping

import numpy as np

from ..request import Missing

__all__ = ["DEFAULT_FILLVALS", "default_fillvals", "missing_from_attrs", "packing_from_attrs"]

log = logging.getLogger(__name__)


#: netCDF's default fill values by dtype kind+size (``"i2"``, ``"f4"``, ...), as
#: ``netCDF4.default_fillvals`` has them (tests/formats/test_cf.py checks they agree). Restated
#: because importing netCDF4 costs 40-300 ms, a large share of a fresh process's first reduction,
#: and no reader needs netCDF4 otherwise.
DEFAULT_FILLVALS: dict[str, Any] = {
    "i1": -127, "u1": 255, "i2": -32767, "u2": 65535, "i4": -2147483647, "u4": 4294967295,
    "i8": -9223372036854775806, "u8": 18446744073709551614,
    "f4": 9.969209968386869e36, "f8": 9.969209968386869e36,
}


def default_fillvals() -> dict[str, Any]:
    """netCDF's default fill values by dtype kind+size (``"i2"``, ``"f4"``, ...)."""
    return DEFAULT_FILLVALS


def _safe_cast(value: Any, dtype: np.dtype, name: str) -> np.ndarray | None:
    """``value`` as ``dtype`` if the cast loses nothing (netCDF4-python's ``_check_safecast``)."""
    att = np.asarray(value)
    if att.dtype.kind in "SUO":
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cast = np.asarray(att, dtype)
            same = np.array_equal(att, cast, equal_nan=att.dtype.kind == "f" and dtype.kind == "f")
    except (ValueError, OverflowError, TypeError):
        same = False
    if not same:
        log.warning("attribute %s=%r is not representable as %s; ignored (as netCDF4-python does)",
                    name, value, dtype)
        return None
    return cast


def missing_from_attrs(attrs: Mapping[str, Any], dtype: np.dtype,
                       fill_enabled: bool = True) -> tuple[Missing, Any]:
    """The netCDF4-python missing-data rules for ``attrs``; returns (Missing, fill value).

    ``fill_enabled`` is False when the variable was written with filling off (HDF5 fill time
    "never"); then byte variables get no default fill value. The fill value returned is what
    unwritten chunks hold.
    """
    dtype = np.dtype(dtype).newbyteorder("=")
    if dtype.kind not in "iuf":
        return Missing(), None
    key = dtype.str[1:]
    values: list[Any] = []
    mv = _safe_cast(attrs["missing_value"], dtype, "missing_value") if "missing_value" in attrs else None
    if mv is not None:
        values.extend(dtype.type(v) for v in np.atleast_1d(mv))
    fill = None
    fv = _safe_cast(attrs["_FillValue"], dtype, "_FillValue") if "_FillValue" in attrs else None
    if fv is not None and fv.size >= 1:
        fill = dtype.type(np.atleast_1d(fv)[0])
        values.append(fill)
    elif key in default_fillvals() and (fill_enabled or key not in ("u1", "i1")):
        # (netCDF has no default fill value for other types, e.g. float16)
        fill = dtype.type(default_fillvals()[key])
        values.append(fill)
    vmin = vmax = None
    vr = _safe_cast(attrs["valid_range"], dtype, "valid_range") if "valid_range" in attrs else None
    if vr is not None and vr.size == 2:
        vmin, vmax = dtype.type(vr.flat[0]), dtype.type(vr.flat[1])
    else:
        if "valid_min" in attrs:
            v = _safe_cast(attrs["valid_min"], dtype, "valid_min")
            vmin = None if v is None else dtype.type(np.atleast_1d(v)[0])
        if "valid_max" in attrs:
            v = _safe_cast(attrs["valid_max"], dtype, "valid_max")
            vmax = None if v is None else dtype.type(np.atleast_1d(v)[0])
    # de-duplicate while keeping order (NaN never equals itself, so compare by repr)
    seen: set[str] = set()
    unique = []
    for v in values:
        k = repr(v)
        if k not in seen:
            seen.add(k)
            unique.append(v)
    return Missing(values=tuple(unique), valid_min=vmin, valid_max=vmax), fill


def packing_from_attrs(attrs: Mapping[str, Any]) -> tuple[Any, Any]:
    """(scale_factor, add_offset) as numpy scalars, or None where absent."""
    def one(name: str) -> Any:
        if name not in attrs:
            return None
        v = np.asarray(attrs[name])
        if v.dtype.kind not in "iuf" or v.size != 1:
            return None
        return v.reshape(())[()]
    return one("scale_factor"), one("add_offset")
