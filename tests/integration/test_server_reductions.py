"""Our server against NumPy, over real moto S3 and nginx processes, through v1, v2 and batch.

A seeded generator builds ~200 chunk requests covering every operation x dtype x byte order x C/F
order x selection x axis x missing kind x compression/filter; their encoded chunks are packed at
odd offsets into one object uploaded to moto (S3) and served by nginx (public and Basic-auth
locations). Each request is answered by ONE server process and checked against a NumPy masked-array
oracle that shares no code with the kernel.
"""

from __future__ import annotations

import bz2
import gzip
import json
import re
import zlib
from dataclasses import dataclass, field
from typing import Any

import cbor2
import numpy as np
import pytest
import requests

from servers import NGINX_PASSWORD, NGINX_USER, S3_KEY, S3_SECRET

OPS = ("count", "min", "max", "sum", "select")
DTYPES = ("int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32",
          "float64")
COMPRESSIONS = (None, "zlib", "gzip", "zstd", "blosc", "lz4", "bz2", None)
FILTERS = ((), ("shuffle",), ("fletcher32",), ("shuffle", "fletcher32"), (), ("shuffle_simd",))
MISSING = ("none", "value", "values", "min", "max", "range", "combo", "nan", "all")
APIS = ("v1", "v2-s3", "v2-http", "v2-http-auth")
N_CASES = 200
BUCKET, KEY = "matrix", "data/matrix.bin"


@dataclass
class Case:
    i: int
    api: str
    op: str
    data: np.ndarray                      # the logical array, native dtype
    body: dict[str, Any]                  # wire fields (no routing), offset filled in at packing
    blob: bytes                           # the encoded chunk
    slices: tuple[slice, ...] | None
    axis: tuple[int, ...]                 # normalised reduce axes
    missing: tuple[tuple[Any, ...], Any, Any] = ((), None, None)
    wide_sum: bool = False
    options: dict[str, bool] = field(default_factory=dict)

    def __repr__(self) -> str:
        b = {k: v for k, v in self.body.items() if k not in ("offset",)}
        return f"Case#{self.i}({self.api} {self.op} {json.dumps(b, default=str)})"


def _encode(raw: bytes, itemsize: int, filters: tuple[str, ...], comp: str | None) -> bytes:
    from numcodecs import LZ4, Blosc, Fletcher32, Shuffle, Zstd

    for f in filters:
        if f.startswith("shuffle"):
            raw = bytes(Shuffle(elementsize=itemsize).encode(raw))
        else:
            raw = bytes(Fletcher32().encode(np.frombuffer(raw, np.uint8)))
    if comp == "zlib":
        return zlib.compress(raw)
    if comp == "gzip":
        return gzip.compress(raw)
    if comp == "bz2":
        return bz2.compress(raw)
    if comp == "zstd":
        return bytes(Zstd().encode(raw))
    if comp == "blosc":
        return bytes(Blosc(cname="lz4", shuffle=Blosc.NOSHUFFLE).encode(raw))
    if comp == "lz4":
        return bytes(LZ4().encode(raw))
    return raw


def _data(rng: np.random.Generator, dt: np.dtype, shape: tuple[int, ...], wide: bool) -> np.ndarray:
    if dt.kind == "f":
        return (rng.standard_normal(shape) * 100).astype(dt)
    info = np.iinfo(dt)
    lo, hi = (info.min, info.max) if wide else (max(info.min, -60), min(info.max, 60))
    return rng.integers(lo, hi, size=shape, dtype=dt, endpoint=True)


def _selection(rng: np.random.Generator, shape: tuple[int, ...]) -> list[list[int]]:
    sel = []
    for n in shape:
        a, b = sorted(rng.choice(n + 1, size=2, replace=False)) if n > 1 else (0, 1)
        step = int(rng.integers(1, 3))
        if rng.random() < 0.3:  # negative stride: from b-1 down to a
            sel.append([int(b) - 1, int(a) - 1 if a > 0 else -n - 1, -step])
        else:
            sel.append([int(a), int(b), step])
    return sel


