"""benchmarks.first_call: fresh processes time import, open, first and second mean (wall and CPU)
and report ratios between the sides, each result checked against the oracle."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_fresh_processes_report_each_step_and_ratios(tmp_path: Path) -> None:
    out = tmp_path / "first.json"
    r = subprocess.run([sys.executable, "-m", "benchmarks.first_call", "--quick", "--no-peer",
                        "--rounds", "2", "--a", str(REPO), "--json", str(out)], cwd=REPO,
                       capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    record = json.loads(out.read_text())
    assert set(record["times_s"]) == {"A", "B"}
    for side in ("A", "B"):
        times = record["times_s"][side]
        assert all(len(v) == 2 for v in times.values())
        for i in range(2):  # the derived figures are the sums of their steps
            assert times["open+first"][i] == times["open"][i] + times["first"][i]
            assert 0 < times["cpu_open+first"][i]
        assert all(t > 0 for t in times["import"] + times["open"] + times["first"])
    ratios = record["ratios"]["B/A"]
    assert set(ratios) == set(record["median_s"]["B"])
    assert all(r["min"] <= r["median"] <= r["max"] for r in ratios.values())
    assert "| open+first |" in r.stdout
