"""cf-python's active-storage collapse, end to end, through this package and our server.

cf-python (in a venv of its own, see cf_env.py) reads a real CMIP6 file, locally and from moto S3,
and collapses it with ``mean``/``max``/``min``/``sum`` twice: with active storage off (its own
result) and on (``cf.active_storage(True)``, ``cf.active_storage_url(<our server>)``). The two
must agree; cf must have reduced through ``Active`` without falling back; over S3 the server's
``/metrics`` must show that it did the reductions.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import requests

from cf_env import cf_python, run_worker  # noqa: F401 - cf_python is a fixture
from servers import S3_KEY, S3_SECRET

HERE = Path(__file__).resolve().parent
DATA = HERE.parent / "data" / "CMIP6_IPSL-CM6A-LR_tas.nc"
BUCKET = "cf-python"
#: making the venv the first time downloads cf-python's stack (minutes); scripts/test warms it
pytestmark = pytest.mark.timeout(1800)
METHODS = ["mean", "max", "min", "sum"]


@pytest.fixture(scope="module")
def cmip6() -> Path:
    if not DATA.exists():
        pytest.fail(f"{DATA} is missing: the CMIP6 test files belong in tests/data/")
    return DATA


def run_cf(python: Path, tmp_path: Path, **cfg) -> dict:
    """cf_worker.py in cf's venv (its own install of this checkout, see cf_env.run_worker)."""
    cfg.setdefault("methods", METHODS)
    return run_worker(python, "cf_worker.py", cfg, tmp_path, timeout=240)


def reductions_served(server_url: str) -> dict[str, float]:
    """Successful reduction requests our server has answered, by operation (from /metrics)."""
    text = requests.get(server_url + "/metrics", timeout=10).text
    out: dict[str, float] = {}
    for labels, value in re.findall(r"^activestorage_requests_total\{([^}]*)\} (\S+)$", text,
                                    re.M):
        d = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        if d.get("api") != "other" and d.get("status") == "200":
            out[d.get("operation", "")] = out.get(d.get("operation", ""), 0.0) + float(value)
    return out


def check(out: dict) -> None:
    usage = out["usage"]
    assert usage["module"].startswith(str(HERE.parents[1])), usage["module"]
    assert usage["calls"] > 0, "cf never called Active: active storage was not used"
    assert usage["failures"] == [], "cf fell back to local reductions"
    for method in METHODS:
        local, active = (np.asarray(x, dtype=float) for x in out["results"][method])
        assert local.shape == active.shape, method
        np.testing.assert_allclose(active, local, rtol=1e-6, err_msg=method)


def test_cf_collapse_local_file(cf_python, cmip6, active_server, tmp_path):
    """A local file: Active reduces it here (one log line), cf's answers unchanged."""
    out = run_cf(cf_python, tmp_path, dataset=str(cmip6), active_storage_url=active_server.url,
                 dask_chunks={"time": 600})
    check(out)


@pytest.mark.parametrize("backend", [None, "h5py"])
def test_cf_collapse_over_s3_through_our_server(cf_python, cmip6, moto_server, s3,
                                                active_server, tmp_path, backend):
    """From moto S3: cf hands Active a pyfive Dataset (default) or an S3File (h5py backend);
    every reduction goes to our server."""
    try:
        s3.create_bucket(Bucket=BUCKET)
    except s3.exceptions.BucketAlreadyOwnedByYou:
        pass
    s3.upload_file(str(cmip6), BUCKET, cmip6.name)
    before = reductions_served(active_server.url)
    out = run_cf(cf_python, tmp_path, dataset=f"s3://{BUCKET}/{cmip6.name}",
                 storage_options={"key": S3_KEY, "secret": S3_SECRET,
                                  "endpoint_url": moto_server.url},
                 backend=backend, active_storage_url=active_server.url,
                 dask_chunks={"time": 600})
    check(out)
    after = reductions_served(active_server.url)
    served = {op: after.get(op, 0) - before.get(op, 0) for op in ("max", "min", "sum")}
    assert all(n > 0 for n in served.values()), served  # mean travels as sum
    assert sum(served.values()) >= out["usage"]["calls"], (served, out["usage"])
