"""The benchmark datasets, the cases timed on them, and the NumPy oracle every method is checked against.

Four netCDF-4 files with one float32 variable ``tas(time, lat, lon)`` (1600 x 180 x 360 = 415 MB
decoded; ``--quick``: 80 time steps = 21 MB), written once into a cache directory (default
``benchmarks/data/``, gitignored) and reused while their spec is unchanged:

========== ======================== ===========================================================
name       chunks                   storage
========== ======================== ===========================================================
plain      (16, 180, 360) = 4.1 MB  uncompressed
zlib       (16, 180, 360) = 4.1 MB  zlib level 1 + shuffle
small      (1, 90, 180)   = 63 KiB  uncompressed (6400 chunks)
missing    (16, 180, 360) = 4.1 MB  uncompressed; land is ``_FillValue``, some ``missing_value``
========== ======================== ===========================================================

Values look like surface temperatures (smooth field + weather noise rounded to 0.01 K), so zlib
compresses them as it would real data. Cases: the whole-variable mean, the mean of a box that is
not chunk-aligned, and the mean over axis 0 (time) of the whole variable.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

VAR = "tas"
NLAT, NLON = 180, 360
FULL_NTIME, QUICK_NTIME = 1600, 80
FILL = np.float32(1.0e20)
MISSING = np.float32(-999.0)
DEFAULT_DIR = Path(__file__).resolve().parent / "data"


@dataclass(frozen=True)
class Spec:
    """How one benchmark file is written."""

    name: str
    chunks: tuple[int, int, int]
    zlib: bool = False
    missing: bool = False
    ntime: int = FULL_NTIME

    @property
    def filename(self) -> str:
        return f"{self.name}_{self.ntime}.nc"

    def digest(self) -> str:
        return hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


def specs(quick: bool) -> list[Spec]:
    """The four datasets (20 MB versions when ``quick``)."""
    n = QUICK_NTIME if quick else FULL_NTIME
    return [
        Spec("plain", (16, NLAT, NLON), ntime=n),
        Spec("zlib", (16, NLAT, NLON), zlib=True, ntime=n),
        Spec("small", (1, NLAT // 2, NLON // 2), ntime=n),
        Spec("missing", (16, NLAT, NLON), missing=True, ntime=n),
    ]


def cases(ntime: int) -> list[dict[str, Any]]:
    """The timed cases: ``box`` is [start, stop) per axis; ``axis`` None means all axes."""
    full = [[0, ntime], [0, NLAT], [0, NLON]]
    t0 = ntime // 4 + 3
    sub = [[t0, t0 + ntime // 2], [20, 160], [40, 300]]
    out = []
    for name, box, axis in (("whole", full, None), ("sub", sub, None), ("axis0", full, [0])):
        n = int(np.prod([b - a for a, b in box]))
        out.append({"name": name, "box": box, "axis": axis, "logical_bytes": 4 * n})
    return out


def box_slices(box: list[list[int]]) -> tuple[slice, ...]:
    return tuple(slice(a, b) for a, b in box)


# ------------------------------------------------------------------------------ writing

def _field(ntime_block: int, t_start: int, rng: np.random.Generator) -> np.ndarray:
    lat = np.deg2rad(np.linspace(-89.5, 89.5, NLAT))
    base = 250.0 + 45.0 * np.cos(lat) ** 2
    days = np.arange(t_start, t_start + ntime_block)[:, None, None]
    season = 8.0 * np.sin(2 * np.pi * days / 365.25) * np.sign(lat)[None, :, None]
    block = base[None, :, None] + season + rng.normal(0.0, 1.5, (ntime_block, NLAT, NLON))
    return np.round(block, 2).astype(np.float32)


def _land() -> np.ndarray:
    lat = np.deg2rad(np.linspace(-89.5, 89.5, NLAT))[:, None]
    lon = np.deg2rad(np.linspace(0.5, 359.5, NLON))[None, :]
    return (np.sin(2 * lon) * np.cos(3 * lat) > 0.55) | (np.abs(lat) > np.deg2rad(80))


def write(spec: Spec, path: Path, seed: int = 0) -> None:
    """Write ``spec`` to ``path`` (through a temporary name, so a killed run leaves no half file)."""
    import netCDF4

    tmp = path.with_suffix(".tmp")
    rng = np.random.default_rng(seed)
    land = _land()
    kw: dict[str, Any] = {"chunksizes": spec.chunks, "zlib": spec.zlib, "complevel": 1,
                          "shuffle": spec.zlib}
    if spec.missing:
        kw["fill_value"] = FILL
    with netCDF4.Dataset(tmp, "w", format="NETCDF4") as ds:
        ds.createDimension("time", spec.ntime)
        ds.createDimension("lat", NLAT)
        ds.createDimension("lon", NLON)
        ds.createVariable("lat", "f4", ("lat",))[:] = np.linspace(-89.5, 89.5, NLAT)
        ds.createVariable("lon", "f4", ("lon",))[:] = np.linspace(0.5, 359.5, NLON)
        v = ds.createVariable(VAR, "f4", ("time", "lat", "lon"), **kw)
        v.units = "K"
        if spec.missing:
            v.missing_value = MISSING
        v.set_auto_maskandscale(False)
        step = 160
        for t in range(0, spec.ntime, step):
            n = min(step, spec.ntime - t)
            block = _field(n, t, rng)
            if spec.missing:
                block[:, land] = FILL
                flagged = (rng.random(block.shape) < 1e-3) & ~land[None]
                block[flagged] = MISSING
            v[t:t + n] = block
    os.replace(tmp, path)


def ensure(spec: Spec, data_dir: Path) -> Path:
    """The file for ``spec``, written if absent or made from another spec."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / spec.filename
    stamp = path.with_suffix(".spec")
    if path.exists() and stamp.exists() and stamp.read_text() == spec.digest():
        return path
    log.info("writing %s", path)
    write(spec, path)
    stamp.write_text(spec.digest())
    return path


