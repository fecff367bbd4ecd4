"""Timing, peak-memory and correctness measurement shared by every benchmark worker.

Standalone on purpose (stdlib + NumPy only, no package-relative imports): the PyActiveStorage worker
runs it from the peer's own virtual environment, where our ``activestorage`` must not be importable.

A worker process runs one *method* over every dataset. For each (dataset, case) it runs the case
``warmup`` times untimed, then ``runs`` times timed, and reports the median. Peak RSS is measured
per case: Linux lets a process reset its resident-set high-water mark (``/proc/self/clear_refs``
with ``5``), so each case's ``VmHWM`` is its own, not the process's running maximum; without that
(non-Linux) the process-wide ``ru_maxrss`` is reported and flagged. Memory is given above the
*baseline*: the interpreter's RSS after imports, before any dataset is opened; and above the RSS
right after the dataset was opened (``peak_rss_open_mb``).
"""

from __future__ import annotations

import json
import math
import re
import resource
import statistics
import sys
import time
import traceback
from typing import Any, Callable

import numpy as np

#: relative tolerance against the float64 NumPy oracle (float32 accumulations differ slightly).
RTOL = 1e-4


# ------------------------------------------------------------------------------ memory

def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            m = re.search(rf"^{field}:\s+(\d+)\s+kB", f.read(), re.M)
        return int(m.group(1)) if m else None
    except OSError:
        return None


