"""The reduction-server API spec (shared/api/reductionist-api.md), line by line, in-process.

The app runs under FastAPI's TestClient with its upstream reads replaced by an in-memory store
that records the URL each read asked for; every numeric answer is checked against NumPy. The same
behaviours against real processes (moto S3 and our server) are in
tests/integration/test_spec_compliance.py.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import cbor2
import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings, strategies as st
from helpers import SELECTABLE, assert_selected, decode_v1, decode_v2, spec_error

from activestorage.errors import StorageError
from activestorage.server.app import create_app
from activestorage.server.settings import Settings

SOURCE = "http://127.0.0.1:9"
STORE: dict[str, bytes] = {}
SEEN: list[Any] = []


async def fake_read(target, offset, size, *, max_bytes, meta=None):
    """The in-memory store: objects by the exact (canonical) URL the server reads."""
    SEEN.append(target)
    data = STORE.get(target.url)
    if data is None:
        raise StorageError(f"object not found: {target.name}: NoSuchKey", status=400,
                           store=target.store)
    return data[offset:] if size is None else data[offset:offset + size]


@pytest.fixture(scope="module")
def client():
    app = create_app(Settings())
    app.state.server.upstream.read = fake_read
    with TestClient(app) as c:
        yield c


def put(key: str, x: np.ndarray | bytes) -> str:
    """Store ``x`` under bucket ``b``, key ``key`` (given percent-encoded); return its URL."""
    url = f"{SOURCE}/b/{key}"
    STORE[url] = x if isinstance(x, bytes) else x.tobytes()
    return url


def v1(client, op: str, x: np.ndarray, **fields: Any):
    key = f"v1-{len(STORE)}"
    put(key, x)
    body = {"source": SOURCE, "bucket": "b", "object": key, "dtype": x.dtype.name, **fields}
    return client.post(f"/v1/{op}/", json=body)


def v2(client, op: str, x: np.ndarray, **fields: Any):
    url = put(f"v2-{len(STORE)}", x)
    body = {"interface_type": "s3", "url": url, "dtype": x.dtype.name, **fields}
    return client.post(f"/v2/{op}", json=body)








X = np.arange(24, dtype="<i4").reshape(4, 6)

# ------------------------------------------------------------------------------ operations


@pytest.mark.parametrize("api", ["v1", "v2"])
@pytest.mark.parametrize("op", ["count", "min", "max", "sum", "select"])
def test_each_operation_and_result_dtype(client, api, op):
    r = (v1 if api == "v1" else v2)(client, op, X, shape=[4, 6])
    assert r.status_code == 200, r.text
    values, count = (decode_v1 if api == "v1" else decode_v2)(r)
    want = {"count": np.int64(24), "min": 0, "max": 23, "sum": X.sum(), "select": X}[op]
    np.testing.assert_array_equal(values, want)
    assert values.dtype == (np.int64 if op == "count" else np.int32)  # count: int64, else dtype
    assert count == [24]


@pytest.mark.parametrize("path", ["/v2/mean", "/v2/mean/", "/v1/mean/", "/v1/median/",
                                  "/v2/avg", "/v2/batch/mean"])
def test_unknown_operation_is_404(client, path):
    assert "unknown operation" in spec_error(client.post(path, json={}), 404)


def test_unknown_path_is_404(client):
    spec_error(client.post("/v3/sum", json={}), 404)
    spec_error(client.get("/nowhere"), 404)


def test_v1_and_v2_paths_with_and_without_trailing_slash(client):
    url = put("slash", X)
    for path in ("/v2/max", "/v2/max/"):
        r = client.post(path, json={"interface_type": "s3", "url": url, "dtype": "int32"})
        assert r.status_code == 200 and decode_v2(r)[0] == 23
    for path in ("/v1/max/", "/v1/max"):
        r = client.post(path, json={"source": SOURCE, "bucket": "b", "object": "slash",
                                    "dtype": "int32"})
        assert r.status_code == 200 and decode_v1(r)[0] == 23


# ------------------------------------------------------------------------------ v1 fields


@pytest.mark.parametrize("dtype", ["int32", "int64", "uint32", "uint64", "float32", "float64"])
@pytest.mark.parametrize("byte_order", ["little", "big", None])
def test_dtypes_and_byte_orders(client, dtype, byte_order):
    x = (np.arange(12) * 3 - (0 if dtype.startswith("u") else 7)).astype(dtype)
    bo = {"little": "<", "big": ">", None: "="}[byte_order]
    fields = {"byte_order": byte_order} if byte_order else {}
    r = v2(client, "sum", x.astype(x.dtype.newbyteorder(bo)), **fields)
    assert r.status_code == 200, r.text
    values, count = decode_v2(r)
    assert values.dtype.name == dtype and values == x.sum() and count == [12]


def test_offset_and_size_default_to_the_whole_object(client):
    raw = b"\x01" * 5 + X.tobytes() + b"\x02" * 3
    url = put("framed", raw)
    base = {"interface_type": "s3", "url": url, "dtype": "int32"}
    r = client.post("/v2/sum", json={**base, "offset": 5, "size": X.nbytes})
    assert r.status_code == 200 and decode_v2(r)[0] == X.sum()
    whole = put("whole", X)
    r = client.post("/v2/count", json={"interface_type": "s3", "url": whole, "dtype": "int32"})
    assert r.status_code == 200 and decode_v2(r)[0] == 24  # no size, no shape: 1-D of all
    r = client.post("/v2/select", json={"interface_type": "s3", "url": whole, "dtype": "int32",
                                        "offset": 8})
    assert decode_v2(r)[0].tolist() == list(range(2, 24))


def test_shape_order_and_axis(client):
    x = np.arange(24, dtype="float64").reshape(2, 3, 4)
    for order in ("C", "F"):
        for axis in (0, [1], [0, 2], [2, 0, 1]):
            url = put(f"ord-{order}", x.tobytes(order=order))
            r = client.post("/v2/sum", json={"interface_type": "s3", "url": url,
                                              "dtype": "float64", "shape": [2, 3, 4],
                                              "order": order, "axis": axis})
            assert r.status_code == 200, r.text
            m = cbor2.loads(r.content)
            ax = tuple(np.atleast_1d(axis))
            want = x.sum(axis=ax)
            assert m["shape"] == list(want.shape)  # the logical shape either way
            # the result bytes are in the request's order: clients reshape with it
            got = np.frombuffer(m["bytes"], "<f8" if m["byte_order"] == "little" else ">f8")
            np.testing.assert_array_equal(got.reshape(m["shape"], order=order), want)
            assert m["bytes"] == want.tobytes(order=order)
            count = m["count"]
            assert count == np.full(want.shape, x.size // want.size).reshape(-1).tolist()


@pytest.mark.parametrize("axis,words", [(3, "out of range"), ([0, 0], "duplicate"),
                                        ([-4], "out of range"), ("0", "axis")])
def test_axis_rules(client, axis, words):
    assert words in spec_error(v2(client, "sum", X, shape=[4, 6], axis=axis), 400)


def test_selection_and_axis_require_shape(client):
    assert "requires shape" in spec_error(v2(client, "sum", X, selection=[[0, 1, 1]]), 400)
    assert "requires shape" in spec_error(v2(client, "sum", X, axis=0), 400)


def test_selection_stride_zero_and_length_mismatch_are_400(client):
    assert "stride must not be zero" in spec_error(
        v2(client, "sum", X, shape=[4, 6], selection=[[0, 4, 0], [0, 6, 1]]), 400)
    assert "shape has 2" in spec_error(v2(client, "sum", X, shape=[4, 6], selection=[[0, 4, 1]]),
                                     400)


def test_selection_past_the_end_is_clamped(client):
    """The spec's own example: [0, 2, 1] on an axis of size 1 selects its one element."""
    x = np.arange(10, dtype="int64").reshape(1, 10)
    for api, decode in ((v1, decode_v1), (v2, decode_v2)):
        r = api(client, "select", x, shape=[1, 10], selection=[[0, 2, 1], [-100, 100, 3]])
        assert r.status_code == 200, r.text
        np.testing.assert_array_equal(decode(r)[0], x[0:2, -100:100:3])
        r = api(client, "sum", x, shape=[1, 10], selection=[[5, 9, 1], [0, 10, 1]])
        values, count = decode(r)
        assert values == 0 and count == [0]  # an empty selection: nothing counted



