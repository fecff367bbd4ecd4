"""The app in-process (FastAPI TestClient) with a fake upstream: property tests against NumPy
through v1, v2 and batch; response encodings; error shapes; access log without secrets."""

from __future__ import annotations

import json
import logging
import math
from typing import Any

import cbor2
import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from activestorage.errors import StorageError
from activestorage.server.app import create_app
from activestorage.server.settings import Settings

STORE: dict[str, bytes] = {}


async def fake_read(target, offset, size, *, max_bytes, meta=None):
    data = STORE.get(target.url)
    if data is None:
        raise StorageError(f"object not found: {target.name}", status=400, store=target.store)
    return data[offset:] if size is None else data[offset:offset + size]


@pytest.fixture(scope="module")
def client():
    app = create_app(Settings(max_batch=64))
    app.state.server.upstream.read = fake_read
    with TestClient(app) as c:
        yield c


def oracle(x: np.ndarray, op: str, axis: tuple[int, ...], missing: Any) -> tuple[Any, Any]:
    mask = np.zeros(x.shape, bool) if missing is None else (x == missing)
    m = np.ma.masked_array(x, mask)
    if op == "select":
        return x, int((~mask).sum())
    counts = (~mask).sum(axis=axis)
    if op == "count":
        return counts, counts
    if op == "sum":
        acc = {"i": np.int64, "u": np.uint64}.get(x.dtype.kind, x.dtype)
        with np.errstate(over="ignore"):
            return np.asarray(np.ma.filled(m.sum(axis=axis, dtype=acc), 0)).astype(x.dtype), counts
    return np.asarray(np.ma.filled(getattr(m, op)(axis=axis), 0)), counts


def decode_v1(r, order: str = "C") -> tuple[np.ndarray, np.ndarray]:
    """Values (reshaped in the request's ``order``, as the spec says) and counts."""
    h = r.headers
    dt = np.dtype(h["x-activestorage-dtype"]).newbyteorder(
        "<" if h["x-activestorage-byte-order"] == "little" else ">")
    v = np.frombuffer(r.content, dt).reshape(json.loads(h["x-activestorage-shape"]), order=order)
    return v, np.asarray(json.loads(h["x-activestorage-count"]))


def decode_v2(m: dict[str, Any], order: str = "C") -> tuple[np.ndarray, np.ndarray]:
    dt = np.dtype(m["dtype"]).newbyteorder("<" if m["byte_order"] == "little" else ">")
    return (np.frombuffer(m["bytes"], dt).reshape(m["shape"], order=order),
            np.asarray(m["count"]))


def _arrays(dt: np.dtype) -> st.SearchStrategy[np.ndarray]:
    lo = 0 if dt.kind == "u" else -1000
    elements = ({"min_value": lo, "max_value": 1000, "allow_nan": False}
                if dt.kind == "f" else {"min_value": lo, "max_value": 1000})
    return hnp.arrays(dt, hnp.array_shapes(min_dims=1, max_dims=3, max_side=5), elements=elements)


arrays = st.sampled_from([np.dtype(t) for t in ("int16", "uint32", "int64", "float32",
                                                 "float64")]).flatmap(_arrays)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(x=arrays, op=st.sampled_from(["count", "min", "max", "sum", "select"]),
       data=st.data(), big=st.booleans(), fortran=st.booleans())
