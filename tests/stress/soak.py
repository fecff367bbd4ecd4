"""Soak test: many reductions at high concurrency against our server over a real store, checked.

    python tests/stress/soak.py --requests 100000 --concurrency 64 --store nginx
    python tests/stress/soak.py --requests 100000 --store moto --max-seconds 900

Starts nginx (or moto) and ``activestorage serve`` as processes on loopback (tests/integration/
servers.py), writes one object of random int32 chunks, then ``--concurrency`` asyncio clients send
``--requests`` single-chunk reductions (count/min/max/sum/select, v2 CBOR and v1, some with a
selection) and check EVERY answer against NumPy. It stops by itself at the request count or at
``--max-seconds``. It reports errors, wrong results, throughput, latency percentiles and the
server's RSS over time (peak, after warm-up, at the end) and exits 1 on any error or wrong answer
or when RSS grows by more than ``--max-rss-growth-mib`` after warm-up (a leak).
``run_soak`` is importable (tests/reliability/test_soak.py runs a short version in CI).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("soak")
HERE = Path(__file__).resolve().parent
OPS = ("count", "min", "max", "sum", "select")


@dataclass
class Dataset:
    """A (n_chunks, chunk) int32 array stored chunk after chunk in one object at ``url``."""

    array: np.ndarray
    url: str
    interface_type: str = "http"
    auth: tuple[str, str] | None = None
    v1: dict[str, str] | None = None  # source/bucket/object for v1 requests (S3 only)

    @property
    def chunk(self) -> int:
        return self.array.shape[1]


def make_array(n_chunks: int = 1024, chunk: int = 1024, seed: int = 8) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(-10_000, 10_000, size=(n_chunks, chunk), dtype=np.int32)


@dataclass
class Report:
    requests: int = 0
    errors: int = 0
    wrong: int = 0
    error_samples: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    rss: list[tuple[float, int]] = field(default_factory=list)  # (t, bytes)
    seconds: float = 0.0

    def summary(self, warmup_fraction: float = 0.2) -> dict[str, Any]:
        lat = np.sort(np.asarray(self.latencies)) * 1000 if self.latencies else np.zeros(1)
        rss = [r for _, r in self.rss] or [0]
        warm_i = int(len(rss) * warmup_fraction)
        after_warm = rss[warm_i:] or rss
        return {
            "requests": self.requests, "errors": self.errors, "wrong_results": self.wrong,
            "seconds": round(self.seconds, 1),
            "throughput_rps": round(self.requests / self.seconds, 1) if self.seconds else 0,
            "latency_ms": {"p50": round(float(np.percentile(lat, 50)), 2),
                           "p90": round(float(np.percentile(lat, 90)), 2),
                           "p99": round(float(np.percentile(lat, 99)), 2),
                           "max": round(float(lat[-1]), 2)},
            "rss_mib": {"start": _mib(rss[0]), "after_warmup": _mib(after_warm[0]),
                        "end": _mib(rss[-1]), "peak": _mib(max(rss)),
                        "growth_after_warmup": _mib(max(after_warm[-len(after_warm) // 10 or 1:])
                                                    - min(after_warm[:len(after_warm) // 10 or 1]))},
            "error_samples": self.error_samples[:5],
        }


def _mib(n: int) -> float:
    return round(n / 2**20, 1)


def _server_rss(pids: list[int]) -> int:
    import psutil

    total = 0
    for pid in pids:
        try:
            p = psutil.Process(pid)
            total += p.memory_info().rss
            total += sum(c.memory_info().rss for c in p.children(recursive=True))
        except psutil.Error:
            pass
    return total


def _request(ds: Dataset, rng: random.Random) -> tuple[str, str, dict[str, Any], Any]:
    """(api, op, body, expected) for one random chunk reduction."""
    i = rng.randrange(ds.array.shape[0])
    op = rng.choice(OPS) if rng.random() < 0.9 else "select"
    n = ds.chunk
    data = ds.array[i]
    body: dict[str, Any] = {"dtype": "int32", "byte_order": "little", "offset": i * n * 4,
                            "size": n * 4, "shape": [n]}
    if rng.random() < 0.3:
        a, b = sorted(rng.sample(range(n + 1), 2))
        step = rng.choice([1, 1, 2, 3, -1])
        if step < 0:
            a, b = b - 1, (a - 1 if a > 0 else None)
        body["selection"] = [[a, -n - 1 if b is None else b, step]]
        data = data[slice(a, b, step)]
    if op == "select" and data.size > 64:
        body["selection"] = [[5, 69, 1]]
        data = ds.array[i][5:69]
    api = "v1" if ds.v1 is not None and rng.random() < 0.2 else "v2"
    if api == "v1":
        body.update(ds.v1 or {})
    else:
        body.update({"interface_type": ds.interface_type, "url": ds.url})
    if data.size == 0 and op in ("min", "max"):
        op = "count"
    want: Any = {"count": lambda d: d.size, "min": lambda d: d.min(), "max": lambda d: d.max(),
                 "sum": lambda d: d.sum(dtype=np.int64).astype(np.int32),
                 "select": lambda d: d.copy()}[op](data)
    return api, op, body, want


@dataclass
class _Answer:
    status_code: int
    headers: dict[str, str]
    content: bytes


def _check(api: str, op: str, resp: Any, want: Any) -> bool:
    import cbor2

    if api == "v1":
        h = {k.lower(): v for k, v in resp.headers.items()}
        got = np.frombuffer(resp.content, np.dtype(h["x-activestorage-dtype"]).newbyteorder(
            "<" if h["x-activestorage-byte-order"] == "little" else ">"))
    else:
        m = cbor2.loads(resp.content)
        got = np.frombuffer(m["bytes"], np.dtype(m["dtype"]).newbyteorder(
            "<" if m["byte_order"] == "little" else ">"))
    if op == "select":
        return np.array_equal(got, want)
    return got.size == 1 and got[0] == want


async def _run(server_url: str, ds: Dataset, n_requests: int, concurrency: int,
               max_seconds: float, pids: list[int], seed: int) -> Report:
    import aiohttp

    rep = Report()
    rng = random.Random(seed)
    plan = [_request(ds, rng) for _ in range(min(n_requests, 20_000))]  # reused round-robin
    next_i = 0
    t0 = time.monotonic()
    deadline = t0 + max_seconds
    headers = {"content-type": "application/json"}
    if ds.auth:
        headers["authorization"] = "Basic " + base64.b64encode(":".join(ds.auth).encode()).decode()
    done = asyncio.Event()

    async def sampler() -> None:
        while not done.is_set():
            rep.rss.append((time.monotonic() - t0, _server_rss(pids)))
            try:
                await asyncio.wait_for(done.wait(), 0.5)
            except asyncio.TimeoutError:
                pass
        rep.rss.append((time.monotonic() - t0, _server_rss(pids)))

    # aiohttp: httpx's connection pool tops out near 110 requests/s at 64 concurrent clients
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=30, connect=5)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout,
                                     headers=headers) as client:
        async def worker() -> None:
            nonlocal next_i
            while True:
                if next_i >= n_requests or time.monotonic() > deadline:
                    return
                api, op, body, want = plan[next_i % len(plan)]
                next_i += 1
                path = f"/v1/{op}/" if api == "v1" else f"/v2/{op}"
                t = time.perf_counter()
                try:
                    async with client.post(server_url + path, data=json.dumps(body)) as resp:
                        r = _Answer(resp.status, dict(resp.headers), await resp.read())
                    dt = time.perf_counter() - t
                    rep.requests += 1
                    rep.latencies.append(dt)
                    if r.status_code != 200:
                        rep.errors += 1
                        rep.error_samples.append(f"{r.status_code} {r.content[:200]!r}")
                    elif not _check(api, op, r, want):
                        rep.wrong += 1
                        rep.error_samples.append(f"wrong {op} {body}")
                except Exception as exc:  # noqa: BLE001 - every failure is counted and shown
                    rep.requests += 1
                    rep.errors += 1
                    rep.error_samples.append(f"{type(exc).__name__}: {exc}")

        samp = asyncio.create_task(sampler())
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        done.set()
        await samp
    rep.seconds = time.monotonic() - t0
    return rep


def run_soak(server_url: str, ds: Dataset, *, n_requests: int = 2000, concurrency: int = 64,
             max_seconds: float = 600.0, server_pids: list[int] | None = None,
             seed: int = 8) -> Report:
    """Send ``n_requests`` checked reductions with ``concurrency`` clients (bounded by time)."""
    return asyncio.run(_run(server_url.rstrip("/"), ds, n_requests, concurrency, max_seconds,
                            list(server_pids or []), seed))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=100_000)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--max-seconds", type=float, default=1200)
    p.add_argument("--store", choices=["nginx", "moto"], default="nginx")
    p.add_argument("--workers", type=int, default=1, help="server worker processes")
    p.add_argument("--max-rss-growth-mib", type=float, default=32.0)
    p.add_argument("--json", type=Path, help="write the summary here too")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    sys.path.insert(0, str(HERE.parent / "integration"))
    from servers import s3_client, start_active_server, start_moto, start_nginx

    work = Path(tempfile.mkdtemp(prefix="soak-"))
    arr = make_array()
    procs = []
    try:
        if args.store == "nginx":
            (work / "www").mkdir()
            (work / "www" / "soak.bin").write_bytes(arr.astype("<i4").tobytes())
            store = start_nginx(work / "nginx", work / "www", workers=1)
            procs.append(store)
            ds = Dataset(arr, f"{store.url}/soak.bin")
        else:
            store = start_moto(work / "moto")
            procs.append(store)
            s3 = s3_client(store.url)
            s3.create_bucket(Bucket="soak")
            s3.put_object(Bucket="soak", Key="soak.bin", Body=arr.astype("<i4").tobytes())
            ds = Dataset(arr, f"{store.url}/soak/soak.bin", "s3", ("testing-key", "testing-secret"),
                         {"source": store.url, "bucket": "soak", "object": "soak.bin"})
        server = start_active_server(work / "server", "--workers", str(args.workers),
                                     "--no-access-log")
        procs.append(server)
        log.info("soak: %d requests, %d clients, store %s, server %s", args.requests,
                 args.concurrency, args.store, server.url)
        rep = run_soak(server.url, ds, n_requests=args.requests, concurrency=args.concurrency,
                       max_seconds=args.max_seconds, server_pids=[server.pid])
        summary = {"store": args.store, "workers": args.workers,
                   "concurrency": args.concurrency, **rep.summary()}
        print(json.dumps(summary, indent=2))
        if args.json:
            args.json.write_text(json.dumps(summary, indent=2))
        leak = summary["rss_mib"]["growth_after_warmup"] > args.max_rss_growth_mib
        short = rep.requests < args.requests
        if short:
            log.warning("stopped at the time limit after %d of %d requests", rep.requests,
                        args.requests)
        return 1 if (rep.errors or rep.wrong or leak) else 0
    finally:
        for proc in reversed(procs):
            proc.stop()


if __name__ == "__main__":
    sys.exit(main())
