"""The servers the remote methods talk to, as separate processes on loopback.

Reuses ``tests/integration/servers.py`` (moto's S3 server, nginx, our reduction server; each on a
free 127.0.0.1 port, stopped by PID) rather than a second copy of that code. The benchmark files
are uploaded to a moto bucket (only when moto is asked for) and nginx serves the data directory
itself.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Iterator

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
