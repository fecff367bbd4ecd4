"""The reduction server's own CPU per request, without sockets and without the upstream client.

``python -m benchmarks.bench_server_cpu [--a TREE] [--b TREE] [--rounds N] [--quick]``

Drives the server's ASGI app (``create_app``) directly with a 64 KiB ``POST /v2/sum`` (no chunk
cache, as ``bench_server`` runs it) and with a cached 320-item batch of 64 KiB chunks (a folding
``POST /v2/batch/sum``, every range in the chunk cache), the upstream range read and HEAD
answered from memory. What is left is the server's own work per request (body read, parsing,
validation, allow-list, kernel, encoding, metrics, response), which the loopback benchmarks
(``bench_server``, ``bench_remote``) measure together with the HTTP client, the upstream client
and the load generator on the same two cores.

Each figure is the process CPU (all threads) of one child process per tree and round, the trees
alternating round by round (A B, B A, ...); ``--a``/``--b`` are source trees put first on
``PYTHONPATH`` (default: this one for both), as ``benchmarks.ab`` does. Prints the median per
tree and the median of the per-round ratios B/A.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

#: one child process: time ``n`` requests of ``kind`` through the app of the tree it imports
CHILD = r'''
import asyncio, json, sys, time
import cbor2, numpy as np
from activestorage.server.app import create_app
from activestorage.server.settings import Settings
kind, n, chunks = sys.argv[1], int(sys.argv[2]), 320
data = np.random.default_rng(0).standard_normal(16384 * chunks).astype("<f4").tobytes()
async def read(target, offset, size, *, max_bytes, meta=None):
    if meta is not None:
        meta["etag"] = '"v1"'
    return data[offset:offset + size]
async def etag(target):
    return '"v1"'
app = create_app(Settings(allow_upstream=["127.0.0.1"], access_log=False, max_batch=1024,
                          chunk_cache_size=0 if kind == "single" else 1 << 30))
server = app.state.server
server.upstream.read, server.upstream.etag = read, etag
url = "http://127.0.0.1:8080/v.nc"
if kind == "single":
    path, ctype = "/v2/sum", b"application/json"
    body = json.dumps({"interface_type": "http", "url": url, "dtype": "float32",
                       "byte_order": "little", "offset": 0, "size": 65536,
                       "shape": [16384]}).encode()
else:
    path, ctype = "/v2/batch/sum", b"application/cbor"
    body = cbor2.dumps({"requests": [
        {"interface_type": "http", "url": url, "dtype": "float32", "byte_order": "little",
         "offset": i * 65536, "shape": [1, 128, 128], "order": "C", "size": 65536,
         "missing": {"missing_value": 9.969209968386869e36}} for i in range(chunks)],
        "fold": [0] * chunks})
scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
         "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
         "root_path": "", "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8000),
         "headers": [(b"host", b"127.0.0.1"), (b"content-type", ctype),
                     (b"content-length", str(len(body)).encode())]}
async def one():
    sent, msgs = [], [{"type": "http.request", "body": body, "more_body": False}]
    async def receive():
        return msgs.pop() if msgs else {"type": "http.disconnect"}
    async def send(m):
        sent.append(m)
    await app(dict(scope), receive, send)
    if sent[0]["status"] != 200:
        raise SystemExit(f"status {sent[0]['status']}: {sent[1].get('body', b'')[:300]!r}")
async def main():
    async with app.router.lifespan_context(app):
        for _ in range(max(3, n // 10)):  # warm-up (and, batched, filling the cache)
            await one()
        t0 = time.process_time()
        for _ in range(n):
            await one()
        import activestorage
        print(json.dumps({"cpu_us": (time.process_time() - t0) / n * 1e6,
                          "tree": activestorage.__file__}))
try:
    import uvloop
    uvloop.run(main())
except ImportError:
    asyncio.run(main())
'''


def run_child(tree: Path, kind: str, n: int) -> float:
    """CPU microseconds per request of ``kind`` in a fresh process importing ``tree``."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    # run from a neutral directory: ``-c`` puts the working directory first on sys.path
    out = subprocess.run([sys.executable, "-c", CHILD, kind, str(n)], env=env, check=True,
                         capture_output=True, text=True, timeout=600,
                         cwd=tempfile.gettempdir()).stdout
    got = json.loads(out.strip().splitlines()[-1])
    if not Path(got["tree"]).resolve().is_relative_to(tree):
        raise SystemExit(f"{tree}: the child imported {got['tree']}")
    return float(got["cpu_us"])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--a", type=Path, default=REPO, help="source tree A (the 'before')")
    p.add_argument("--b", type=Path, default=REPO, help="source tree B (default: this one)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="few requests (a smoke run)")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)
    counts = {"single": 200 if args.quick else 3000, "batch": 3 if args.quick else 40}
    out: dict[str, Any] = {}
    for kind, n in counts.items():
        figs: dict[str, list[float]] = {"a": [], "b": []}
        for r in range(args.rounds):
            for side in ("ab" if r % 2 == 0 else "ba"):
                figs[side].append(run_child(getattr(args, side).resolve(), kind, n))
        ratios = [b / a for a, b in zip(figs["a"], figs["b"])]
        unit, scale = ("us", 1.0) if kind == "single" else ("ms", 1e-3)
        out[kind] = {"a_us": figs["a"], "b_us": figs["b"], "ratio_median": statistics.median(ratios)}
        print(f"{kind:>6}: A {statistics.median(figs['a']) * scale:8.1f} {unit}  "
              f"B {statistics.median(figs['b']) * scale:8.1f} {unit}  per "
              f"{'request' if kind == 'single' else '320-item cached batch'}; "
              f"B/A {statistics.median(ratios):.2f} (per round {min(ratios):.2f}-{max(ratios):.2f})",
              flush=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
