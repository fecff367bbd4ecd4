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

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import data  # noqa: E402

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
        best = float("inf")
        for _ in range(repeat):
            t0 = time.perf_counter()
            values, extra = fn(path)
            best = min(best, time.perf_counter() - t0)
        if reference is None:
            reference = values
        agree = bool(np.allclose(values, reference, rtol=1e-5, equal_nan=True))
        out[name] = {"seconds": best, "agrees": agree, **extra}
    return out


def run_remote(paths: list[Path], data_dir: Path, repeat: int) -> dict[str, dict[str, Any]]:
    """The global mean of each file in moto S3: xarray, our server and fetch; bytes moved."""
    import tempfile

    import xarray as xr

    import activestorage.xarray  # noqa: F401
    from benchmarks import services

    out: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-xarray-") as tmp, services.started(
            Path(tmp), paths, data_dir, moto=True, server=True, nginx=False) as sv:
        so = {"key": sv.s3["key"], "secret": sv.s3["secret"],
              "client_kwargs": {"endpoint_url": sv.s3["endpoint"], "region_name": "us-east-1"}}
        for path in paths:
            url = sv.s3_url(path)
            reference = None
            for label in ("xarray", "active server", "active fetch"):
                best, extra, values = float("inf"), {}, None
                for _ in range(repeat):
                    t0 = time.perf_counter()
                    with xr.open_dataset(url, engine="h5netcdf", storage_options=so) as ds:
                        if label == "xarray":
                            values = ds.tas.mean(DIMS).values
                            extra = {"bytes_received": path.stat().st_size}  # (at least)
                        else:
                            kw = ({"active_storage_url": sv.server_url} if label ==
                                  "active server" else {"backend": "fetch"})
                            got = ds.tas.active(**kw).mean(DIMS)
                            values, st = got.values, got.active.last_stats
                            extra = {"bytes_received": st.bytes_received,
                                     "bytes_without_active": st.bytes_without_active,
                                     "requests": st.requests}
                    best = min(best, time.perf_counter() - t0)
                if reference is None:
                    reference = values
                agree = bool(np.allclose(values, reference, rtol=1e-5, equal_nan=True))
                out[f"{path.stem} {label}"] = {"seconds": best, "agrees": agree, **extra}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="the 21 MB files instead of 415 MB")
    p.add_argument("--repeat", type=int, default=3, help="runs per method; the best is kept")
    p.add_argument("--data-dir", type=Path, default=data.DEFAULT_DIR,
                   help="where the benchmark files are (written there if absent)")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--remote", action="store_true",
                   help="also from moto S3: xarray vs .active through our server and fetch")
    args = p.parse_args(argv)
    results: dict[str, Any] = {"quick": args.quick, "repeat": args.repeat, "files": {}}
    failed = False
    header = f"{'file':<8} {'method':<12} {'seconds':>9} {'x xarray':>9} {'read MB':>8} " \
             f"{'to client':>10}  agrees"
    print(header)
    paths = []
    for spec in data.specs(args.quick):
        if spec.name not in ("plain", "zlib"):
            continue
        path = data.ensure(spec, args.data_dir)
        paths.append(path)
        got = run(path, args.repeat)
        results["files"][spec.name] = {"path": str(path), "methods": got}
        base = got["xarray"]["seconds"]
        for name, r in got.items():
            read = f"{r['bytes_read'] / 1e6:8.1f}" if "bytes_read" in r else f"{'-':>8}"
            sent = f"{r['bytes_received']:>10d}" if "bytes_received" in r else f"{'-':>10}"
            print(f"{spec.name:<8} {name:<12} {r['seconds']:9.3f} {base / r['seconds']:9.2f} "
                  f"{read} {sent}  {'yes' if r['agrees'] else 'NO'}")
            failed |= not r["agrees"]
    if args.remote:
        remote = run_remote(paths, args.data_dir, args.repeat)
        results["remote"] = remote
        print(f"\n{'S3 (moto)':<28} {'seconds':>9} {'to client':>12}  agrees")
        for name, r in remote.items():
            print(f"{name:<28} {r['seconds']:9.3f} {r['bytes_received']:12d}  "
                  f"{'yes' if r['agrees'] else 'NO'}")
            failed |= not r["agrees"]
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
