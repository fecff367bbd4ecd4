"""The moments extension in-process (FastAPI TestClient, fake upstream): /v2/moments and
/v2/minmax (and batch, folded or not) against NumPy masked-array oracles in float64, the three
forms of weights, every validation error a 400 naming its field, and the switch that turns the
extension off (the server then answers exactly as a reference Reductionist)."""

from __future__ import annotations

import zlib
from typing import Any

import cbor2
import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
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


def _client(**kw: Any):
    app = create_app(Settings(max_batch=64, **kw))
    app.state.server.upstream.read = fake_read
    return TestClient(app)


@pytest.fixture(scope="module")
def client():
    with _client() as c:
        yield c


@pytest.fixture(scope="module")
def reference():
    """The same server with the extension switched off."""
    with _client(moments_extension=False) as c:
        yield c


def put(key: str, x: np.ndarray | bytes) -> str:
    url = f"http://127.0.0.1:9000/bucket/{key}"
    STORE[url] = x if isinstance(x, bytes) else x.tobytes()
    return url


def body(x: np.ndarray, key: str, **fields: Any) -> dict[str, Any]:
    return {"interface_type": "s3", "url": put(key, x), "dtype": x.dtype.name,
            "shape": list(x.shape), **fields}


def post(client, op: str, b: dict[str, Any], status: int = 200, cbor: bool = False):
    if cbor:
        r = client.post(f"/v2/{op}", content=cbor2.dumps(b),
                        headers={"content-type": "application/cbor"})
    else:
        r = client.post(f"/v2/{op}", json=b)
    assert r.status_code == status, r.text
    return r


