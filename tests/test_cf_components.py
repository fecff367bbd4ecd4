"""activestorage.cf_components: cf-python's chunk dictionaries from Active's components, finished
with the formulas of cf-python's documented aggregate functions, against NumPy in float64.

(tests/integration/test_cf_python_components.py compares them with cf-python's own functions.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from activestorage import Active
from activestorage.cf_components import CF_METHODS, active_operation, cf_chunk, to_cf
from activestorage.errors import InvalidArgumentError

SHAPE = (6, 7, 8)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    import netCDF4

    rng = np.random.default_rng(7)
    path = tmp_path_factory.mktemp("cfc") / "x.nc"
    x = (300 + 20 * rng.standard_normal(SHAPE)).astype("f4")
    x[rng.random(SHAPE) < 0.2] = -1.0
    x[1, 2, :] = -1.0
    with netCDF4.Dataset(path, "w") as nc:
        for name, n in zip("tyx", SHAPE):
            nc.createDimension(name, n)
        v = nc.createVariable("v", "f4", ("t", "y", "x"), chunksizes=(4, 3, 5),
                              fill_value=np.float32(-1.0))
        v[:] = x
    return path


def _data(path: Path, key: tuple) -> np.ma.MaskedArray:
    import netCDF4

    with netCDF4.Dataset(path) as nc:
        return np.ma.asarray(nc["v"][key], dtype=np.float64)


def finish(method: str, d: dict) -> np.ma.MaskedArray:
    """cf-python's aggregate formulas (cf.data.collapse.dask_collapse, documented there)."""
    if method == "mean":
        return d["sum"] / d["V1"]
    if method == "rms":
        return np.ma.sqrt(d["sum"] / d["V1"])
    if method in ("var", "sd"):
        V1, ddof = d["V1"], d["ddof"]
        if not ddof:
            f = 1 / V1
        elif not d["weighted"]:
            f = 1 / (V1 - ddof)
        else:
            f = V1 / (V1 * V1 - d["V2"])
        var = f * (d["part"] - d["sum"] * d["sum"] / V1)
        return np.ma.sqrt(var) if method == "sd" else var
    if method in ("range", "mid_range"):
        hi, lo = np.ma.asarray(d["max"], np.float64), np.ma.asarray(d["min"], np.float64)
        return hi - lo if method == "range" else (hi + lo) / 2
    if method == "sample_size":
        return d["N"]
    return d[{"max": "max", "min": "min"}.get(method, "sum")]


