"""benchmarks/bench_xarray.py runs end to end on the quick files and its four methods agree."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

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


@pytest.mark.integration
def test_quick_remote_run_from_moto(tmp_path: Path, capsys) -> None:
    """--remote: xarray, .active through our server and .active fetching, on moto S3; all
    agree and the server moves a few KB where the others move the variable."""
    out = tmp_path / "r.json"
    assert bench_xarray.main(["--quick", "--repeat", "1", "--data-dir", str(tmp_path),
                              "--remote", "--json", str(out)]) == 0
    remote = json.loads(out.read_text())["remote"]
    assert set(remote) == {f"{f} {how}" for f in ("plain_80", "zlib_80")
                           for how in ("xarray", "active server", "active fetch")}
    for f in ("plain_80", "zlib_80"):
        assert all(remote[f"{f} {how}"]["agrees"] for how in ("active server", "active fetch"))
        server, fetch = remote[f"{f} active server"], remote[f"{f} active fetch"]
        assert server["bytes_received"] < 0.01 * fetch["bytes_received"], (server, fetch)
    assert "S3 (moto)" in capsys.readouterr().out
