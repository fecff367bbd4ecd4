"""benchmarks.ab: two source trees timed in paired, interleaved fresh processes, reported as
ratios B/A with an interval (the tool that judges "no case more than 5 % slower")."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import ab  # noqa: E402

NEEDS = ("moto", "fastapi", "uvicorn")
missing = [m for m in NEEDS if importlib.util.find_spec(m) is None]


def test_paired_ratios_give_the_verdict_their_interval_allows() -> None:
    a = [1.0, 2.0, 1.0, 4.0, 1.0, 2.0]
    slower = ab.summarise(a, [x * 1.2 for x in a], tolerance=0.05)
    assert slower["verdict"] == "slower"
    assert slower["ratio_median"] == pytest.approx(1.2)
    assert slower["ci95"] == pytest.approx([1.2, 1.2])
    assert ab.summarise(a, [x * 0.8 for x in a], 0.05)["verdict"] == "faster"
    # a machine whose load swings 2x between rounds: the paired ratios stay near 1
    same = ab.summarise(a, [x * r for x, r in zip(a, (1.01, 0.98, 1.03, 0.99, 1.0, 1.02))], 0.05)
    assert same["verdict"] == "same" and same["ci95"][0] < 1.0 < same["ci95"][1]
    # noisy ratios straddling 1.05: no verdict of slower without an interval above it
    noisy = ab.summarise(a, [x * r for x, r in zip(a, (0.9, 1.3, 1.0, 1.2, 0.95, 1.1))], 0.05)
    assert noisy["verdict"] == "same"
    few = ab.summarise([1.0, 1.0], [2.0, 2.0], 0.05)
    assert few["verdict"].startswith("too few rounds")


def test_bootstrap_interval_holds_the_median_and_is_reproducible() -> None:
    ratios = [0.97, 1.02, 1.1, 0.99, 1.04, 1.0, 1.3, 0.95]
    lo, hi = ab.bootstrap_median(ratios)
    assert lo <= sorted(ratios)[len(ratios) // 2] <= hi
    assert (lo, hi) == ab.bootstrap_median(ratios)
    assert min(ratios) <= lo and hi <= max(ratios)


def test_a_tree_without_the_package_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="not an activestorage source tree"):
        ab.check_tree(tmp_path)


@pytest.mark.skipif(bool(missing), reason=f"{', '.join(missing)} not installed: "
                    "pip install -e '.[bench]' to run the benchmarks")
def test_a_tiny_run_reports_paired_ratios_per_case(tmp_path: Path) -> None:
    """This tree against itself on the ~20 MB file, a local and a server method (each side its
    own server process): every case gets paired ratios and a verdict, not bare figures."""
    r = subprocess.run([sys.executable, "-m", "benchmarks.ab", "--a", str(REPO), "--b", str(REPO),
                        "--quick", "--rounds", "2", "--runs", "1", "--datasets", "plain",
                        "--cases", "whole", "--only", "ours_posix,ours_server_batch",
                        "--results-dir", str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                       timeout=600, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    [path] = tmp_path.glob("*-ab.json")
    record = json.loads(path.read_text())
    assert not record["problems"]
    assert set(record["summary"]) == {f"{m} plain/{c}" for m in ("ours_posix", "ours_server_batch")
                                      for c in ("whole",)}
    for case, s in record["summary"].items():
        assert len(s["ratios"]) == 2, case
        assert all(math.isfinite(x) and x > 0 for x in s["ratios"]), case
        assert s["ratios"] == pytest.approx([b / a for a, b in zip(s["a_times_s"], s["b_times_s"])])
        assert s["verdict"].startswith("too few rounds")
    assert "| ours_posix | plain/whole |" in r.stdout


def test_interleaved_runs_of_two_warm_processes_give_paired_ratios(tmp_path: Path) -> None:
    """--interleave run: one warm process per tree, single runs alternating; every pair counted,
    each result checked against the oracle (a wrong one would be a problem, exit 1)."""
    r = subprocess.run([sys.executable, "-m", "benchmarks.ab", "--a", str(REPO), "--b", str(REPO),
                        "--quick", "--interleave", "run", "--rounds", "5", "--datasets", "missing",
                        "--cases", "whole,axis0", "--only", "ours_posix",
                        "--results-dir", str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                       timeout=600, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    [path] = tmp_path.glob("*-ab.json")
    record = json.loads(path.read_text())
    assert record["interleave"] == "run" and not record["problems"]
    for case in ("whole", "axis0"):
        s = record["summary"][f"ours_posix missing/{case}"]
        assert len(s["ratios"]) == 5
        assert s["verdict"] in ("same", "slower", "faster")  # enough rounds for a verdict
        lo, hi = s["ci95"]
        assert lo <= s["ratio_median"] <= hi
        assert s["cpu_ratio_median"] > 0