@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=3), data=st.data(),
       op=st.sampled_from(["select", "sum", "count", "max"]), api=st.sampled_from(["v1", "v2"]))
def test_selection_is_python_slicing_property(client, shape, data, op, api):
    """Any [start, end, stride] (in range, past either end, negative) selects what NumPy's
    basic slicing selects; reductions over it agree with NumPy."""
    x = np.arange(np.prod(shape), dtype="int64").reshape(shape) * 7 - 30
    sel = [[data.draw(SELECTABLE), data.draw(SELECTABLE),
            data.draw(st.integers(-6, 6).filter(bool))] for _ in shape]
    want = x[tuple(slice(*s) for s in sel)]
    r = (v1 if api == "v1" else v2)(client, op, x, shape=list(shape), selection=sel)
    assert r.status_code == 200, r.text
    values, count = (decode_v1 if api == "v1" else decode_v2)(r)
    assert_selected(values, count, want, op)


@pytest.mark.parametrize("api", ["v1", "v2"])
def test_fortran_select_comes_in_fortran_order(client, api):
    x = np.arange(24, dtype="<i4").reshape(2, 3, 4)
    url = put(f"fsel-{api}", x.tobytes(order="F"))
    fields = {"dtype": "int32", "shape": [2, 3, 4], "order": "F",
              "selection": [[0, 2, 1], [0, 3, 2], [1, 4, 1]]}
    want = x[0:2, 0:3:2, 1:4]
    if api == "v1":
        r = client.post("/v1/select/", json={"source": SOURCE, "bucket": "b",
                                             "object": url.rsplit("/", 1)[1], **fields})
        h = r.headers
        shape, body, count = json.loads(h["x-activestorage-shape"]), r.content, json.loads(
            h["x-activestorage-count"])
    else:
        m = cbor2.loads(client.post("/v2/select", json={"interface_type": "s3", "url": url,
                                                         **fields}).content)
        shape, body, count = m["shape"], m["bytes"], m["count"]
    assert shape == list(want.shape) and count == [want.size]
    assert body == want.tobytes(order="F")
    r = client.post("/v2/max", json={"interface_type": "s3", "url": url, **fields, "axis": 2})
    m = cbor2.loads(r.content)  # 2 x 2 result of an F request: F order; counts C order
    assert m["bytes"] == want.max(axis=2).tobytes(order="F") and m["count"] == [3] * 4


