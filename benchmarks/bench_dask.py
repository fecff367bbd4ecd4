"""Dask benchmark (issue #6): whole-variable mean of a multi-file dataset in moto's S3 server,
reduced through our reduction server, three ways:

1. ``Active`` thread pool, one server (a loop over the files, each file's chunks on threads);
2. Dask ``LocalCluster`` (2 worker processes, 2 threads each), one server;
3. the same cluster with two server processes (a ``ServerPool`` in every worker).

Everything runs on loopback as separate processes (moto, servers, Dask workers). Each answer is
checked against the float64 mean computed while writing the files. Prints seconds per method and
the scaling ratio (thread-pool seconds / method seconds).

    python benchmarks/bench_dask.py                  # 1024 MB in 8 files (the issue's size)
    python benchmarks/bench_dask.py --size-mb 128    # quicker
    python benchmarks/bench_dask.py --size-mb 256 --files 4 --chunk-mb 2

Caveats: moto's ranged GETs cost time proportional to the object size (see bench_remote.py), so
the dataset is split into several objects; on a 2-core machine the client, workers, servers and
moto share two cores, so the ratio says little about a real deployment with one server per node.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SERVERS_PY = REPO / "tests" / "integration" / "servers.py"
BUCKET = "bench-dask"


def servers_module() -> Any:
    """tests/integration/servers.py (moto, our server as processes), loaded by path."""
    spec = importlib.util.spec_from_file_location("_bench_dask_servers", SERVERS_PY)
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[spec.name] = mod  # type: ignore[union-attr]
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def write_files(root: Path, size_mb: float, nfiles: int, chunk_mb: float) -> tuple[list[Path], float]:
    """``nfiles`` float32 netCDF-4 files of ``v(t, y, x)`` totalling ``size_mb``; chunks of one
    time step of ``chunk_mb``. Returns the paths and the float64 mean of all values."""
    import netCDF4

    side = max(16, int(math.sqrt(chunk_mb * 1e6 / 4)))
    nt_total = max(nfiles, round(size_mb * 1e6 / (4 * side * side)))
    per = [nt_total // nfiles + (i < nt_total % nfiles) for i in range(nfiles)]
    rng = np.random.default_rng(6)
    total, n, paths = 0.0, 0, []
    for i, nt in enumerate(per):
        path = root / f"tas_{i:03d}.nc"
        with netCDF4.Dataset(path, "w") as ds:
            for name, size in zip("tyx", (nt, side, side)):
                ds.createDimension(name, size)
            v = ds.createVariable("v", "f4", ("t", "y", "x"), chunksizes=(1, side, side))
            for t in range(nt):
                block = rng.normal(280.0, 10.0, size=(1, side, side)).astype(np.float32)
                v[t:t + 1] = block
                total += float(block.sum(dtype=np.float64))
                n += block.size
        paths.append(path)
    return paths, total / n


def thread_pool_mean(urls: list[str], so: dict[str, Any], server: str, threads: int) -> float:
    """Active's own thread pool, file after file; components combined across files."""
    from activestorage import Active

    s, n = 0.0, 0
    for url in urls:
        with Active(url, "v", storage_options=so, active_storage_url=server,
                    max_threads=threads) as a:
            c = a.mean(components=True)[...]
        s += float(np.ma.filled(c["sum"], 0).sum())
        n += int(np.sum(c["n"]))
    return s / n


def dask_mean(client: Any, urls: list[str], so: dict[str, Any], server: Any,
              chunks: str, threads: int) -> float:
    import dask.array as da

    from activestorage import dask as ad

    r = da.concatenate([ad.regions(u, "v", storage_options=so, active_storage_url=server,
                                   chunks=chunks, max_threads=threads) for u in urls], axis=0)
    return float(client.compute(ad.mean(r), sync=True))


def _warm_up() -> None:
    import activestorage.active  # noqa: F401
    import activestorage.backends.server  # noqa: F401
    import activestorage.dask  # noqa: F401
    import activestorage.formats.hdf5  # noqa: F401
    import activestorage.storage  # noqa: F401
    import s3fs  # noqa: F401


