"""PyActiveStorage 0.8's own Reductionist client against our server (issue 18, part 5c).

The peer's import name is ``activestorage``, as ours, so it runs in its own venv (made once by
:func:`benchmarks.peer.make_venv` and cached under the system temp directory, keyed by the version
spec and Python version) and is driven by ``peer_client_worker.py``. Every case its
``reductionist.reduce_chunk`` can express is sent -- the six dtypes in each byte order, no / zlib /
gzip compression, with and without its shuffle filter, each form of its missing tuple, slices and
integer indices (in range, past either end, negative strides), axis tuples, each operation
(``mean`` goes as ``sum``, None as ``select``), S3 (moto) and HTTP (nginx, ``interface_type
"https"``), ``option_disable_chunk_cache`` -- and its answers are compared with NumPy. Missing
values its client sends as floats for an integer dtype must come back as its ``ReductionistError``
for HTTP 400 (the spec's strict validation).
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numcodecs
import numpy as np
import pytest

from servers import REPO, S3_KEY, S3_SECRET

sys.path.insert(0, str(REPO))
from benchmarks.peer import PEER_SPEC, make_venv  # noqa: E402

WORKER = Path(__file__).resolve().parent / "peer_client_worker.py"
BUCKET = "peer-client"
SHAPE = (3, 4, 5)
DTYPES = ["int32", "int64", "uint32", "uint64", "float32", "float64"]
BYTE_ORDERS = ["<", ">", "="]
COMPRESSION = [None, "zlib", "gzip"]
OPS = ["min", "max", "sum", "mean", "count", None]
SELECTIONS: list[Any] = [
    None,
    [[0, 3, 1], [0, 4, 1], [0, 5, 1]],
    [[1, 3, 1], [0, 4, 2], [1, 5, 3]],
    [1, [0, 4, 1], 2],                          # integers: one element, the axis kept
    [[0, 10, 1], [-10, 4, 1], [2, 100, 2]],     # past either end: clamped
    [[2, -4, -1], [3, 0, -2], [4, -6, -1]],     # negative strides
    [[-1, 3, 1], [-3, -1, 1], [0, 5, 4]],       # negative starts count from the end
]
AXES: list[Any] = [None, [0, 1, 2], [0], [1], [2], [0, 2], [1, 2]]


def peer_venv_python() -> Path:
    tag = PEER_SPEC.replace("=", "").replace("*", "x").replace(".", "_")
    where = (Path(tempfile.gettempdir()) / "activestorage-test-cache"
             / f"{tag}-py{sys.version_info[0]}{sys.version_info[1]}" / "venv")
    python, version = make_venv(where, PEER_SPEC, timeout=600)
    assert version.startswith("0.8."), f"{PEER_SPEC} is not installable here; got {version}"
    return python


def data(dtype: str) -> np.ndarray:
    base = (np.arange(60) * 7 % 31 + 1).reshape(SHAPE)  # 1..31, every value a few times
    dt = np.dtype(dtype)
    if dt.kind == "i":
        base = base - 10
    x = base.astype(dt)
    return x + dt.type(0.25) if dt.kind == "f" else x


def missing_forms(x: np.ndarray) -> list[list[Any]]:
    """The peer's (fill_value, missing_value, valid_min, valid_max) forms it can send for ``x``:
    Python numbers (its JSON encoder takes no NumPy integers), np.float32 for float32 as netCDF
    attributes are (the worker makes scalars np.float32 for float32 data; its client widens
    them). No zero: it drops falsy values."""
    v1, v2 = x.flat[3].item(), x.flat[7].item()
    lo, hi = (-3, 15) if x.dtype.kind == "i" else (5, 20)
    if x.dtype.kind == "f":
        lo, hi = lo + 0.25, hi + 0.25
    return [[None, None, None, None], [v1, None, None, None], [None, v1, None, None],
            [None, [v1, v2], None, None], [None, None, lo, None], [None, None, None, hi],
            [None, None, lo, hi]]


def peer_mask(y: np.ndarray, missing: list[Any]) -> np.ndarray:
    """What the peer's encode_missing sends, as a mask on ``y``."""
    fill, mv, vmin, vmax = missing
    mv = fill or mv
    if mv:
        return np.isin(y, np.asarray(mv if isinstance(mv, list) else [mv], y.dtype))
    if vmin and vmax:
        return (y < y.dtype.type(vmin)) | (y > y.dtype.type(vmax))
    if vmin:
        return y < y.dtype.type(vmin)
    if vmax:
        return y > y.dtype.type(vmax)
    return np.zeros(y.shape, bool)


