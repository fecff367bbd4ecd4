"""Run in cf-python's venv by test_cf_python_components.py: activestorage.cf_components against
cf-python's own collapse chunk functions (cf.data.collapse.dask_collapse).

argv[1] is a JSON object: ``path`` (a netCDF file), ``variables``, ``cases`` (how many random
cases per variable), ``seed``. For each case (a random selection with steps, a random set of
axes, weights none / per-axis 1-D / N-D, ddof 0 or 1) and each cf method:

1. the chunk dictionary cf-python computes from the data (``cf_<method>_chunk``), and
2. the one :func:`activestorage.cf_components.cf_chunk` makes from ``Active``'s components

must hold the same keys and values (masks included); and cf's own aggregate function must give
the same collapse from our dictionaries of two halves of the selection as from its own. Prints
one JSON object: ``checked`` (comparisons made), ``failures`` (messages), ``module`` (where
activestorage was imported from).
"""

import json
import sys

import netCDF4
import numpy as np
from cf.data.collapse import dask_collapse as dc

import activestorage
from activestorage import Active
from activestorage.cf_components import cf_chunk

CHUNK = {"max": dc.cf_max_chunk, "min": dc.cf_min_chunk, "range": dc.cf_range_chunk,
         "mid_range": dc.cf_range_chunk, "sum": dc.cf_sum_chunk, "mean": dc.cf_mean_chunk,
         "rms": dc.cf_rms_chunk, "var": dc.cf_var_chunk, "sd": dc.cf_var_chunk,
         "sample_size": dc.cf_sample_size_chunk,
         "sum_of_weights": dc.cf_sum_of_weights_chunk,
         "sum_of_weights2": dc.cf_sum_of_weights2_chunk}
AGG = {"max": dc.cf_max_agg, "min": dc.cf_min_agg, "range": dc.cf_range_agg,
       "mid_range": dc.cf_mid_range_agg, "sum": dc.cf_sum_agg, "mean": dc.cf_mean_agg,
       "rms": dc.cf_rms_agg, "var": dc.cf_var_agg, "sd": dc.cf_var_agg,
       "sample_size": dc.cf_sample_size_agg, "sum_of_weights": dc.cf_sum_agg,
       "sum_of_weights2": dc.cf_sum_agg}
#: the methods cf-python collapses with weights
WEIGHTED = ("sum", "mean", "rms", "var", "sd", "sum_of_weights", "sum_of_weights2")

cfg = json.loads(sys.argv[1])
rng = np.random.default_rng(cfg["seed"])
failures = []
checked = 0


def random_slice(n):
    step = int(rng.choice([1, 1, 2, 3]))
    start = int(rng.integers(0, n))
    stop = int(rng.integers(start + 1, n + 1))
    return slice(start, stop, step)


def same(name, got, want, rtol):
    """Record a failure unless ``got`` and ``want`` (arrays, masks, scalars, None) agree."""
    global checked
    checked += 1
    if want is None or isinstance(want, (bool, np.bool_)) or np.ndim(want) == 0 and not \
            isinstance(want, np.ndarray):
        if not (got == want or (got is None and want is None)):
            failures.append(f"{name}: {got!r} != {want!r}")
        return
    got, want = np.ma.asarray(got), np.ma.asarray(want)
    if got.shape != want.shape:
        failures.append(f"{name}: shape {got.shape} != {want.shape}")
        return
    gm, wm = np.ma.getmaskarray(got), np.ma.getmaskarray(want)
    if not np.array_equal(gm, wm):
        failures.append(f"{name}: masks differ at {np.argwhere(gm != wm)[:3].tolist()}")
        return
    g = np.asarray(np.ma.getdata(got), np.float64)[~wm]
    w = np.asarray(np.ma.getdata(want), np.float64)[~wm]
    if not np.allclose(g, w, rtol=rtol, atol=0, equal_nan=True):
        i = int(np.argmax(np.abs(g - w) / np.maximum(np.abs(w), 1e-300)))
        failures.append(f"{name}: {g[i]!r} != {w[i]!r} (rtol {rtol})")


def nested(d, depth):
    """``d`` inside ``depth - 1`` one-element lists: the nesting cf's combine concatenates."""
    for _ in range(depth - 1):
        d = [d]
    return d


