"""Short soak in CI: 2,000 checked reductions at 64 concurrent clients against one server process
over nginx (tests/stress/soak.py is the long run: 100,000 requests)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "stress"))

from soak import Dataset, make_array, run_soak  # noqa: E402

from relhelp import server_alive  # noqa: E402

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def soak_data(rel_nginx):
    arr = make_array(n_chunks=256)
    (rel_nginx.extra["docroot"] / "soak.bin").write_bytes(arr.astype("<i4").tobytes())
    return Dataset(arr, f"{rel_nginx.url}/soak.bin")


def test_short_soak(rel_server, soak_data):
    rep = run_soak(rel_server.url, soak_data, n_requests=2000, concurrency=64, max_seconds=120,
                   server_pids=[rel_server.pid])
    s = rep.summary()
    print("soak summary:", s)
    assert rep.requests == 2000, s
    assert rep.errors == 0 and rep.wrong == 0, s
    assert s["rss_mib"]["peak"] < 1024, s
    server_alive(rel_server)
