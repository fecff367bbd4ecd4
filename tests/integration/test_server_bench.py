"""benchmarks/bench_server.py stays runnable: a tiny run answers every request without errors."""

import importlib.util
import os
from pathlib import Path

import pytest

from servers import nginx_binary

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_server.py"


def test_bench_server_quick_run(tmp_path):
    if nginx_binary() is None:
        if os.environ.get("CI") == "true":
            pytest.fail("nginx is required under CI=true (apt-get install -y nginx)")
        pytest.skip("nginx binary not found: apt-get install -y nginx to run the benchmark")
    spec = importlib.util.spec_from_file_location("bench_server", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = bench.main(["--quick", "--sizes", "64KiB", "--concurrency", "4",
                      "--json", str(tmp_path / "b.json")])
    targets = {r["target"] for r in out["rows"]}
    assert targets == {"nginx GET", "moto GET", "server sum <- nginx", "server sum <- moto"}
    assert all(r["errors"] == 0 and r["rps"] > 0 and r["p50"] <= r["p99"] for r in out["rows"])
    assert all(r["server_cpu_ms"] > 0 for r in out["rows"] if r["target"].startswith("server"))
    assert (tmp_path / "b.json").exists()