def decode(m: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    dt = np.dtype(m["dtype"]).newbyteorder("<" if m["byte_order"] == "little" else ">")
    return np.frombuffer(m["bytes"], dt).reshape(m["shape"]), np.asarray(m["count"])


def error_of(r, status: int) -> str:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    return r.json()["error"]["message"]


def oracle_moments(x: np.ndarray, mask: np.ndarray, w: np.ndarray,
                   axis: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(sw, mean, m2, sw2) per element and counts, in float64, by np.ma.average's rule."""
    xf = x.astype(np.float64)
    w = np.broadcast_to(w, x.shape).astype(np.float64) * ~mask
    sw = w.sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(sw > 0, (w * np.where(mask, 0, xf)).sum(axis=axis) / np.where(
            sw > 0, sw, 1), 0.0)
    d = np.where(mask, 0, xf - np.expand_dims(mean, axis))
    m2 = (w * d * d).sum(axis=axis)
    sw2 = (w * w).sum(axis=axis)
    return np.stack([sw, mean, m2, sw2], axis=-1), (~mask).sum(axis=axis)


def check_moments(got: np.ndarray, want: np.ndarray) -> None:
    assert got.dtype == np.float64 and got.shape == want.shape
    scale = np.abs(want).max(initial=1.0)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9 * scale)


# ------------------------------------------------------------------ capabilities and the switch

def test_capabilities_list_the_extension(client, reference):
    caps = client.get("/capabilities").json()
    assert {"moments", "minmax"} <= set(caps["operations"])
    ext = caps["extensions"]["moments"]
    assert set(ext["operations"]) == {"moments", "minmax"}
    assert set(ext["weights"]) == {"axes", "values", "array"}
    ref = reference.get("/capabilities").json()
    assert ref["operations"] == ["count", "min", "max", "sum", "select"]
    assert "extensions" not in ref


def test_extension_off_answers_as_the_reference(client, reference):
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    b = body(x, "off.bin")
    assert "unknown operation 'moments'" in error_of(reference.post("/v2/moments", json=b), 404)
    assert error_of(reference.post("/v2/batch/minmax", json={"requests": [b]}), 404)
    # a weights field is an unknown field: ignored, the same answer as without it
    w = {"axes": {"0": [1.0, 2.0, 3.0]}}
    plain = decode(cbor2.loads(post(reference, "sum", b).content))
    weighted = decode(cbor2.loads(post(reference, "sum", {**b, "weights": w}).content))
    np.testing.assert_array_equal(plain[0], weighted[0])


@pytest.mark.parametrize("op", ["moments", "minmax"])
def test_v1_does_not_serve_the_extension(client, op):
    b = {"source": "http://127.0.0.1:9000", "bucket": "bucket", "object": "v1.bin",
         "dtype": "int32"}
    put("v1.bin", np.arange(4, dtype=np.int32))
    assert error_of(client.post(f"/v1/{op}/", json=b), 404)


# ------------------------------------------------------------------------ numbers vs NumPy

_dtypes = st.sampled_from([np.dtype(t) for t in ("int16", "uint32", "int64", "float32",
                                                 "float64")])


def _array(dt: np.dtype) -> st.SearchStrategy[np.ndarray]:
    lo = 0 if dt.kind == "u" else -1000
    el = ({"min_value": lo, "max_value": 1000, "allow_nan": False}
          if dt.kind == "f" else {"min_value": lo, "max_value": 1000})
    return hnp.arrays(dt, hnp.array_shapes(min_dims=1, max_dims=3, max_side=5), elements=el)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(x=_dtypes.flatmap(_array), data=st.data(), cbor=st.booleans())
def test_moments_and_minmax_match_numpy(client, x, data, cbor):
    nd = x.ndim
    sel = [data.draw(st.tuples(st.integers(-n - 1, n), st.integers(-n - 1, n + 1),
                               st.sampled_from([1, 2, -1])), label=f"sel{i}")
           for i, n in enumerate(x.shape)]
    xs = x[tuple(slice(*s) for s in sel)]
    axis = tuple(sorted(data.draw(st.sets(st.integers(0, nd - 1), min_size=1), label="axis")))
    missing = x.flat[0] if data.draw(st.booleans(), label="missing") else None
    mask = np.zeros(xs.shape, bool) if missing is None else xs == missing
    b = body(x, "prop.bin", selection=[list(s) for s in sel], axis=list(axis))
    if missing is not None:
        b["missing"] = {"missing_value": missing.item()}
    # separable weights on some axes
    weights: dict[int, np.ndarray] = {}
    for a in data.draw(st.sets(st.integers(0, nd - 1)), label="weighted"):
        weights[a] = np.asarray(data.draw(st.lists(
            st.floats(0, 100), min_size=xs.shape[a], max_size=xs.shape[a]), label=f"w{a}"))
    w = np.ones(xs.shape)
    for a, wa in weights.items():
        w = w * wa.reshape([-1 if i == a else 1 for i in range(nd)])
    if weights:
        b["weights"] = {"axes": {str(a): (wa.astype("<f8").tobytes() if cbor else wa.tolist())
                                 for a, wa in weights.items()}}
    got, counts = decode(cbor2.loads(post(client, "moments", b, cbor=cbor).content))
    want, want_n = oracle_moments(xs, mask, w, axis)
    check_moments(got, want)
    np.testing.assert_array_equal(counts, want_n.reshape(-1))

    b.pop("weights", None)
    got, counts = decode(cbor2.loads(post(client, "minmax", b, cbor=cbor).content))
    assert got.dtype == x.dtype and got.shape == want_n.shape + (2,)
    if xs.size == 0:
        return
    m = np.ma.masked_array(xs, mask)
    has = want_n > 0
    np.testing.assert_array_equal(got[..., 0][has], np.ma.getdata(m.min(axis=axis))[has])
    np.testing.assert_array_equal(got[..., 1][has], np.ma.getdata(m.max(axis=axis))[has])


def test_float32_large_offset_variance_keeps_its_digits(client):
    rng = np.random.default_rng(0)
    x = (1e6 + rng.standard_normal(100_000)).astype(np.float32)
    got, n = decode(cbor2.loads(post(client, "moments", body(x, "stable.bin")).content))
    var = got[2] / got[0]
    np.testing.assert_allclose(var, np.var(x.astype(np.float64)), rtol=1e-9)
    assert n.tolist() == [x.size]


def test_fortran_order_result_includes_the_trailing_axis(client):
    x = np.asfortranarray(np.arange(24, dtype=np.float64).reshape(2, 3, 4))
    b = body(x, "f.bin", order="F", axis=[2])
    STORE[b["url"]] = x.tobytes(order="F")
    m = cbor2.loads(post(client, "moments", b).content)
    got = np.frombuffer(m["bytes"], "<f8").reshape(m["shape"], order="F")
    want, _ = oracle_moments(x, np.zeros(x.shape, bool), np.ones(1), (2,))
    check_moments(got, want)


# ---------------------------------------------------------------------- N-D weights

def test_nd_inline_weights(client):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 4, 5))
    w = rng.uniform(0, 2, (4, 1))  # broadcast over axes 0 and 2
    b = body(x, "nd.bin", axis=[1, 2], weights={"values": {"shape": [4, 1],
                                                            "data": w.reshape(-1).tolist()}})
    got, _ = decode(cbor2.loads(post(client, "moments", b).content))
    want, _ = oracle_moments(x, np.zeros(x.shape, bool), w, (1, 2))
    check_moments(got, want)
    np.testing.assert_allclose(got[:, 1], np.ma.average(x, axis=(1, 2),
                                                        weights=np.broadcast_to(w, x.shape)))


