"""benchmarks/bench_dask.py still runs end to end (tiny size: catches breakage, not timing)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("distributed", reason="dask.distributed is in the dask extra")
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]
REPO = Path(__file__).resolve().parents[2]


def test_bench_dask_quick(tmp_path):
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_dask.py"), "--size-mb", "8",
                        "--files", "2", "--chunk-mb", "0.5", "--repeat", "1", "--json", str(out)],
                       capture_output=True, text=True, timeout=280, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [row["method"] for row in rows] == [
        "Active thread pool, 1 server", "Dask LocalCluster(2 workers), 1 server",
        "Dask LocalCluster(2 workers), 2 servers"]
    assert all(row["ok"] and row["seconds"] > 0 for row in rows)
    assert "scaling ratio" in r.stdout
