"""The benchmark suite still works: ``python -m benchmarks --quick --no-peer`` end to end, plus its
measuring parts (oracle comparison, chunk selection, method selection) on their own.

The quick run is for catching breakage, not for timing: it starts moto, our server and nginx as
processes, times every method once on ~20 MB files and checks each result against the NumPy
oracle. ``--no-peer``: creating PyActiveStorage's own venv downloads its dependencies and takes
minutes, too slow for every CI run; the full run (docs/performance.md) covers the peer.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import data  # noqa: E402
from benchmarks.__main__ import GROUPS, select_methods  # noqa: E402
from benchmarks.measure import compare  # noqa: E402
from benchmarks.report import add_ratios  # noqa: E402

NEEDS = ("xarray", "matplotlib", "moto", "fastapi", "uvicorn")
missing = [m for m in NEEDS if importlib.util.find_spec(m) is None]
needs_bench = pytest.mark.skipif(bool(missing), reason=f"{', '.join(missing)} not installed: "
                                 "pip install -e '.[bench]' to run the benchmark suite")


# ------------------------------------------------------------------------- measuring parts

def test_compare_catches_wrong_values_masks_and_shapes() -> None:
    want = np.array([[1.0, np.nan], [3.0, 4.0]])
    good = np.ma.MaskedArray([[1.0, 0.0], [3.0, 4.0]], [[0, 1], [0, 0]], dtype=np.float32)
    assert compare(good, want)["ok"]
    assert not compare(good + 0.01, want)["ok"]
    unmasked = np.ma.MaskedArray([[1.0, 0.0], [3.0, 4.0]], [[0, 0], [0, 0]])
    assert "masked points differ" in compare(unmasked, want)["why"]
    assert "shape" in compare(np.ones(3), want)["why"]
    assert compare(np.ma.masked, np.array(np.nan))["ok"]
    assert compare(np.float32(2.5), np.array(2.5))["ok"]


def test_touched_chunks_are_those_overlapping_the_box() -> None:
    index = [((0, 0), 100, 10), ((0, 5), 110, 10), ((5, 0), 120, 10), ((5, 5), 130, 10)]
    assert data.touched(index, (5, 5), [[0, 10], [0, 10]]) == [(100, 10), (110, 10), (120, 10),
                                                                 (130, 10)]
    assert data.touched(index, (5, 5), [[4, 5], [5, 6]]) == [(110, 10)]
    assert data.touched(index, (5, 5), [[5, 6], [4, 6]]) == [(120, 10), (130, 10)]


def test_cases_count_logical_bytes() -> None:
    cs = {c["name"]: c for c in data.cases(80)}
    assert cs["whole"]["logical_bytes"] == 80 * data.NLAT * data.NLON * 4
    assert cs["axis0"]["axis"] == [0]
    (a, b), (c, d), (e, f) = cs["sub"]["box"]
    assert cs["sub"]["logical_bytes"] == 4 * (b - a) * (d - c) * (f - e)


def test_method_selection() -> None:
    assert select_methods("ours,pread", no_peer=False) == ["pread", *GROUPS["ours"]]
    assert not set(select_methods("", no_peer=True)) & set(GROUPS["peer"])
    with pytest.raises(SystemExit):
        select_methods("nope", no_peer=False)


def test_ratios_use_the_best_peer_and_the_larger_limit() -> None:
    def rec(t: float) -> dict:
        return {"datasets": {"zlib": {"cases": {"whole": {"median_s": t}}}}}

    results = {"ours_posix": rec(1.0), "peer_posix": rec(4.0), "peer_posix_t2": rec(2.0),
               "numpy_memory": rec(0.1), "decode_1core": rec(1.6),
               "ours_server_batch": rec(3.0), "peer_reductionist": rec(6.0)}
    add_ratios(results, cores=2)
    ours = results["ours_posix"]["datasets"]["zlib"]["cases"]["whole"]
    assert ours["x_peer"] == pytest.approx(0.5)   # vs the faster peer configuration
    assert ours["x_limit"] == pytest.approx(1.25)  # vs decode 1.6 s / 2 cores > memory pass
    assert results["ours_server_batch"]["datasets"]["zlib"]["cases"]["whole"]["x_peer"] == \
        pytest.approx(0.5)


def test_each_dataset_runs_in_its_own_process_and_records_merge(monkeypatch, tmp_path) -> None:
    """A full run starts one worker per dataset (each case's peak RSS is then its own) and
    merges their records into one per method; a failed dataset is named, the others kept."""
    import benchmarks.__main__ as bench

    calls = []

    def fake(method, config, workdir, timeout, peer_python, tag=""):
        calls.append((method, [d["name"] for d in config["datasets"]], tag))
        name = config["datasets"][0]["name"]
        if name == "bad":
            return {"method": method, "error": "exit 1: boom", "datasets": {}}
        return {"method": method, "datasets": {name: {"cases": {"whole": {"median_s": 1.0}}}},
                "wall_s": 2.0, "loadavg_1min": {"before": 0.5, "after": 1.5},
                "baseline_rss_mb": 30.0}

    monkeypatch.setattr(bench, "run_worker", fake)
    config = {"datasets": [{"name": "plain"}, {"name": "bad"}, {"name": "zlib"}]}
    rec = bench.run_method("ours_posix", config, tmp_path, 10.0, None)
    assert calls == [("ours_posix", ["plain"], "plain"), ("ours_posix", ["bad"], "bad"),
                     ("ours_posix", ["zlib"], "zlib")]
    assert set(rec["datasets"]) == {"plain", "zlib"} and rec["wall_s"] == 4.0
    assert rec["loadavg_1min"] == {"before": 0.5, "after": 1.5}
    assert rec["error"] == "bad: exit 1: boom" and rec["baseline_rss_mb"] == 30.0
    calls.clear()
    bench.run_method("ours_posix", config, tmp_path, 10.0, None, isolate=False)
    assert calls == [("ours_posix", ["plain", "bad", "zlib"], "")]


# ------------------------------------------------------------------------- the quick run

@needs_bench
def test_quick_run_times_every_method_and_agrees_with_numpy(tmp_path: Path) -> None:
    if shutil.which("nginx") is None and not os.access("/usr/sbin/nginx", os.X_OK):
        if os.environ.get("CI"):
            pytest.fail("nginx is not installed on CI (scripts/test installs it)")
        pytest.skip("nginx not installed (apt-get install -y nginx): nginx_get cannot run")
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--no-peer",
                        "--results-dir", str(tmp_path)], cwd=REPO, capture_output=True,
                       text=True, timeout=600, stdin=subprocess.DEVNULL)
    wall = time.monotonic() - t0
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    [json_path] = tmp_path.glob("*.json")
    assert json_path.with_suffix(".png").stat().st_size > 10_000
    record = json.loads(json_path.read_text())
    assert record["quick"] and not record["problems"]
    # Speed is the benchmarks' business, not a test's (a busy CI box is slower): say it only.
    print(f"benchmarks --quick took {wall:.0f} s")

    expected = [m for g in ("limits", "baselines", "ours") for m in GROUPS[g]]
    assert list(record["methods"]) == expected
    names = [d["name"] for d in record["datasets"]]
    assert names == ["plain", "zlib", "small", "missing"]
    checked = 0
    for method, rec in record["methods"].items():
        assert "error" not in rec, (method, rec["error"])
        measured = 0
        for name in names:
            drec = rec["datasets"][name]
            assert "error" not in drec, (method, name, drec)
            if "skip" in drec:
                assert drec["skip"], (method, name)  # a reason, never an empty skip
                continue
            for case in ("whole", "sub", "axis0"):
                c = drec["cases"][case]
                assert "error" not in c, (method, name, case, c)
                assert math.isfinite(c["median_s"]) and c["median_s"] > 0, (method, name, case)
                assert math.isfinite(c["gbps"]) and math.isfinite(c["peak_rss_mb"])
                if c["check"] is not None:
                    assert c["check"]["ok"], (method, name, case, c["check"])
                    checked += 1
                measured += 1
        assert measured >= 3, f"{method} measured nothing"
    # every baseline and every backend of ours, on every dataset and case, was checked
    assert checked == (len(GROUPS["baselines"]) + len(GROUPS["ours"])) * 4 * 3
    ours = record["methods"]["ours_server_batch"]["datasets"]["plain"]["cases"]["whole"]
    fetched = record["methods"]["ours_fetch"]["datasets"]["plain"]["cases"]["whole"]
    assert ours["bytes_moved"] < fetched["bytes_moved"] / 1000  # the point of a server


@needs_bench
def test_peer_correctness_cases_are_right_for_ours() -> None:
    r = subprocess.run([sys.executable, "-m", "benchmarks.peer_correctness", "--no-peer"],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = [ln for ln in r.stdout.splitlines() if ln.startswith("| ") and "---" not in ln][1:]
    assert len(rows) == 4 and all("| yes |" in ln for ln in rows), r.stdout


def test_interleaved_ratio_run_checks_ours_and_writes_a_record(tmp_path: Path) -> None:
    """``python -m benchmarks.interleaved`` (ours against the in-memory pass, in one process)."""
    r = subprocess.run([sys.executable, "-m", "benchmarks.interleaved", "--quick", "--rounds", "2",
                        "--datasets", "plain,missing", "--results-dir", str(tmp_path)], cwd=REPO,
                       capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    [json_path] = tmp_path.glob("*-interleaved.json")
    record = json.loads(json_path.read_text())
    assert sorted(record["datasets"]) == ["missing", "plain"]
    for cases in record["datasets"].values():
        assert sorted(cases) == ["axis0", "sub", "whole"]
        for c in cases.values():
            assert c["check"]["ok"]
            assert all(len(t) == 2 for t in c["times_s"].values())
            assert all(math.isfinite(x) and x > 0 for x in c["x_numpy_memory"].values())


def test_rounds_merge_every_run_and_keep_the_worst_memory_and_check() -> None:
    from benchmarks.__main__ import merge_rounds

    def rec(times, rss, ok=True, resident=1.0):
        case = {"median_s": float(np.median(times)), "times_s": list(times), "cpu_s": 0.1,
                "peak_rss_mb": rss, "peak_rss_open_mb": rss - 1, "rss_file_mb": 0.0,
                "logical_bytes": 1000, "gbps": 1.0, "check": {"ok": ok}}
        return {"method": "m", "wall_s": 1.0, "loadavg_1min": {"before": 1.0, "after": 2.0},
                "resident": {"plain": {"before": resident, "after": 1.0}},
                "datasets": {"plain": {"cases": {"whole": case}}}}

    merged = merge_rounds(rec([1.0, 2.0, 3.0], 10.0), rec([4.0, 5.0, 6.0], 12.0, ok=False,
                                                         resident=0.5))
    c = merged["datasets"]["plain"]["cases"]["whole"]
    assert c["times_s"] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0] and c["median_s"] == 3.5
    assert c["peak_rss_mb"] == 12.0 and c["rounds"] == 2 and not c["check"]["ok"]
    assert c["gbps"] == 1000 / 3.5 / 1e9 and merged["wall_s"] == 2.0
    assert merged["resident"]["plain"] == {"before": 0.5, "after": 1.0}
    failed = {"method": "m", "error": "exit 1", "datasets": {}}
    assert merge_rounds(rec([1.0], 1.0), failed) is failed