def our_weights(kind, full, key, axes, shape):
    """The weights of selection ``key`` in the form Active takes them, and the same weights
    as one array of the selection's shape (cf's form)."""
    if kind == "none":
        return None, None
    if kind == "nd":
        w = full[key]
        return w, w
    # separable: one 1-D array per weighted axis of the selection (the first reduced axis)
    ax = axes[0]
    w1 = full[tuple(k if i == ax else 0 for i, k in enumerate(key))]
    arr = np.broadcast_to(w1.reshape([-1 if i == ax else 1 for i in range(len(shape))]), shape)
    return {ax: np.ascontiguousarray(w1)}, np.ascontiguousarray(arr)


with netCDF4.Dataset(cfg["path"]) as nc:
    for var in cfg["variables"]:
        v = nc[var]
        v.set_auto_maskandscale(True)
        full_shape = v.shape
        wfull = rng.uniform(0.1, 3.0, full_shape)
        for case in range(cfg["cases"]):
            key = tuple(random_slice(n) for n in full_shape)
            x = np.ma.asarray(v[key])
            ndim = x.ndim
            k = int(rng.integers(1, ndim + 1))
            axes = tuple(sorted(int(a) for a in rng.choice(ndim, size=k, replace=False)))
            kind = str(rng.choice(["none", "separable", "nd"]))
            ddof = int(rng.integers(0, 2))
            ours_w, cf_w = our_weights(kind, wfull, key, axes, x.shape)
            where = f"{var}{list(key)} axes={axes} weights={kind} ddof={ddof}"
            # two halves of the selection along the first reduced axis, for the aggregate
            ax0 = axes[0]
            n0 = x.shape[ax0]
            if n0 >= 2:
                s0 = key[ax0]
                idx = range(*s0.indices(full_shape[ax0]))
                cut = idx[n0 // 2]
                halves = [key[:ax0] + (slice(s0.start, cut, s0.step),) + key[ax0 + 1:],
                          key[:ax0] + (slice(cut, s0.stop, s0.step),) + key[ax0 + 1:]]
            else:
                halves = [key]
            for method in CHUNK:
                weighted = kind != "none" and method in WEIGHTED
                kw = {"axis": axes, "keepdims": True}
                if method in ("var", "sd"):
                    kw["ddof"] = ddof
                cf_kw = dict(kw, weights=cf_w) if weighted else dict(kw)
                name = f"{method} {where}"
                try:
                    want = CHUNK[method](x, **cf_kw)
                    with Active(cfg["path"], var, axis=axes, progress=False) as a:
                        got = cf_chunk(method, a, key, weights=ours_w if weighted else None,
                                       ddof=ddof if method in ("var", "sd") else None)
                except Exception as exc:  # noqa: BLE001 - reported, not raised: see all
                    failures.append(f"{name}: {type(exc).__name__}: {exc}")
                    continue
                if set(got) != set(want):
                    failures.append(f"{name}: keys {sorted(got)} != {sorted(want)}")
                    continue
                for field in want:
                    same(f"{name} [{field}]", got[field], want[field],
                         1e-9 if field == "part" else 1e-11)
                # cf's aggregate over two chunk dictionaries: ours vs cf's own
                ours_parts, cf_parts = [], []
                for h in halves:
                    xh = np.ma.asarray(v[h])
                    hw, hcf = our_weights(kind, wfull, h, axes, xh.shape)
                    hkw = dict(kw, weights=hcf) if weighted else dict(kw)
                    cf_parts.append(nested(CHUNK[method](xh, **hkw), len(axes)))
                    with Active(cfg["path"], var, axis=axes, progress=False) as a:
                        ours_parts.append(nested(cf_chunk(
                            method, a, h, weights=hw if weighted else None,
                            ddof=ddof if method in ("var", "sd") else None), len(axes)))
                agg_kw = {"axis": axes, "keepdims": True, "mtol": 1,
                          "original_shape": x.shape}
                try:
                    got_agg = AGG[method](ours_parts, **agg_kw)
                    want_agg = AGG[method](cf_parts, **agg_kw)
                except Exception as exc:  # noqa: BLE001
                    failures.append(f"{name} aggregate: {type(exc).__name__}: {exc}")
                    continue
                # cf's variance aggregate subtracts sum**2/V1 from its "part" (the sum of
                # squares): both sides lose digits to that cancellation, by ~eps * max(x**2)/var
                rtol = 1e-9
                if method in ("var", "sd"):
                    with np.errstate(invalid="ignore", divide="ignore"):
                        k = float(np.ma.max(x * x) / np.ma.var(x)) if x.count() > 1 else 1.0
                    rtol = max(rtol, 1e-14 * k if np.isfinite(k) else 1.0)
                same(f"{name} aggregate", got_agg, want_agg, rtol)

print(json.dumps({"checked": checked, "failures": failures[:50], "n_failures": len(failures),
                  "module": activestorage.__file__}))
