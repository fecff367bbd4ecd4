"""benchmarks/bench_xarray.py runs end to end on the quick files and its four methods agree."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import bench_xarray


def test_quick_run_prints_every_method_and_they_agree(tmp_path: Path, capsys) -> None:
    out = tmp_path / "r.json"
    assert bench_xarray.main(["--quick", "--repeat", "1", "--data-dir", str(tmp_path),
                              "--json", str(out)]) == 0
    text = capsys.readouterr().out
    record = json.loads(out.read_text())
    assert set(record["files"]) == {"plain", "zlib"}
    for name, f in record["files"].items():
        assert set(f["methods"]) == {"xarray", "xarray+dask", "active", "active+dask"}
        assert all(m["agrees"] and m["seconds"] > 0 for m in f["methods"].values())
        assert f["methods"]["active"]["bytes_read"] > 0
        assert f"{name:<8} active+dask" in text
