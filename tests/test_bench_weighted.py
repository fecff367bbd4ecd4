"""benchmarks/bench_weighted.py runs end to end on the quick files; every method agrees with the
float64 NumPy oracle and the ratios the issue asks for are reported."""

from __future__ import annotations

import json
from pathlib import Path

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