def make_case(i: int) -> Case:
    rng = np.random.default_rng(1000 + i)
    op = OPS[i % 5]
    api = APIS[(i // 5) % 4]
    dt = np.dtype(DTYPES[(i * 3 + i // 10) % len(DTYPES)])
    comp = COMPRESSIONS[(i * 7 + i // 8) % len(COMPRESSIONS)]
    filters = FILTERS[(i * 11 + i // 6) % len(FILTERS)]
    mkind = MISSING[(i * 13 + i // 9) % len(MISSING)]
    byte_order = ("little", "big")[(i // 2) % 2]
    order = ("C", "F")[(i // 4) % 2]
    shape = tuple(int(n) for n in rng.integers(1, 7, size=int(rng.integers(1, 4))))
    wide = dt.kind in "iu" and rng.random() < 0.3
    x = _data(rng, dt, shape, wide)

    values: tuple[Any, ...] = ()
    vmin = vmax = None
    wire_missing: dict[str, Any] | None = None
    flat = x.reshape(-1)
    pick = lambda: flat[int(rng.integers(flat.size))]  # noqa: E731
    if mkind == "nan" and dt.kind != "f":
        mkind = "value"
    if mkind == "value":
        mv = pick()
        flat[rng.choice(flat.size, size=max(1, flat.size // 4))] = mv
        values, wire_missing = (mv,), {"missing_value": mv.item()}
    elif mkind == "values":
        vals = (pick(), pick())
        values, wire_missing = vals, {"missing_values": [v.item() for v in vals]}
    elif mkind in ("min", "max", "range", "combo"):
        lo, hi = np.quantile(flat.astype(np.float64), [0.25, 0.75])
        lo_v, hi_v = dt.type(lo), dt.type(hi)
        if mkind == "min":
            vmin, wire_missing = lo_v, {"valid_min": lo_v.item()}
        elif mkind == "max":
            vmax, wire_missing = hi_v, {"valid_max": hi_v.item()}
        else:
            vmin, vmax = lo_v, hi_v
            # valid_range needs low < high; a range of one value goes as both bounds
            wire_missing = ({"valid_range": [lo_v.item(), hi_v.item()]} if lo_v < hi_v
                            else {"valid_min": lo_v.item(), "valid_max": hi_v.item()})
            if mkind == "combo":
                mv = pick()
                values = (mv,)
                wire_missing["missing_value"] = mv.item()
    elif mkind == "nan":
        flat[rng.choice(flat.size, size=max(1, flat.size // 3))] = np.nan
        values, wire_missing = (dt.type(np.nan),), {"missing_value": float("nan")}
    elif mkind == "all":  # every element missing: count 0 tells the client
        mv = flat[0]
        flat[:] = mv
        values, wire_missing = (mv,), {"missing_values": [mv.item()]}

    raw = x.astype(dt.newbyteorder("<" if byte_order == "little" else ">")).tobytes(order=order)
    blob = _encode(raw, dt.itemsize, filters, comp)
    body: dict[str, Any] = {"dtype": dt.name, "byte_order": byte_order, "order": order,
                            "shape": list(shape), "size": len(blob)}
    if byte_order == "little" and i % 3 == 0:
        del body["byte_order"]  # default: native (little here)
    if order == "C" and i % 2 == 0:
        del body["order"]
    if comp is None and i % 4 == 1:
        del body["size"]  # the server derives the range from shape
    if comp is not None:
        body["compression"] = {"id": comp}
    if filters:
        body["filters"] = [{"id": f, "element_size": dt.itemsize} if f.startswith("shuffle") and
                           i % 2 else {"id": f} for f in filters]
    slices = None
    if rng.random() < 0.5:
        sel = _selection(rng, shape)
        body["selection"] = sel
        slices = tuple(slice(*s) for s in sel)
    ndim = len(shape)
    axis: tuple[int, ...] = tuple(range(ndim))
    r = rng.random()
    if ndim > 1 and r < 0.3:
        a = int(rng.integers(ndim))
        axis = (a,)
        body["axis"] = a - ndim if rng.random() < 0.5 else a
    elif ndim > 1 and r < 0.6:
        k = int(rng.integers(1, ndim + 1))
        axis = tuple(sorted(int(a) for a in rng.choice(ndim, size=k, replace=False)))
        body["axis"] = list(axis)
    elif r < 0.8:
        body["axis"] = list(range(ndim))
    if wire_missing is not None:
        body["missing"] = wire_missing
    options: dict[str, bool] = {}
    if api != "v1" and rng.random() < 0.25:
        options = {"option_shape_as_bytes": True, "option_count_as_bytes": True}
    wide_sum = op == "sum" and dt.kind in "iu" and rng.random() < 0.5
    if (ndim == 1 and comp is None and not filters and "size" in body and slices is None
            and "axis" not in body and i % 5 == 2):
        del body["shape"]  # default: 1-D of size / itemsize
    return Case(i, api, op, x, body, blob, slices, axis, (values, vmin, vmax), wide_sum, options)


# ----------------------------------------------------------------------------------- oracle

def oracle(case: Case) -> tuple[np.ndarray, np.ndarray]:
    """(values, counts) as a netCDF reader + NumPy would compute them."""
    x = case.data if case.slices is None else case.data[case.slices]
    values, vmin, vmax = case.missing
    mask = np.zeros(x.shape, bool)
    for v in values:
        mask |= np.isnan(x) if (x.dtype.kind == "f" and np.isnan(v)) else (x == v)
    if vmin is not None:
        mask |= x < vmin
    if vmax is not None:
        mask |= x > vmax
    m = np.ma.masked_array(x, mask)
    if case.op == "select":
        return x, np.asarray(int((~mask).sum()))
    ax = case.axis
    counts = np.asarray((~mask).sum(axis=ax), np.int64)
    if case.op == "count":
        return counts, counts
    if case.op == "sum":
        acc = {"i": np.int64, "u": np.uint64}.get(x.dtype.kind, x.dtype)
        s = np.asarray(np.ma.sum(m, axis=ax, dtype=acc)) if mask.any() else np.sum(x, axis=ax, dtype=acc)
        s = np.where(counts == 0, 0, np.ma.filled(s, 0)).astype(acc)
        if not case.wide_sum:
            with np.errstate(over="ignore", invalid="ignore"):
                s = s.astype(x.dtype)
        return np.asarray(s), counts
    f = np.ma.min if case.op == "min" else np.ma.max
    return np.asarray(np.ma.filled(f(m, axis=ax), 0)).astype(x.dtype), counts


# -------------------------------------------------------------------------------- wire I/O

def route(case: Case, moto_url: str, nginx_url: str) -> tuple[str, dict[str, Any], Any]:
    """(path, full body, auth) for a case."""
    body = dict(case.body)
    if case.wide_sum:
        body["option_wide_sum"] = True
    body.update(case.options)
    if case.api == "v1":
        body.update(source=moto_url, bucket=BUCKET, object=KEY)
        return f"/v1/{case.op}/", body, (S3_KEY, S3_SECRET)
    slash = "/" if case.i % 2 else ""
    if case.api == "v2-s3":
        body.update(interface_type="s3", url=f"{moto_url}/{BUCKET}/{KEY}")
        return f"/v2/{case.op}{slash}", body, (S3_KEY, S3_SECRET)
    if case.api == "v2-http":
        body.update(interface_type="http", url=f"{nginx_url}/matrix.bin")
        return f"/v2/{case.op}{slash}", body, None
    body.update(interface_type="http", url=f"{nginx_url}/private/matrix.bin")
    return f"/v2/{case.op}{slash}", body, (NGINX_USER, NGINX_PASSWORD)


def post_json(session: requests.Session, url: str, body: Any, auth: Any = None) -> requests.Response:
    """POST a JSON body (NaN allowed, as Python clients send it)."""
    return session.post(url, data=json.dumps(body), auth=auth, timeout=30,
                        headers={"content-type": "application/json"})


def decode_v2(m: dict[str, Any], order: str = "C") -> tuple[np.ndarray, np.ndarray]:
    """Values (the bytes are in the request's ``order``, as the spec says) and counts."""
    bo = "<" if m["byte_order"] == "little" else ">"
    shape = m["shape"]
    if "shape_as_bytes" in m:
        assert shape == []
        shape = np.frombuffer(m["shape_as_bytes"], bo + "u8").tolist()
    count = m["count"]
    if "count_as_bytes" in m:
        assert count == []
        count = np.frombuffer(m["count_as_bytes"], bo + "i8").tolist()
    values = np.frombuffer(m["bytes"], np.dtype(m["dtype"]).newbyteorder(bo)).reshape(
        shape, order=order)
    return values, np.asarray(count, np.int64)


def decode_response(case: Case, r: requests.Response) -> tuple[np.ndarray, np.ndarray]:
    assert r.status_code == 200, (case, r.status_code, r.text[:500])
    if case.api == "v1":
        assert r.headers["content-type"] == "application/octet-stream"
        h = r.headers
        bo = "<" if h["x-activestorage-byte-order"] == "little" else ">"
        shape = json.loads(h["x-activestorage-shape"])
        values = np.frombuffer(r.content, np.dtype(h["x-activestorage-dtype"]).newbyteorder(bo))
        return (values.reshape(shape, order=case.body.get("order", "C")),
                np.asarray(json.loads(h["x-activestorage-count"]), np.int64))
    assert r.headers["content-type"] == "application/cbor"
    return decode_v2(cbor2.loads(r.content), case.body.get("order", "C"))


def check(case: Case, values: np.ndarray, counts: np.ndarray) -> None:
    want, want_counts = oracle(case)
    op = case.op
    dt = np.dtype(case.body["dtype"])
    exp_dtype = (np.int64 if op == "count" else
                 {"i": np.int64, "u": np.uint64}.get(dt.kind, dt) if case.wide_sum else dt)
    assert values.dtype.newbyteorder("=") == np.dtype(exp_dtype), case
    assert values.shape == want.shape, (case, values.shape, want.shape)
    if op == "select":
        assert counts.reshape(-1).tolist() == [int(want_counts)], case
        np.testing.assert_array_equal(values, want, err_msg=repr(case))
        return
    assert counts.reshape(want_counts.shape).tolist() == want_counts.tolist(), case
    ok = want_counts > 0
    got, exp = np.broadcast_to(values, want.shape)[ok], want[ok]
    if dt.kind == "f" and op == "sum":
        np.testing.assert_allclose(got, exp, rtol=1e-5 if dt.itemsize == 4 else 1e-12,
                                   atol=1e-3 if dt.itemsize == 4 else 1e-9, err_msg=repr(case))
    else:
        np.testing.assert_array_equal(got, exp, err_msg=repr(case))


# ---------------------------------------------------------------------------------- fixtures

def _ensure_bucket(s3, name: str) -> None:
    """Create ``name`` on the session's moto server unless an earlier test did."""
    if name not in {b["Name"] for b in s3.list_buckets().get("Buckets", [])}:
        s3.create_bucket(Bucket=name)


@pytest.fixture(scope="module")
def matrix(s3, moto_server, nginx_server, active_server):
    """The cases, their bytes packed into one object on moto and nginx; offsets filled in."""
    cases = [make_case(i) for i in range(N_CASES)]
    rng = np.random.default_rng(7)
    parts, pos = [], 0
    for c in cases:
        gap = rng.integers(0, 256, size=int(rng.integers(0, 97)), dtype=np.uint8).tobytes()
        parts.append(gap)
        pos += len(gap)
        c.body["offset"] = pos
        parts.append(c.blob)
        pos += len(c.blob)
    parts.append(b"\xff" * 16)
    blob = b"".join(parts)
    _ensure_bucket(s3, BUCKET)
    s3.put_object(Bucket=BUCKET, Key=KEY, Body=blob)
    docroot = nginx_server.extra["docroot"]
    (docroot / "matrix.bin").write_bytes(blob)
    (docroot / "private" / "matrix.bin").write_bytes(blob)
    return cases


@pytest.fixture(scope="module")
def session():
    with requests.Session() as s:
        yield s


def test_matrix_covers_the_space(matrix):
    """The generated matrix really spans every dimension the issue lists."""
    seen: dict[str, set] = {k: set() for k in ("op", "dtype", "bo", "order", "comp", "filt", "api",
                                                 "miss", "sel", "axis")}
    for c in matrix:
        b = c.body
        seen["op"].add(c.op)
        seen["api"].add(c.api)
        seen["dtype"].add(b["dtype"])
        seen["bo"].add(b.get("byte_order", "default"))
        seen["order"].add(b.get("order", "default"))
        seen["comp"].add((b.get("compression") or {}).get("id"))
        seen["filt"].add(tuple(f["id"] for f in b.get("filters", ())))
        seen["miss"].add(tuple(sorted((b.get("missing") or {}).keys())))
        seen["sel"].add("selection" in b and any(s[2] < 0 for s in b["selection"]))
        seen["axis"].add(type(b.get("axis")).__name__)
    assert seen["op"] == set(OPS) and seen["api"] == set(APIS)
    assert seen["dtype"] == set(DTYPES)
    assert seen["bo"] >= {"little", "big", "default"} and seen["order"] >= {"C", "F", "default"}
    assert seen["comp"] == set(COMPRESSIONS)
    assert len(seen["filt"]) == len(set(FILTERS))
    assert len(seen["miss"]) >= 7 and seen["sel"] == {True, False}
    assert seen["axis"] >= {"int", "list", "NoneType"}
    combos = {(c.op, c.body["dtype"]) for c in matrix}
    assert len(combos) == len(OPS) * len(DTYPES)


@pytest.mark.parametrize("api", APIS)
def test_every_case_matches_numpy(matrix, session, moto_server, nginx_server, active_server, api):
    """Every request of the matrix for one API, against the NumPy oracle."""
    cases = [c for c in matrix if c.api == api]
    assert len(cases) >= N_CASES // len(APIS) - 1
    for case in cases:
        path, body, auth = route(case, moto_server.url, nginx_server.url)
        r = post_json(session, active_server.url + path, body, auth)
        check(case, *decode_response(case, r))


def test_batch_matches_numpy_and_coalesces(matrix, session, moto_server, nginx_server,
                                           active_server):
    """All v2 cases of each operation in one CBOR batch: same answers, far fewer upstream GETs."""
    def upstream_gets() -> float:
        text = session.get(active_server.url + "/metrics", timeout=10).text
        return float(re.search(r"^activestorage_upstream_requests_total (\S+)$", text, re.M).group(1))

    caps = session.get(active_server.url + "/capabilities", timeout=10).json()
    assert caps["batch"] is True and caps["max_batch"] >= 100 and "option_wide_sum" in caps["options"]
    total_items = 0
    before = upstream_gets()
    for op in OPS:
        cases = [c for c in matrix if c.op == op and c.api != "v1"]
        # one batch may mix objects, but one set of credentials: S3 and public HTTP items
        cases = [c for c in cases if c.api in ("v2-s3", "v2-http")]
        bodies = [route(c, moto_server.url, nginx_server.url)[1] for c in cases]
        r = session.post(f"{active_server.url}/v2/batch/{op}", data=cbor2.dumps({"requests": bodies}),
                         headers={"content-type": "application/cbor"}, auth=(S3_KEY, S3_SECRET),
                         timeout=60)
        assert r.status_code == 200, r.text[:500]
        results = cbor2.loads(r.content)["results"]
        assert len(results) == len(cases)
        for case, m in zip(cases, results):
            check(case, *decode_v2(m, case.body.get("order", "C")))
        total_items += len(cases)
    gets = upstream_gets() - before
    # two objects per batch, ~10 KiB apart at most: coalescing must beat one GET per item
    assert gets < total_items / 4, (gets, total_items)


def test_json_batch_with_trailing_slash(matrix, session, moto_server, nginx_server, active_server):
    cases = [c for c in matrix if c.op == "sum" and c.api == "v2-s3"][:5]
    bodies = [route(c, moto_server.url, nginx_server.url)[1] for c in cases]
    r = post_json(session, f"{active_server.url}/v2/batch/sum/", {"requests": bodies},
                  auth=(S3_KEY, S3_SECRET))
    assert r.status_code == 200, r.text
    for case, m in zip(cases, cbor2.loads(r.content)["results"]):
        check(case, *decode_v2(m, case.body.get("order", "C")))


def test_integer_sum_overflow_wraps_unless_wide(session, s3, moto_server, active_server):
    """Spec: sum comes back in the request dtype; option_wide_sum gives NumPy's accumulator."""
    x = np.full(1000, 2**31 - 7, dtype=np.int32)
    _ensure_bucket(s3, BUCKET)  # this test must not depend on the matrix fixture having run
    s3.put_object(Bucket=BUCKET, Key="big.i4", Body=x.tobytes())
    body = {"interface_type": "s3", "url": f"{moto_server.url}/{BUCKET}/big.i4", "dtype": "int32",
            "size": x.nbytes}
    narrow = decode_v2(cbor2.loads(post_json(session, active_server.url + "/v2/sum", body,
                                             (S3_KEY, S3_SECRET)).content))
    wide = decode_v2(cbor2.loads(post_json(session, active_server.url + "/v2/sum",
                                           {**body, "option_wide_sum": True},
                                           (S3_KEY, S3_SECRET)).content))
    assert narrow[0].dtype == np.int32 and wide[0].dtype == np.int64
    assert int(wide[0]) == int(x.astype(np.int64).sum())
    assert int(narrow[0]) == int(np.int64(x.astype(np.int64).sum()).astype(np.int32))
    assert narrow[1].tolist() == wide[1].tolist() == [1000]



def test_checker_rejects_wrong_answers():
    """The comparison above can fail: a perturbed value or count is caught."""
    for i in range(40):
        case = make_case(i)
        want, counts = oracle(case)
        if case.op == "select" or not (counts > 0).any() or want.dtype.kind not in "iuf":
            continue
        bad = want.copy()
        bad[counts > 0] += 1
        with pytest.raises(AssertionError):
            check(case, bad, counts)
        with pytest.raises(AssertionError):
            check(case, want, counts + 1)
        check(case, want, counts)
