"""xarray benchmark (issue #23): the global-mean series ``tas.mean(("lat", "lon"))`` of the plain
and zlib benchmark files (benchmarks/data.py: 1600 x 180 x 360 float32 = 415 MB; ``--quick``: 80
time steps = 21 MB), computed four ways on local files:

1. ``xarray``        ``xr.open_dataset(path).tas.mean(("lat", "lon"))`` (loads the variable);
2. ``xarray+dask``   the same opened with ``chunks={}`` (storage chunks), computed with Dask's
   threaded scheduler;
3. ``active``        ``xr.open_dataset(path).tas.active.mean(("lat", "lon"))``;
4. ``active+dask``   ``chunks={}`` and ``.active.mean(...)``, computed (activestorage.dask graph).

Every timing includes opening the dataset; the best of ``--repeat`` runs is kept. Each answer is
checked against method 1. Prints seconds, the ratio to plain xarray (xarray seconds / method
seconds: above 1 is faster) and what the active methods read, side by side.

``--remote`` also puts the files in moto's S3 server on loopback and times, on the S3 URLs,
``xarray`` (``xr.open_dataset(url, storage_options=...)``: every byte comes to the client),
``active server`` (``.active(active_storage_url=<our server>).mean(...)``) and ``active fetch``
(the reduction in this process from fetched bytes), with the bytes each moved to the client.

    python benchmarks/bench_xarray.py --quick        # 21 MB files, a smoke run
    python benchmarks/bench_xarray.py                # the 415 MB files
    python benchmarks/bench_xarray.py --json out.json --repeat 5

The page cache is left as it is (after the first run the files are usually cached), the same for
every method; see benchmarks/pagecache.py and ``python -m benchmarks`` for cold-cache runs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import services  # noqa: E402

DIMS = ("lat", "lon")


def xarray_mean(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    import xarray as xr

    with xr.open_dataset(path, engine="h5netcdf") as ds:
        return ds.tas.mean(DIMS).values, {}


def xarray_dask_mean(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    import xarray as xr

    with xr.open_dataset(path, engine="h5netcdf", chunks={}) as ds:
        return ds.tas.mean(DIMS).compute(scheduler="threads").values, {}


def active_mean(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    import xarray as xr

    import activestorage.xarray  # noqa: F401

    with xr.open_dataset(path, engine="h5netcdf") as ds:
        out = ds.tas.active.mean(DIMS)
        s = out.active.last_stats
        return out.values, {"bytes_read": s.bytes_read, "bytes_received": s.bytes_received,
                            "chunks": s.chunks_touched}


def active_dask_mean(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    import xarray as xr

    import activestorage.xarray  # noqa: F401

    with xr.open_dataset(path, engine="h5netcdf", chunks={}) as ds:
        return ds.tas.active.mean(DIMS).compute(scheduler="threads").values, {}


METHODS: dict[str, Callable[[Path], tuple[np.ndarray, dict[str, Any]]]] = {
    "xarray": xarray_mean, "xarray+dask": xarray_dask_mean,
    "active": active_mean, "active+dask": active_dask_mean,
}


def run(path: Path, repeat: int) -> dict[str, dict[str, Any]]:
    """Best-of-``repeat`` seconds per method on ``path``, answers checked against xarray's."""
    out: dict[str, dict[str, Any]] = {}
    reference: np.ndarray | None = None
    for name, fn in METHODS.items():
        out[name], values = services.timed_row(repeat, lambda: fn(path), reference, 1e-5)
        reference = values if reference is None else reference
    return out


def run_remote(paths: list[Path], data_dir: Path, repeat: int) -> dict[str, dict[str, Any]]:
    """The global mean of each file in moto S3: xarray, our server and fetch; bytes moved."""
    out: dict[str, dict[str, Any]] = {}
    with services.remote("bench-xarray-", paths, data_dir, nginx=False) as sv:
        for path in paths:
            url, so = sv.s3_url(path), sv.s3_options()
            reference = None
            for label in ("xarray", "active server", "active fetch"):
                kw = ({} if label == "xarray" else {"active_storage_url": sv.server_url}
                      if label == "active server" else {"backend": "fetch"})
                out[f"{path.stem} {label}"], values = services.timed_row(
                    repeat, lambda: _remote_mean(url, path, so, kw), reference, 1e-5)
                reference = values if reference is None else reference
    return out


def _remote_mean(url: str, path: Path, so: dict[str, Any], active: dict[str, Any] | None
                 ) -> tuple[np.ndarray, dict[str, Any]]:
    """The global mean of the S3 object ``url`` (a copy of ``path``) opened with xarray: by
    xarray itself when ``active`` is empty, else by ``.active(**active)``."""
    import xarray as xr

    import activestorage.xarray  # noqa: F401

    with xr.open_dataset(url, engine="h5netcdf", storage_options=so) as ds:
        if not active:
            return ds.tas.mean(DIMS).values, {"bytes_received": path.stat().st_size}  # at least
        got = ds.tas.active(**active).mean(DIMS)
        st = got.active.last_stats
        return got.values, {"bytes_received": st.bytes_received,
                            "bytes_without_active": st.bytes_without_active,
                            "requests": st.requests}


def main(argv: list[str] | None = None) -> int:
    args = services.arguments(
        __doc__, "also from moto S3: xarray vs .active through our server and fetch"
    ).parse_args(argv)
    results: dict[str, Any] = {"quick": args.quick, "repeat": args.repeat, "files": {}}
    failed = False
    header = f"{'file':<8} {'method':<12} {'seconds':>9} {'x xarray':>9} {'read MB':>8} " \
             f"{'to client':>10}  agrees"
    print(header)
    files = services.plain_and_zlib(args.quick, args.data_dir)
    for name, path in files:
        got = run(path, args.repeat)
        results["files"][name] = {"path": str(path), "methods": got}
        base = got["xarray"]["seconds"]
        for method, r in got.items():
            read = f"{r['bytes_read'] / 1e6:8.1f}" if "bytes_read" in r else f"{'-':>8}"
            sent = f"{r['bytes_received']:>10d}" if "bytes_received" in r else f"{'-':>10}"
            print(f"{name:<8} {method:<12} {r['seconds']:9.3f} {base / r['seconds']:9.2f} "
                  f"{read} {sent}  {'yes' if r['agrees'] else 'NO'}")
            failed |= not r["agrees"]
    if args.remote:
        results["remote"] = run_remote([p for _, p in files], args.data_dir, args.repeat)
        failed |= services.print_remote("S3 (moto)", results["remote"])
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
