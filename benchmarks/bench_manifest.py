"""Opening a dataset of many netCDF-4 files from a manifest vs from the files themselves.

Writes N small netCDF-4 files (default 100), uploads them to moto's S3 server (a separate process
on loopback), and times two ways to get the whole-variable mean of all of them as one variable:

* **files**: open every file (superblock, object headers, chunk B-tree: range GETs), combine the
  100 chunk indexes along time, reduce;
* **manifest**: ``Active("refs.json", "tas")`` on a manifest written once beforehand, reduce.

Store requests are counted from moto's own request log, split into the open phase (metadata) and
the reduction (data). Both paths use the fetch backend; the data phase is the same work.

    python -m benchmarks.bench_manifest [--files 100] [--repeat 3] [--quick]
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path

import netCDF4
import numpy as np

from activestorage import Active
from activestorage.formats import open_variable
from activestorage.formats.manifest import write_manifest
from activestorage.formats.references import concatenate

from .services import BUCKET, servers_module

_REQUEST = re.compile(r'"(GET|HEAD|PUT|POST|DELETE) /')


def make_files(directory: Path, n: int, shape=(4, 32, 48)) -> tuple[list[Path], np.ndarray]:
    """``n`` compressed netCDF-4 files, one chunk per time step; returns them and all the data."""
    rng = np.random.default_rng(0)
    paths, parts = [], []
    for i in range(n):
        data = rng.normal(280, 10, shape).astype("f4")
        p = directory / f"tas_{i:04d}.nc"
        with netCDF4.Dataset(p, "w") as ds:
            ds.createDimension("time", None)
            ds.createDimension("lat", shape[1])
            ds.createDimension("lon", shape[2])
            t = ds.createVariable("time", "f8", ("time",))
            t[:] = np.arange(shape[0]) + i * shape[0]
            v = ds.createVariable("tas", "f4", ("time", "lat", "lon"), zlib=True,
                                  chunksizes=(1, shape[1], shape[2]), fill_value=np.float32(1e20))
            v[:] = data
        paths.append(p)
        parts.append(data)
    return paths, np.concatenate(parts)


class RequestCounter:
    """Counts requests in moto's log (every request it served is one line)."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path

    def __call__(self) -> int:
        return len(_REQUEST.findall(self.log_path.read_text(errors="replace")))


def run(nfiles: int, repeat: int, backends: list[str], threads: int | None = None
        ) -> dict[str, dict[str, float]]:
    srv = servers_module()
    with tempfile.TemporaryDirectory() as tmp:
        tmpd = Path(tmp)
        t0 = time.perf_counter()
        paths, full = make_files(tmpd, nfiles)
        print(f"wrote {nfiles} files in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
        moto = srv.start_moto(tmpd / "moto")
        server = None
        try:
            if "server" in backends:
                server = srv.start_active_server(tmpd / "server", "--no-access-log",
                                                 "--log-level", "warning", "--no-chunk-cache")
            client = srv.s3_client(moto.url)
            client.create_bucket(Bucket=BUCKET)
            for p in paths:
                client.upload_file(str(p), BUCKET, p.name)
            so = {"key": srv.S3_KEY, "secret": srv.S3_SECRET,
                  "client_kwargs": {"endpoint_url": moto.url, "region_name": "us-east-1"}}
            urls = [f"s3://{BUCKET}/{p.name}" for p in paths]
            count = RequestCounter(moto.log_path)
            t0 = time.perf_counter()
            ref = tmpd / "refs.json"
            write_manifest(urls, ["tas"], str(ref), storage_options=so, concat_dim="time")
            print(f"manifest written in {time.perf_counter() - t0:.1f}s "
                  f"({ref.stat().st_size} bytes)", file=sys.stderr)
            want = float(full.astype("f8").mean())
            results: dict[str, dict[str, float]] = {}
            for label in [f"{src}/{b}" for b in backends for src in ("files", "manifest")]:
                best = None
                for _ in range(repeat):
                    r0 = count()
                    t0 = time.perf_counter()
                    if label.startswith("files"):
                        var = concatenate([open_variable(u, "tas", storage_options=so)
                                           for u in urls], "time")
                    else:
                        var = open_variable(str(ref), "tas")
                    t1 = time.perf_counter()
                    r1 = count()
                    backend = label.split("/")[1]
                    kw = {"active_storage_url": server.url} if backend == "server" else {}
                    with Active(var, storage_options=so, backend=backend, max_threads=threads,
                                **kw) as a:
                        got = float(a.mean[...])
                    t2 = time.perf_counter()
                    r2 = count()
                    if not np.isclose(got, want, rtol=1e-6):
                        raise AssertionError(f"{label}: mean {got} != {want}")
                    row = {"open_s": t1 - t0, "total_s": t2 - t0, "metadata_requests": r1 - r0,
                           "data_requests": r2 - r1}
                    if best is None or row["total_s"] < best["total_s"]:
                        best = row
                results[label] = best
            return results
        finally:
            if server is not None:
                server.stop()
            moto.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--files", type=int, default=100)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--backend", choices=["fetch", "server", "both"], default="both",
                   help="reduce client-side (fetch) or in our reduction server")
    p.add_argument("--threads", type=int, default=None,
                   help="Active(max_threads=...) for the reduction (default: the backend's)")
    p.add_argument("--quick", action="store_true", help="10 files, one repeat")
    args = p.parse_args(argv)
    n, repeat = (10, 1) if args.quick else (args.files, args.repeat)
    backends = ["fetch", "server"] if args.backend == "both" else [args.backend]
    res = run(n, repeat, backends, args.threads)
    print(f"{n} netCDF-4 files in moto S3, open + whole-variable mean (best of {repeat})")
    print(f"{'method':<16} {'open s':>8} {'total s':>8} {'metadata req':>13} {'data req':>9}")
    for label, r in res.items():
        print(f"{label:<16} {r['open_s']:>8.3f} {r['total_s']:>8.3f} "
              f"{r['metadata_requests']:>13d} {r['data_requests']:>9d}")
    for b in backends:
        f, m = res[f"files/{b}"], res[f"manifest/{b}"]
        print(f"{b}: whole call {f['total_s'] / m['total_s']:.1f}x faster from the manifest "
              f"(open {f['open_s'] / max(m['open_s'], 1e-9):.0f}x); manifest metadata requests: "
              f"{m['metadata_requests']} (target 0)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
