"""The servers the remote methods talk to, as separate processes on loopback.

Reuses ``tests/integration/servers.py`` (moto's S3 server, nginx, our reduction server; each on a
free 127.0.0.1 port, stopped by PID) rather than a second copy of that code. The benchmark files
are uploaded to a moto bucket (only when moto is asked for) and nginx serves the data directory
itself.

The benchmarks with a ``--remote`` part (bench_weighted.py, bench_xarray.py) share the rest too:
:func:`arguments` (their options), :func:`plain_and_zlib` (their files), :func:`remote` (moto and
our server in a temporary directory), :func:`timed_row` (one case timed, its answer checked) and
:func:`print_remote` (the remote rows).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import logging
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterator

import numpy as np

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
SERVERS_PY = REPO / "tests" / "integration" / "servers.py"
BUCKET = "bench"


def servers_module() -> ModuleType:
    """``tests/integration/servers.py``, loaded by path (tests/ is not a package)."""
    spec = importlib.util.spec_from_file_location("_activestorage_test_servers", SERVERS_PY)
    if spec is None or spec.loader is None or not SERVERS_PY.exists():
        raise RuntimeError(f"{SERVERS_PY} is missing: it starts moto/nginx/our server")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


@dataclass
class Services:
    """URLs and credentials of whatever was started (None where not needed)."""

    s3: dict[str, str] | None = None
    server_url: str | None = None
    http_base: str | None = None
    notes: list[str] = field(default_factory=list)

    def s3_url(self, path: Path) -> str:
        return f"s3://{BUCKET}/{path.name}"

    def http_url(self, path: Path) -> str | None:
        return f"{self.http_base}/{path.name}" if self.http_base else None

    def s3_options(self) -> dict[str, Any]:
        """fsspec-style storage options for the moto bucket (as Active and xarray take them)."""
        if self.s3 is None:
            raise RuntimeError("moto was not started: no S3 storage options")
        return {"key": self.s3["key"], "secret": self.s3["secret"],
                "client_kwargs": {"endpoint_url": self.s3["endpoint"], "region_name": "us-east-1"}}


@contextlib.contextmanager
def started(workdir: Path, files: list[Path], data_dir: Path, *, moto: bool, server: bool,
            nginx: bool) -> Iterator[Services]:
    """Start what is asked for, upload ``files`` to moto; stop everything on exit."""
    srv = servers_module()
    procs: list[Any] = []
    out = Services()
    try:
        if moto:
            m = srv.start_moto(workdir / "moto")
            procs.append(m)
            client = srv.s3_client(m.url)
            client.create_bucket(Bucket=BUCKET)
            for f in files:
                client.upload_file(str(f), BUCKET, f.name)
            out.s3 = {"endpoint": m.url, "key": srv.S3_KEY, "secret": srv.S3_SECRET,
                      "bucket": BUCKET}
        if server:
            # no chunk cache: repeated timings must measure reads, not cache hits
            s = srv.start_active_server(workdir / "server", "--no-access-log",
                                        "--log-level", "warning", "--no-chunk-cache")
            procs.append(s)
            out.server_url = s.url
        if nginx:
            if srv.nginx_binary() is None:
                out.notes.append("nginx not installed: nginx_get skipped (apt-get install nginx)")
            else:
                n = srv.start_nginx(workdir / "nginx", data_dir, workers=1)
                procs.append(n)
                out.http_base = n.url
        yield out
    finally:
        for p in reversed(procs):
            p.stop()


@contextlib.contextmanager
def remote(prefix: str, files: list[Path], data_dir: Path, *, nginx: bool) -> Iterator[Services]:
    """moto with ``files`` uploaded and our server (and nginx over ``data_dir`` when asked), in a
    temporary directory named after ``prefix``; everything stopped and removed on exit."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp, started(
            Path(tmp), files, data_dir, moto=True, server=True, nginx=nginx) as sv:
        yield sv


def timed_row(repeat: int, fn: Callable[[], tuple[np.ndarray, dict[str, Any]]],
              want: np.ndarray | None, rtol: float) -> tuple[dict[str, Any], np.ndarray]:
    """Run ``fn() -> (values, extra)`` ``repeat`` times; the row keeps the best seconds (the
    wall time of a call, or ``extra["seconds"]`` when ``fn`` times itself), whether the last
    values agree with ``want`` within ``rtol`` (None: they are the reference) and ``extra``.
    Returns the row and the values."""
    best, values, extra = float("inf"), np.empty(0), {}
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        values, extra = fn()
        best = min(best, extra.pop("seconds", time.perf_counter() - t0))
    agrees = want is None or bool(np.allclose(values, want, rtol=rtol, atol=0, equal_nan=True))
    return {"seconds": best, "agrees": agrees, **extra}, values


def print_remote(title: str, rows: dict[str, dict[str, Any]], *, ran: bool = False) -> bool:
    """One line per remote case: seconds, bytes to the client (and, with ``ran``, the backend
    that reduced); True when any case disagrees with its reference."""
    ran_head = f" {'ran':<22}" if ran else ""
    print(f"\n{title:<28} {'seconds':>9} {'to client':>12}{ran_head}  agrees")
    failed = False
    for name, r in rows.items():
        where = f" {r.get('ran', '-'):<22}" if ran else ""
        print(f"{name:<28} {r['seconds']:9.3f} {r['bytes_received']:12d}{where}  "
              f"{'yes' if r['agrees'] else 'NO'}")
        failed |= not r["agrees"]
    return failed


def arguments(doc: str, remote_help: str) -> argparse.ArgumentParser:
    """The options of a benchmark over the plain and zlib files with a ``--remote`` part."""
    from benchmarks import data

    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="the 21 MB files instead of 415 MB")
    p.add_argument("--repeat", type=int, default=3, help="runs per method; the best is kept")
    p.add_argument("--data-dir", type=Path, default=data.DEFAULT_DIR,
                   help="where the benchmark files are (written there if absent)")
    p.add_argument("--remote", action="store_true", help=remote_help)
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    return p


def plain_and_zlib(quick: bool, data_dir: Path) -> list[tuple[str, Path]]:
    """The plain and zlib benchmark files (``quick``: the 21 MB ones), written when absent."""
    from benchmarks import data

    return [(spec.name, data.ensure(spec, data_dir)) for spec in data.specs(quick)
            if spec.name in ("plain", "zlib")]
