"""activestorage.cf_components against cf-python's own collapse chunk functions.

cf-python runs in a venv of its own (cf_env.py); cf_components_worker.py runs there on a netCDF
file written here (several chunks, missing values, a fully missing row, packed integers) and
compares, for random selections, axes, weights (none, per-axis 1-D, N-D) and ddof, every chunk
dictionary cf-python makes from the data with the one our helper makes from ``Active``'s
components, and cf's aggregate of both.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cf_env import cf_python, run_worker  # noqa: F401 - cf_python is a fixture

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
pytestmark = pytest.mark.timeout(1800)  # making the cf venv the first time takes minutes


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    import netCDF4

    rng = np.random.default_rng(21)
    path = tmp_path_factory.mktemp("cfc") / "moments.nc"
    with netCDF4.Dataset(path, "w") as nc:
        for name, n in (("t", 7), ("y", 9), ("x", 10)):
            nc.createDimension(name, n)
        tas = nc.createVariable("tas", "f4", ("t", "y", "x"), chunksizes=(3, 4, 5),
                                fill_value=np.float32(-999.0))
        data = (280 + 15 * rng.standard_normal((7, 9, 10))).astype("f4")
        data[rng.random(data.shape) < 0.15] = -999.0
        data[2, 3, :] = -999.0  # a row with nothing valid along x
        data[:, 6, 4] = -999.0  # ... and along t
        tas[:] = data
        big = nc.createVariable("offset", "f8", ("t", "y", "x"), chunksizes=(7, 3, 10))
        big[:] = 1e6 + rng.standard_normal((7, 9, 10))  # cancellation in sums of squares
        packed = nc.createVariable("packed", "i2", ("t", "y", "x"), chunksizes=(4, 9, 3),
                                   fill_value=np.int16(-32767))
        packed.scale_factor = 0.01
        packed.add_offset = 250.0
        vals = rng.integers(-3000, 3000, (7, 9, 10)).astype("i2")
        vals[rng.random(vals.shape) < 0.1] = -32767
        packed.set_auto_maskandscale(False)
        packed[:] = vals
    return path


def test_cf_chunk_dictionaries_match_cf_pythons_own(cf_python, dataset, tmp_path):
    cfg = {"path": str(dataset), "variables": ["tas", "offset", "packed"], "cases": 12,
           "seed": 2026}
    # this checkout's activestorage first on the path, whatever the venv holds
    out = run_worker(cf_python, "cf_components_worker.py", cfg, tmp_path, timeout=900,
                     this_checkout=True)
    assert out["module"].startswith(str(REPO)), out["module"]
    assert out["n_failures"] == 0, "\n".join(out["failures"])
    # 3 variables x 12 cases x 12 methods, each with >= 2 fields and an aggregate
    assert out["checked"] >= 3 * 12 * 12 * 3