@pytest.mark.parametrize("codec", ["gzip", "zlib", "blosc2"])
@pytest.mark.parametrize("shuffle", [None, "shuffle", "shuffle_simd"])
def test_compression_and_shuffle(client, codec, shuffle):
    """Compression undone first, then the filters in reverse; blosc2 (c-blosc2 frames, which
    newer servers accept) comes with the server extra."""
    import blosc2
    import numcodecs

    x = np.linspace(-5, 5, 60).astype("float32").reshape(6, 10)
    raw = x.tobytes()
    fields: dict[str, Any] = {"shape": [6, 10], "compression": {"id": codec}}
    if shuffle:
        raw = numcodecs.Shuffle(elementsize=4).encode(raw).tobytes()
        fields["filters"] = [{"id": shuffle, "element_size": 4}]
    if codec == "blosc2":
        stored = bytes(blosc2.compress(raw, typesize=4))
    else:
        stored = bytes({"gzip": numcodecs.GZip(), "zlib": numcodecs.Zlib()}[codec].encode(raw))
    url = put(f"codec-{codec}-{shuffle}", stored)
    r = client.post("/v2/max", json={"interface_type": "s3", "url": url, "dtype": "float32",
                                      "size": len(stored), "axis": 1, **fields})
    assert r.status_code == 200, r.text
    np.testing.assert_array_equal(decode_v2(r)[0], x.max(axis=1))