@pytest.mark.parametrize("compressed", [False, True])
def test_nd_weights_read_from_their_own_byte_range(client, compressed):
    """Weights stored as float32 in another object (an area variable), at an offset, maybe
    zlib-compressed: the server reads them, selects the block and broadcasts it."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 6, 8)).astype(np.float32)
    area = rng.uniform(0.1, 1, (6, 8)).astype(np.float32)
    raw = zlib.compress(area.tobytes()) if compressed else area.tobytes()
    put("area.bin", b"HEADER--" + raw)
    sel = [[0, 2, 1], [1, 5, 1], [0, 8, 2]]
    ref = {"url": "http://127.0.0.1:9000/bucket/area.bin", "offset": 8, "size": len(raw),
           "dtype": "float32", "shape": [6, 8], "selection": [[1, 5, 1], [0, 8, 2]]}
    if compressed:
        ref["compression"] = {"id": "zlib"}
    b = body(x, "data.bin", selection=sel, axis=[1, 2], weights={"array": ref})
    got, counts = decode(cbor2.loads(post(client, "moments", b).content))
    xs, ws = x[0:2, 1:5, 0:8:2], area[1:5, 0:8:2]
    want, n = oracle_moments(xs, np.zeros(xs.shape, bool), ws, (1, 2))
    check_moments(got, want)
    np.testing.assert_allclose(got[:, 1], np.average(xs.astype(np.float64), axis=(1, 2),
                                                     weights=np.broadcast_to(ws, xs.shape)),
                               rtol=1e-9)
    # the same in a batch, folded with a second chunk
    b2 = body(x, "data.bin", selection=sel, axis=[0, 1, 2], weights={"array": ref})
    m = cbor2.loads(post(client, "batch/moments", {"requests": [b2, b2], "fold": [0, 0]},
                         cbor=True).content)
    assert m["results"][1] is None
    got, _ = decode(m["results"][0])
    one, _ = oracle_moments(xs, np.zeros(xs.shape, bool), ws, (0, 1, 2))
    want = one * [2, 1, 2, 2]  # the same chunk twice: weights and m2 double, the mean stays
    check_moments(got, want)


def test_missing_elements_drop_their_weight(client):
    x = np.array([[1.0, -999.0, 3.0], [4.0, 5.0, -999.0]])
    b = body(x, "miss.bin", axis=[1], missing={"missing_value": -999.0},
             weights={"axes": {"1": [1.0, 100.0, 3.0]}})
    got, n = decode(cbor2.loads(post(client, "moments", b).content))
    m = np.ma.masked_equal(x, -999.0)
    w = np.broadcast_to([1.0, 100.0, 3.0], x.shape)
    np.testing.assert_allclose(got[:, 1], np.ma.average(m, axis=1, weights=w))
    np.testing.assert_allclose(got[:, 0], [4.0, 101.0])
    assert n.tolist() == [2, 2]


def test_batch_moments_folded_equals_the_whole(client):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((8, 10))
    w = rng.uniform(0, 1, 10)
    bodies = [body(x[i:i + 2].copy(), f"part{i}.bin", axis=[0, 1],
                   weights={"axes": {"1": w.astype("<f8").tobytes()}}) for i in range(0, 8, 2)]
    m = cbor2.loads(post(client, "batch/moments", {"requests": bodies, "fold": [7] * 4},
                         cbor=True).content)
    got, n = decode(m["results"][0])
    want, _ = oracle_moments(x, np.zeros(x.shape, bool), w, (0, 1))
    check_moments(got, want)
    assert n.tolist() == [80] and m["results"][1:] == [None] * 3
    unweighted = [{k: v for k, v in b.items() if k != "weights"} for b in bodies]
    plain = cbor2.loads(post(client, "batch/minmax", {"requests": unweighted},
                             cbor=True).content)
    for i, r in enumerate(plain["results"]):
        v, _ = decode(r)
        assert v.tolist() == [x[2 * i:2 * i + 2].min(), x[2 * i:2 * i + 2].max()]


# ------------------------------------------------------------------------- validation

X = np.arange(24, dtype=np.float64).reshape(2, 3, 4)


@pytest.mark.parametrize("op, weights, field, words", [
    ("sum", {"axes": {"1": [1, 1, 1]}}, "weights", "only the moments"),
    ("minmax", {"axes": {"1": [1, 1, 1]}}, "weights", "only the moments"),
    ("moments", {"axes": {"1": [1, 1]}}, "weights.axes.1", "selection has 3"),
    ("moments", {"axes": {"1": [1, -1, 1]}}, "weights.axes.1", ">= 0"),
    ("moments", {"axes": {"1": [1, 1, "NaN"]}}, "weights.axes.1", "numbers"),
    ("moments", {"axes": {"7": [1]}}, "weights.axes.7", "out of range"),
    ("moments", {"axes": {"0": [1, 1]}, "values": {}}, "weights", "exactly one"),
    ("moments", {"values": {"shape": [5], "data": [1] * 5}}, "weights.values.shape",
     "broadcast"),
    ("moments", {"array": {"url": "http://127.0.0.1:9000/bucket/w.bin", "dtype": "float64",
                           "shape": [3, 4], "size": 7}}, "weights.array.size", "multiple"),
    ("moments", {"array": {"url": "http://127.0.0.1:9000/bucket/w.bin", "dtype": "float64"}},
     "weights.array.shape", "required"),
    ("moments", {"array": {"url": "http://127.0.0.1:9000/bucket/w.bin", "dtype": "complex",
                           "shape": [3, 4]}}, "weights.array.dtype", "must be one of"),
    ("moments", {"array": {"url": "http://127.0.0.1:9000/bucket/w.bin", "dtype": "float64",
                           "shape": [3, 4], "axis": 1}}, "weights.array.axis", "not allowed"),
])
def test_weights_field_errors_are_400_naming_the_field(client, op, weights, field, words):
    msg = error_of(client.post(f"/v2/{op}", json=body(X, "val.bin", weights=weights)), 400)
    assert msg.startswith(field + ":"), msg
    assert words in msg, msg


def test_weights_array_errors_after_reading(client):
    put("w.bin", np.full((3, 4), -1.0))
    ref = {"url": "http://127.0.0.1:9000/bucket/w.bin", "dtype": "float64", "shape": [3, 4]}
    msg = error_of(client.post("/v2/moments", json=body(X, "val.bin", weights={"array": ref})),
                   400)
    assert msg.startswith("weights.array") and ">= 0" in msg, msg
    put("w2.bin", np.ones((2, 4)))
    ref = {"url": "http://127.0.0.1:9000/bucket/w2.bin", "dtype": "float64", "shape": [2, 4]}
    msg = error_of(client.post("/v2/moments", json=body(X, "val.bin", weights={"array": ref})),
                   400)
    assert "broadcast" in msg, msg
    ref = {"url": "http://127.0.0.1:9000/bucket/none.bin", "dtype": "float64", "shape": [3, 4]}
    assert "not found" in error_of(client.post("/v2/moments", json=body(
        X, "val.bin", weights={"array": ref})), 400)


def test_weights_array_host_must_be_allowed(client):
    ref = {"url": "http://10.1.2.3:9000/bucket/w.bin", "dtype": "float64", "shape": [3, 4]}
    r = client.post("/v2/moments", json=body(X, "val.bin", weights={"array": ref}))
    assert r.status_code == 403, r.text
    assert "weights.array.url" in r.json()["error"]["message"]


def test_batch_item_weights_error_names_the_item(client):
    ok = body(X, "val.bin")
    bad = body(X, "val.bin", weights={"axes": {"0": [1.0]}})
    msg = error_of(client.post("/v2/batch/moments", json={"requests": [ok, bad]}), 400)
    assert msg.startswith("requests[1].weights.axes.0:"), msg


def test_weights_without_a_shape_are_refused(client):
    b = {"interface_type": "s3", "url": put("flat.bin", X), "dtype": "float64",
         "weights": {"axes": {"0": [1.0] * 24}}}
    assert error_of(client.post("/v2/moments", json=b), 400).startswith("weights")


def test_v1_ignores_a_weights_field(client):
    put("v1w.bin", np.arange(4, dtype=np.int32))
    b = {"source": "http://127.0.0.1:9000", "bucket": "bucket", "object": "v1w.bin",
         "dtype": "int32", "weights": {"axes": {"0": [1, 2]}}}
    r = client.post("/v1/sum/", json=b)
    assert r.status_code == 200, r.text
    assert np.frombuffer(r.content, "<i4").tolist() == [6]


def test_openapi_describes_the_extension(client):
    doc = client.get("/openapi.json").json()
    v2 = doc["paths"]["/v2/{operation}"]["post"]
    assert "moments" in v2["description"] and "minmax" in v2["description"]
    props = v2["requestBody"]["content"]["application/json"]["schema"]["properties"]
    weights = props["weights"]
    text = str(weights)
    for word in ("axes", "values", "array", "url"):
        assert word in text
    v1 = doc["paths"]["/v1/{operation}/"]["post"]["requestBody"]["content"]
    assert "weights" not in v1["application/json"]["schema"]["properties"]


def test_the_switch_from_flags_and_environment():
    from activestorage.server.settings import parse_args

    assert parse_args([], environ={}).moments_extension is True
    assert parse_args(["--no-moments-extension"], environ={}).moments_extension is False
    assert parse_args([], environ={"ACTIVESTORAGE_MOMENTS_EXTENSION": "0"}
                      ).moments_extension is False