def test_v1_v2_and_batch_agree_with_numpy(client, x, op, data, big, fortran):
    axis = tuple(sorted(data.draw(st.sets(st.integers(0, x.ndim - 1), min_size=1))))
    missing = data.draw(st.sampled_from([None, x.reshape(-1)[0].item()]))
    order = "F" if fortran else "C"
    raw = x.astype(x.dtype.newbyteorder(">" if big else "<")).tobytes(order=order)
    url = f"http://127.0.0.1:1/{len(STORE)}.bin"
    STORE[url] = b"\0" * 3 + raw
    body: dict[str, Any] = {"dtype": x.dtype.name, "shape": list(x.shape), "offset": 3,
                            "size": len(raw), "byte_order": "big" if big else "little",
                            "order": order, "axis": list(axis)}
    if missing is not None:
        body["missing"] = {"missing_value": missing}
    want, want_count = oracle(x, op, axis, missing)
    STORE["http://127.0.0.1:1/b/o"] = STORE[url]
    r1 = client.post(f"/v1/{op}/", json={**body, "source": "http://127.0.0.1:1", "bucket": "b",
                                         "object": "o"})
    v2body = {**body, "interface_type": "http", "url": url}
    r2 = client.post(f"/v2/{op}", json=v2body)
    rb = client.post(f"/v2/batch/{op}", content=cbor2.dumps({"requests": [v2body, v2body]}),
                     headers={"content-type": "application/cbor"})
    assert r1.status_code == r2.status_code == rb.status_code == 200, (r1.text, r2.text, rb.text)
    results = [decode_v1(r1, order), decode_v2(cbor2.loads(r2.content), order)] + \
        [decode_v2(m, order) for m in cbor2.loads(rb.content)["results"]]
    for values, counts in results:
        assert values.shape == np.shape(want)
        if op == "select":
            assert counts.reshape(-1).tolist() == [want_count]
            np.testing.assert_array_equal(values, want)
            continue
        assert counts.reshape(np.shape(want_count)).tolist() == np.asarray(want_count).tolist()
        ok = np.asarray(want_count) > 0
        got, exp = np.asarray(values)[ok], np.asarray(want)[ok]
        if op == "sum" and x.dtype.kind == "f":
            np.testing.assert_allclose(got, exp, rtol=1e-4, atol=1e-2)
        else:
            np.testing.assert_array_equal(got, exp)


def test_scalar_results_and_byte_options(client):
    STORE["http://127.0.0.1:1/s.bin"] = np.arange(6, dtype="<i4").tobytes()
    base = {"interface_type": "http", "url": "http://127.0.0.1:1/s.bin", "dtype": "int32",
            "shape": [2, 3]}
    m = cbor2.loads(client.post("/v2/sum/", json=base).content)
    assert m["shape"] == [] and m["count"] == [6] and m["dtype"] == "int32"
    assert np.frombuffer(m["bytes"], "<i4").tolist() == [15]
    m = cbor2.loads(client.post("/v2/max", json={**base, "axis": 1, "option_shape_as_bytes": True,
                                                 "option_count_as_bytes": True}).content)
    assert m["shape"] == [] and m["count"] == []
    assert np.frombuffer(m["shape_as_bytes"], "<u8").tolist() == [2]
    assert np.frombuffer(m["count_as_bytes"], "<i8").tolist() == [3, 3]
    assert np.frombuffer(m["bytes"], "<i4").tolist() == [2, 5]
    m = cbor2.loads(client.post("/v2/sum", json={**base, "option_wide_sum": True}).content)
    assert m["dtype"] == "int64"
    STORE["http://127.0.0.1:1/b/o"] = STORE["http://127.0.0.1:1/s.bin"]
    r = client.post("/v1/count/", json={**base, "source": "http://127.0.0.1:1", "bucket": "b",
                                        "object": "o", "axis": [0]})
    assert r.headers["x-activestorage-count"] == "[2,2,2]"
    assert r.headers["x-activestorage-shape"] == "[3]" and r.headers["x-activestorage-dtype"] == "int64"
    sel = client.post("/v1/select/", json={**base, "source": "http://127.0.0.1:1", "bucket": "b",
                                           "object": "o", "selection": [[0, 2, 1], [2, 0, -1]],
                                           "missing": {"missing_value": 5}})
    assert sel.headers["x-activestorage-count"] == "[3]"
    assert np.frombuffer(sel.content, "<i4").reshape(2, 2).tolist() == [[2, 1], [5, 4]]


def test_capabilities_and_every_error_is_json(client):
    caps = client.get("/capabilities").json()
    assert caps["batch"] is True and caps["max_batch"] == 64 and caps["api"] == ["v1", "v2"]
    for method, path in (("get", "/nope"), ("post", "/v2/avg"), ("get", "/v2/sum"),
                         ("post", "/v1/sum/extra")):
        r = getattr(client, method)(path)
        assert r.status_code in (404, 405) and set(r.json()) == {"error"}