@pytest.mark.parametrize("fields,words", [
    ({"size": 10}, "not a multiple"),
    ({"size": 48, "shape": [4, 7]}, "do not match shape"),
    ({"size": 0}, "size"),
    ({"shape": [4, 0]}, "shape[1]"),
    ({"order": "K"}, "order"),
    ({"byte_order": "native"}, "byte_order"),
    ({"dtype": "float16"}, "dtype"),
])
def test_size_shape_and_enum_rules(client, fields, words):
    url = put("rules", X)
    body = {"interface_type": "s3", "url": url, "dtype": "int32", **fields}
    assert words in spec_error(client.post("/v2/sum", json=body), 400)


def test_unknown_fields_are_ignored_and_options_accepted(client):
    r = v2(client, "sum", X, shape=[4, 6], option_disable_chunk_cache=True,
           option_something_new=1, comment="x")
    assert r.status_code == 200 and decode_v2(r)[0] == X.sum()


# ------------------------------------------------------------------------- v1 response


def test_v1_response_headers(client):
    r = v1(client, "sum", X, shape=[4, 6], axis=1, missing={"missing_value": 7})
    assert r.status_code == 200, r.text
    h = r.headers
    assert h["content-type"] == "application/octet-stream"
    assert h["x-activestorage-dtype"] == "int32"
    assert json.loads(h["x-activestorage-shape"]) == [4]
    assert h["x-activestorage-count"] == "[6,5,6,6]"  # flat, no spaces, one per element
    assert h["x-activestorage-byte-order"] in ("little", "big")
    want = np.ma.masked_equal(X, 7).sum(axis=1).filled(0)
    np.testing.assert_array_equal(decode_v1(r)[0], want)


@pytest.mark.parametrize("fields,count", [
    ({"shape": [4, 6]}, "[24]"),
    ({"shape": [4, 6], "axis": 0}, "[4,4,4,4,4,4]"),
    ({"shape": [2, 2, 6], "axis": 2, "missing": {"valid_max": 20}}, "[6,6,6,3]"),
    ({"shape": [4, 6], "selection": [[0, 4, 2], [0, 6, 1]], "axis": [1]}, "[6,6]"),
])
def test_v1_count_is_a_flat_list_in_c_order(client, fields, count):
    for op in ("count", "min", "sum"):
        r = v1(client, op, X, **fields)
        assert r.status_code == 200, r.text
        assert r.headers["x-activestorage-count"] == count
        assert json.loads(r.headers["x-activestorage-count"]) == json.loads(count)


def test_v1_object_keys_are_raw(client):
    """A v1 object is a raw key: spaces, brackets, commas, quotes and % are themselves."""
    key = "dir/shape-[10, 10]-sel-[[0, 2, 1]] 'q' \"d\" 100%25.bin"
    STORE[f"{SOURCE}/b/dir/shape-%5B10%2C%2010%5D-sel-%5B%5B0%2C%202%2C%201%5D%5D%20%27q%27"
          f"%20%22d%22%20100%2525.bin"] = X.tobytes()
    r = client.post("/v1/max/", json={"source": SOURCE, "bucket": "b", "object": key,
                                      "dtype": "int32"})
    assert r.status_code == 200, r.text
    assert decode_v1(r)[0] == 23


# ------------------------------------------------------------------------- v2 response


def test_v2_response_map_and_byte_options(client):
    r = v2(client, "min", X, shape=[4, 6], axis=0)
    assert r.headers["content-type"] == "application/cbor"
    m = cbor2.loads(r.content)
    assert set(m) == {"bytes", "dtype", "shape", "count", "byte_order"}
    assert m["shape"] == [6] and m["count"] == [4] * 6 and m["dtype"] == "int32"
    r = v2(client, "min", X, shape=[4, 6], axis=0, option_shape_as_bytes=True,
           option_count_as_bytes=True)
    m = cbor2.loads(r.content)
    bo = "<" if m["byte_order"] == "little" else ">"
    assert m["shape"] == [] and m["count"] == []
    assert np.frombuffer(m["shape_as_bytes"], bo + "u8").tolist() == [6]
    assert np.frombuffer(m["count_as_bytes"], bo + "i8").tolist() == [4] * 6