def timed(fn: Any, *args: Any) -> tuple[float, float]:
    t0 = time.perf_counter()
    value = fn(*args)
    return time.perf_counter() - t0, value


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--size-mb", type=float, default=1024, help="dataset size (default 1024)")
    p.add_argument("--files", type=int, default=8, help="number of files/objects (default 8)")
    p.add_argument("--chunk-mb", type=float, default=4, help="storage chunk size (default 4)")
    p.add_argument("--threads", type=int, default=8, help="Active client threads (default 8)")
    p.add_argument("--task-threads", type=int, default=2,
                   help="Active threads inside each Dask task (default 2: 2 workers x 2 threads "
                        "x 2 = 8 requests in flight, as the thread pool)")
    p.add_argument("--blocks", choices=["storage", "auto"], default="auto",
                   help="Dask blocks: one per storage chunk, or 'auto' (multiples, ~128 MiB)")
    p.add_argument("--repeat", type=int, default=2, help="runs per method; the best is kept")
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--json", type=Path, default=None, help="also write results here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import distributed

    for name in ("distributed", "tornado", "asyncio"):  # shutdown chatter
        logging.getLogger(name).setLevel(logging.CRITICAL)

    servers = servers_module()
    tmp = tempfile.TemporaryDirectory(prefix="bench-dask-")
    work = args.workdir or Path(tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    procs: list[Any] = []
    rows: list[dict[str, Any]] = []
    try:
        t0 = time.perf_counter()
        paths, expected = write_files(work, args.size_mb, args.files, args.chunk_mb)
        mb = sum(q.stat().st_size for q in paths) / 1e6
        print(f"wrote {len(paths)} files, {mb:.0f} MB, in {time.perf_counter() - t0:.1f} s",
              flush=True)
        moto = servers.start_moto(work / "moto")
        procs.append(moto)
        s3 = servers.s3_client(moto.url)
        s3.create_bucket(Bucket=BUCKET)
        t0 = time.perf_counter()
        for q in paths:
            s3.upload_file(str(q), BUCKET, q.name)
            q.unlink()
        print(f"uploaded to moto in {time.perf_counter() - t0:.1f} s", flush=True)
        urls = [f"s3://{BUCKET}/{q.name}" for q in paths]
        so = {"key": servers.S3_KEY, "secret": servers.S3_SECRET,
              "client_kwargs": {"endpoint_url": moto.url}}
        s1 = servers.start_active_server(work / "s1", "--no-chunk-cache")  # time reads, not hits
        s2 = servers.start_active_server(work / "s2", "--no-chunk-cache")
        procs += [s1, s2]

        def run(label: str, fn: Any, *a: Any) -> None:
            best = math.inf
            value = float("nan")
            for _ in range(args.repeat):
                sec, value = timed(fn, *a)
                best = min(best, sec)
            ok = math.isclose(value, expected, rel_tol=1e-5)
            rows.append({"method": label, "seconds": best, "mean": value, "ok": ok})
            print(f"{label:44} {best:8.2f} s  {mb / best:8.1f} MB/s  "
                  f"{'ok' if ok else f'WRONG {value} != {expected}'}", flush=True)

        print(f"{'method':44} {'seconds':>10}  {'throughput':>11}  check")
        print("(Dask rows include each worker's first metadata reads; --repeat keeps the best)")
        run("Active thread pool, 1 server", thread_pool_mean, urls, so, s1.url, args.threads)
        with distributed.LocalCluster(n_workers=2, threads_per_worker=2, processes=True,
                                      dashboard_address=":0",
                                      silence_logs=logging.CRITICAL) as cluster, \
                distributed.Client(cluster) as client:
            client.run(_warm_up)  # imports in the workers are not what we measure
            run("Dask LocalCluster(2 workers), 1 server", dask_mean, client, urls, so, s1.url,
                args.blocks, args.task_threads)
            run("Dask LocalCluster(2 workers), 2 servers", dask_mean, client, urls, so,
                [s1.url, s2.url], args.blocks, args.task_threads)
        base = rows[0]["seconds"]
        print("scaling ratio (thread-pool seconds / method seconds): " + ", ".join(
            f"{r['method']}: {base / r['seconds']:.2f}x" for r in rows[1:]))
    finally:
        for proc in reversed(procs):
            proc.stop()
        tmp.cleanup()
    if args.json:
        args.json.write_text(json.dumps({"size_mb": args.size_mb, "files": args.files,
                                         "chunk_mb": args.chunk_mb, "rows": rows}, indent=2))
    return 0 if rows and all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
