"""Weighted and second-moment benchmark (issue #21): the area-weighted global-mean series of the
plain and zlib benchmark files (benchmarks/data.py: 1600 x 180 x 360 float32 = 415 MB;
``--quick``: 80 time steps = 21 MB), each time step's field averaged over lat and lon with
cos(latitude) weights, computed these ways:

1. ``numpy``          in memory: the variable already loaded (loading is not timed), one pass
                      ``x.sum(lon, float64) @ cos_lat / (nlon * cos_lat.sum())``;
2. ``xarray``         ``xr.open_dataset(path).tas.weighted(w).mean(("lat", "lon"))`` (loads);
3. ``active``         ``Active(path, "tas").mean(axis=(1, 2), weights={1: cos_lat})[...]``,
                      in this process (posix);
4. ``active mean``    the unweighted ``a.mean(axis=(1, 2))`` and
5. ``active var``     ``a.var(axis=(1, 2))`` on the same file: var's price over mean;
6. ``active wvar``    the cos-lat weighted variance.

With ``--remote`` the files also go to moto (S3) and nginx (HTTP) on loopback and the weighted
mean runs through our reduction server and through ``fetch`` (the client reads every byte);
``to client`` then compares the bytes each moved.

Targets (issue #21): ``active`` faster than ``xarray`` and within 2x of ``numpy`` on the plain
file; ``active var`` within 1.5x of ``active mean``; through the server < 1 % of fetch's bytes.
Every answer is checked against a float64 NumPy oracle.

    python benchmarks/bench_weighted.py --quick          # 21 MB files, a smoke run
    python benchmarks/bench_weighted.py --data-dir /work/benchdata --repeat 1
    python benchmarks/bench_weighted.py --remote --json out.json

The page cache is left as it is, the same for every method (see benchmarks/pagecache.py).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import data, services  # noqa: E402

DIMS = ("lat", "lon")


def cos_lat(path: Path) -> np.ndarray:
    """cos(latitude) of the file's ``lat`` coordinate, float64."""
    import h5py

    with h5py.File(path, "r") as f:
        return np.cos(np.deg2rad(f["lat"][...].astype(np.float64)))


def oracle(path: Path) -> dict[str, np.ndarray]:
    """float64 per-time-step weighted mean, unweighted mean, var and weighted var."""
    import h5py

    w = cos_lat(path)
    out: dict[str, list[np.ndarray]] = {"wmean": [], "mean": [], "var": [], "wvar": []}
    with h5py.File(path, "r") as f:
        v = f[data.VAR]
        for t in range(0, v.shape[0], 160):
            x = v[t:t + 160].astype(np.float64)
            ww = np.broadcast_to(w[None, :, None], x.shape)
            m = np.average(x, axis=(1, 2), weights=ww)
            out["wmean"].append(m)
            out["wvar"].append(np.average((x - m[:, None, None]) ** 2, axis=(1, 2), weights=ww))
            out["mean"].append(x.mean(axis=(1, 2)))
            out["var"].append(x.var(axis=(1, 2)))
    return {k: np.concatenate(v) for k, v in out.items()}


# ------------------------------------------------------------------------------ the methods

