"""Reduction-server throughput beside the stores' own range-GET rate, all on loopback.

Starts nginx, moto (S3) and our server as processes (tests/integration/servers.py), uploads a
64 KiB and a 4 MiB float32 chunk, then for each size and concurrency measures, with the same
bounded asyncio load generator (aiohttp, a fixed number of requests):

* raw range GETs of the chunk from nginx and from moto, and
* ``POST /v2/sum`` on our server for the same bytes from each store,

printing req/s, MiB/s and latency percentiles. ``--quick`` runs a short version (used by tests).

    python benchmarks/bench_server.py [--quick] [--workers N] [--json out.json]
"""

from __future__ import annotations

import argparse
import base64
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "integration"))

from servers import (S3_KEY, S3_SECRET, nginx_binary, s3_client, start_active_server,  # noqa: E402
                     start_moto, start_nginx)

SIZES = {"64KiB": 64 << 10, "4MiB": 4 << 20}


async def load(make: Callable[[Any], Any], n: int, concurrency: int) -> dict[str, float]:
    """Send ``n`` requests with ``concurrency`` in flight; each ``make(session)`` returns one
    response context manager. Returns req/s and latency percentiles in ms."""
    import aiohttp

    lat: list[float] = []
    errors = 0
    todo = iter(range(n))
    conn = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as session:
        async def worker() -> None:
            nonlocal errors
            for _ in todo:
                t0 = time.perf_counter()
                async with make(session) as resp:
                    await resp.read()
                    if resp.status not in (200, 206):
                        errors += 1
                lat.append(time.perf_counter() - t0)

        # warm-up: open the connections
        await asyncio.gather(*(_one(make, session) for _ in range(concurrency)))
        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    lat.sort()
    q = lambda p: 1000 * lat[min(len(lat) - 1, int(p * len(lat)))]  # noqa: E731
    return {"n": n, "errors": errors, "rps": n / wall, "p50": q(0.50), "p90": q(0.90),
            "p99": q(0.99), "mean": 1000 * statistics.fmean(lat)}


async def _one(make: Callable[[Any], Any], session: Any) -> None:
    async with make(session) as resp:
        await resp.read()


def process_cpu_seconds(pid: int) -> float:
    """User+system CPU of ``pid`` and its direct children (uvicorn workers), from /proc."""
    tick = os.sysconf("SC_CLK_TCK")

    def one(p: int) -> tuple[int, float]:
        try:
            f = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return -1, 0.0
        return int(f[1]), (int(f[11]) + int(f[12])) / tick

    total = one(pid)[1]
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != pid:
            ppid, cpu = one(int(d.name))
            if ppid == pid:
                total += cpu
    return total


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="few requests (a smoke run)")
    p.add_argument("--workers", type=int, default=1, help="server worker processes")
    p.add_argument("--concurrency", type=int, nargs="+", default=[8, 64])
    p.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    p.add_argument("--only", help="run only targets whose label contains this text")
    p.add_argument("--json", help="also write the figures to this file")
    args = p.parse_args(argv)
    if nginx_binary() is None:
        raise SystemExit("nginx is needed: apt-get install -y nginx")

    work = Path(tempfile.mkdtemp(prefix="bench-server-"))
    www = work / "www"
    www.mkdir()
    procs = []
    try:
        moto = start_moto(work / "moto")
        procs.append(moto)
        web = start_nginx(work / "nginx", www)
        procs.append(web)
        srv = start_active_server(work / "server", "--workers", str(args.workers),
                                  "--no-access-log", "--log-level", "warning",
                                  "--no-chunk-cache")  # the same object again and again: no hits
        procs.append(srv)
        s3 = s3_client(moto.url)
        s3.create_bucket(Bucket="bench")
        rng = np.random.default_rng(0)
        for name, size in SIZES.items():
            data = rng.standard_normal(size // 4).astype("<f4").tobytes()
            (www / f"{name}.bin").write_bytes(data)
            s3.put_object(Bucket="bench", Key=f"{name}.bin", Body=data, ACL="public-read")

        token = base64.b64encode(f"{S3_KEY}:{S3_SECRET}".encode()).decode()
        auth_hdr = {"Authorization": f"Basic {token}"}
        rows: list[dict[str, Any]] = []
        for name, size in ((k, SIZES[k]) for k in args.sizes):
            rng_hdr = {"Range": f"bytes=0-{size - 1}"}
            body = {"dtype": "float32", "byte_order": "little", "offset": 0, "size": size,
                    "shape": [size // 4]}
            targets = {
                "nginx GET": lambda s, n=name: s.get(f"{web.url}/{n}.bin", headers=rng_hdr),
                "moto GET": lambda s, n=name: s.get(f"{moto.url}/bench/{n}.bin", headers=rng_hdr),
                "server sum <- nginx": lambda s, n=name: s.post(
                    f"{srv.url}/v2/sum", json={**body, "interface_type": "http",
                                               "url": f"{web.url}/{n}.bin"}),
                "server sum <- moto": lambda s, n=name: s.post(
                    f"{srv.url}/v2/sum", headers=auth_hdr, json={**body, "interface_type": "s3",
                                                          "url": f"{moto.url}/bench/{n}.bin"}),
            }
            for conc in args.concurrency:
                for label, make in targets.items():
                    if args.only and args.only not in label:
                        continue
                    small = size < (1 << 20)
                    n = (3000 if small else 300) if "nginx" in label else (600 if small else 120)
                    if args.quick:
                        n = max(conc, n // 20)
                    cpu0 = process_cpu_seconds(srv.pid)
                    res = asyncio.run(load(make, n, conc))
                    cpu = (process_cpu_seconds(srv.pid) - cpu0) / (n + conc)  # + warm-up
                    row = {"target": label, "size": name, "concurrency": conc, **res,
                           "MiB/s": res["rps"] * size / 2**20}
                    extra = ""
                    if label.startswith("server"):
                        row["server_cpu_ms"] = 1000 * cpu
                        extra = f"  server CPU {1000 * cpu:.2f} ms/req"
                    rows.append(row)
                    print(f"{name:>6} c={conc:<3} {label:<20} n={n:<5} {res['rps']:8.0f} req/s "
                          f"{row['MiB/s']:8.0f} MiB/s  p50 {res['p50']:7.2f}  p90 {res['p90']:7.2f}"
                          f"  p99 {res['p99']:7.2f} ms  errors {res['errors']}{extra}", flush=True)
        summary = _summary(rows)
        for line in summary["lines"]:
            print(line)
        out = {"rows": rows, "summary": summary, "workers": args.workers, "cpus": os.cpu_count()}
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=1))
        return out
    finally:
        for proc in reversed(procs):
            proc.stop()


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    by = {(r["target"], r["size"], r["concurrency"]): r for r in rows}
    lines = [f"machine load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs "
             "(other processes share these cores; compare rows of the same run)"]
    for (target, size, conc), r in sorted(by.items()):
        if not target.startswith("server"):
            continue
        store = "nginx GET" if "nginx" in target else "moto GET"
        raw = by.get((store, size, conc))
        if raw:
            over = 100 * (r["mean"] / raw["mean"] - 1)
            lines.append(f"{size} c={conc}: {target} {r['rps']:.0f} req/s vs {store} "
                         f"{raw['rps']:.0f} req/s; mean latency +{over:.0f}% over the raw GET")
    return {"lines": lines}


if __name__ == "__main__":
    main()