def test_fastapi_validation_errors_become_400_in_our_shape():
    app = create_app(Settings())

    @app.get("/typed")
    async def typed(n: int) -> dict:  # a route with FastAPI-validated parameters
        return {"n": n}

    with TestClient(app) as c:
        r = c.get("/typed", params={"n": "x"})
    assert r.status_code == 400
    assert "n" in r.json()["error"]["message"] and "detail" not in r.json()


def test_internal_errors_are_500_json_without_traceback():
    app = create_app(Settings())

    async def broken(*a, **k):
        raise ZeroDivisionError("secret internals")
    app.state.server.upstream.read = broken
    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.post("/v2/sum", json={"interface_type": "http", "url": "http://127.0.0.1/x",
                                    "dtype": "int8", "size": 1})
    assert r.status_code == 500 and r.json()["error"]["message"].startswith("internal server error")
    assert "Traceback" not in r.text and "secret internals" not in r.text


def test_access_log_is_structured_and_has_no_credentials(client, caplog):
    STORE["http://127.0.0.1:1/l.bin"] = b"\1" * 8
    with caplog.at_level(logging.DEBUG, logger="activestorage"):
        client.post("/v2/sum", json={"interface_type": "http", "url": "http://127.0.0.1:1/l.bin",
                                     "dtype": "int8", "size": 8}, auth=("me", "hunter2-secret"))
        client.post("/v2/sum", json={"interface_type": "http", "url": "http://127.0.0.1:1/none",
                                     "dtype": "int8", "size": 8}, auth=("me", "hunter2-secret"))
    lines = [r.getMessage() for r in caplog.records if r.name == "activestorage.server.access"]
    entries = [json.loads(x) for x in lines]
    assert [e["status"] for e in entries] == [200, 400]
    assert all(e["path"] == "/v2/sum" and e["ms"] >= 0 for e in entries)
    assert "hunter2-secret" not in caplog.text and "aHVudGVy" not in caplog.text


def test_body_limit_413(client):
    app = create_app(Settings(max_body_bytes=100))
    with TestClient(app) as c:
        r = c.post("/v2/sum", content=b"x" * 101)
    assert r.status_code == 413 and "100 bytes" in r.json()["error"]["message"]


def test_batch_plan_coalesces_near_ranges_of_one_object_only():
    from activestorage.server.service import Service as Server
    from activestorage.server.wire import prepare

    srv = Server(Settings(coalesce_gap_bytes=100, coalesce_max_bytes=900,
                          coalesce_below_bytes=600))

    def item(url, offset, size=80):
        return prepare({"interface_type": "http", "url": url, "dtype": "float64", "offset": offset,
                        "size": size}, "sum", "v2", None, srv.settings)

    a, b = "http://127.0.0.1/a", "http://127.0.0.1/b"
    items = [item(a, 0), item(a, 80), item(a, 260), item(b, 80), item(a, 2000), item(a, 400, 560),
             item(a, 2080, 640), item(a, 2720, 40)]
    jobs = sorted((sorted(run), t.url, start, size) for run, t, start, size in srv._plan(items))
    assert jobs == [([0, 1, 2], a, 0, 340),      # adjacent, then a 100-byte gap: one GET
                    ([3], b, 80, 80),             # another object: its own GET
                    ([4], a, 2000, 80),           # too far from the others
                    ([5], a, 400, 560),           # would make the GET longer than 900 bytes
                    ([6], a, 2080, 640),          # adjacent to 4, but large ranges go alone
                    ([7], a, 2720, 40)]
    srv.pool.shutdown()


@pytest.mark.parametrize("field,value", [("etag", "a\r\nX-Injected: 1"), ("etag", "\x00"),
                                         ("version_id", "\x1f"), ("etag", "é")])
def test_pins_with_control_characters_are_400(client, field, value):
    r = client.post("/v2/count", json={"interface_type": "http", "url": "http://127.0.0.1:1/x",
                                       "dtype": "int8", "size": 1, field: value})
    assert r.status_code == 400 and r.json()["error"]["message"].startswith(field)