def oracle(method: str, x: np.ma.MaskedArray, w: np.ndarray, axes: tuple, ddof: int):
    w = np.ma.masked_where(np.ma.getmaskarray(x), np.broadcast_to(w, x.shape))
    sw = w.sum(axis=axes, keepdims=True)
    mean = (w * x).sum(axis=axes, keepdims=True) / sw
    if method == "sample_size":
        return x.count(axis=axes, keepdims=True)
    if method in ("max", "min"):
        return getattr(x, method)(axis=axes, keepdims=True)
    if method in ("range", "mid_range"):
        hi, lo = x.max(axis=axes, keepdims=True), x.min(axis=axes, keepdims=True)
        return hi - lo if method == "range" else (hi + lo) / 2
    if method == "sum":
        return (w * x).sum(axis=axes, keepdims=True)
    if method == "mean":
        return mean
    if method == "rms":
        return np.ma.sqrt((w * x * x).sum(axis=axes, keepdims=True) / sw)
    if method == "sum_of_weights":
        return sw
    if method == "sum_of_weights2":
        return (w * w).sum(axis=axes, keepdims=True)
    m2 = (w * (x - mean) ** 2).sum(axis=axes, keepdims=True)
    var = m2 / (sw - ddof * (w * w).sum(axis=axes, keepdims=True) / sw)
    return np.ma.sqrt(var) if method == "sd" else var


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_cf_dictionaries_finish_like_numpy(dataset, data):
    key = tuple(slice(data.draw(st.integers(0, n - 1)), None, data.draw(st.integers(1, 3)))
                for n in SHAPE)
    x = _data(dataset, key)
    axes = tuple(sorted(data.draw(st.sets(st.integers(0, 2), min_size=1))))
    method = data.draw(st.sampled_from(sorted(CF_METHODS)))
    kind = data.draw(st.sampled_from(["none", "separable", "nd"]))
    ddof = data.draw(st.sampled_from([0, 1])) if method in ("var", "sd") else None
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    full = rng.uniform(0.1, 2.0, SHAPE)
    if kind == "none":
        weights, w = None, np.ones(x.shape)
    elif kind == "nd":
        weights = full  # broadcastable to the variable; Active takes the selection's part
        w = full[key]
    else:
        ax = axes[0]
        vec = full[(0,) * ax + (slice(None),) + (0,) * (2 - ax)]
        weights = {ax: vec}
        w = vec[key[ax]].reshape([-1 if i == ax else 1 for i in range(3)])
    with Active(str(dataset), "v", axis=axes) as a:
        d = cf_chunk(method, a, key, weights=weights, ddof=ddof)
    with np.errstate(invalid="ignore", divide="ignore"):
        got = np.ma.asarray(finish(method, d))
        want = np.ma.asarray(oracle(method, x, w, axes, ddof or 0))
    n = x.count(axis=axes, keepdims=True)
    assert got.shape == want.shape
    # cf's variance comes from sums (sum of squares minus the squared sum over V1): a zero
    # variance comes out a rounding error away from 0 on the scale of the squared values (its
    # square root then NaN): such cells are checked to be that small, not compared
    big = float(np.ma.max(abs(x))) if x.count() else 0.0
    settled = np.ones(n.shape, bool)
    if method in ("var", "sd"):
        v = np.ma.getdata(np.ma.asarray(oracle("var", x, w, axes, ddof or 0)))
        settled = ~(np.abs(v) <= 1e-9 * 16 * big * big)
        if method == "var":
            tiny = ~settled & (n > (ddof or 0))
            assert (np.abs(np.ma.getdata(got)[tiny]) <= 1e-9 * 16 * big * big).all()
    # cf masks what nothing contributed to; with ddof=1 a single value has no variance
    np.testing.assert_array_equal(np.ma.getmaskarray(got)[(n > (ddof or 0)) & settled], False)
    np.testing.assert_array_equal(np.ma.getmaskarray(got)[n == 0], True)
    ok = (n > (ddof or 0)) & settled
    np.testing.assert_allclose(np.ma.getdata(got)[ok], np.ma.getdata(want)[ok], rtol=1e-9)
    if "weighted" in d:
        assert d["weighted"] is (kind != "none")


def test_mean_and_sum_components_are_accepted_and_empty_cells_masked(dataset):
    """``a.mean``/``a.sum`` components (the data's dtype) give the same dictionaries as the
    moments, to float32 rounding; cells with nothing valid are masked."""
    w = np.linspace(0.5, 1.5, SHAPE[2])
    with Active(str(dataset), "v", axis=(2,)) as a:
        plain = a.mean(components=True)[...]
        weighted = a.mean(components=True, weights={2: w})[...]
        moments = a.var(components=True)[...]
        wmoments = a.var(components=True, weights={2: w})[...]
    for comp, mom, wtd in ((plain, moments, False), (weighted, wmoments, True)):
        d, ref = to_cf("mean", comp, weighted=wtd), to_cf("mean", mom, weighted=wtd)
        assert set(d) == set(ref) == {"N", "sum", "V1", "weighted"} and d["weighted"] is wtd
        for k in ("N", "sum", "V1"):
            np.testing.assert_array_equal(d[k].mask, ref[k].mask)
            np.testing.assert_allclose(d[k].compressed(), ref[k].compressed(), rtol=1e-6)
        assert d["sum"].mask[1, 2, 0] and d["N"].mask[1, 2, 0]  # the row with nothing valid
        assert not d["N"].mask[0, 0, 0]
    d = to_cf("mean", plain)
    assert d["V1"] is d["N"]  # unweighted: cf's V1 is the sample size
    assert active_operation("mean") == "var" and active_operation("sample_size") == "count"
    assert active_operation("rms") == "var" and active_operation("mid_range") == "range"


def test_errors_name_what_is_missing():
    with pytest.raises(InvalidArgumentError, match="'median'.*known"):
        active_operation("median")
    with pytest.raises(InvalidArgumentError, match="'median'"):
        to_cf("median", {"n": np.ones(1)})
    with pytest.raises(InvalidArgumentError, match=r"needs components \['m2'"):
        to_cf("var", {"n": np.ones(1), "sw": np.ones(1), "mean": np.ones(1), "sw2": np.ones(1)})
    with pytest.raises(InvalidArgumentError, match="a.range"):
        to_cf("range", {"n": np.ones(1), "max": np.ones(1)})