def numpy_in_memory(path: Path, loaded: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    w = cos_lat(path)
    t0 = time.perf_counter()
    values = loaded.sum(axis=2, dtype=np.float64) @ w / (loaded.shape[2] * w.sum())
    return values, {"seconds": time.perf_counter() - t0}


def xarray_weighted(path: Path, loaded: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    import xarray as xr

    with xr.open_dataset(path, engine="h5netcdf") as ds:
        w = np.cos(np.deg2rad(ds.lat))
        return ds.tas.weighted(w).mean(DIMS).values, {}


def _active(path: Path, op: str, weighted: bool, **kw: Any) -> tuple[np.ndarray, dict[str, Any]]:
    from activestorage import Active

    opts = {"weights": {1: cos_lat(path)}} if weighted else {}
    with Active(str(path), data.VAR, progress=False, **kw) as a:
        values = getattr(a, op)(axis=(1, 2), **opts)[...]
        s = a.stats
    extra = {"bytes_read": s.bytes_read, "bytes_received": s.bytes_received,
             "chunks": s.chunks_touched, "ran": s.backend}
    return np.ma.filled(np.ma.asarray(values, dtype=np.float64), np.nan).reshape(-1), extra


def active_weighted(path: Path, loaded: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    return _active(path, "mean", True)


def active_mean(path: Path, loaded: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    return _active(path, "mean", False)


def active_var(path: Path, loaded: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    return _active(path, "var", False)


def active_wvar(path: Path, loaded: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    return _active(path, "var", True)


#: name -> (function, oracle key)
METHODS: dict[str, tuple[Callable[[Path, np.ndarray], tuple[np.ndarray, dict[str, Any]]], str]] = {
    "numpy": (numpy_in_memory, "wmean"), "xarray": (xarray_weighted, "wmean"),
    "active": (active_weighted, "wmean"), "active mean": (active_mean, "mean"),
    "active var": (active_var, "var"), "active wvar": (active_wvar, "wvar"),
}


def run(path: Path, repeat: int) -> dict[str, dict[str, Any]]:
    """Best-of-``repeat`` seconds per method on ``path``, answers checked against the oracle."""
    import h5py

    want = oracle(path)
    with h5py.File(path, "r") as f:
        loaded = f[data.VAR][...]
    from activestorage import Active

    with Active(str(path), data.VAR, progress=False) as a:  # imports and first-call costs
        a.count[0:1]
    out: dict[str, dict[str, Any]] = {}
    for name, (fn, key) in METHODS.items():
        # xarray's weighted mean of float32 data sums in float32 (~1e-6 off); an unweighted
        # mean of float32 data is float32 (as NumPy's); the moments answers are float64
        rtol = {"xarray": 2e-5, "active mean": 1e-6}.get(name, 1e-9)
        out[name], _ = services.timed_row(repeat, lambda: fn(path, loaded), want[key], rtol)
    return out


def run_remote(paths: list[Path], data_dir: Path, repeat: int) -> dict[str, dict[str, Any]]:
    """The weighted mean of each file through our server (S3 in moto, HTTP from nginx) and
    through fetch (the client reads the bytes), with the bytes each moved to the client."""
    out: dict[str, dict[str, Any]] = {}
    with services.remote("bench-weighted-", paths, data_dir, nginx=True) as sv:
        for path in paths:
            want = oracle(path)["wmean"]
            where = {"s3": (sv.s3_url(path), sv.s3_options()), "http": (sv.http_url(path), None)}
            for store, (url, opts) in where.items():
                if url is None:
                    continue
                for label, kw in (("server", {"active_storage_url": sv.server_url}),
                                  ("fetch", {"backend": "fetch"})):
                    out[f"{path.stem} {store} {label}"], _ = services.timed_row(
                        repeat, lambda: _remote(url, path, opts, kw), want, 1e-6)
    return out


def _remote(url: str, path: Path, so: dict[str, Any] | None, kw: dict[str, Any]
            ) -> tuple[np.ndarray, dict[str, Any]]:
    from activestorage import Active

    with Active(url, data.VAR, storage_options=so, progress=False, **kw) as a:
        values = a.mean(axis=(1, 2), weights={1: cos_lat(path)})[...]
        s = a.stats
    extra = {"bytes_received": s.bytes_received, "bytes_without_active": s.bytes_without_active,
             "requests": s.requests, "ran": s.backend}
    return np.ma.filled(np.ma.asarray(values, dtype=np.float64), np.nan).reshape(-1), extra


def main(argv: list[str] | None = None) -> int:
    args = services.arguments(
        __doc__, "also through our server (moto S3 and nginx) against fetch").parse_args(argv)
    results: dict[str, Any] = {"quick": args.quick, "repeat": args.repeat, "files": {}}
    failed = False
    print(f"{'file':<8} {'method':<12} {'seconds':>9} {'x numpy':>8} {'x xarray':>9} "
          f"{'read MB':>8}  agrees")
    files = services.plain_and_zlib(args.quick, args.data_dir)
    for name, path in files:
        got = run(path, args.repeat)
        results["files"][name] = {"path": str(path), "methods": got}
        np_s, xr_s = got["numpy"]["seconds"], got["xarray"]["seconds"]
        for method, r in got.items():
            read = f"{r['bytes_read'] / 1e6:8.1f}" if "bytes_read" in r else f"{'-':>8}"
            print(f"{name:<8} {method:<12} {r['seconds']:9.3f} {r['seconds'] / np_s:8.2f} "
                  f"{xr_s / r['seconds']:9.2f} {read}  {'yes' if r['agrees'] else 'NO'}")
            failed |= not r["agrees"]
        ratios = {"active/numpy": got["active"]["seconds"] / np_s,
                  "xarray/active": xr_s / got["active"]["seconds"],
                  "var/mean": got["active var"]["seconds"] / got["active mean"]["seconds"]}
        results["files"][name]["ratios"] = ratios
        print(f"{name:<8} ratios: " + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items()))
    if args.remote:
        results["remote"] = run_remote([p for _, p in files], args.data_dir, args.repeat)
        failed |= services.print_remote("case", results["remote"], ran=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