UNENCODED = [
    "test--shape-[10, 10]-selection-[[0, 2, 1], [0, 10, 1]].bin",
    "with space.bin", "quotes-'single'-\"double\".bin", "comma,semi;colon:at@plus+eq=.bin",
    "unicode-é-☃.bin", "brackets-{curly}-(round)-<angle>.bin", "dir/sub dir/x.bin",
]


@pytest.mark.parametrize("key", UNENCODED)
@pytest.mark.parametrize("interface_type", ["s3", "http", "https"])
def test_v2_urls_are_sent_unencoded(client, key, interface_type):
    """The URL arrives as built from a path; the server percent-encodes the key for the read.
    The same URL already percent-encoded (as our SDK sends it) names the same object."""
    from urllib.parse import quote

    encoded = quote(key, safe="/")
    STORE[f"{SOURCE}/bucket/{encoded}"] = X.tobytes()
    for url in (f"{SOURCE}/bucket/{key}", f"{SOURCE}/bucket/{encoded}"):
        SEEN.clear()
        r = client.post("/v2/sum", json={"interface_type": interface_type, "url": url,
                                         "dtype": "int32"})
        assert r.status_code == 200, r.text
        assert decode_v2(r)[0] == X.sum()
        assert SEEN[-1].url == f"{SOURCE}/bucket/{encoded}"


def test_v2_url_percent_rules(client):
    """%XX is an escape; a lone % is a literal percent sign; ? starts a query."""
    STORE[f"{SOURCE}/b/100%25%20done"] = X.tobytes()
    for url in (f"{SOURCE}/b/100% done", f"{SOURCE}/b/100%25 done", f"{SOURCE}/b/100%25%20done"):
        r = client.post("/v2/max", json={"interface_type": "s3", "url": url, "dtype": "int32"})
        assert r.status_code == 200, (url, r.text)
    STORE[f"{SOURCE}/b/q?X-Sig=a%2Fb&n=1%202"] = X.tobytes()
    r = client.post("/v2/max", json={"interface_type": "https", "url": f"{SOURCE}/b/q?X-Sig=a%2Fb&n=1 2",
                                     "dtype": "int32"})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("bad", ["\n", "\t", "\x00", "\x7f", "\r"])
def test_v2_url_control_characters_are_refused(client, bad):
    r = client.post("/v2/sum", json={"interface_type": "s3", "url": f"{SOURCE}/b/a{bad}b",
                                     "dtype": "int32"})
    assert "control characters" in spec_error(r, 400)


# ---------------------------------------------------------------------------- missing data


MISSING_OK = [
    ({"missing_value": 7}, lambda x: x == 7),
    ({"missing_values": [7, 9, 100]}, lambda x: np.isin(x, [7, 9, 100])),
    ({"valid_min": 5}, lambda x: x < 5),
    ({"valid_max": 20}, lambda x: x > 20),
    ({"valid_range": [5, 20]}, lambda x: (x < 5) | (x > 20)),
]


@pytest.mark.parametrize("missing,mask", MISSING_OK, ids=[next(iter(m)) for m, _ in MISSING_OK])
@pytest.mark.parametrize("dtype", ["int32", "uint64", "float32", "float64"])
def test_missing_kinds(client, missing, mask, dtype):
    x = X.astype(dtype)
    if dtype.startswith("float"):  # floats accept floats and integers alike
        missing = {k: ([float(a) for a in v] if isinstance(v, list) else float(v))
                   for k, v in missing.items()}
    m = np.ma.masked_array(x, mask(X))
    for op, want in (("sum", m.sum(axis=1).filled(0)), ("count", m.count(axis=1)),
                     ("min", m.min(axis=1).filled(0)), ("max", m.max(axis=1).filled(0))):
        r = v2(client, op, x, shape=[4, 6], axis=1, missing=missing)
        assert r.status_code == 200, r.text
        values, count = decode_v2(r)
        assert count == m.count(axis=1).tolist()
        ok = np.asarray(count) > 0
        np.testing.assert_array_equal(np.asarray(values)[ok], np.asarray(want)[ok])