def test_deeply_nested_json_is_400(client):
    for depth in (5000, 100_000):
        r = client.post("/v2/sum", content=b"[" * depth + b"]" * depth,
                        headers={"content-type": "application/json"})
        assert r.status_code == 400 and "malformed JSON" in r.json()["error"]["message"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(x=arrays, op=st.sampled_from(["count", "min", "max", "sum"]), data=st.data())
def test_batch_fold_combines_like_numpy_over_the_stacked_chunks(client, x, op, data):
    """Requests sharing a fold id come back as one result (for the first of them, the others
    null) equal to NumPy's reduction over all of their chunks together."""
    k = data.draw(st.integers(2, 5))
    chunks = [(x + i).astype(x.dtype) if x.dtype.kind != "u" else x for i in range(k)]
    ids = data.draw(st.lists(st.integers(0, 2), min_size=k, max_size=k))
    axis = tuple(sorted(data.draw(st.sets(st.integers(0, x.ndim - 1), min_size=1))))
    missing = data.draw(st.sampled_from([None, x.reshape(-1)[0].item()]))
    bodies = []
    for i, c in enumerate(chunks):
        url = f"http://127.0.0.1:1/fold-{len(STORE)}-{i}.bin"
        STORE[url] = c.tobytes()
        b: dict[str, Any] = {"interface_type": "http", "url": url, "dtype": x.dtype.name,
                             "shape": list(x.shape), "axis": list(axis)}
        if missing is not None:
            b["missing"] = {"missing_value": missing}
        bodies.append(b)
    r = client.post(f"/v2/batch/{op}", content=cbor2.dumps({"requests": bodies, "fold": ids}),
                    headers={"content-type": "application/cbor"})
    assert r.status_code == 200, r.text
    results = cbor2.loads(r.content)["results"]
    for fid in set(ids):
        members = [i for i, f in enumerate(ids) if f == fid]
        assert all(results[i] is None for i in members[1:])
        values, counts = decode_v2(results[members[0]])
        stacked = np.stack([chunks[i] for i in members])  # the members as one array
        want, want_count = oracle(stacked, op, (0,) + tuple(a + 1 for a in axis), missing)
        assert counts.reshape(np.shape(want_count)).tolist() == np.asarray(want_count).tolist()
        ok = np.asarray(want_count) > 0
        if op == "sum":
            assert values.dtype == (np.float64 if x.dtype.kind == "f" else
                                    {"i": np.int64, "u": np.uint64}[x.dtype.kind])
            s = np.ma.masked_array(stacked, np.zeros(stacked.shape, bool) if missing is None
                                   else stacked == missing)
            exact = np.ma.filled(s.sum(axis=(0,) + tuple(a + 1 for a in axis),
                                       dtype=values.dtype), 0)
            # each chunk is summed in its own float type (as NumPy sums float32), so the error
            # bound is the textbook one of a recursive sum, (n + 1) eps sum|x| with n the
            # elements behind a value: relative to the magnitudes, not to the sum, which
            # cancellation can bring near zero
            reduced = (0,) + tuple(a + 1 for a in axis)
            magnitude = np.ma.filled(abs(s.astype(np.float64)).sum(axis=reduced), 0)
            n = math.prod(x.shape[a] for a in axis) + 1
            eps = np.finfo(x.dtype).eps if x.dtype.kind == "f" else 0.0
            err = np.abs(np.asarray(values, np.float64) - np.asarray(exact, np.float64))
            assert (err[ok] <= 1e-12 * np.abs(np.asarray(exact, np.float64))[ok]
                    + n * eps * np.asarray(magnitude)[ok]).all()
        else:
            np.testing.assert_array_equal(np.asarray(values)[ok], np.asarray(want)[ok])


def test_batch_fold_errors_name_the_field(client):
    STORE["http://127.0.0.1:1/f.bin"] = np.arange(6, dtype="<i4").tobytes()
    one = {"interface_type": "http", "url": "http://127.0.0.1:1/f.bin", "dtype": "int32",
           "shape": [2, 3], "axis": [0]}
    other = {**one, "shape": [3, 2]}  # its result has another shape

    def post(op: str, body: dict[str, Any]) -> Any:
        return client.post(f"/v2/batch/{op}", content=cbor2.dumps(body),
                           headers={"content-type": "application/cbor"})

    for fold in ([0], [0, "a"], "x", [0, True]):
        r = post("sum", {"requests": [one, one], "fold": fold})
        assert r.status_code == 400 and "fold" in r.json()["error"]["message"], (fold, r.text)
    r = post("select", {"requests": [one, one], "fold": [0, 0]})
    assert r.status_code == 400 and "fold" in r.json()["error"]["message"]
    r = post("sum", {"requests": [one, other], "fold": [0, 0]})
    assert r.status_code == 400 and "fold" in r.json()["error"]["message"]
    r = post("sum", {"requests": [one, other], "fold": [0, 1]})  # different ids: fine
    assert r.status_code == 200 and None not in cbor2.loads(r.content)["results"]
    assert client.get("/capabilities").json()["fold"] is True


def test_reduction_posts_take_the_fast_path_past_the_router():
    """Reduction POSTs are served without FastAPI's router and middleware (the hot path); the
    answers, errors and metrics are those of the full stack."""
    from activestorage.server.app import ServerApp

    app = create_app(Settings())
    assert isinstance(app, ServerApp)
    app.state.server.upstream.read = fake_read
    STORE["http://127.0.0.1:1/fast.bin"] = np.arange(10, dtype="<i4").tobytes()
    body = {"interface_type": "http", "url": "http://127.0.0.1:1/fast.bin", "dtype": "int32"}
    # without the reduction routes in the router, only the fast path can answer them
    app.router.routes[:] = [r for r in app.router.routes
                            if not getattr(r, "path", "").startswith(("/v1/", "/v2/"))]
    with TestClient(app) as c:
        r = c.post("/v2/sum/", json=body)
        assert r.status_code == 200 and cbor2.loads(r.content)["count"] == [10]
        r = c.post("/v2/nosuch", json=body)
        assert r.status_code == 404 and "unknown operation" in r.json()["error"]["message"]
        r = c.post("/v2/sum", json={**body, "dtype": "float128"})
        assert r.status_code == 400 and r.json()["error"]["message"].startswith("dtype")
        assert c.get("/healthz").status_code == 200
        metrics = c.get("/metrics").text
    assert 'activestorage_requests_total{api="v2",operation="sum",status="200"} 1.0' in metrics
    assert 'activestorage_errors_total{kind="validation"} 1.0' in metrics


def test_small_single_requests_are_reduced_on_the_loop_large_ones_in_the_pool():
    """The hand-over to a kernel thread costs more than reducing a small chunk: small single
    requests are reduced inline, large ones in the pool (same answers either way)."""
    from activestorage.server.service import INLINE_BYTES

    app = create_app(Settings())
    app.state.server.upstream.read = fake_read
    used: list[int] = []
    real = app.state.server.pool.submit
    app.state.server.pool.submit = lambda *a, **k: used.append(1) or real(*a, **k)
    n_small, n_large = 100, INLINE_BYTES // 8 + 1
    for n in (n_small, n_large):
        STORE[f"http://127.0.0.1:1/inline-{n}.bin"] = np.arange(n, dtype="<f8").tobytes()
    with TestClient(app) as c:
        for n, pooled in ((n_small, 0), (n_large, 1)):
            used.clear()
            r = c.post("/v2/sum", json={"interface_type": "http", "dtype": "float64",
                                        "url": f"http://127.0.0.1:1/inline-{n}.bin"})
            assert r.status_code == 200, r.text
            m = cbor2.loads(r.content)
            assert m["count"] == [n] and _f8(m) == n * (n - 1) / 2
            assert len(used) == pooled


def _f8(m: dict[str, Any]) -> float:
    return float(np.frombuffer(m["bytes"], "<f8")[0])
