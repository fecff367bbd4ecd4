"""Remote benchmark (issue #4): a whole-variable mean over S3 through fetch, server per chunk, and
server batched, for a variable in ~4 MB chunks and one in ~64 KiB chunks.

Everything runs on loopback as separate processes: moto's S3 server holds the files, our reduction
server reads from it. For each (dataset, method) it prints seconds, bytes received by the client,
requests made, and checks the answer against NumPy. Targets: ``server`` moves < 1% of the bytes
``fetch`` moves; batched is >= 5x faster than per chunk on the 64 KiB dataset.

Cached repeat (issue #22): a second server with its chunk cache on (sized to hold the variable)
answers the batched mean twice; the second is answered from the cache (one authorised HEAD per
object instead of the GETs). Target: the repeat <= 0.3x the first. The other rows use a server
with ``--no-chunk-cache`` so they keep measuring reads.

    python benchmarks/bench_remote.py                 # 2 x ~400 MB variables in moto S3
    python benchmarks/bench_remote.py --quick         # 2 x ~40 MB variables
    python benchmarks/bench_remote.py --store http    # the same files served by nginx

Caveat, measured: moto's ranged GET costs time proportional to the *object* size (64 KiB from a
4 MB object: 15 ms; from 42 MB: 82 ms; from 400 MB: 343 ms), which penalises one-GET-per-chunk
access far beyond a real object store. Server-side coalescing hides it for batches and the fetch
backend coalesces too; ``--store http`` (nginx, cost proportional to the range) gives the
comparison without that artefact.
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
BUCKET = "bench-remote"


def servers_module() -> Any:
    """tests/integration/servers.py (moto, our server as processes), loaded by path."""
    spec = importlib.util.spec_from_file_location("_bench_remote_servers", SERVERS_PY)
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[spec.name] = mod  # type: ignore[union-attr]
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def write_dataset(path: Path, shape: tuple[int, ...], chunks: tuple[int, ...]) -> float:
    """A float32 netCDF-4 variable ``v`` of random data; returns its float64 mean (the oracle)."""
    import netCDF4

    rng = np.random.default_rng(0)
    total, n = 0.0, 0
    with netCDF4.Dataset(path, "w") as ds:
        for name, size in zip("tyx", shape):
            ds.createDimension(name, size)
        v = ds.createVariable("v", "f4", ("t", "y", "x"), chunksizes=chunks)
        step = max(1, chunks[0])
        for t in range(0, shape[0], step):
            block = rng.normal(280.0, 10.0, size=(min(step, shape[0] - t),) + shape[1:])
            block = block.astype(np.float32)
            v[t:t + block.shape[0]] = block
            total += float(block.sum(dtype=np.float64))
            n += block.size
    return total / n


def metadata_cost(url: str, storage_options: dict[str, Any]) -> dict[str, Any]:
    """Bytes, requests and seconds the netCDF-4 metadata read costs through storage.open_url."""
    from activestorage.formats.hdf5 import open_hdf5
    from activestorage.storage import open_url

    t0 = time.perf_counter()
    with open_url(url, storage_options) as f:
        var = open_hdf5(f, "v", url=url)
        stats = f.stats
    return {"seconds": time.perf_counter() - t0, "bytes": stats.bytes_read,
            "requests": stats.requests, "chunks": len(var.chunks)}


def run_method(label: str, url: str, storage_options: dict[str, Any], server_url: str,
               threads: int, expected: float, no_cache: bool = False) -> dict[str, Any]:
    from activestorage import Active
    from activestorage.backends.fetch import FetchBackend
    from activestorage.backends.server import ServerBackend

    if label == "fetch":
        backend: Any = FetchBackend(storage_options, max_threads=threads)
    else:
        backend = ServerBackend(server_url, storage_options=storage_options, max_threads=threads,
                                batch=(label == "server batched"), disable_chunk_cache=no_cache)
    with backend, Active(url, "v", storage_options=storage_options, backend=backend,
                         max_threads=threads) as a:
        t0 = time.perf_counter()
        mean = float(a.mean[...])
        seconds = time.perf_counter() - t0
        st = a.stats
    ok = math.isclose(mean, expected, rel_tol=1e-5)
    return {"method": label, "seconds": seconds, "bytes_received": st.bytes_received,
            "requests": st.requests, "chunks": st.chunks_touched, "mean": mean, "ok": ok}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="~40 MB variables instead of ~400 MB")
    p.add_argument("--threads", type=int, default=8, help="client threads (default 8)")
    p.add_argument("--workdir", type=Path, default=None, help="where to write the files")
    p.add_argument("--json", type=Path, default=None, help="also write results here")
    p.add_argument("--only", choices=["large", "small"], default=None,
                   help="run only the 4 MB ('large') or 64 KiB ('small') chunk dataset")
    p.add_argument("--store", choices=["s3", "http", "both"], default="s3",
                   help="where the files live: moto S3 (default), nginx, or both")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    nt = 10 if args.quick else 100
    datasets = {
        "large": ("~4 MB chunks", (nt, 1000, 1000), (1, 1000, 1000)),
        "small": ("64 KiB chunks", (nt, 1024, 1024), (1, 128, 128)),
    }
    if args.only:
        datasets = {args.only: datasets[args.only]}
    servers = servers_module()
    tmp = tempfile.TemporaryDirectory(prefix="bench-remote-")
    work = args.workdir or Path(tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    docroot = work / "www"
    docroot.mkdir(exist_ok=True)
    stores = ["s3", "http"] if args.store == "both" else [args.store]
    procs = []
    results: list[dict[str, Any]] = []
    try:
        srv = servers.start_active_server(work / "active", "--max-batch", "1024",
                                          "--no-chunk-cache")
        procs.append(srv)
        cache_bytes = str(2 << 30 if not args.quick else 256 << 20)
        cached = servers.start_active_server(work / "active-cached", "--max-batch", "1024",
                                             "--chunk-cache-size", cache_bytes,
                                             "--chunk-cache-request-bytes", cache_bytes)
        procs.append(cached)
        so: dict[str, Any] = {}
        if "s3" in stores:
            moto = servers.start_moto(work / "moto")
            procs.append(moto)
            s3 = servers.s3_client(moto.url)
            s3.create_bucket(Bucket=BUCKET)
            so = {"key": servers.S3_KEY, "secret": servers.S3_SECRET,
                  "client_kwargs": {"endpoint_url": moto.url}}
        if "http" in stores:
            web = servers.start_nginx(work / "nginx", docroot)
            procs.append(web)
        print(f"{'dataset':22} {'method':16} {'seconds':>9} {'MB received':>12} "
              f"{'requests':>9} {'chunks':>7}  check")
        for key, (desc, shape, chunks) in datasets.items():
            path = docroot / f"{key}.nc"
            expected = write_dataset(path, shape, chunks)
            size_mb = path.stat().st_size / 1e6
            for store in stores:
                if store == "s3":
                    s3.upload_file(str(path), BUCKET, path.name)
                    url = f"s3://{BUCKET}/{path.name}"
                else:
                    url = f"{web.url}/{path.name}"
                name = f"{desc} {store}"
                meta = metadata_cost(url, so)
                print(f"{name} ({size_mb:.0f} MB, {meta['chunks']} chunks): metadata read "
                      f"{meta['bytes'] / 1e3:.0f} kB in {meta['requests']} requests, "
                      f"{meta['seconds']:.2f} s")
                rows = []
                for label in ("fetch", "server per-chunk", "server batched"):
                    r = run_method(label, url, so, srv.url, args.threads, expected)
                    r.update(dataset=desc, store=store, file_mb=size_mb, metadata=meta)
                    rows.append(r)
                    print(f"{name:22} {label:16} {r['seconds']:9.2f} "
                          f"{r['bytes_received'] / 1e6:12.3f} {r['requests']:9d} "
                          f"{r['chunks']:7d}  {'ok' if r['ok'] else 'WRONG: ' + str(r['mean'])}",
                          flush=True)
                # warm the cache server up without its cache (connections, threads), so "first"
                # is a first reduction on a warm server: the same footing as the rows above
                run_method("server batched", url, so, cached.url, args.threads, expected,
                           no_cache=True)
                for method in ("cache cold", "cached repeat"):
                    r = run_method("server batched", url, so, cached.url, args.threads,
                                   expected)
                    r.update(dataset=desc, store=store, file_mb=size_mb, metadata=meta,
                             method=method)
                    rows.append(r)
                    print(f"{name:22} {r['method']:16} {r['seconds']:9.2f} "
                          f"{r['bytes_received'] / 1e6:12.3f} {r['requests']:9d} "
                          f"{r['chunks']:7d}  {'ok' if r['ok'] else 'WRONG: ' + str(r['mean'])}",
                          flush=True)
                fetch, per, batched, cold, repeat = rows
                print(f"  cached repeat / first (batched, cache on): "
                      f"{repeat['seconds'] / cold['seconds']:.2f}x (target <= 0.3x)", flush=True)
                print(f"  server/fetch bytes: {per['bytes_received'] / fetch['bytes_received']:.4%}"
                      f" (per-chunk), {batched['bytes_received'] / fetch['bytes_received']:.4%} "
                      f"(batched); batched speed-up over per-chunk: "
                      f"{per['seconds'] / batched['seconds']:.1f}x", flush=True)
                results += rows
                if store == "s3":
                    s3.delete_object(Bucket=BUCKET, Key=path.name)
            path.unlink()
    finally:
        for proc in reversed(procs):
            proc.stop()
        tmp.cleanup()
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