# ------------------------------------------------------------------------------ chunk index

def chunk_index(path: Path, var: str = VAR) -> list[tuple[tuple[int, ...], int, int]]:
    """Every stored chunk of ``var``: (chunk origin, byte offset, stored size), in file order."""
    import h5py

    out: list[tuple[tuple[int, ...], int, int]] = []
    with h5py.File(path, "r") as f:
        dsid = f[var].id
        dsid.chunk_iter(lambda info: out.append((tuple(info.chunk_offset), info.byte_offset,
                                                 info.size)))
    out.sort(key=lambda c: c[1])
    return out


def touched(index: list[tuple[tuple[int, ...], int, int]], chunks: tuple[int, ...],
            box: list[list[int]]) -> list[tuple[int, int]]:
    """(offset, size) of the stored chunks that overlap ``box``."""
    return [(off, size) for origin, off, size in index
            if all(o < b and o + c > a for o, c, (a, b) in zip(origin, chunks, box))]


# ------------------------------------------------------------------------------ oracle

def oracle(path: Path, ntime: int, var: str = VAR) -> dict[str, np.ndarray]:
    """float64 results of every case, read with netCDF4-python's masking (NaN where masked)."""
    import netCDF4

    out: dict[str, np.ndarray] = {}
    with netCDF4.Dataset(path) as ds:
        v = ds[var]
        v.set_auto_maskandscale(True)
        for case in cases(ntime):
            (t0, t1), *rest = case["box"]
            inner = tuple(slice(a, b) for a, b in rest)
            s = np.zeros(tuple(b - a for a, b in rest))
            n = np.zeros(s.shape, dtype=np.int64)
            for t in range(t0, t1, 160):
                x = np.ma.asarray(v[(slice(t, min(t + 160, t1)),) + inner]).astype(np.float64)
                s += x.filled(0.0).sum(axis=0)
                n += (~np.ma.getmaskarray(x)).sum(axis=0)
            if case["axis"] is None:
                total = n.sum()
                out[case["name"]] = np.array(s.sum() / total if total else np.nan)
            else:
                with np.errstate(invalid="ignore", divide="ignore"):
                    out[case["name"]] = np.where(n > 0, s / np.maximum(n, 1), np.nan)
    return out


def ensure_oracle(spec: Spec, path: Path) -> dict[str, np.ndarray]:
    """The oracle for ``spec``'s file, cached beside it."""
    cache = path.with_suffix(".oracle.npz")
    if cache.exists() and cache.stat().st_mtime >= path.stat().st_mtime:
        with np.load(cache) as z:
            return {k: z[k] for k in z.files}
    result = oracle(path, spec.ntime)
    np.savez(cache, **result)
    return result