def rss_kb() -> int:
    """Current resident set size in KiB (falls back to the peak where /proc is absent)."""
    now = _status_kb("VmRSS")
    return now if now is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def reset_peak() -> bool:
    """Reset this process's RSS high-water mark to its current RSS; False if unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def file_rss_kb() -> int:
    """Resident file-backed pages (mmap'ed files, libraries) in KiB; 0 where /proc is absent.
    Peak RSS counts them too: a reader that mmaps the file "holds" page cache, not heap."""
    return _status_kb("RssFile") or 0


def peak_kb() -> int:
    """RSS high-water mark (since the last :func:`reset_peak`) in KiB."""
    hwm = _status_kb("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


# ------------------------------------------------------------------------------ results

def as_float_array(result: Any) -> np.ndarray:
    """A result (scalar, masked scalar, array, masked array) as float64 with NaN where masked."""
    if result is np.ma.masked:
        return np.array(np.nan)
    if isinstance(result, dict):  # components: not used by the benchmarks
        raise TypeError("components results are not compared")
    arr = np.ma.asarray(result)
    out = np.ma.getdata(arr).astype(np.float64)
    mask = np.ma.getmaskarray(arr)
    if mask.any():
        out = out.copy()
        out[mask] = np.nan
    return np.squeeze(out)


def compare(result: Any, oracle: np.ndarray, rtol: float = RTOL) -> dict[str, Any]:
    """Agreement with the oracle: same shape, same masked points, values within ``rtol``."""
    got = as_float_array(result)
    want = np.squeeze(np.asarray(oracle, dtype=np.float64))
    if got.shape != want.shape:
        return {"ok": False, "why": f"shape {got.shape} != oracle {want.shape}", "max_rel_err": None}
    nan_got, nan_want = np.isnan(got), np.isnan(want)
    if not np.array_equal(nan_got, nan_want):
        return {"ok": False, "max_rel_err": None,
                "why": f"masked points differ ({int(nan_got.sum())} vs {int(nan_want.sum())})"}
    valid = ~nan_want
    if not valid.any():
        return {"ok": True, "max_rel_err": 0.0}
    rel = np.abs(got[valid] - want[valid]) / np.maximum(np.abs(want[valid]), 1e-30)
    err = float(rel.max())
    ok = bool(err <= rtol)
    return {"ok": ok, "max_rel_err": err,
            **({} if ok else {"why": f"max relative error {err:.3g} > {rtol:g}"})}


# ------------------------------------------------------------------------------ timing

def time_case(fn: Callable[[], Any], runs: int, warmup: int) -> dict[str, Any]:
    """Run ``fn`` ``warmup`` + ``runs`` times; median and all times; this case's peak RSS."""
    supported = reset_peak()
    result = None
    for _ in range(warmup):
        result = None  # one result alive at a time: the peak is one call's, not two results'
        result = fn()
    times, cpu = [], []
    for _ in range(max(1, runs)):
        result = None
        c0 = time.process_time()
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {"result": result, "times": times, "median": statistics.median(times),
            "cpu_median": statistics.median(cpu), "peak_kb": peak_kb(),
            "file_kb": file_rss_kb(), "peak_per_case": supported}


def run_method(method: str, config: dict[str, Any],
               factory: Callable[[dict[str, Any], dict[str, Any]], Any],
               baseline_kb: int) -> dict[str, Any]:
    """Time ``method`` over every dataset and case in ``config``.

    ``factory(dataset, config)`` opens a dataset (untimed: metadata is read once, as a notebook
    user would) and returns an object with ``run(case) -> result`` and ``close()``, optionally
    ``bytes_moved(case) -> int | None`` (bytes that crossed into this process for the last run)
    and ``skip`` (a reason string when this method does not apply to the dataset).
    """
    out: dict[str, Any] = {"method": method, "baseline_rss_mb": baseline_kb / 1024,
                           "datasets": {}}
    oracle = np.load(config["oracle"]) if config.get("oracle") else None
    file_baseline_kb = file_rss_kb()
    for ds in config["datasets"]:
        rec: dict[str, Any] = {"cases": {}}
        moved = extra = None
        out["datasets"][ds["name"]] = rec
        try:
            runner = factory(ds, config)
            opened_kb = rss_kb()
        except Exception as exc:  # report, keep going with other datasets
            rec["error"] = f"{type(exc).__name__}: {exc}"
            rec["traceback"] = traceback.format_exc(limit=5)
            continue
        skip = getattr(runner, "skip", None)
        if skip:
            rec["skip"] = skip
            runner.close()
            continue
        try:
            for case in ds["cases"]:
                name = case["name"]
                try:
                    m = time_case(lambda: runner.run(case), config["runs"], config["warmup"])
                except Exception as exc:
                    rec["cases"][name] = {"error": f"{type(exc).__name__}: {exc}",
                                          "traceback": traceback.format_exc(limit=5)}
                    continue
                moved = getattr(runner, "bytes_moved", None)
                c: dict[str, Any] = {
                    "median_s": m["median"], "times_s": m["times"],
                    # CPU seconds of this process (all its threads): robust to other load on
                    # the machine, but blind to work done in servers and to parallel speed-up.
                    "cpu_s": m["cpu_median"],
                    "peak_rss_mb": (m["peak_kb"] - baseline_kb) / 1024,
                    # above the RSS with the dataset open (its metadata and the libraries that
                    # opening pages in): the case's own working memory
                    "peak_rss_open_mb": (m["peak_kb"] - opened_kb) / 1024,
                    "peak_rss_per_case": m["peak_per_case"],
                    # of which file-backed (mmap) at the end of the case, above the baseline
                    "rss_file_mb": (m["file_kb"] - file_baseline_kb) / 1024,
                    "logical_bytes": case["logical_bytes"],
                    "gbps": case["logical_bytes"] / m["median"] / 1e9 if m["median"] > 0 else None,
                    "bytes_moved": moved(case) if moved else None,
                }
                extra = getattr(runner, "extra", None)
                if extra:
                    c.update(extra(case))
                key = f"{ds['name']}/{name}"
                if getattr(runner, "checks_result", True) and oracle is not None \
                        and key in oracle.files:
                    try:
                        c["check"] = compare(m["result"], oracle[key])
                    except Exception as exc:
                        c["check"] = {"ok": False, "why": f"{type(exc).__name__}: {exc}"}
                else:
                    c["check"] = None  # a limit: measures throughput, has no result to check
                rec["cases"][name] = c
        finally:
            runner.close()
            # free this dataset's memory before opening the next (bound methods hold it too)
            runner = moved = extra = None
    return out


def finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def emit(record: dict[str, Any], path: str | None) -> None:
    """Write the worker's JSON record to ``path`` (or stdout)."""
    text = json.dumps(record, default=_jsonable)
    if path:
        with open(path, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text + "\n")


def _jsonable(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)
