"""benchmarks/bench_weighted.py runs end to end on the quick files; every method agrees with the
float64 NumPy oracle and the ratios the issue asks for are reported."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from benchmarks import bench_weighted


def test_quick_run_agrees_and_reports_the_ratios(tmp_path: Path, capsys) -> None:
    out = tmp_path / "r.json"
    assert bench_weighted.main(["--quick", "--repeat", "1", "--data-dir", str(tmp_path),
                                "--json", str(out)]) == 0
    text = capsys.readouterr().out
    record = json.loads(out.read_text())
    assert set(record["files"]) == {"plain", "zlib"}
    for name, f in record["files"].items():
        assert set(f["methods"]) == set(bench_weighted.METHODS)
        assert all(m["agrees"] and m["seconds"] > 0 for m in f["methods"].values())
        assert f["methods"]["active"]["ran"] == "posix"
        assert f["methods"]["active"]["bytes_read"] > 0
        assert set(f["ratios"]) == {"active/numpy", "xarray/active", "var/mean"}
        assert f"{name:<8} ratios:" in text


@pytest.mark.integration
def test_quick_remote_run_through_our_server_and_fetch(tmp_path: Path, capsys) -> None:
    """--remote: moto (and nginx) on loopback; the server moves a few KB, fetch the whole
    variable, and both agree with the oracle."""
    out = tmp_path / "r.json"
    assert bench_weighted.main(["--quick", "--repeat", "1", "--data-dir", str(tmp_path),
                                "--remote", "--json", str(out)]) == 0
    remote = json.loads(out.read_text())["remote"]
    stores = ["s3", "http"] if shutil.which("nginx") or os.environ.get("CI") == "true" else ["s3"]
    assert set(remote) == {f"{f} {s} {how}" for f in ("plain_80", "zlib_80") for s in stores
                           for how in ("server", "fetch")}
    for name, r in remote.items():
        assert r["agrees"] and r["ran"] == name.split()[-1], (name, r)
        if r["ran"] == "server":
            assert r["bytes_received"] < 0.01 * r["bytes_without_active"], (name, r)
    assert "plain_80 s3 server" in capsys.readouterr().out
