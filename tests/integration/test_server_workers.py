"""``--workers N``: the worker processes of one server share one metrics view (prometheus_client
multiprocess mode, in a directory of the server's own that is removed when it stops)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import requests

from servers import ServerProcess, start_active_server


def _workers(server: ServerProcess, n: int, timeout: float = 20.0) -> list[int]:
    """The pids of the server's worker processes (children of the supervisor, but for
    multiprocessing's resource tracker)."""
    deadline = time.monotonic() + timeout
    while True:
        kids = [int(d.name) for d in Path("/proc").iterdir()
                if d.name.isdigit() and _ppid(int(d.name)) == server.pid
                and b"resource_tracker" not in _cmdline(int(d.name))]
        if len(kids) >= n or time.monotonic() > deadline:
            return kids
        time.sleep(0.2)


def _ppid(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _env(pid: int, name: str) -> str | None:
    for kv in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
        k, _, v = kv.partition(b"=")
        if k.decode() == name:
            return v.decode()
    return None


def _sample(text: str, name: str, labels: str = "") -> float:
    pattern = rf"^{re.escape(name)}{re.escape(labels)} (\S+)$"
    m = re.search(pattern, text, re.M)
    assert m, f"{name}{labels} not in /metrics"
    return float(m.group(1))


def test_two_workers_show_one_metrics_view(tmp_path, nginx_server):
    root: Path = nginx_server.extra["docroot"]
    (root / "workers.bin").write_bytes(np.arange(1000, dtype="<f8").tobytes())
    body = {"interface_type": "http", "url": f"{nginx_server.url}/workers.bin",
            "dtype": "float64", "offset": 0, "size": 8000, "shape": [1000]}
    srv = start_active_server(tmp_path / "srv", "--workers", "2", "--no-access-log",
                              "--no-chunk-cache")  # every request reads upstream
    try:
        kids = _workers(srv, 2)
        assert len(kids) == 2
        dirs = {_env(p, "PROMETHEUS_MULTIPROC_DIR") for p in kids}
        assert len(dirs) == 1 and None not in dirs  # one directory, shared by both workers
        metrics_dir = Path(dirs.pop())  # type: ignore[arg-type]
        n = 40
        for _ in range(n):  # a new connection each: the kernel spreads them over the workers
            r = requests.post(f"{srv.url}/v2/sum", json=body, timeout=30)
            assert r.status_code == 200, r.text
        ok = 'activestorage_requests_total{api="v2",operation="sum",status="200"}'
        for _ in range(8):  # whichever worker answers a scrape shows all requests
            text = requests.get(f"{srv.url}/metrics", timeout=30).text
            assert _sample(text, ok.split("{")[0], "{" + ok.split("{")[1]) == n
            assert _sample(text, "activestorage_upstream_requests_total") == n
            assert _sample(text, "activestorage_upstream_bytes_total") == n * 8000
            assert _sample(text, "activestorage_bytes_in_flight") == 0
        status = requests.get(f"{srv.url}/", headers={"accept": "application/json"}, timeout=30)
        assert metrics_dir.is_dir() and any(metrics_dir.iterdir())
    finally:
        srv.stop()
    assert not metrics_dir.exists()  # removed with the server
    assert status.status_code == 200
    assert status.json()["counters"]["requests_by_api"]["v2"] == n  # the status page too
