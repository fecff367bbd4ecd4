"""benchmarks.bench_server_cpu still runs: both kinds of request answered 200 through the ASGI
app in child processes of the tree asked for, figures per round and their ratio."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import bench_server_cpu  # noqa: E402


def test_quick_run_gives_figures_for_both_trees(tmp_path: Path) -> None:
    out = bench_server_cpu.main(["--quick", "--rounds", "2", "--json", str(tmp_path / "o.json")])
    for kind in ("single", "batch"):
        assert len(out[kind]["a_us"]) == len(out[kind]["b_us"]) == 2
        assert all(x > 0 for x in out[kind]["a_us"] + out[kind]["b_us"])
        assert out[kind]["ratio_median"] > 0
    assert (tmp_path / "o.json").exists()


def test_a_child_must_import_the_tree_asked_for(tmp_path: Path) -> None:
    """A tree without the package: the child imports another copy, which is refused."""
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="the child imported"):
        bench_server_cpu.run_child((tmp_path / "empty").resolve(), "single", 5)