def test_everything_missing_has_count_zero(client):
    r = v2(client, "min", X, shape=[4, 6], missing={"valid_min": 100})
    assert r.status_code == 200 and decode_v2(r)[1] == [0]


MISSING_BAD = [
    ("int32", {"missing_value": -1.0}), ("int32", {"missing_value": 1.5}),
    ("uint32", {"valid_min": 1.0}), ("int64", {"valid_max": 2.0}),
    ("int32", {"missing_values": [1, 2.0]}), ("int32", {"valid_range": [0.0, 5]}),
    ("int32", {"missing_value": 1e3}), ("uint64", {"missing_value": -1}),
    ("int32", {"missing_value": 2**31}), ("uint32", {"valid_max": 2**32}),
    ("int64", {"missing_value": 2**63}), ("uint64", {"missing_value": 2**64}),
    ("float32", {"missing_value": 1e39}), ("float32", {"valid_min": -3.5e38}),
    ("float64", {"missing_value": 10**400}),
    ("int32", {"valid_range": [5, 5]}), ("float64", {"valid_range": [2.5, 2.5]}),
    ("int32", {"valid_range": [6, 5]}), ("int32", {"valid_range": [5]}),
    ("int32", {"fill_value": 1}), ("int32", {}), ("int32", 5), ("int32", [1]),
    ("int32", "missing"), ("int32", {"missing_value": "1"}), ("int32", {"missing_values": []}),
]


@pytest.mark.parametrize("dtype,missing", MISSING_BAD, ids=[json.dumps(m) + "-" + d
                                                            for d, m in MISSING_BAD])
@pytest.mark.parametrize("api", ["v1", "v2"])
def test_missing_validation_is_strict(client, dtype, missing, api):
    x = np.zeros(4, dtype)
    r = (v1 if api == "v1" else v2)(client, "sum", x, missing=missing)
    assert "missing" in spec_error(r, 400)


def test_missing_float_for_integer_dtype_in_a_cbor_batch(client):
    """CBOR floats are floats too: -1.0 for int32 is refused inside a batch."""
    url = put("cbor-int", X)
    item = {"interface_type": "s3", "url": url, "dtype": "int32", "missing": {"missing_value": -1.0}}
    r = client.post("/v2/batch/sum", content=cbor2.dumps({"requests": [item]}),
                    headers={"content-type": "application/cbor"})
    msg = spec_error(r, 400)
    assert "missing" in msg and "requests[0]" in msg


def test_several_missing_keys_stay_an_extension(client):
    x = np.arange(10, dtype="int32")
    r = v2(client, "count", x, missing={"missing_value": 3, "valid_min": 2, "valid_max": 8})
    assert r.status_code == 200 and decode_v2(r)[0] == 6  # 2,4,5,6,7,8


# -------------------------------------------------------------------------- authentication


def test_basic_auth_reaches_the_upstream_read(client):
    url = put("authed", X)
    token = base64.b64encode(b"AKIDEXAMPLE:secret/key").decode()
    SEEN.clear()
    r = client.post("/v2/sum", json={"interface_type": "s3", "url": url, "dtype": "int32"},
                    headers={"authorization": f"Basic {token}"})
    assert r.status_code == 200
    assert SEEN[-1].auth == ("AKIDEXAMPLE", "secret/key")
    SEEN.clear()
    client.post("/v2/sum", json={"interface_type": "s3", "url": url, "dtype": "int32"})
    assert SEEN[-1].auth is None  # no header: anonymous


# --------------------------------------------------------------------------------- errors


def test_malformed_json_is_400(client):
    assert "malformed JSON" in spec_error(client.post("/v2/sum", content=b"{nope"), 400)
    assert "body" in spec_error(client.post("/v2/sum", json=[1]), 400)


def test_object_not_found_upstream_is_400(client):
    r = client.post("/v2/sum", json={"interface_type": "s3", "url": f"{SOURCE}/b/absent",
                                     "dtype": "int32"})
    assert "NoSuchKey" in spec_error(r, 400)