def oracle(x: np.ndarray, case: dict[str, Any]) -> tuple[np.ndarray, list[int]]:
    sel = case["selection"]
    idx = tuple(slice(s, s + 1, 1) if isinstance(s, int) else slice(*s)
                for s in sel) if sel else ()
    y = x[idx]
    mask = peer_mask(y, case["missing"])
    if case["operation"] is None:
        return y, [int((~mask).sum())]
    axis = tuple(case["axis"]) if case["axis"] is not None else tuple(range(y.ndim))
    counts = (~mask).sum(axis=axis)
    m = np.ma.masked_array(y, mask)
    op = case["operation"]
    if op == "count":
        values = counts
    elif op in ("sum", "mean"):
        values = np.ma.filled(m.sum(axis=axis, dtype=y.dtype), 0)
    else:
        values = np.ma.filled(getattr(m, op)(axis=axis), 0)
    return np.asarray(values), np.asarray(counts).reshape(-1).tolist()


def stored(x: np.ndarray, bo: str, order: str, compression: str | None,
           shuffle: bool) -> bytes:
    raw = x.astype(x.dtype.newbyteorder(bo)).tobytes(order=order)
    if shuffle:
        raw = numcodecs.Shuffle(elementsize=x.dtype.itemsize).encode(raw).tobytes()
    if compression:
        raw = bytes({"zlib": numcodecs.Zlib(), "gzip": numcodecs.GZip()}[compression].encode(raw))
    return raw


@pytest.fixture(scope="module")
def peer_python() -> Path:
    return peer_venv_python()


def build_cases(s3, moto_url: str, nginx_server, server: str) -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = []
    docroot = nginx_server.extra["docroot"]
    pad = b"\x00" * 13  # the chunk sits at an offset in its object
    for i, (dtype, bo, comp, shuf) in enumerate(itertools.product(
            DTYPES, BYTE_ORDERS, COMPRESSION, [False, True])):
        x = data(dtype)
        raw = stored(x, bo, "C", comp, shuf)
        name = f"{dtype}{bo}-{comp}-{'shuffle' if shuf else 'plain'} [{i}].bin"
        s3.put_object(Bucket=BUCKET, Key=name, Body=pad + raw)
        common = {"server": server, "offset": len(pad), "size": len(raw), "compression": comp,
                  "shuffle": x.dtype.itemsize if shuf else None,
                  "dtype": np.dtype(dtype).newbyteorder(bo).str, "shape": list(SHAPE),
                  "order": "C", "x": dtype, "missing_f32": dtype == "float32"}
        forms = missing_forms(x)
        for j, op in enumerate(OPS):
            cases.append({**common, "operation": op,
                          # the key goes unencoded, as the peer builds it: endpoint/bucket/key
                          "url": f"{moto_url}/{BUCKET}/{name}", "auth": [S3_KEY, S3_SECRET],
                          "missing": forms[(i + j) % len(forms)],
                          "selection": SELECTIONS[(3 * i + j) % len(SELECTIONS)],
                          "axis": AXES[(5 * i + 2 * j) % len(AXES)],
                          "no_cache": (i + j) % 4 == 0})
        if i % 3 == 0:  # the same object over HTTP: interface_type "https" for an http:// URL
            (docroot / name).write_bytes(pad + raw)
            cases.append({**common, "operation": OPS[i % len(OPS)], "interface_type": "https",
                          "url": f"{nginx_server.url}/{name}", "auth": None,
                          "missing": forms[i % len(forms)], "selection": SELECTIONS[i % 7],
                          "axis": AXES[i % len(AXES)]})
    # Fortran-ordered chunks: results of at most one dimension, whose layout needs no order
    for dtype, axis, op in itertools.product(["int32", "float64"], [None, [0, 1], [0, 2]],
                                             ["sum", "max", "count"]):
        x = data(dtype)
        raw = stored(x, "<", "F", "zlib", False)
        name = f"fortran-{dtype}.bin"
        s3.put_object(Bucket=BUCKET, Key=name, Body=raw)
        cases.append({"server": server, "offset": 0, "size": len(raw), "compression": "zlib",
                      "shuffle": None, "dtype": np.dtype(dtype).str, "shape": list(SHAPE),
                      "order": "F", "x": dtype, "operation": op, "auth": [S3_KEY, S3_SECRET],
                      "url": f"{moto_url}/{BUCKET}/{name}", "missing": [None, None, None, None],
                      "selection": SELECTIONS[2], "axis": axis})
    return cases


def refused_cases(moto_url: str, server: str) -> list[dict[str, Any]]:
    """Float missing values for integer dtypes, which the peer's client sends as floats."""
    out = []
    for dtype, missing in (("int32", [None, -1.0, None, None]), ("uint32", [None, None, 1.0, None]),
                           ("int64", [None, None, 2.0, 9.0]), ("int32", [-1.5, None, None, None])):
        out.append({"server": server, "offset": 13, "size": 60 * np.dtype(dtype).itemsize,
                    "compression": None, "shuffle": None, "dtype": np.dtype(dtype).str,
                    "shape": list(SHAPE), "order": "C", "operation": "sum", "missing": missing,
                    "url": f"{moto_url}/{BUCKET}/{dtype}<-None-plain [{DTYPES.index(dtype) * 18}].bin",
                    "auth": [S3_KEY, S3_SECRET], "selection": None, "axis": None, "x": dtype})
    return out


def run_peer(python: Path, cases: list[dict[str, Any]], tmp: Path) -> dict[str, Any]:
    (tmp / "cases.json").write_text(json.dumps(cases))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    r = subprocess.run([str(python), str(WORKER), str(tmp / "cases.json"), str(tmp / "out.json")],
                       cwd=str(tmp), env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads((tmp / "out.json").read_text())


def test_peer_reductionist_client_against_our_server(peer_python, s3, moto_server, nginx_server,
                                                     active_server, tmp_path):
    s3.create_bucket(Bucket=BUCKET)
    cases = build_cases(s3, moto_server.url, nginx_server, active_server.url)
    refused = refused_cases(moto_server.url, active_server.url)
    out = run_peer(peer_python, cases + refused, tmp_path)
    assert out["version"].startswith("0.8."), out["version"]
    results = out["results"]
    assert len(results) == len(cases) + len(refused)
    failures = []
    for case, got in zip(cases, results):
        if "error" in got:
            failures.append((case, got["error"]))
            continue
        x = data(case["x"])
        want, want_count = oracle(x, case)
        values = np.asarray(got["values"], dtype=got["dtype"]).reshape(got["shape"])
        try:
            assert got["count"] == want_count, ("count", got["count"], want_count)
            assert list(values.shape) == list(want.shape), ("shape", values.shape, want.shape)
            want_dtype = "int64" if case["operation"] == "count" else np.dtype(case["x"]).name
            assert got["dtype"] == want_dtype, ("dtype", got["dtype"])
            if case["operation"] is None:
                np.testing.assert_array_equal(values, want)
            else:
                ok = np.asarray(want_count).reshape(want.shape) > 0
                if values.dtype.kind == "f":
                    np.testing.assert_allclose(values[ok], want[ok], rtol=1e-5)
                else:
                    np.testing.assert_array_equal(values[ok], want[ok])
        except AssertionError as exc:
            failures.append((case, str(exc)[:300]))
    for case, got in zip(refused, results[len(cases):]):
        if "HTTP 400" not in got.get("error", ""):
            failures.append((case, f"expected the peer's ReductionistError for HTTP 400: {got}"))
    assert not failures, f"{len(failures)} of {len(results)} cases differ; first: {failures[:3]}"
